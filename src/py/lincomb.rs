//! The fused pass for the functional samplers (`rdiff.sample`, `rdiff.k`): `_lincomb` and the
//! adaptive solver's `_error_norm`, on CPU or CUDA tensors.

use pyo3::prelude::*;

use super::run;
use super::tensor::{tensor, tensor_opt};
use crate::error::RdiffError;
use crate::error_norm::ErrorNorm;
use crate::lincomb::{Clamp, Conversion, Lincomb};

type Term<'py> = (f64, Bound<'py, PyAny>);
type Conv<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, f64, f64, f64);

/// One fused pass: `out = c_0·t_0 + Σ c_i·t_i + w·m`, over (c, t) `terms` (at most 5), with,
/// when `conv = (x, mo, p, q, w)` is given, m = p·x + q·mo, clamped and rescaled per sample by
/// dynamic thresholding when `threshold = (ratio, lo, hi)` is given (s = the `ratio` quantile of
/// |m| clamped to [lo, hi]: the DPM-Solver reference's is (ratio, max_val, inf), diffusers'
/// (ratio, 1, sample_max_value))
/// (its bounds written to `bounds`: `batch` values of the arithmetic dtype, float64 for
/// float64 tensors, else float32), and stored into `hist` when given. Every tensor has
/// `out`'s shape and dtype; `out` and `hist` must not overlap an input.
#[pyfunction(name = "_lincomb")]
#[pyo3(signature = (out, terms, conv=None, hist=None, threshold=None, bounds=None, stream=0))]
#[allow(clippy::too_many_arguments)]
pub fn lincomb(
    py: Python<'_>,
    out: &Bound<'_, PyAny>,
    terms: Vec<Term<'_>>,
    conv: Option<Conv<'_>>,
    hist: Option<&Bound<'_, PyAny>>,
    threshold: Option<(f64, f64, f64)>,
    bounds: Option<&Bound<'_, PyAny>>,
    stream: usize,
) -> PyResult<()> {
    let mut lc = Lincomb::new("the sampler update", tensor(out, "out")?);
    let mut terms = terms.into_iter();
    if let Some((c, t)) = terms.next() {
        lc.base = Some((tensor(&t, "term 0")?, c));
    }
    for (i, (c, t)) in terms.enumerate() {
        lc.terms.push((tensor(&t, &format!("term {}", i + 1))?, c));
    }
    if (hist.is_some() || threshold.is_some()) && conv.is_none() {
        return Err(
            RdiffError::Value("hist and threshold need a model-output conversion".into()).into(),
        );
    }
    if let Some((x, mo, p, q, weight)) = conv {
        let x = tensor(&x, "x")?;
        let mo = tensor(&mo, "model output")?;
        let clamp = match threshold {
            None => Clamp::None,
            Some((ratio, lo, hi)) => Clamp::Dynamic {
                ratio,
                lo,
                hi,
                bounds: tensor_opt(bounds, "bounds")?.ok_or_else(|| {
                    RdiffError::Value("bounds: thresholding needs a scratch tensor".into())
                })?,
            },
        };
        for (t, what) in [(&x, "x"), (&mo, "model output")] {
            t.expect_numel(what, lc.out.numel)?;
            t.expect_dtype(what, lc.out.dtype)?;
        }
        lc.conv = Some(Conversion {
            mo_stride: lc.per_sample(),
            x,
            mo,
            p,
            q,
            d: 1.0,
            clamp,
            r: 0.0,
            w: 1.0,
            weight,
            recompute: None,
        });
    }
    lc.hist = tensor_opt(hist, "hist")?;
    for (t, what) in lc
        .base
        .iter()
        .map(|(t, _)| (t, "term 0"))
        .chain(lc.terms.iter().map(|(t, _)| (t, "term")))
    {
        t.expect_dtype(what, lc.out.dtype)?;
    }
    run(py, &lc, lc.tensors(), stream)
}

/// The adaptive solver's error norm of each sample into `out` (`batch` float64 values on the
/// tensors' device); see `crate::error_norm`.
#[pyfunction(name = "_error_norm")]
#[pyo3(signature = (hi, lo, prev, atol, rtol, out, stream=0))]
#[allow(clippy::too_many_arguments)]
pub fn error_norm(
    py: Python<'_>,
    hi: &Bound<'_, PyAny>,
    lo: &Bound<'_, PyAny>,
    prev: &Bound<'_, PyAny>,
    atol: f64,
    rtol: f64,
    out: &Bound<'_, PyAny>,
    stream: usize,
) -> PyResult<()> {
    let e = ErrorNorm {
        hi: tensor(hi, "x_higher")?,
        lo: tensor(lo, "x_lower")?,
        prev: tensor(prev, "x_prev")?,
        atol,
        rtol,
        out: tensor(out, "out")?,
    };
    run(py, &e, e.tensors(), stream)
}
