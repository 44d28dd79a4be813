//! A general fused linear combination over caller-owned buffers, for the functional samplers
//! (`rdiff.sample`, `rdiff.k`): one pass reads every input element once and writes each output
//! element once.
//!
//! ```text
//! m    = p·xc + q·mo                       (optional conversion of a fresh model output)
//! m    = clamp(m, −s_b, s_b) / s_b         (optional dynamic thresholding, s_b per sample)
//! hist = m                                 (optional: the converted value is kept)
//! out  = Σ_i c_i·buf_i + w·m
//! ```
//!
//! Arithmetic runs in f32 for f32/f16/bf16 buffers (bulk conversions of `dtype::Elem`) and in
//! f64 for f64 buffers, so float64 callers get float64 answers.

use std::ops::{Add, Mul};

use rayon::prelude::*;

use super::dtype::Elem;

/// Elements per rayon task.
const TASK: usize = 1 << 15;
/// Elements per scratch chunk inside a task.
const LANES: usize = 256;

/// The arithmetic type of a pass: f32 or f64.
pub trait Acc:
    Copy + Default + Send + Sync + PartialOrd + Add<Output = Self> + Mul<Output = Self> + 'static
{
    fn of(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn abs(self) -> Self;
    fn total_cmp(&self, other: &Self) -> std::cmp::Ordering;
}

impl Acc for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn abs(self) -> Self {
        f32::abs(self)
    }
    fn total_cmp(&self, other: &Self) -> std::cmp::Ordering {
        f32::total_cmp(self, other)
    }
}

impl Acc for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn abs(self) -> Self {
        f64::abs(self)
    }
    fn total_cmp(&self, other: &Self) -> std::cmp::Ordering {
        f64::total_cmp(self, other)
    }
}

/// A buffer element read and written in arithmetic type `A`.
pub trait Buf<A: Acc>: Copy + Send + Sync + 'static {
    fn load(src: &[Self], dst: &mut [A]);
    fn store(src: &[A], dst: &mut [Self]);
}

impl<D: Elem> Buf<f32> for D {
    fn load(src: &[Self], dst: &mut [f32]) {
        D::load(src, dst)
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        D::store(src, dst)
    }
}

impl Buf<f64> for f64 {
    fn load(src: &[Self], dst: &mut [f64]) {
        dst.copy_from_slice(src)
    }
    fn store(src: &[f64], dst: &mut [Self]) {
        dst.copy_from_slice(src)
    }
}

/// The conversion of a fresh model output `mo` taken at sample `x`: m = p·x + q·mo, weighted
/// by `weight` in the combination; `bounds` (one per sample) clamps and rescales m.
pub struct Convert<'a, T, A> {
    pub x: &'a [T],
    pub mo: &'a [T],
    pub p: f64,
    pub q: f64,
    pub weight: f64,
    pub bounds: Option<&'a [A]>,
}

/// One fused pass (see the module docs). All buffers hold `out.len()` elements, which split
/// into samples of `per_sample` elements (for the per-sample bounds). Lengths must have been
/// checked by the caller.
pub fn lincomb<A: Acc, T: Buf<A>>(
    terms: &[(f64, &[T])],
    conv: Option<&Convert<'_, T, A>>,
    hist: Option<&mut [T]>,
    out: &mut [T],
    per_sample: usize,
) {
    let ps = per_sample.max(1);
    let coefs: Vec<A> = terms.iter().map(|(c, _)| A::of(*c)).collect();
    let rows = split_pairs(out, hist, ps);
    rows.into_par_iter()
        .enumerate()
        .for_each(|(b, (out_row, hist_row))| {
            let bound = conv.and_then(|c| c.bounds.map(|s| s[b]));
            let tasks = split_pairs(out_row, hist_row, TASK);
            tasks
                .into_par_iter()
                .enumerate()
                .for_each(|(k, (out_c, hist_c))| {
                    let start = b * ps + k * TASK;
                    run_task(terms, &coefs, conv, bound, start, hist_c, out_c);
                });
        });
}

/// Splits `a` (and `b`, when given, in step) into chunks of `size` elements.
#[allow(clippy::type_complexity)]
fn split_pairs<'a, T>(
    a: &'a mut [T],
    b: Option<&'a mut [T]>,
    size: usize,
) -> Vec<(&'a mut [T], Option<&'a mut [T]>)> {
    match b {
        Some(b) => a
            .chunks_mut(size)
            .zip(b.chunks_mut(size))
            .map(|(x, y)| (x, Some(y)))
            .collect(),
        None => a.chunks_mut(size).map(|x| (x, None)).collect(),
    }
}

fn run_task<A: Acc, T: Buf<A>>(
    terms: &[(f64, &[T])],
    coefs: &[A],
    conv: Option<&Convert<'_, T, A>>,
    bound: Option<A>,
    start: usize,
    mut hist: Option<&mut [T]>,
    out: &mut [T],
) {
    let mut acc = [A::default(); LANES];
    let mut tmp = [A::default(); LANES];
    let mut tmp2 = [A::default(); LANES];
    let len = out.len();
    let mut off = 0;
    while off < len {
        let n = LANES.min(len - off);
        let g = start + off..start + off + n;
        acc[..n].fill(A::default());
        for ((_, buf), &c) in terms.iter().zip(coefs) {
            T::load(&buf[g.clone()], &mut tmp[..n]);
            for i in 0..n {
                acc[i] = acc[i] + c * tmp[i];
            }
        }
        if let Some(cv) = conv {
            let (p, q, w) = (A::of(cv.p), A::of(cv.q), A::of(cv.weight));
            T::load(&cv.x[g.clone()], &mut tmp[..n]);
            T::load(&cv.mo[g.clone()], &mut tmp2[..n]);
            for i in 0..n {
                tmp[i] = p * tmp[i] + q * tmp2[i];
            }
            if let Some(s) = bound {
                let inv = A::of(1.0 / s.to_f64());
                let neg = A::of(-s.to_f64());
                for v in tmp[..n].iter_mut() {
                    let c = if *v > s {
                        s
                    } else if *v < neg {
                        neg
                    } else {
                        *v
                    };
                    *v = c * inv;
                }
            }
            if let Some(h) = hist.as_deref_mut() {
                // Continue with the stored (rounded) value, as a framework computing m in the
                // buffer's dtype would.
                let r = off..off + n;
                T::store(&tmp[..n], &mut h[r.clone()]);
                T::load(&h[r], &mut tmp[..n]);
            }
            for i in 0..n {
                acc[i] = acc[i] + w * tmp[i];
            }
        }
        T::store(&acc[..n], &mut out[off..off + n]);
        off += n;
    }
}

/// The reference's dynamic-thresholding bound of each sample:
/// s = max(quantile(|p·x + q·mo|, ratio), max_val) (torch.quantile's linear interpolation).
#[allow(clippy::too_many_arguments)]
pub fn reference_bounds<A: Acc, T: Buf<A>>(
    x: &[T],
    mo: &[T],
    p: f64,
    q: f64,
    per_sample: usize,
    ratio: f64,
    max_val: f64,
) -> Vec<A> {
    let ps = per_sample.max(1);
    let (p, q) = (A::of(p), A::of(q));
    x.par_chunks(ps)
        .zip(mo.par_chunks(ps))
        .map(|(xs, ms)| {
            let mut a = vec![A::default(); xs.len()];
            let mut b = vec![A::default(); xs.len()];
            T::load(xs, &mut a);
            T::load(ms, &mut b);
            for (u, v) in a.iter_mut().zip(&b) {
                *u = (p * *u + q * *v).abs();
            }
            let qv = quantile(&mut a, ratio);
            let m = A::of(max_val);
            if qv > m || qv.to_f64().is_nan() {
                qv
            } else {
                m
            }
        })
        .collect()
}

/// torch.quantile(v, ratio) with linear interpolation, the rank computed in `A`. Reorders v.
pub fn quantile<A: Acc>(v: &mut [A], ratio: f64) -> A {
    let n = v.len();
    // torch.quantile is NaN as soon as one input is (total_cmp alone would sort it last).
    if n == 0 || v.iter().any(|a| a.to_f64().is_nan()) {
        return A::of(f64::NAN);
    }
    let rank = (A::of(ratio) * A::of((n - 1) as f64)).to_f64();
    let lo = (rank.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let weight = rank - lo as f64;
    let cmp = |a: &A, b: &A| a.total_cmp(b);
    let (_, &mut below, rest) = v.select_nth_unstable_by(lo, cmp);
    let above = if hi == lo {
        below
    } else {
        rest.iter().copied().min_by(cmp).unwrap_or(below)
    };
    let (b, a) = (below.to_f64(), above.to_f64());
    A::of(if weight < 0.5 {
        b + weight * (a - b)
    } else {
        a - (a - b) * (1.0 - weight)
    })
}

/// The adaptive solver's error norm: max over samples of
/// √(mean(((hi − lo) / max(atol, rtol·max(|lo|, |prev|)))²)), accumulated in f64.
pub fn adaptive_error<A: Acc, T: Buf<A>>(
    hi: &[T],
    lo: &[T],
    prev: &[T],
    atol: f64,
    rtol: f64,
    per_sample: usize,
) -> f64 {
    let ps = per_sample.max(1);
    hi.par_chunks(ps)
        .zip(lo.par_chunks(ps))
        .zip(prev.par_chunks(ps))
        .map(|((h, l), p)| {
            let mut sum = 0.0f64;
            let (mut a, mut b, mut c) = (
                [A::default(); LANES],
                [A::default(); LANES],
                [A::default(); LANES],
            );
            let mut off = 0;
            while off < h.len() {
                let n = LANES.min(h.len() - off);
                let r = off..off + n;
                T::load(&h[r.clone()], &mut a[..n]);
                T::load(&l[r.clone()], &mut b[..n]);
                T::load(&p[r], &mut c[..n]);
                for i in 0..n {
                    let (hv, lv, pv) = (a[i].to_f64(), b[i].to_f64(), c[i].to_f64());
                    let delta = atol.max(rtol * lv.abs().max(pv.abs()));
                    let e = (hv - lv) / delta;
                    sum += e * e;
                }
                off += n;
            }
            (sum / h.len().max(1) as f64).sqrt()
        })
        .reduce(|| 0.0, |a, b| if b > a || b.is_nan() { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn f(k: usize) -> f64 {
        ((k * 7919) % 1000) as f64 / 500.0 - 1.0
    }

    #[test]
    fn combination_with_conversion_and_bounds() {
        let (batch, ps) = (3, 40_000);
        let n = batch * ps;
        let a: Vec<f64> = (0..n).map(f).collect();
        let b: Vec<f64> = (0..n).map(|k| f(k + 1)).collect();
        let xc: Vec<f64> = (0..n).map(|k| f(k + 2)).collect();
        let mo: Vec<f64> = (0..n).map(|k| 3.0 * f(k + 3)).collect();
        let bounds = reference_bounds::<f64, f64>(&xc, &mo, 1.5, -0.5, ps, 0.9, 1.0);
        let conv = Convert {
            x: &xc,
            mo: &mo,
            p: 1.5,
            q: -0.5,
            weight: 0.25,
            bounds: Some(&bounds),
        };
        let (mut hist, mut out) = (vec![0.0; n], vec![0.0; n]);
        lincomb(
            &[(0.5, &a[..]), (-2.0, &b[..])],
            Some(&conv),
            Some(&mut hist),
            &mut out,
            ps,
        );
        for k in (0..n).step_by(997) {
            let s = bounds[k / ps];
            assert!(s >= 1.0);
            let m = (1.5 * xc[k] - 0.5 * mo[k]).clamp(-s, s) / s;
            assert!((hist[k] - m).abs() < 1e-14);
            assert!((out[k] - (0.5 * a[k] - 2.0 * b[k] + 0.25 * m)).abs() < 1e-14);
        }
    }

    #[test]
    fn half_precision_goes_through_f32() {
        let n = 1000;
        let a: Vec<f16> = (0..n).map(|k| f16::from_f64(f(k))).collect();
        let mut out = vec![f16::ZERO; n];
        lincomb::<f32, f16>(&[(2.0, &a[..])], None, None, &mut out, n);
        for k in 0..n {
            assert_eq!(out[k].to_f32(), 2.0 * a[k].to_f32());
        }
    }

    #[test]
    fn quantile_matches_linear_interpolation() {
        let mut v = vec![3.0f64, 1.0, 2.0, 4.0];
        assert!((quantile(&mut v, 0.995) - 3.985).abs() < 1e-12);
    }

    #[test]
    fn error_norm_is_the_worst_sample_rms() {
        let hi = [1.0f64, 1.0, 0.0, 0.0];
        let lo = [0.0f64, 0.0, 0.0, 0.0];
        let e = adaptive_error::<f64, f64>(&hi, &lo, &lo, 0.5, 0.0, 2);
        assert!((e - 2.0).abs() < 1e-12);
    }
}
