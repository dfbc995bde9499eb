/// mimalloc instead of the system allocator: under load glibc's malloc and
/// free were a larger share of the gateway's CPU than any of its own code
/// (many small, short-lived allocations across two worker threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchboard::cli::main()
}
