//! The Analytic-DPM step as a kernel launch on any `Launcher` (the real one or the emulated
//! one): the buffers, the grid and the argument list of `kernels/analytic_step.cu`.

use super::launch::{Dim3, KernelArg, Launcher};
use super::ops::{check_batch, elementwise_grid, len, same_dtype, suffix, Buf, BLOCK};
use crate::cpu::analytic_step::PassScalars;
use crate::error::Result;

/// Where the kernel's noise comes from (see `cpu::analytic_step::Noise`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelNoise {
    None,
    /// An f32 buffer of `batch × per_sample` elements on the launcher's side.
    Given(u64),
    /// Drawn in the kernel: element b·per_sample + j of the Philox stream (seed, offset).
    Philox {
        seed: u64,
        offset: u64,
    },
}

/// The buffers of one Analytic-DPM step; `mo` has `batch` rows of `mo_stride` elements.
#[derive(Clone, Copy, Debug)]
pub struct AnalyticStepBuffers {
    pub mo: Buf,
    pub mo_stride: usize,
    pub x: Buf,
    pub noise: KernelNoise,
    pub x0: Buf,
    pub prev: Buf,
    pub batch: usize,
    pub per_sample: usize,
}

/// One launch of `rdiff_analytic_step_{D}_{S}` (D: model output / x0 / prev, S: sample).
pub fn analytic_step(l: &dyn Launcher, io: &AnalyticStepBuffers, sc: &PassScalars) -> Result<()> {
    check_batch(io.batch)?;
    if io.per_sample == 0 {
        return Ok(());
    }
    let (d, s) = (suffix(&io.mo, "model_output")?, suffix(&io.x, "sample")?);
    same_dtype(
        io.mo.dtype,
        [(io.x0, "x0 buffer"), (io.prev, "output buffer")],
    )?;
    let (noise_ptr, philox, seed, offset) = match io.noise {
        KernelNoise::None => (0, false, 0, 0),
        KernelNoise::Given(p) => (p, false, 0, 0),
        KernelNoise::Philox { seed, offset } => (0, true, seed, offset),
    };
    let (lo, hi) = sc.clip.unwrap_or((0.0, 0.0));
    let flags = i64::from(sc.clip.is_some()) | (i64::from(philox) << 1);
    let width = 16 / io.mo.dtype.size().min(io.x.dtype.size());
    l.launch(
        &format!("rdiff_analytic_step_{d}_{s}"),
        elementwise_grid(l, io.batch, io.per_sample, width),
        Dim3::x(BLOCK),
        0,
        &[
            KernelArg::Ptr(io.mo.ptr),
            len(io.mo_stride),
            KernelArg::Ptr(io.x.ptr),
            KernelArg::Ptr(noise_ptr),
            KernelArg::Ptr(io.x0.ptr),
            KernelArg::Ptr(io.prev.ptr),
            len(io.per_sample),
            KernelArg::F32(sc.p),
            KernelArg::F32(sc.q),
            KernelArg::F32(sc.sb),
            KernelArg::F32(sc.isa),
            KernelArg::F32(sc.c_x0),
            KernelArg::F32(sc.c_x),
            KernelArg::F32(sc.c_eps),
            KernelArg::F32(sc.sigma),
            KernelArg::F32(lo),
            KernelArg::F32(hi),
            KernelArg::I64(flags),
            // The kernel takes `long long` and reinterprets the bits as unsigned.
            KernelArg::I64(seed as i64),
            KernelArg::I64(offset as i64),
        ],
    )
}
