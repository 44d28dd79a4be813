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

/// The UNet's ops split their work into tiles as if for this many threads, whatever the size
/// of the rayon pool: gemm's blocking (hence the order of every sum) follows the tile shapes,
/// so a partition fixed here makes each output bit independent of `RAYON_NUM_THREADS`.
pub const PARTITION_THREADS: usize = 16;
