//! The simulated switch (stub, being written).
