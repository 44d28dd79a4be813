//! The CPU backend: fused elementwise loops over caller-owned buffers (rayon).

pub mod analytic_step;
pub mod arena;
pub mod attention;
pub mod conv;
pub mod ddim_step;
pub mod dpm_step;
pub mod dtype;
pub mod gamma;
pub mod lincomb;
pub mod norm;
pub mod quantile;
pub mod resample;
pub mod vecmath;
