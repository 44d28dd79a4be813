//! The operations the schedulers need, expressed as kernel launches on any `Launcher`: grid
//! shapes and argument lists live here once, for the real and the emulated launcher alike.

use super::kernels::dtype_suffix;
use super::launch::{Dim3, KernelArg, Launcher};
use crate::cpu::dtype::DType;
use crate::error::{RdiffError, Result};
use crate::schedule::dpm_solver::StepCoefficients;

/// Threads per block of the elementwise kernels (their `__launch_bounds__`).
pub const BLOCK: u32 = 256;
/// Threads per block of the per-sample reductions (`RD_THR_THREADS`, `RD_GAMMA_THREADS`).
pub const REDUCE_BLOCK: u32 = 256;
/// The most samples one elementwise launch addresses (grid.y).
pub const MAX_BATCH: usize = 65535;

/// A buffer the kernel reads or writes: its address on the launcher's side and its dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub ptr: u64,
    pub dtype: DType,
}

pub(crate) fn suffix(b: &Buf, what: &str) -> Result<&'static str> {
    dtype_suffix(b.dtype).ok_or_else(|| {
        RdiffError::Type(format!(
            "{what}: the CUDA kernels take float32, float16 or bfloat16, not {}",
            b.dtype.name()
        ))
    })
}

/// TypeError naming the first buffer whose dtype differs from `want` (the model output's: the
/// kernels write x0, history and output in it).
pub(crate) fn same_dtype<'a>(
    want: DType,
    bufs: impl IntoIterator<Item = (Buf, &'a str)>,
) -> Result<()> {
    match bufs.into_iter().find(|(b, _)| b.dtype != want) {
        Some((b, what)) => Err(RdiffError::Type(format!(
            "{what}: expected dtype {}, got {}",
            want.name(),
            b.dtype.name()
        ))),
        None => Ok(()),
    }
}

fn ptr(b: Option<Buf>) -> KernelArg {
    KernelArg::Ptr(b.map_or(0, |b| b.ptr))
}

pub(crate) fn len(n: usize) -> KernelArg {
    KernelArg::I64(n as i64)
}

/// Blocks along x for an elementwise kernel over `batch` rows of `per_sample` elements read
/// `width` at a time: one vector per thread, capped so that all rows together stay near the
/// launcher's resident-block count (the kernels' grid-stride loops cover the rest).
pub fn elementwise_grid(l: &dyn Launcher, batch: usize, per_sample: usize, width: usize) -> Dim3 {
    let vectors = per_sample.div_ceil(width).max(1);
    let want = vectors.div_ceil(BLOCK as usize);
    let cap = (l.max_blocks() as usize / batch.max(1)).max(1);
    Dim3::new(want.clamp(1, cap) as u32, batch as u32, 1)
}

pub(crate) fn check_batch(batch: usize) -> Result<()> {
    if batch == 0 || batch > MAX_BATCH {
        return Err(RdiffError::Value(format!(
            "batch: the CUDA kernels take 1 to {MAX_BATCH} samples per call, got {batch}"
        )));
    }
    Ok(())
}

/// The buffers of one DPM-Solver step (see `cpu::dpm_step::StepIo`); noise is f32.
#[derive(Clone, Copy, Debug)]
pub struct DpmStepBuffers {
    pub mo: Buf,
    pub mo_stride: usize,
    pub x: Buf,
    /// The singlestep group's start sample (x's dtype) for the update; `None`: x itself.
    pub start: Option<Buf>,
    pub m1: Option<Buf>,
    pub m2: Option<Buf>,
    pub noise: Option<u64>,
    pub hist: Buf,
    pub prev: Buf,
    pub batch: usize,
    pub per_sample: usize,
}

/// Dynamic thresholding: the quantile ratio, the maximum bound, and a `batch`-long f32
/// scratch array (launcher side) that receives the per-sample bounds.
#[derive(Clone, Copy, Debug)]
pub struct Thresholding {
    pub ratio: f64,
    pub max_value: f64,
    pub bounds: u64,
}

/// One fused step: with thresholding, the per-sample bound kernel then the step kernel (two
/// launches, stream-ordered); otherwise the step kernel alone.
pub fn dpm_step(
    l: &dyn Launcher,
    io: &DpmStepBuffers,
    co: &StepCoefficients,
    thresholding: Option<Thresholding>,
) -> Result<()> {
    check_batch(io.batch)?;
    if io.per_sample == 0 {
        return Ok(());
    }
    let (d, s) = (suffix(&io.mo, "model_output")?, suffix(&io.x, "sample")?);
    same_dtype(
        io.mo.dtype,
        [(io.hist, "history buffer"), (io.prev, "output buffer")]
            .into_iter()
            .chain(io.m1.map(|b| (b, "model_outputs[-2]")))
            .chain(io.m2.map(|b| (b, "model_outputs[-3]"))),
    )?;
    same_dtype(io.x.dtype, io.start.map(|b| (b, "start sample")))?;
    let bounds = match thresholding {
        Some(t) => {
            l.launch(
                &format!("rdiff_dpm_threshold_{d}_{s}"),
                Dim3::x(io.batch as u32),
                Dim3::x(REDUCE_BLOCK),
                0,
                &[
                    KernelArg::Ptr(io.mo.ptr),
                    len(io.mo_stride),
                    KernelArg::Ptr(io.x.ptr),
                    len(io.per_sample),
                    KernelArg::F32(co.p as f32),
                    KernelArg::F32(co.q as f32),
                    KernelArg::F32(t.ratio as f32),
                    KernelArg::F32(t.max_value as f32),
                    KernelArg::Ptr(t.bounds),
                ],
            )?;
            t.bounds
        }
        None => 0,
    };
    let width = 16 / io.mo.dtype.size().min(io.x.dtype.size());
    let f = |v: f64| KernelArg::F32(v as f32);
    l.launch(
        &format!("rdiff_dpm_step_{d}_{s}"),
        elementwise_grid(l, io.batch, io.per_sample, width),
        Dim3::x(BLOCK),
        0,
        &[
            KernelArg::Ptr(io.mo.ptr),
            len(io.mo_stride),
            KernelArg::Ptr(io.x.ptr),
            ptr(io.start),
            ptr(io.m1),
            ptr(io.m2),
            KernelArg::Ptr(io.noise.unwrap_or(0)),
            KernelArg::Ptr(io.hist.ptr),
            KernelArg::Ptr(io.prev.ptr),
            len(io.per_sample),
            f(co.p),
            f(co.q),
            f(co.r),
            f(co.w),
            f(co.a),
            f(co.w0),
            f(co.w1),
            f(co.w2),
            f(co.c),
            KernelArg::Ptr(bounds),
        ],
    )
}

/// Only the per-sample thresholding bounds (for tests): writes `batch` f32 to `bounds`.
#[allow(clippy::too_many_arguments)]
pub fn threshold_bounds(
    l: &dyn Launcher,
    mo: Buf,
    mo_stride: usize,
    x: Buf,
    batch: usize,
    per_sample: usize,
    p: f64,
    q: f64,
    ratio: f64,
    max_value: f64,
    bounds: u64,
) -> Result<()> {
    if batch == 0 || per_sample == 0 {
        return Ok(());
    }
    let (d, s) = (suffix(&mo, "model_output")?, suffix(&x, "sample")?);
    l.launch(
        &format!("rdiff_dpm_threshold_{d}_{s}"),
        Dim3::x(batch as u32),
        Dim3::x(REDUCE_BLOCK),
        0,
        &[
            KernelArg::Ptr(mo.ptr),
            len(mo_stride),
            KernelArg::Ptr(x.ptr),
            len(per_sample),
            KernelArg::F32(p as f32),
            KernelArg::F32(q as f32),
            KernelArg::F32(ratio as f32),
            KernelArg::F32(max_value as f32),
            KernelArg::Ptr(bounds),
        ],
    )
}

/// The forward process out = α_b·x0 + σ_b·ε; `alpha`, `sigma` are `batch` f32 on the launcher
/// side; x0, eps and out share one dtype.
#[allow(clippy::too_many_arguments)]
pub fn add_noise(
    l: &dyn Launcher,
    x0: Buf,
    eps: Buf,
    alpha: u64,
    sigma: u64,
    out: Buf,
    batch: usize,
    per_sample: usize,
) -> Result<()> {
    check_batch(batch)?;
    if per_sample == 0 {
        return Ok(());
    }
    let t = suffix(&x0, "original_samples")?;
    if eps.dtype != x0.dtype || out.dtype != x0.dtype {
        return Err(RdiffError::Type(
            "add_noise: samples, noise and output must share one dtype".into(),
        ));
    }
    l.launch(
        &format!("rdiff_add_noise_{t}"),
        elementwise_grid(l, batch, per_sample, 16 / x0.dtype.size()),
        Dim3::x(BLOCK),
        0,
        &[
            KernelArg::Ptr(x0.ptr),
            KernelArg::Ptr(eps.ptr),
            KernelArg::Ptr(alpha),
            KernelArg::Ptr(sigma),
            KernelArg::Ptr(out.ptr),
            len(per_sample),
        ],
    )
}

/// Γ per sample: out[b] = Σ ε² / d (f32, `batch` entries on the launcher side).
pub fn gamma(l: &dyn Launcher, eps: Buf, batch: usize, per_sample: usize, out: u64) -> Result<()> {
    if batch == 0 || per_sample == 0 {
        return Ok(());
    }
    let t = suffix(&eps, "eps")?;
    l.launch(
        &format!("rdiff_gamma_{t}"),
        Dim3::x(batch as u32),
        Dim3::x(REDUCE_BLOCK),
        0,
        &[
            KernelArg::Ptr(eps.ptr),
            len(per_sample),
            KernelArg::Ptr(out),
        ],
    )
}
