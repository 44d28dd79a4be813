//! The CPU backend: fused elementwise loops over caller-owned buffers (rayon).

pub mod arena;
pub mod attention;
pub mod conv;
pub mod dpm_step;
pub mod dtype;
pub mod norm;
pub mod quantile;
pub mod resample;
pub mod vecmath;
