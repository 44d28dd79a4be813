//! Where work runs, decided in one place: the CPU, a CUDA device and stream, or (tests only)
//! the emulated launcher. A call's tensors decide it ([`Target::of`]); an [`Op`] (the fused
//! pass, the error norm) then runs on the target without knowing how it was chosen, and the
//! `Op` impls here pair each operation with its CPU loop and its launch code. Nothing else in
//! the crate matches on the target or on `cfg(feature = "cuda")` for dispatch.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::cuda::emulate::EmulatedLauncher;
use crate::cuda::launch::Launcher;
use crate::cuda::unet::device::UnetDevice;
use crate::error::{RdiffError, Result};
use crate::error_norm::ErrorNorm;
use crate::lincomb::Lincomb;
use crate::tensor::{Device, Tensor};

/// Where a call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The CPU loops (rayon).
    Cpu,
    /// A CUDA device, on the caller's stream (`cudaStream_t` as an integer; 0 = legacy default).
    Cuda { ordinal: i32, stream: usize },
    /// The CUDA kernels compiled for the host, on CPU buffers, with at most `max_blocks`
    /// blocks per grid-stride launch (tests: the CUDA code path without a GPU).
    Emulated { max_blocks: u32 },
}

/// Work that runs on any target: the CPU loop, or kernel launches through a [`Launcher`].
pub trait Op: Sync {
    /// What the work is, for messages ("the DPM-Solver step").
    fn what(&self) -> &str;
    fn run_cpu(&self) -> Result<()>;
    fn launch(&self, l: &dyn Launcher) -> Result<()>;
}

impl Op for Lincomb {
    fn what(&self) -> &str {
        self.what
    }

    fn run_cpu(&self) -> Result<()> {
        crate::cpu::lincomb::run(self)
    }

    fn launch(&self, l: &dyn Launcher) -> Result<()> {
        crate::cuda::lincomb::launch(l, self)
    }
}

impl Op for ErrorNorm {
    fn what(&self) -> &str {
        "the adaptive solver's error norm"
    }

    fn run_cpu(&self) -> Result<()> {
        crate::cpu::error_norm::run(self)
    }

    fn launch(&self, l: &dyn Launcher) -> Result<()> {
        crate::cuda::error_norm::launch(l, self)
    }
}

/// 0: CPU tensors run the CPU loops; n > 0: they run the kernels on the emulated launcher with
/// at most n blocks. A test-time switch (`rdiff._cuda_testing.emulated_backend`), read once
/// per call when every tensor is on the CPU: one relaxed load.
static EMULATION: AtomicU32 = AtomicU32::new(0);

/// Switches the emulation on (`Some(max_blocks)`, ≥ 1) or off; returns the previous setting.
pub fn set_emulation(max_blocks: Option<u32>) -> Result<Option<u32>> {
    if max_blocks == Some(0) {
        return Err(RdiffError::Value("max_blocks: must be ≥ 1 or None".into()));
    }
    let prev = EMULATION.swap(max_blocks.unwrap_or(0), Ordering::Relaxed);
    Ok((prev != 0).then_some(prev))
}

impl Target {
    /// The target of a call over `tensors`: all on the CPU → the CPU (or the emulated launcher
    /// while the tests have it on); all on one CUDA device → that device on `stream`.
    /// CPU and CUDA mixed, or two CUDA devices: ValueError. CUDA where it cannot run:
    /// `CudaUnavailable` with the reason, naming `what`.
    pub fn of<'a>(
        what: &str,
        tensors: impl IntoIterator<Item = &'a Tensor>,
        stream: usize,
    ) -> Result<Self> {
        let mut device = None;
        for t in tensors {
            match device {
                None => device = Some(t.device),
                Some(d) if d != t.device => {
                    return Err(RdiffError::Value(format!(
                        "{what}: every tensor must be on the same device (one CPU or one CUDA \
                         device), got {d} and {}",
                        t.device
                    )))
                }
                Some(_) => {}
            }
        }
        match device.unwrap_or(Device::Cpu) {
            Device::Cpu => Ok(match EMULATION.load(Ordering::Relaxed) {
                0 => Target::Cpu,
                n => Target::Emulated { max_blocks: n },
            }),
            Device::Cuda(ordinal) => {
                crate::cuda::available_cached().map_err(|reason| {
                    RdiffError::CudaUnavailable(format!(
                        "{what}: CUDA tensors need rdiff's CUDA backend, which cannot run here: \
                         {reason}"
                    ))
                })?;
                Ok(Target::Cuda { ordinal, stream })
            }
        }
    }

    /// Runs `op` here.
    pub fn run(&self, op: &dyn Op) -> Result<()> {
        match *self {
            Target::Cpu => op.run_cpu(),
            Target::Emulated { max_blocks } => op.launch(&EmulatedLauncher { max_blocks }),
            Target::Cuda { ordinal, stream } => run_cuda(op, ordinal, stream),
        }
    }
}

/// Calls `f` with CUDA device `ordinal` as a UNet device on `stream` (the real launcher); the
/// thread's current CUDA context is put back afterwards.
#[cfg(feature = "cuda")]
pub fn with_cuda_device<R>(
    ordinal: i32,
    stream: usize,
    f: impl FnOnce(&dyn UnetDevice) -> Result<R>,
) -> Result<R> {
    crate::cuda::available_cached().map_err(RdiffError::CudaUnavailable)?;
    let _restore = crate::cuda::context::RestoreContext::save()?;
    let launcher = crate::cuda::context::StreamLauncher {
        device: crate::cuda::context::device(ordinal)?,
        stream,
    };
    f(&launcher)
}

#[cfg(not(feature = "cuda"))]
pub fn with_cuda_device<R>(
    _ordinal: i32,
    _stream: usize,
    _f: impl FnOnce(&dyn UnetDevice) -> Result<R>,
) -> Result<R> {
    Err(RdiffError::CudaUnavailable(
        "rdiff was built without the `cuda` feature".into(),
    ))
}

#[cfg(feature = "cuda")]
fn run_cuda(op: &dyn Op, ordinal: i32, stream: usize) -> Result<()> {
    with_cuda_device(ordinal, stream, |dev| op.launch(dev))
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(op: &dyn Op, ordinal: i32, stream: usize) -> Result<()> {
    with_cuda_device(ordinal, stream, |dev| op.launch(dev))
}
