//! Dynamic thresholding's per-sample bound (Saharia et al. 2022) on the CPU:
//! s_b = clamp(quantile(|e|, ρ), lo, hi) over sample b's converted values e = (p·x + q·mo)/d,
//! with torch.quantile's linear interpolation (to its bits), found by selection instead of
//! sorting.
//! diffusers clamps to [1, sample_max_value], the DPM-Solver reference to [max_val, ∞);
//! `kernels/threshold.cu` is the same on CUDA.

use rayon::prelude::*;

use crate::dtype::{Acc, Load};

/// The conversion e = (p·x + q·mo)/d whose magnitudes are thresholded.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub p: f64,
    pub q: f64,
    pub d: f64,
}

/// Writes the bound of each sample into `out` (`batch` values). `mo` rows have stride
/// `mo_stride`; `x` holds `batch × per_sample` elements.
#[allow(clippy::too_many_arguments)]
pub fn bounds<A: Acc, D: Load<A>, S: Load<A>>(
    x: &[S],
    mo: &[D],
    mo_stride: usize,
    per_sample: usize,
    conv: Conv,
    ratio: f64,
    (lo, hi): (f64, f64),
    out: &mut [A],
) {
    let (p, q, d) = (A::of(conv.p), A::of(conv.q), A::of(conv.d));
    let divide = conv.d != 1.0;
    out.par_iter_mut().enumerate().for_each(|(b, s)| {
        let xs = &x[b * per_sample..(b + 1) * per_sample];
        let ms = &mo[b * mo_stride..b * mo_stride + per_sample];
        let mut xv = vec![A::default(); per_sample];
        let mut abs = vec![A::default(); per_sample];
        S::widen(xs, &mut xv);
        D::widen(ms, &mut abs);
        for (a, xx) in abs.iter_mut().zip(&xv) {
            let v = p * *xx + q * *a;
            *a = if divide { v / d } else { v }.abs();
        }
        *s = clamp(quantile(&mut abs, ratio), A::of(lo), A::of(hi));
    });
}

/// torch.clamp(v, min=lo, max=hi): the max applies last (hi wins when hi < lo), a NaN v stays.
fn clamp<A: Acc>(v: A, lo: A, hi: A) -> A {
    if v.to_f64().is_nan() {
        return v;
    }
    let v = if v < lo { lo } else { v };
    if v > hi {
        hi
    } else {
        v
    }
}

/// torch.quantile(v, ratio) with linear interpolation, as torch computes it: the ratio rounded
/// to the input's dtype, the rank ratio·(n − 1) in f64, the weight rounded back, and torch's
/// lerp (a fused multiply-add from the nearer end). Reorders `v`. NaN anywhere gives NaN.
pub fn quantile<A: Acc>(v: &mut [A], ratio: f64) -> A {
    let n = v.len();
    if n == 0 || v.iter().any(|a| a.to_f64().is_nan()) {
        return A::of(f64::NAN);
    }
    let rank = A::of(ratio).to_f64() * (n - 1) as f64;
    let lo = (rank.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let weight = A::of(rank - lo as f64);
    let cmp = |a: &A, b: &A| a.total_cmp(b);
    let (_, &mut below, rest) = v.select_nth_unstable_by(lo, cmp);
    let above = if hi == lo {
        below
    } else {
        rest.iter().copied().min_by(cmp).unwrap_or(below)
    };
    let d = above - below;
    if weight < A::of(0.5) {
        weight.mul_add(d, below)
    } else {
        (weight - A::of(1.0)).mul_add(d, above)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_torch() {
        let mut v: Vec<f32> = (0..11).rev().map(|k| k as f32).collect();
        assert_eq!(quantile(&mut v, 0.5), 5.0);
        let mut v: Vec<f32> = vec![3.0, 1.0, 2.0, 4.0];
        // rank = 0.995·3 = 2.985 → 3 + 0.985·(4 − 3).
        assert!((quantile(&mut v, 0.995) - 3.985).abs() < 1e-6);
        let mut v = vec![3.0f64, 1.0, 2.0, 4.0];
        assert!((quantile(&mut v, 0.995) - 3.985).abs() < 1e-12);
    }

    #[test]
    fn quantile_is_nan_with_a_nan_anywhere_like_torch() {
        let mut v: Vec<f32> = vec![f32::NAN, 1.0, 2.0, 3.0, 4.0];
        assert!(quantile(&mut v, 0.1).is_nan());
    }

    #[test]
    fn clamp_is_torch_clamp() {
        assert_eq!(clamp(0.5f32, 1.0, 2.0), 1.0);
        assert_eq!(clamp(3.0f32, 1.0, 2.0), 2.0);
        assert_eq!(clamp(3.0f32, 1.0, 0.5), 0.5);
        assert_eq!(clamp(5.0f32, 2.0, f32::INFINITY), 5.0);
        assert!(clamp(f32::NAN, 1.0, 2.0).is_nan());
    }

    #[test]
    fn bounds_per_sample() {
        let x: Vec<f32> = (0..8).map(|k| k as f32).collect();
        let mo = vec![0f32; 8];
        let mut out = [0f32; 2];
        let c = Conv {
            p: 1.0,
            q: 0.0,
            d: 1.0,
        };
        bounds(&x, &mo, 4, 4, c, 1.0, (1.0, 5.0), &mut out);
        assert_eq!(out, [3.0, 5.0]);
    }
}
