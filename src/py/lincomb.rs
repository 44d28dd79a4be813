//! The fused pass for the functional samplers (`rdiff.sample`, `rdiff.k`): `_lincomb` and the
//! adaptive solver's `_error_norm`, on CPU or CUDA tensors.

use std::collections::HashMap;

use pyo3::prelude::*;

use super::run;
use super::tensor::{tensor, tensor_opt};
use crate::error::RdiffError;
use crate::error_norm::ErrorNorm;
use crate::lincomb::{Chain, Clamp, Conversion, ElementWeights, Lincomb, MAX_TERMS};
use crate::tensor::Tensor;

type Term<'py> = (f64, Bound<'py, PyAny>);
type Conv<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, f64, f64, f64);
type ChainArg<'py> = (Bound<'py, PyAny>, f64, f64, Vec<f64>);

/// One fused pass: `out = c_0·t_0 + Σ c_i·t_i + wm·m`, over (c, t) `terms` (at most 5), with,
/// when `conv = (x, mo, p, q, wm)` is given, e = p·x + q·mo, clamped and rescaled per sample by
/// dynamic thresholding when `threshold = (ratio, lo, hi)` is given (s = the `ratio` quantile of
/// |e| clamped to [lo, hi]: the DPM-Solver reference's is (ratio, max_val, inf), diffusers'
/// (ratio, 1, sample_max_value))
/// (its bounds written to `bounds`: `batch` values of the arithmetic dtype, float64 for
/// float64 tensors, else float32), m = r·x + w·e (keywords; r = 0, w = 1 by default: m = e),
/// stored into `hist` when given. Every tensor has `out`'s shape and dtype; `out` and `hist`
/// must not overlap an input.
///
/// The rest of `crate::lincomb`, for tests and the per-element passes: `chain = (mid, a2, wm2,
/// [c2_0, ...])` (`lincomb::Chain`: y is stored into `mid` and the output continues as
/// a2·ŷ + (wm2·m + Σ c2_i·t_i), one c2 per term after the base); with a chain, x, the base
/// (term 0) and `mid` share a sample dtype that may differ from `out`'s. `coef` and `rows`
/// (`lincomb::ElementWeights`): `rows` maps a slot name to a row of `coef` (rows of the
/// per-sample element count, float32, or float64 for a float64 pass; shared by the batch):
/// "r", "a" (term 0, the base), "wm", "c0".."c3" (the terms after the base: `terms[1..]`),
/// "bias", "chain_a", "chain_wm", "chain_c0".."chain_c3", "chain_bias". A slot's weight is its
/// scalar × its row (the product first), the biases are added after the terms.
#[pyfunction(name = "_lincomb")]
#[pyo3(signature = (
    out, terms, conv=None, hist=None, threshold=None, bounds=None, stream=0, *, r=0.0, w=1.0,
    chain=None, coef=None, rows=None
))]
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
    r: f64,
    w: f64,
    chain: Option<ChainArg<'_>>,
    coef: Option<&Bound<'_, PyAny>>,
    rows: Option<HashMap<String, i64>>,
) -> PyResult<()> {
    let mut lc = Lincomb::new("the sampler update", tensor(out, "out")?);
    let mut terms = terms.into_iter();
    if let Some((c, t)) = terms.next() {
        lc.base = Some((tensor(&t, "term 0")?, c));
    }
    for (i, (c, t)) in terms.enumerate() {
        lc.terms.push((tensor(&t, &format!("term {}", i + 1))?, c));
    }
    if (hist.is_some() || threshold.is_some() || r != 0.0 || w != 1.0) && conv.is_none() {
        return Err(RdiffError::Value(
            "hist, threshold, r and w need a model-output conversion".into(),
        )
        .into());
    }
    if let Some((mid, a, wm, c)) = chain {
        lc.chain = Some(Chain {
            mid: tensor(&mid, "mid")?,
            a,
            wm,
            c,
        });
    }
    // The sample dtype: the chain's corrected sample's, else the output's.
    let sdt = lc.chain.as_ref().map_or(lc.out.dtype, |c| c.mid.dtype);
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
        for (t, what, dt) in [(&x, "x", sdt), (&mo, "model output", lc.out.dtype)] {
            t.expect_numel(what, lc.out.numel)?;
            t.expect_dtype(what, dt)?;
        }
        lc.conv = Some(Conversion {
            mo_stride: lc.per_sample(),
            x,
            mo,
            p,
            q,
            d: 1.0,
            clamp,
            r,
            w,
            weight,
            recompute: None,
        });
    }
    lc.hist = tensor_opt(hist, "hist")?;
    if let Some((u, _)) = &lc.base {
        u.expect_dtype("term 0", sdt)?;
    }
    for (t, _) in &lc.terms {
        t.expect_dtype("term", lc.out.dtype)?;
    }
    match (coef, rows) {
        (None, None) => {}
        (None, Some(_)) => {
            return Err(RdiffError::Value("rows: element weights need coef".into()).into())
        }
        (Some(coef), rows) => {
            lc.elem = Some(element_weights(
                tensor(coef, "coef")?,
                rows.unwrap_or_default(),
                lc.terms.len(),
                lc.chain.is_some(),
            )?)
        }
    }
    run(py, &lc, lc.tensors(), stream)
}

/// `ElementWeights` from `_lincomb`'s slot names ("c0" is the first term after the base).
/// The term slots get one entry per term, or more when a name asks for a term the pass lacks
/// (`Lincomb::validate` then says so).
fn element_weights(
    coef: Tensor,
    rows: HashMap<String, i64>,
    nterms: usize,
    chained: bool,
) -> PyResult<ElementWeights> {
    let mut ew = ElementWeights {
        coef,
        r: None,
        a: None,
        wm: None,
        c: vec![None; nterms],
        bias: None,
        chain_a: None,
        chain_wm: None,
        chain_c: vec![None; if chained { nterms } else { 0 }],
        chain_bias: None,
    };
    let term = |name: &str, prefix: &str| (0..MAX_TERMS).find(|k| name == format!("{prefix}{k}"));
    let mut names: Vec<_> = rows.into_iter().collect();
    names.sort();
    for (name, row) in names {
        let row = usize::try_from(row).map_err(|_| {
            RdiffError::Value(format!("rows: {name}: a row index is ≥ 0, got {row}"))
        })?;
        let at = |v: &mut Vec<Option<usize>>, k: usize| {
            if v.len() <= k {
                v.resize(k + 1, None);
            }
            v[k] = Some(row);
        };
        match name.as_str() {
            "r" => ew.r = Some(row),
            "a" => ew.a = Some(row),
            "wm" => ew.wm = Some(row),
            "bias" => ew.bias = Some(row),
            "chain_a" => ew.chain_a = Some(row),
            "chain_wm" => ew.chain_wm = Some(row),
            "chain_bias" => ew.chain_bias = Some(row),
            n => match (term(n, "chain_c"), term(n, "c")) {
                (Some(k), _) => at(&mut ew.chain_c, k),
                (None, Some(k)) => at(&mut ew.c, k),
                (None, None) => {
                    return Err(RdiffError::Value(format!(
                        "rows: unknown slot {n:?} (r, a, wm, c0..c{}, bias, chain_a, chain_wm, \
                         chain_c0..chain_c{}, chain_bias)",
                        MAX_TERMS - 1,
                        MAX_TERMS - 1
                    ))
                    .into())
                }
            },
        }
    }
    Ok(ew)
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
