//! The CPU backend: the fused pass and its reductions over caller-owned buffers, and the
//! UNet's ops (rayon, gemm).

pub mod arena;
pub mod attention;
pub mod conv;
pub mod error_norm;
pub mod gamma;
pub mod geglu;
pub mod layer_norm;
pub mod lincomb;
pub mod norm;
pub mod peak;
pub mod resample;
pub mod threshold;
pub mod unet;
pub mod vecmath;

/// The UNet's ops split their work into tiles as if for this many threads, whatever the size
/// of the rayon pool: gemm's blocking (hence the order of every sum) follows the tile shapes,
/// so a partition fixed here makes each output bit independent of `RAYON_NUM_THREADS`.
pub const PARTITION_THREADS: usize = 16;
