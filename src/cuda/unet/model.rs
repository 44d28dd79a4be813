//! [`CudaUNet`]: a loaded `UNet2D` with its device state (weights uploaded once, activation
//! arena), run on caller-owned device buffers: NCHW in, NCHW out, f32 / f16 / bf16.

use std::sync::Mutex;

use super::backend::{DeviceArena, DeviceBackend, DeviceWeights};
use super::device::UnetDevice;
use crate::cpu::conv::Dims;
use crate::cuda::kernels::dtype_suffix;
use crate::cuda::launch::{Dim3, KernelArg};
use crate::cuda::ops::Buf;
use crate::error::{RdiffError, Result};
use crate::unet::backend::Backend;
use crate::unet::embeddings::ClassLabels;
use crate::unet::model::UNet2D;

/// Device memory of one model on one device.
#[derive(Default)]
pub struct DeviceState {
    pub arena: DeviceArena,
    pub weights: DeviceWeights,
}

impl DeviceState {
    /// Frees everything (no work may be pending on it).
    pub fn release(&mut self, dev: &dyn UnetDevice) {
        self.arena.release(dev);
        self.weights.release(dev);
    }
}

/// A UNet with the state of the device it runs on.
pub struct CudaUNet {
    pub unet: UNet2D,
    pub state: Mutex<DeviceState>,
}

impl CudaUNet {
    pub fn new(unet: UNet2D) -> Self {
        Self {
            unet,
            state: Mutex::new(DeviceState::default()),
        }
    }

    /// Bytes of activation memory allocated on the device so far.
    pub fn arena_bytes(&self) -> usize {
        self.state
            .lock()
            .map(|s| s.arena.allocated_bytes())
            .unwrap_or(0)
    }

    /// The forward pass on `dev`: `x` NCHW `[b][in_channels][h][w]`, `out` NCHW
    /// `[b][out_channels][h][w]`, both device buffers of the same dtype (f32, f16 or bf16).
    pub fn forward(
        &self,
        dev: &dyn UnetDevice,
        x: Buf,
        (b, h, w): (usize, usize, usize),
        timesteps: &[f32],
        class: ClassLabels<'_>,
        out: Buf,
    ) -> Result<()> {
        let u = &self.unet;
        let cin = u.in_channels();
        u.check(b, cin, h, w, timesteps.len())?;
        let t = dtype_suffix(x.dtype)
            .filter(|_| out.dtype == x.dtype)
            .ok_or_else(|| {
                RdiffError::Type(format!(
                    "the CUDA UNet takes float32, float16 or bfloat16 samples and an output of \
                     the same dtype, got {} and {}",
                    x.dtype.name(),
                    out.dtype.name()
                ))
            })?;
        let ts = u.per_sample(timesteps, b);
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        let mut be = DeviceBackend {
            dev,
            arena: &mut st.arena,
            weights: &mut st.weights,
        };
        let dims = Dims { b, h, w };
        let hw = dims.hw();
        let threads = dev.block_threads();
        let grid = |total: usize| {
            Dim3::x(
                total
                    .div_ceil(threads as usize)
                    .clamp(1, dev.max_blocks().max(1) as usize) as u32,
            )
        };
        let i = |v: usize| KernelArg::I64(v as i64);
        let xin = be.act(cin, dims)?;
        dev.launch(
            &format!("rdiff_unet_nchw_in_{t}"),
            grid(cin * dims.n()),
            Dim3::x(threads),
            0,
            &[
                KernelArg::Ptr(x.ptr),
                i(b),
                i(cin),
                i(hw),
                KernelArg::Ptr(xin.buf.ptr),
                i(u.arch.cfg.center_input_sample as usize),
            ],
        )?;
        let y = u.run(&mut be, xin, &ts, class)?;
        let div = if u.divides_by_timestep() {
            Some(be.upload(&ts)?)
        } else {
            None
        };
        let co = u.out_channels();
        dev.launch(
            &format!("rdiff_unet_nchw_out_{t}"),
            grid(co * dims.n()),
            Dim3::x(threads),
            0,
            &[
                KernelArg::Ptr(y.buf.ptr),
                i(b),
                i(co),
                i(hw),
                KernelArg::Ptr(div.as_ref().map_or(0, |d| d.ptr)),
                KernelArg::Ptr(out.ptr),
            ],
        )?;
        be.give(y.buf);
        if let Some(d) = div {
            be.give(d);
        }
        Ok(())
    }
}
