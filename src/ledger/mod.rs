//! The ledger (stub, being written).
