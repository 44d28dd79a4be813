//! The UNet's forward pass on a device: [`DeviceState`] (weights uploaded once, the activation
//! arena) and [`forward`] on caller-owned device buffers, NCHW in and out, f32 / f16 / bf16.
//! It mirrors `cpu::unet::forward`.

use super::backend::{DevBuf, DeviceArena, DeviceBackend, DeviceWeights};
use super::device::UnetDevice;
use crate::cuda::kernels::dtype_suffix;
use crate::cuda::launch::{Dim3, KernelArg};
use crate::dtype::DType;
use crate::error::{RdiffError, Result};
use crate::tensor::Tensor;
use crate::unet::backend::{Backend, Tokens};
use crate::unet::control::Controls;
use crate::unet::embeddings::{Conditioning, Timesteps};
use crate::unet::layout::Dims;
use crate::unet::model::UNet2D;
use crate::unet::weights::ComputeDtype;

/// Device memory of one model on one device.
#[derive(Default)]
pub struct DeviceState {
    pub arena: DeviceArena,
    pub weights: DeviceWeights,
}

/// What a model has done on its device since load, beyond launches: neither may happen in a
/// call captured in a CUDA graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traffic {
    /// Device allocations (activation buffers, weights).
    pub allocations: usize,
    /// Host-to-device copies (weights; host timesteps and host-side embeddings per call).
    pub uploads: usize,
}

impl DeviceState {
    pub fn traffic(&self) -> Traffic {
        Traffic {
            allocations: self.arena.allocations + self.weights.uploads,
            uploads: self.arena.uploads + self.weights.uploads,
        }
    }

    /// Frees everything (no work may be pending on it).
    pub fn release(&mut self, dev: &dyn UnetDevice) {
        self.arena.release(dev);
        self.weights.release(dev);
    }
}

/// Uploads every matrix of `unet` (`UNet2D::for_each_matrix`) in the type its GEMMs read
/// and, on a device with memory of its own, then drops their host values: a device model
/// keeps its matrices once, on the device (the small vectors, biases and norms, stay on the
/// host and go up with the first call). Runs at load, on `dev`'s stream, and waits for the
/// copies before dropping anything. On an error the device memory is freed.
pub fn upload_matrices(
    unet: &mut UNet2D,
    state: &mut DeviceState,
    dev: &dyn UnetDevice,
) -> Result<()> {
    let stored = DeviceWeights::stored_for(unet.compute);
    let mut done = Ok(());
    unet.for_each_matrix(&mut |w| {
        if done.is_ok() {
            done = state.weights.matrix(dev, w, stored).map(|_| ());
        }
    });
    let done = done.and_then(|()| dev.synchronize());
    if done.is_err() {
        state.release(dev);
        return done;
    }
    if !dev.host_visible() {
        let mut freed = 0;
        unet.for_each_matrix(&mut |w| freed += w.release_host());
        unet.weight_bytes -= freed;
    }
    Ok(())
}

/// The forward pass of `unet` on `dev` with `state`'s memory: `x` NCHW `[b][in_channels][h][w]`,
/// `out` NCHW `[b][out_channels][h][w]`, both device buffers of the same dtype (f32, f16 or
/// bf16); `context` a device buffer `[b][tokens][cross_dim]` (f32, f16 or bf16), shape
/// checked by the caller; device timesteps an f32 device buffer (checked by the caller);
/// `controls` a control model's residuals, device buffers checked by the caller.
///
/// Once a call of the same shapes has run, a call with device timesteps and no host-side
/// conditioning (class labels, added embeddings, a learned or conditioned time projection)
/// allocates nothing, copies nothing from the host and never waits for the device: it is
/// launches on the caller's stream only, which a CUDA graph can capture.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    unet: &UNet2D,
    state: &mut DeviceState,
    dev: &dyn UnetDevice,
    x: &Tensor,
    (b, h, w): (usize, usize, usize),
    timesteps: Timesteps<'_>,
    cond: &Conditioning<'_>,
    context: Option<&Tensor>,
    controls: Option<&Controls>,
    out: &Tensor,
) -> Result<()> {
    let u = unet;
    let cin = u.in_channels();
    u.check(b, cin, h, w, timesteps.count())?;
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
    let st = state;
    let mut be = DeviceBackend {
        dev,
        arena: &mut st.arena,
        weights: &mut st.weights,
        compute: u.compute,
    };
    // One timestep per sample, where the caller has them.
    let host_ts = match timesteps {
        Timesteps::Host(v) => u.per_sample(v, b),
        Timesteps::Device(_) => Vec::new(),
    };
    let dev_ts = match timesteps {
        Timesteps::Device(t) => {
            let buf = be.per_sample_timesteps(t, b)?;
            let view = Tensor {
                ptr: buf.ptr,
                dtype: DType::F32,
                device: t.device,
                shape: vec![b],
                numel: b,
            };
            Some((view, buf))
        }
        Timesteps::Host(_) => None,
    };
    let ts = match &dev_ts {
        Some((t, _)) => Timesteps::Device(t),
        None => Timesteps::Host(&host_ts),
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
            i(u.arch.center_input_sample as usize),
        ],
    )?;
    let ctx = match context {
        Some(c) => {
            let [cb, ct, cw] = c.shape[..] else {
                unreachable!("context shape checked by the caller")
            };
            let ctd = dtype_suffix(c.dtype).ok_or_else(|| {
                RdiffError::Type(format!(
                    "encoder_hidden_states: the CUDA UNet takes float32, float16 or bfloat16, \
                     got {}",
                    c.dtype.name()
                ))
            })?;
            let act = be.act(cw, Dims { b: cb, h: 1, w: ct })?;
            // [b·t][c] → [c][b·t]: the NCHW transpose with b·t "samples" of one pixel.
            dev.launch(
                &format!("rdiff_unet_nchw_in_{ctd}"),
                grid(cw * cb * ct),
                Dim3::x(threads),
                0,
                &[
                    KernelArg::Ptr(c.ptr),
                    i(cb * ct),
                    i(cw),
                    i(1),
                    KernelArg::Ptr(act.buf.ptr),
                    i(0),
                ],
            )?;
            Some(act)
        }
        None => None,
    };
    let y = u.run(&mut be, xin, ts, cond, ctx, controls)?;
    // the divisor (score-SDE models): the per-sample timesteps on the device
    let div = match ts {
        Timesteps::Host(v) if u.divides_by_timestep() => Some(be.upload(v)?),
        _ => None,
    };
    let div_ptr = match (ts, &div) {
        _ if !u.divides_by_timestep() => 0,
        (Timesteps::Device(t), _) => t.ptr,
        (_, d) => d.as_ref().map_or(0, |d| d.ptr),
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
            KernelArg::Ptr(div_ptr),
            KernelArg::Ptr(out.ptr),
        ],
    )?;
    be.give(y.buf);
    if let Some(d) = div {
        be.give(d);
    }
    if let Some((_, buf)) = dev_ts {
        be.give(buf);
    }
    Ok(())
}

/// One multi-head attention, softmax(QᵀK/√dh)·V per head, by the path a model's call takes
/// for these sizes in `compute` math (the fused tensor-core kernel for bf16 and f16), for
/// checks against a reference: `q` and `out` `[heads·dh][b·tq]`, `k` and `v`
/// `[heads·dh][b·tk]` (rdiff's token layout), float32, contiguous, in `dev`'s memory. Waits
/// for the device before it returns.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    dev: &dyn UnetDevice,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    b: usize,
    heads: usize,
    compute: ComputeDtype,
) -> Result<()> {
    let two_d = |t: &Tensor| t.dtype == DType::F32 && t.shape.len() == 2;
    if ![q, k, v, out].into_iter().all(two_d) {
        return Err(RdiffError::Type(
            "attention: q, k, v and out must be 2-D float32 tensors".into(),
        ));
    }
    let (inner, nq, nk) = (q.shape[0], q.shape[1], k.shape[1]);
    let fits = b > 0
        && heads > 0
        && inner >= heads
        && inner % heads == 0
        && nq % b == 0
        && nk % b == 0
        && nq > 0
        && nk > 0
        && out.shape == q.shape
        && v.shape == k.shape
        && k.shape[0] == inner;
    if !fits {
        return Err(RdiffError::Value(format!(
            "attention: q {:?}, k {:?}, v {:?} and out {:?} do not make b={b} samples of \
             {heads} heads ([heads·dh][b·tokens], q and out alike, k and v alike)",
            q.shape, k.shape, v.shape, out.shape
        )));
    }
    let mut st = DeviceState::default();
    let mut be = DeviceBackend {
        dev,
        arena: &mut st.arena,
        weights: &mut st.weights,
        compute,
    };
    let (qb, kb, vb) = (
        DevBuf::raw(q.ptr, q.numel),
        DevBuf::raw(k.ptr, k.numel),
        DevBuf::raw(v.ptr, v.numel),
    );
    let tok = |buf, t| Tokens { buf, row: 0, t };
    let done = be.attention(
        tok(&qb, nq / b),
        tok(&kb, nk / b),
        tok(&vb, nk / b),
        b,
        heads,
        inner / heads,
        &mut DevBuf::raw(out.ptr, out.numel),
    );
    let synced = dev.synchronize();
    st.release(dev);
    done.and(synced)
}
