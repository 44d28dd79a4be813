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
pub mod winograd;

/// The UNet's ops split their work into tiles as if for this many threads, whatever the size
/// of the rayon pool: gemm's blocking (hence the order of every sum) follows the tile shapes,
/// so a partition fixed here makes each output bit independent of `RAYON_NUM_THREADS`.
pub const PARTITION_THREADS: usize = 16;

/// An output buffer's base pointer handed to rayon tasks. Each op's tasks write disjoint
/// regions of the buffer through it (every use says which, at its unsafe block).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the tasks holding it write disjoint regions (see the type's doc), so sending the
// pointer to another thread creates no data race.
unsafe impl Send for SendPtr {}
// SAFETY: shared only to hand the same base pointer to every task; see Send.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the whole (Sync) wrapper.
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}
