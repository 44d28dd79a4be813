//! The CPU backend: fused elementwise loops over caller-owned buffers (rayon).

pub mod analytic_step;
pub mod ddim_step;
pub mod dpm_step;
pub mod dtype;
pub mod gamma;
pub mod lincomb;
pub mod quantile;
