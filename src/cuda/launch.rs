//! The one interface both launchers implement: the real one (`context`, cuLaunchKernel on the
//! caller's stream) and the emulated one (`emulate`, the same kernels compiled for the host).
//! Code above (`ops`) cannot tell which one runs.

use crate::error::Result;

/// A grid or block shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Dim3 {
    pub const fn new(x: u32, y: u32, z: u32) -> Self {
        Self { x, y, z }
    }

    pub const fn x(x: u32) -> Self {
        Self { x, y: 1, z: 1 }
    }

    pub fn count(&self) -> u64 {
        self.x as u64 * self.y as u64 * self.z as u64
    }
}

/// One kernel argument, by value, in the kernel's parameter type. Pointers are device
/// addresses for the real launcher and host addresses for the emulated one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelArg<'a> {
    /// A pointer (`const T*`, `T*`); 0 for null.
    Ptr(u64),
    /// `long long`.
    I64(i64),
    /// `float`.
    F32(f32),
    /// `double`.
    F64(f64),
    /// A `#[repr(C)]` struct passed by value: its bytes, laid out as the kernel's struct.
    Struct(&'a [u8]),
}

impl KernelArg<'_> {
    /// The address of the value, as cuLaunchKernel's `kernelParams` entries expect.
    pub fn as_param(&self) -> *mut std::ffi::c_void {
        match self {
            KernelArg::Ptr(v) => v as *const u64 as *mut _,
            KernelArg::I64(v) => v as *const i64 as *mut _,
            KernelArg::F32(v) => v as *const f32 as *mut _,
            KernelArg::F64(v) => v as *const f64 as *mut _,
            KernelArg::Struct(b) => b.as_ptr() as *mut _,
        }
    }
}

/// Threads per block of the elementwise kernels (their `__launch_bounds__`).
pub const BLOCK: u32 = 256;
/// The most samples one launch addresses (grid.y, or grid.x of the per-sample reductions).
pub const MAX_BATCH: usize = 65535;

/// Blocks along x for an elementwise kernel over `batch` rows of `per_sample` elements read
/// `width` at a time: one vector per thread, capped so that all rows together stay near the
/// launcher's resident-block count (the kernels' grid-stride loops cover the rest).
pub fn elementwise_grid(l: &dyn Launcher, batch: usize, per_sample: usize, width: usize) -> Dim3 {
    let vectors = per_sample.div_ceil(width).max(1);
    let want = vectors.div_ceil(BLOCK as usize);
    let cap = (l.max_blocks() as usize / batch.max(1)).max(1);
    Dim3::new(want.clamp(1, cap) as u32, batch as u32, 1)
}

/// ValueError unless 1 ≤ batch ≤ [`MAX_BATCH`].
pub fn check_batch(batch: usize) -> Result<()> {
    if batch == 0 || batch > MAX_BATCH {
        return Err(crate::error::RdiffError::Value(format!(
            "batch: the CUDA kernels take 1 to {MAX_BATCH} samples per call, got {batch}"
        )));
    }
    Ok(())
}

/// The suffix kernels use for a storage dtype (`f32`, `f16`, `bf16`); TypeError naming `what`
/// for f64, which the kernels do not take.
pub fn suffix(dtype: crate::dtype::DType, what: &str) -> Result<&'static str> {
    crate::cuda::kernels::dtype_suffix(dtype).ok_or_else(|| {
        crate::error::RdiffError::Type(format!(
            "{what}: the CUDA kernels take float32, float16 or bfloat16, not {}",
            dtype.name()
        ))
    })
}

/// Launches a kernel by entry-point name.
pub trait Launcher {
    /// Enqueues (real) or runs (emulated) `kernel` over `grid` × `block` threads.
    fn launch(
        &self,
        kernel: &str,
        grid: Dim3,
        block: Dim3,
        shared_bytes: u32,
        args: &[KernelArg],
    ) -> Result<()>;

    /// The most blocks worth launching for a grid-stride elementwise kernel (about the number
    /// of blocks the device keeps resident); the emulated launcher asks for few, so that the
    /// grid-stride loops go round.
    fn max_blocks(&self) -> u32;
}
