//! The one fused pass every scheduler step, `rdiff.sample` and `rdiff.k` run: a linear
//! combination of the caller's buffers, with the conversion of a fresh model output, its
//! clipping or dynamic thresholding, the history write and the noise term, reading each input
//! element once and writing each output element once. Step families (`crate::step`) and the
//! functional samplers describe their update as a [`Lincomb`]; `cpu::lincomb` runs it on the
//! CPU and `kernels/lincomb.cu` on CUDA (launched by `cuda::lincomb`), the same arithmetic in
//! the same order.
//!
//! Per element, for sample b (arithmetic in f32, or f64 when every buffer is f64):
//!
//! ```text
//! e   = (p·x + q·mo) / d                        conversion of the model output
//! e   = clamp(e, lo, hi)                        Clamp::Range, or
//! e   = clamp(e, −s_b, s_b) / s_b               Clamp::Dynamic (s_b: the threshold pass)
//! m   = r·x + w·e               → hist          stored, then read back rounded to its dtype
//! g   = (h1·x + h2·z) / h3,  z = m or mo        optional recomputation (DDIM's ε)
//! y   = a·u + wm·m + wg·g + Σ c_i·t_i           u: the base sample (x itself, or another)
//! out = y + σ·n                                 or, with a chain (UniPC's corrector, then
//! mid = y                       → mid            its predictor from the corrected sample):
//! out = a'·ŷ + (wm'·m + Σ c'_i·t_i) + σ·n       ŷ: mid read back rounded to its dtype
//! ```
//!
//! with σ a scalar or read per element from the model output's variance channels, and n a
//! float32 buffer or the Philox stream (`random::philox`) drawn in the pass.

use crate::dtype::DType;
use crate::error::{RdiffError, Result};
use crate::tensor::Tensor;
use crate::value_err;

/// The most terms besides the base sample (the kernel's fixed slots).
pub const MAX_TERMS: usize = 4;

/// How the converted value e is bounded.
#[derive(Clone, Debug, PartialEq)]
pub enum Clamp {
    None,
    /// clamp(e, lo, hi) (clip_sample, Analytic-DPM's data range).
    Range {
        lo: f64,
        hi: f64,
    },
    /// Dynamic thresholding (Saharia et al. 2022): s_b = clamp(quantile(|e|, ratio), lo, hi)
    /// per sample, torch.clamp's order (hi wins when hi < lo, NaN kept), computed by a first
    /// pass into `bounds` (the caller's scratch: `batch` values of the pass's arithmetic
    /// dtype, on its device); then e = clamp(e, −s_b, s_b)/s_b.
    Dynamic {
        ratio: f64,
        lo: f64,
        hi: f64,
        bounds: Tensor,
    },
}

/// The optional recomputation g = (h1·x + h2·z)/h3 weighted by `weight`, z = m (`from_m`) or
/// the raw model output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recompute {
    pub h1: f64,
    pub h2: f64,
    pub h3: f64,
    pub from_m: bool,
    pub weight: f64,
}

/// The conversion of a fresh model output `mo` (rows of `mo_stride` ≥ per-sample elements)
/// taken at sample `x`, and what is done with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversion {
    pub x: Tensor,
    pub mo: Tensor,
    pub mo_stride: usize,
    pub p: f64,
    pub q: f64,
    pub d: f64,
    pub clamp: Clamp,
    pub r: f64,
    pub w: f64,
    /// wm: the weight of m in the output.
    pub weight: f64,
    pub recompute: Option<Recompute>,
}

/// The noise's standard deviation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sigma {
    Fixed(f64),
    /// √v, v the model output's variance channels (after the first `per_sample` of a row).
    Learned,
    /// exp(½(f·max_log + (1−f)·min_log)), f = (v+1)/2.
    LearnedRange {
        min_log: f64,
        max_log: f64,
    },
}

/// Where the noise comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum NoiseSource {
    /// A float32 buffer of the sample's shape.
    Buffer(Tensor),
    /// Element i (flattened over the batch) of the Philox stream (seed, offset).
    Philox { seed: u64, offset: u64 },
}

/// A second combination of the same inputs from the first (UniPC: the corrector's sample y is
/// kept in `mid`, in the sample dtype, and the predictor continues from it):
/// out = a·ŷ + (wm·m + Σ c_i·t_i), ŷ = y rounded to `mid`'s dtype, `c` one weight per term.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    pub mid: Tensor,
    pub a: f64,
    pub wm: f64,
    pub c: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Noise {
    pub source: NoiseSource,
    pub sigma: Sigma,
}

/// One fused pass over `out.numel` elements split into samples by `out`'s leading dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct Lincomb {
    /// What the pass is, for messages ("the DDIM step").
    pub what: &'static str,
    pub out: Tensor,
    pub hist: Option<Tensor>,
    /// u and a: the base sample (in the conversion sample's dtype).
    pub base: Option<(Tensor, f64)>,
    /// (t_i, c_i): buffers in the output's dtype, at most [`MAX_TERMS`].
    pub terms: Vec<(Tensor, f64)>,
    pub conv: Option<Conversion>,
    pub chain: Option<Chain>,
    pub noise: Option<Noise>,
}

impl Lincomb {
    /// A pass writing `out` with nothing in it yet.
    pub fn new(what: &'static str, out: Tensor) -> Self {
        Self {
            what,
            out,
            hist: None,
            base: None,
            terms: Vec::new(),
            conv: None,
            chain: None,
            noise: None,
        }
    }

    pub fn batch(&self) -> usize {
        self.out.batch()
    }

    pub fn per_sample(&self) -> usize {
        self.out.numel / self.batch().max(1)
    }

    /// The dtype of the arithmetic: f64 when every buffer is f64, else f32.
    pub fn acc_dtype(&self) -> DType {
        if self.inputs().all(|t| t.dtype == DType::F64) && self.out.dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    /// The sample dtype S (the conversion's x and the base): the output's when neither is set.
    pub fn sample_dtype(&self) -> DType {
        match (&self.conv, &self.base) {
            (Some(c), _) => c.x.dtype,
            (None, Some((u, _))) => u.dtype,
            _ => self.out.dtype,
        }
    }

    /// Every tensor the pass reads.
    pub fn inputs(&self) -> impl Iterator<Item = &Tensor> {
        let conv = self.conv.iter().flat_map(|c| [&c.x, &c.mo]);
        let noise = self.noise.iter().filter_map(|n| match &n.source {
            NoiseSource::Buffer(t) => Some(t),
            NoiseSource::Philox { .. } => None,
        });
        self.base
            .iter()
            .map(|(t, _)| t)
            .chain(self.terms.iter().map(|(t, _)| t))
            .chain(conv)
            .chain(noise)
    }

    /// Every tensor the pass touches (for the target).
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        let bounds = self.conv.iter().filter_map(|c| match &c.clamp {
            Clamp::Dynamic { bounds, .. } => Some(bounds),
            _ => None,
        });
        self.inputs()
            .chain(std::iter::once(&self.out))
            .chain(self.hist.iter())
            .chain(self.chain.iter().map(|c| &c.mid))
            .chain(bounds)
    }

    /// The checks every target relies on: lengths, dtypes, layout, the term count, outputs
    /// that overlap no input. Messages name the buffer.
    pub fn validate(&self) -> Result<()> {
        let (batch, n) = (self.batch(), self.out.numel);
        if batch == 0 || n % batch != 0 {
            return value_err!(
                "{}: {n} elements do not split into a batch of {batch}",
                self.what
            );
        }
        let ps = n / batch;
        let d = self.out.dtype;
        let s = self.sample_dtype();
        if self.terms.len() > MAX_TERMS {
            return value_err!(
                "{}: {} terms, at most {MAX_TERMS} besides the sample",
                self.what,
                self.terms.len()
            );
        }
        if let Some(h) = &self.hist {
            h.expect_numel("history buffer", n)?;
            h.expect_dtype("history buffer", d)?;
        }
        if let Some((u, _)) = &self.base {
            u.expect_numel("sample", n)?;
            u.expect_dtype("sample", s)?;
        }
        for (i, (t, _)) in self.terms.iter().enumerate() {
            let what = format!("term {i}");
            t.expect_numel(&what, n)?;
            t.expect_dtype(&what, d)?;
        }
        if let Some(c) = &self.conv {
            c.x.expect_numel("sample", n)?;
            c.x.expect_dtype("sample", s)?;
            c.mo.expect_dtype("model_output", d)?;
            if c.mo_stride < ps {
                return value_err!(
                    "model_output: {} elements per sample, fewer than the sample's {ps}",
                    c.mo_stride
                );
            }
            let rows = batch.checked_mul(c.mo_stride).ok_or_else(|| {
                RdiffError::Value(format!(
                    "model_output: {batch} rows of {} elements do not fit in memory",
                    c.mo_stride
                ))
            })?;
            c.mo.expect_numel("model_output", rows)?;
            if let Clamp::Dynamic {
                ratio, lo, bounds, ..
            } = &c.clamp
            {
                if !(0.0..=1.0).contains(ratio) {
                    return value_err!(
                        "dynamic_thresholding_ratio: must lie in [0, 1], got {ratio}"
                    );
                }
                if lo.is_nan() {
                    return value_err!("thresholding: the lower bound must be a number");
                }
                bounds.expect_dtype("bounds", self.acc_dtype())?;
                if bounds.numel < batch {
                    return value_err!("bounds: {} elements for a batch of {batch}", bounds.numel);
                }
            }
        }
        if let Some(nz) = &self.noise {
            if let NoiseSource::Buffer(t) = &nz.source {
                t.expect_numel("noise", n)?;
                t.expect_dtype("noise", DType::F32)?;
            }
            if !matches!(nz.sigma, Sigma::Fixed(_)) {
                match &self.conv {
                    Some(c) if c.mo_stride >= 2 * ps => {}
                    _ => {
                        return value_err!(
                            "model_output: a learned variance needs twice the sample's \
                             channels ({} elements per sample)",
                            2 * ps
                        )
                    }
                }
            }
        }
        if let Some(ch) = &self.chain {
            ch.mid.expect_numel("corrected sample", n)?;
            ch.mid.expect_dtype("corrected sample", s)?;
            if ch.c.len() != self.terms.len() {
                return value_err!(
                    "{}: {} chained weights for {} terms",
                    self.what,
                    ch.c.len(),
                    self.terms.len()
                );
            }
        }
        let outputs: Vec<&Tensor> = std::iter::once(&self.out)
            .chain(&self.hist)
            .chain(self.chain.iter().map(|c| &c.mid))
            .collect();
        for o in &outputs {
            if self.inputs().any(|i| o.overlaps(i)) {
                return value_err!("{}: an output buffer overlaps an input buffer", self.what);
            }
        }
        for (i, a) in outputs.iter().enumerate() {
            if outputs[i + 1..].iter().any(|b| a.overlaps(b)) {
                return value_err!("{}: two output buffers overlap", self.what);
            }
        }
        Ok(())
    }
}
