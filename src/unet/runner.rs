//! [`UNetRunner`]: a loaded UNet with the backend chosen at load and that backend's state —
//! a CPU activation arena, or device memory (uploaded weights, an activation arena) on a CUDA
//! device or the emulated launcher. Calls check that the caller's tensors are where the model
//! lives, then run the one graph (`unet::model`) on that backend.

use std::sync::Mutex;

use super::control::Controls;
use super::embeddings::{Conditioning, Timesteps};
use super::layout::Dims;
use super::model::UNet2D;
use super::weights::ComputeDtype;
use crate::cpu::arena::Arena;
use crate::cuda::unet::device::{EmulatedDevice, UnetDevice};
use crate::cuda::unet::model::{self as device_model, DeviceState, Traffic};
use crate::dtype::DType;
use crate::error::{RdiffError, Result};
use crate::target::{with_cuda_device, Target};
use crate::tensor::{Device, Tensor};
use crate::with_elem;

enum State {
    Cpu(Mutex<Arena>),
    Emulated(EmulatedDevice, Mutex<DeviceState>),
    Cuda(i32, Mutex<DeviceState>),
}

pub struct UNetRunner {
    pub unet: UNet2D,
    state: State,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl UNetRunner {
    /// How a model computing in `compute` on `target` keeps its weight matrices on the host:
    /// as the CPU path multiplies them (bf16 tiles for bfloat16), and in f32 (or the
    /// checkpoint's f16/bf16) for a device, which makes its own copies in the type its GEMMs
    /// read (`cuda/unet/backend.rs`). float16 and tfloat32 math are a device's only: the CPU
    /// has no f16 or tf32 product kernel (its AMX tiles multiply bf16), so they are refused
    /// there rather than run as something else.
    pub fn weight_storage(compute: ComputeDtype, target: Target) -> Result<ComputeDtype> {
        match (target, compute) {
            (Target::Cpu, ComputeDtype::F16 | ComputeDtype::Tf32) => {
                Err(RdiffError::Value(format!(
                    "compute_dtype='{}' runs on CUDA devices only (tensor-core math); on the \
                     CPU use 'bfloat16' or 'float32'",
                    compute.name()
                )))
            }
            (Target::Cpu, _) => Ok(compute),
            _ => Ok(ComputeDtype::F32),
        }
    }

    /// `unet` (loaded with `weight_storage(compute, target)`) on `target` (its stream is the
    /// call's), computing in `compute`; `threads` per block for the emulated launcher's UNet
    /// kernels (0: 256, as on a GPU).
    pub fn new(
        mut unet: UNet2D,
        target: Target,
        threads: u32,
        compute: ComputeDtype,
    ) -> Result<Self> {
        if unet.compute != Self::weight_storage(compute, target)? {
            return Err(RdiffError::Value(format!(
                "a model loaded for compute_dtype={:?} cannot compute in {:?} here",
                unet.compute.name(),
                compute.name()
            )));
        }
        unet.compute = compute;
        let state = match target {
            Target::Cpu => State::Cpu(Mutex::default()),
            Target::Emulated { max_blocks } => {
                // memory of its own, as a GPU has: the weights are uploaded and dropped here
                let mut dev = EmulatedDevice::new(max_blocks, threads, false);
                dev.separate_memory = true;
                let mut st = DeviceState::default();
                device_model::upload_matrices(&mut unet, &mut st, &dev)?;
                State::Emulated(dev, Mutex::new(st))
            }
            Target::Cuda { ordinal, .. } => {
                let mut st = DeviceState::default();
                with_cuda_device(ordinal, 0, |dev| {
                    device_model::upload_matrices(&mut unet, &mut st, dev)
                })?;
                State::Cuda(ordinal, Mutex::new(st))
            }
        };
        Ok(Self { unet, state })
    }

    /// Where the model's tensors must live.
    pub fn device(&self) -> Device {
        match self.state {
            State::Cpu(_) | State::Emulated(..) => Device::Cpu,
            State::Cuda(ordinal, _) => Device::Cuda(ordinal),
        }
    }

    /// -1 for the emulated launcher, the CUDA ordinal, or None for the CPU.
    pub fn ordinal(&self) -> Option<i32> {
        match self.state {
            State::Cpu(_) => None,
            State::Emulated(..) => Some(-1),
            State::Cuda(o, _) => Some(o),
        }
    }

    /// Bytes of activation memory the backend has allocated so far.
    pub fn arena_bytes(&self) -> usize {
        match &self.state {
            State::Cpu(a) => lock(a).allocated_bytes(),
            State::Emulated(_, s) | State::Cuda(_, s) => lock(s).arena.allocated_bytes(),
        }
    }

    /// The forward pass: `sample` NCHW (batch, in_channels, h, w), `out` NCHW with
    /// out_channels, same dtype, both where the model lives; `context` (a cross-attention
    /// model's `encoder_hidden_states`, `[b][tokens][cross_dim]`) there too, and `controls`
    /// (a ControlNet's or T2I-Adapter's residuals, NCHW); `stream`: the caller's CUDA stream.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        sample: &Tensor,
        out: &Tensor,
        timesteps: Timesteps<'_>,
        cond: &Conditioning<'_>,
        context: Option<&Tensor>,
        controls: Option<&Controls>,
        stream: usize,
    ) -> Result<()> {
        let (b, c, h, w) = match sample.shape[..] {
            [b, c, h, w] => (b, c, h, w),
            _ => {
                return Err(RdiffError::Value(format!(
                    "sample: expected shape (batch, channels, height, width), got {:?}",
                    sample.shape
                )))
            }
        };
        self.unet.check(b, c, h, w, timesteps.count())?;
        self.unet.check_context(b, context.map(|t| &t.shape[..]))?;
        if let Some(ctl) = controls {
            let (skips, slots) = self.unet.control_shapes(Dims { b, h, w });
            ctl.check(&skips, &slots)?;
        }
        let want = [b, self.unet.out_channels(), h, w];
        if out.shape != want {
            return Err(RdiffError::Value(format!(
                "output buffer: expected shape {want:?}, got {:?}",
                out.shape
            )));
        }
        if out.dtype != sample.dtype {
            return Err(RdiffError::Type(
                "output buffer: dtype differs from the sample's".into(),
            ));
        }
        let here = self.device();
        let ts_tensor = match timesteps {
            Timesteps::Device(t) => Some(t),
            Timesteps::Host(_) => None,
        };
        if let Some(t) = ts_tensor {
            if t.dtype != DType::F32 {
                return Err(RdiffError::Type(format!(
                    "timestep: a device tensor must be float32, got {}",
                    t.dtype.name()
                )));
            }
        }
        let residuals = controls.into_iter().flat_map(Controls::tensors);
        for t in [sample, out]
            .into_iter()
            .chain(context)
            .chain(ts_tensor)
            .chain(residuals)
        {
            if t.device != here {
                return Err(match (here, t.device) {
                    (Device::Cpu, Device::Cuda(_)) => RdiffError::CudaUnavailable(
                        "this UNet was loaded for the CPU; load it with device=\"cuda\" for \
                         CUDA tensors"
                            .into(),
                    ),
                    _ => RdiffError::Value(format!(
                        "sample, output, context, timestep and residual tensors must be on \
                         {here}, where this model lives; got {}",
                        t.device
                    )),
                });
            }
        }
        let dims = (b, h, w);
        let on_device = |dev: &dyn UnetDevice, st: &Mutex<DeviceState>| {
            device_model::forward(
                &self.unet,
                &mut lock(st),
                dev,
                sample,
                dims,
                timesteps,
                cond,
                context,
                controls,
                out,
            )
        };
        match &self.state {
            State::Cpu(arena) => with_elem!(sample.dtype, T, {
                // SAFETY: shapes, dtype and device checked above; the caller keeps both
                // buffers alive for the call and allocates `out` fresh.
                let (x, o) = unsafe { (sample.slice::<T>(), out.slice_mut::<T>()) };
                // The whole forward runs on one of rayon's threads, so that each op forks and
                // joins inside the pool instead of being handed over from this thread and
                // waited for (5% of a batch-1 call of the DDPM-CIFAR-10 UNet on 2 cores). The
                // lock is taken here, outside the pool: a pool thread waiting on its tasks may
                // pick up another call's forward, which must not wait for a lock it holds.
                let timesteps = timesteps.host()?;
                let mut guard = lock(arena);
                let arena: &mut Arena = &mut guard;
                rayon::scope(|_| {
                    crate::cpu::unet::forward(
                        &self.unet, arena, x, dims, timesteps, cond, context, controls, o,
                    )
                })
            }),
            State::Emulated(dev, st) => on_device(dev, st),
            State::Cuda(ordinal, st) => {
                with_cuda_device(*ordinal, stream, |dev| on_device(dev, st))
            }
        }
    }
}

impl UNetRunner {
    /// Whether calls may give the timesteps as a tensor on the model's device: a device model
    /// (CUDA or emulated) whose time projection is computed from the timesteps alone.
    pub fn timesteps_on_device(&self) -> bool {
        !matches!(self.state, State::Cpu(_)) && self.unet.time_projection_from_timesteps()
    }

    /// Allocations and host-to-device copies on the model's device since load (None on the
    /// CPU): what a warm call with device timesteps must not add.
    pub fn traffic(&self) -> Option<Traffic> {
        match &self.state {
            State::Cpu(_) => None,
            State::Emulated(_, st) | State::Cuda(_, st) => Some(lock(st).traffic()),
        }
    }

    /// Bytes of the weights' device copies made so far (None on the CPU): a bf16 or f16
    /// model keeps its matrices in that type, half a float32 model's.
    pub fn device_weight_bytes(&self) -> Option<usize> {
        match &self.state {
            State::Cpu(_) => None,
            State::Emulated(_, st) | State::Cuda(_, st) => Some(lock(st).weights.bytes),
        }
    }
}

impl Drop for UNetRunner {
    fn drop(&mut self) {
        match &self.state {
            State::Cpu(_) => {}
            State::Emulated(dev, st) => lock(st).release(dev),
            State::Cuda(ordinal, st) => {
                let _ = with_cuda_device(*ordinal, 0, |dev| {
                    lock(st).release(dev);
                    Ok(())
                });
            }
        }
    }
}
