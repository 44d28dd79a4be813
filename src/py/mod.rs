//! PyO3 bindings only: convert, validate, release the GIL, map errors. One file per area.

pub mod backends;
pub mod dpm_solver;
pub mod errors;
pub mod schedule;
pub mod spacing;
pub mod tensor;
pub mod testing;
pub mod unet;
