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
pub enum KernelArg {
    /// A pointer (`const T*`, `T*`); 0 for null.
    Ptr(u64),
    /// `long long`.
    I64(i64),
    /// `float`.
    F32(f32),
}

impl KernelArg {
    /// The address of the value, as cuLaunchKernel's `kernelParams` entries expect.
    pub fn as_param(&self) -> *mut std::ffi::c_void {
        match self {
            KernelArg::Ptr(v) => v as *const u64 as *mut _,
            KernelArg::I64(v) => v as *const i64 as *mut _,
            KernelArg::F32(v) => v as *const f32 as *mut _,
        }
    }
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
