//! PyO3 bindings only: convert, validate, release the GIL, map errors. One file per area.

pub mod analytic;
pub mod backends;
pub mod cuda;
pub mod ddim;
pub mod dpm_singlestep;
pub mod dpm_solver;
pub mod errors;
pub mod random;
pub mod sampling;
pub mod schedule;
pub mod spacing;
pub mod tensor;
pub mod testing;
pub mod unet;
pub mod unet_cuda;
