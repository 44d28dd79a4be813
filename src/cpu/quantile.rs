//! Dynamic thresholding's per-sample bound (Saharia et al. 2022): s = clamp(quantile(|x₀|, ρ),
//! 1, max), with torch.quantile's linear interpolation, found by selection instead of sorting.

use rayon::prelude::*;

use super::dtype::Elem;

/// For each sample b, the ρ-quantile of |p·x + q·mo| over its `per_sample` elements, clamped to
/// [1, max_value] the way torch.clamp does (max_value wins when it is below 1). `mo` rows have stride `mo_stride`.
#[allow(clippy::too_many_arguments)]
pub fn threshold_bounds<D: Elem, S: Elem>(
    x: &[S],
    mo: &[D],
    mo_stride: usize,
    per_sample: usize,
    p: f64,
    q: f64,
    ratio: f64,
    max_value: f64,
) -> Vec<f32> {
    let batch = x.len() / per_sample.max(1);
    let (p, q) = (p as f32, q as f32);
    (0..batch)
        .into_par_iter()
        .map(|b| {
            let xs = &x[b * per_sample..(b + 1) * per_sample];
            let ms = &mo[b * mo_stride..b * mo_stride + per_sample];
            let mut xv = vec![0f32; per_sample];
            let mut abs = vec![0f32; per_sample];
            S::load(xs, &mut xv);
            D::load(ms, &mut abs);
            for (a, xx) in abs.iter_mut().zip(&xv) {
                *a = (p * xx + q * *a).abs();
            }
            let qv = quantile_in_place(&mut abs, ratio);
            // torch.clamp(min=1, max=m) applies the max last, so m < 1 wins (f32::clamp would
            // panic there); and it keeps a NaN (diffusers' whole sample turns NaN), which
            // f32::max would replace by 1.
            if qv.is_nan() {
                qv
            } else {
                qv.max(1.0).min(max_value as f32)
            }
        })
        .collect()
}

/// torch.quantile(v, ratio) with linear interpolation; the rank is computed in f32 as torch does
/// for float32 input. Reorders `v`. NaN compares as largest, like torch's sort.
/// y clamped to [−s, s], as torch.clamp: a NaN y stays NaN and a NaN bound passes y through
/// (the caller's division by s then makes it NaN), where f32::clamp would panic.
#[inline(always)]
pub fn clamp_sym(y: f32, s: f32) -> f32 {
    if y > s {
        s
    } else if y < -s {
        -s
    } else {
        y
    }
}

pub fn quantile_in_place(v: &mut [f32], ratio: f64) -> f32 {
    let n = v.len();
    // torch.quantile is NaN as soon as one input is (total_cmp alone would sort it last).
    if n == 0 || v.iter().any(|a| a.is_nan()) {
        return f32::NAN;
    }
    let rank = ratio as f32 * (n - 1) as f32;
    let lo = (rank.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let weight = rank - lo as f32;
    let cmp = |a: &f32, b: &f32| a.total_cmp(b);
    let (_, &mut below, rest) = v.select_nth_unstable_by(lo, cmp);
    let above = if hi == lo {
        below
    } else {
        rest.iter().copied().min_by(cmp).unwrap_or(below)
    };
    // torch.lerp's two-sided formula keeps the end points exact.
    if weight < 0.5 {
        below + weight * (above - below)
    } else {
        above - (above - below) * (1.0 - weight)
    }
}

#[cfg(test)]
mod tests {
    use super::quantile_in_place;

    #[test]
    fn quantile_interpolates_like_torch() {
        let mut v: Vec<f32> = (0..11).rev().map(|k| k as f32).collect();
        assert_eq!(quantile_in_place(&mut v, 0.5), 5.0);
        let mut v: Vec<f32> = vec![3.0, 1.0, 2.0, 4.0];
        // rank = 0.995·3 = 2.985 → 3 + 0.985·(4 − 3).
        assert!((quantile_in_place(&mut v, 0.995) - 3.985).abs() < 1e-6);
    }

    #[test]
    fn quantile_is_nan_with_a_nan_anywhere_like_torch() {
        let mut v: Vec<f32> = vec![f32::NAN, 1.0, 2.0, 3.0, 4.0];
        assert!(quantile_in_place(&mut v, 0.1).is_nan());
    }
}
