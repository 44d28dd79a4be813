//! The DDIM / DDPM step as kernel launches on any `Launcher`: with dynamic thresholding the
//! per-sample bound kernel (`rdiff_dpm_threshold_*` on (p/d, q/d)) then `rdiff_ddim_step_*`,
//! stream-ordered; otherwise the step kernel alone (`kernels/ddim_step.cu`).

use super::launch::{Dim3, KernelArg, Launcher};
use super::ops::{
    check_batch, elementwise_grid, len, same_dtype, suffix, Buf, BLOCK, REDUCE_BLOCK,
};
use crate::error::{RdiffError, Result};
use crate::schedule::ddim::{DdimCoefficients, NoiseScale};

/// How x₀ is bounded on the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelClip {
    None,
    /// clamp(x₀, −c, c).
    Range(f64),
    /// Dynamic thresholding: (ratio, sample_max_value) and a `batch`-long f32 scratch array on
    /// the launcher's side for the per-sample bounds.
    Dynamic {
        ratio: f64,
        max_value: f64,
        bounds: u64,
    },
}

/// The buffers of one step; `mo` has `batch` rows of `mo_stride` elements (the variance
/// channels follow the model output in each row for the learned variances); `noise` has the
/// model output's dtype and is read only when the step has a noise term.
#[derive(Clone, Copy, Debug)]
pub struct DdimStepBuffers {
    pub mo: Buf,
    pub mo_stride: usize,
    pub x: Buf,
    pub noise: Option<Buf>,
    pub x0: Buf,
    pub prev: Buf,
    pub batch: usize,
    pub per_sample: usize,
}

pub fn ddim_step(
    l: &dyn Launcher,
    io: &DdimStepBuffers,
    co: &DdimCoefficients,
    clip: KernelClip,
) -> Result<()> {
    check_batch(io.batch)?;
    if io.per_sample == 0 {
        return Ok(());
    }
    let (d, s) = (suffix(&io.mo, "model_output")?, suffix(&io.x, "sample")?);
    same_dtype(
        io.mo.dtype,
        [(io.x0, "x0 buffer"), (io.prev, "output buffer")]
            .into_iter()
            .chain(io.noise.map(|n| (n, "noise"))),
    )?;
    let (std_mode, sd, min_log, max_log) = match co.noise {
        NoiseScale::None => (0i64, 0.0, 0.0, 0.0),
        NoiseScale::Fixed(sd) => (1, sd, 0.0, 0.0),
        NoiseScale::Learned => (2, 0.0, 0.0, 0.0),
        NoiseScale::LearnedRange { min_log, max_log } => (3, 0.0, min_log, max_log),
    };
    let learned = std_mode >= 2;
    if learned && io.mo_stride < 2 * io.per_sample {
        return Err(RdiffError::Value(format!(
            "model_output: {} elements per sample, fewer than the {} a learned variance reads",
            io.mo_stride,
            2 * io.per_sample
        )));
    }
    let noise = if std_mode > 0 {
        Some(
            io.noise
                .ok_or_else(|| RdiffError::Value("noise: this step needs noise".into()))?,
        )
    } else {
        None
    };
    let (clip_mode, clip_c, bounds) = match clip {
        KernelClip::None => (0i64, 0.0, 0),
        KernelClip::Range(c) => (1, c, 0),
        KernelClip::Dynamic {
            ratio,
            max_value,
            bounds,
        } => {
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
                    KernelArg::F32((co.p / co.d) as f32),
                    KernelArg::F32((co.q / co.d) as f32),
                    KernelArg::F32(ratio as f32),
                    KernelArg::F32(max_value as f32),
                    KernelArg::Ptr(bounds),
                ],
            )?;
            (2, 0.0, bounds)
        }
    };
    let flags = i64::from(co.eps_from_x0) | (std_mode << 1) | (clip_mode << 3);
    let width = 16 / io.mo.dtype.size().min(io.x.dtype.size());
    let f = |v: f64| KernelArg::F32(v as f32);
    l.launch(
        &format!("rdiff_ddim_step_{d}_{s}"),
        elementwise_grid(l, io.batch, io.per_sample, width),
        Dim3::x(BLOCK),
        0,
        &[
            KernelArg::Ptr(io.mo.ptr),
            len(io.mo_stride),
            KernelArg::Ptr(io.x.ptr),
            KernelArg::Ptr(noise.map_or(0, |n| n.ptr)),
            KernelArg::Ptr(io.x0.ptr),
            KernelArg::Ptr(io.prev.ptr),
            len(io.per_sample),
            f(co.p),
            f(co.q),
            f(co.d),
            f(co.h1),
            f(co.h2),
            f(co.h3),
            f(co.a),
            f(co.w0),
            f(co.w_eps),
            f(sd),
            f(min_log),
            f(max_log),
            f(clip_c),
            KernelArg::I64(flags),
            KernelArg::Ptr(bounds),
        ],
    )
}
