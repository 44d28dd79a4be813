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
//! float32 buffer or the Philox stream (`random::philox`) drawn in the pass. With
//! [`ElementWeights`] (DPM-Solver-v3) r, a, wm, the c_i and the chain's a', wm', c'_i may each
//! be their scalar times a row of a coefficient tensor (one value per element of a sample,
//! the same for every sample), and y and the chained sum each get a bias row after the terms.
//! At element e of every sample (X[e]: the slot's row; 1 and 0 where a slot names none):
//!
//! ```text
//! m   = (r·R[e])·x + w·e
//! y   = (a·A[e])·u + (wm·WM[e])·m + wg·g + Σ (c_i·C_i[e])·t_i + BIAS[e]
//! out = (a'·A'[e])·ŷ + ((wm'·WM'[e])·m + Σ (c'_i·C'_i[e])·t_i + BIAS'[e]) + σ·n
//! ```
//!
//! in this order on every target: the weight first (scalar × row, rounded to the arithmetic
//! type; the row itself when the scalar is 1, the same value), then weight × value, the sums
//! left to right, the bias last before the chain and the noise.

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

/// Per-element weights (DPM-Solver-v3: its coefficients are vectors over one sample's
/// elements, shared by every sample of the batch). `coef` holds rows of `per_sample` values
/// in the pass's arithmetic dtype (float32, or float64 when the pass runs in f64); a slot that
/// names row k has the weight (its scalar) × coef[k·per_sample + e] at element e of every
/// sample (the product formed first), and the two biases add their row to y and to the
/// chained sum after the terms.
#[derive(Clone, Debug, PartialEq)]
pub struct ElementWeights {
    pub coef: Tensor,
    /// The conversion's r (m = r·x + w·e).
    pub r: Option<usize>,
    /// The base's a, m's weight wm, each term's c_i (one per term), and y's bias row.
    pub a: Option<usize>,
    pub wm: Option<usize>,
    pub c: Vec<Option<usize>>,
    pub bias: Option<usize>,
    /// The chained combination's a, wm, c_i and bias row.
    pub chain_a: Option<usize>,
    pub chain_wm: Option<usize>,
    pub chain_c: Vec<Option<usize>>,
    pub chain_bias: Option<usize>,
}

/// The slots of [`ElementWeights::slots`], in the kernel's order (`RD_LC_W_*`).
pub mod slot {
    pub const R: usize = 0;
    pub const A: usize = 1;
    pub const WM: usize = 2;
    pub const C: usize = 3; // 3..3 + MAX_TERMS
    pub const BIAS: usize = 7;
    pub const A2: usize = 8;
    pub const WM2: usize = 9;
    pub const C2: usize = 10; // 10..10 + MAX_TERMS
    pub const BIAS2: usize = 14;
    pub const COUNT: usize = 15;
}

impl ElementWeights {
    /// The row of every slot (`slot::*`), None where the weight is the scalar alone.
    pub fn slots(&self) -> [Option<usize>; slot::COUNT] {
        let mut s = [None; slot::COUNT];
        s[slot::R] = self.r;
        s[slot::A] = self.a;
        s[slot::WM] = self.wm;
        s[slot::BIAS] = self.bias;
        s[slot::A2] = self.chain_a;
        s[slot::WM2] = self.chain_wm;
        s[slot::BIAS2] = self.chain_bias;
        for (k, r) in self.c.iter().enumerate().take(MAX_TERMS) {
            s[slot::C + k] = *r;
        }
        for (k, r) in self.chain_c.iter().enumerate().take(MAX_TERMS) {
            s[slot::C2 + k] = *r;
        }
        s
    }
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
    pub elem: Option<ElementWeights>,
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
            elem: None,
        }
    }

    pub fn batch(&self) -> usize {
        self.out.batch()
    }

    pub fn per_sample(&self) -> usize {
        self.out.numel / self.batch().max(1)
    }

    /// The dtype of the arithmetic: f64 when every buffer is f64, else f32 (the element
    /// weights' coefficients follow it, they do not decide it).
    pub fn acc_dtype(&self) -> DType {
        if self.buffers().all(|t| t.dtype == DType::F64) && self.out.dtype == DType::F64 {
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
        self.buffers().chain(self.elem.iter().map(|e| &e.coef))
    }

    /// The inputs but the element weights' coefficients.
    fn buffers(&self) -> impl Iterator<Item = &Tensor> {
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

    /// The per-element weights' checks: the coefficients' dtype, the rows, the slots' shape.
    fn validate_elem(&self, ew: &ElementWeights, ps: usize) -> Result<()> {
        let acc = self.acc_dtype();
        if ew.coef.dtype != acc {
            let pass = if acc == DType::F64 {
                "a float64 pass (every buffer float64)"
            } else {
                "a float32/float16/bfloat16 pass"
            };
            return value_err!(
                "{}: coefficients: {} expected for {pass}, got {}",
                self.what,
                acc.name(),
                ew.coef.dtype.name()
            );
        }
        let rows = ew.coef.numel / ps;
        if let Some(k) = ew.slots().iter().flatten().find(|&&k| k >= rows) {
            return value_err!(
                "{}: coefficients: row {k} named, but the tensor holds {rows} rows of {ps}",
                self.what
            );
        }
        if ew.c.len() != self.terms.len() {
            return value_err!(
                "{}: element weights: {} term slots (c) for {} terms",
                self.what,
                ew.c.len(),
                self.terms.len()
            );
        }
        let chained = ew.chain_a.is_some()
            || ew.chain_wm.is_some()
            || ew.chain_bias.is_some()
            || ew.chain_c.iter().any(|c| c.is_some());
        if self.chain.is_some() {
            if ew.chain_c.len() != self.terms.len() {
                return value_err!(
                    "{}: element weights: {} chained term slots (chain_c) for {} terms",
                    self.what,
                    ew.chain_c.len(),
                    self.terms.len()
                );
            }
        } else if chained {
            return value_err!("{}: chained element weights without a chain", self.what);
        }
        if (ew.r.is_some() || ew.wm.is_some() || ew.chain_wm.is_some()) && self.conv.is_none() {
            return value_err!(
                "{}: an element weight for r or wm without a conversion",
                self.what
            );
        }
        if ew.a.is_some() && self.base.is_none() {
            return value_err!("{}: an element weight for a without a base", self.what);
        }
        Ok(())
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
        if let Some(ew) = &self.elem {
            self.validate_elem(ew, ps)?;
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
