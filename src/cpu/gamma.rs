//! Analytic-DPM's Γ statistic on the CPU: per-sample ‖ε‖²/d of a batch of model outputs, in
//! one pass, and its per-timestep sums.
//!
//! Each sample's sum of squares is accumulated in f64 in a fixed order (so a sample's value
//! does not depend on the batch it is in or on the thread count). The batch's sums Σv and Σv²
//! are then returned both in f64 and as exact fixed-point integers (v rounded to a multiple of
//! 2⁻⁶⁴), whose sums do not depend on the order of addition: merging shards then gives exactly
//! the one-shot result.

use rayon::prelude::*;

use crate::dtype::Elem;
use crate::error::Result;
use crate::value_err;

/// Elements per f32 scratch chunk.
const LANES: usize = 256;

/// The fixed-point scale of the exact sums: v is stored as round(v · 2⁶⁴).
pub const FIXED_SCALE: f64 = 18_446_744_073_709_551_616.0;
/// Per-sample values at or above this bound are refused (their square would not fit).
pub const MAX_VALUE: f64 = 1.0e12;

/// The sums of one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchSums {
    pub count: u64,
    pub sum: f64,
    pub sum_sq: f64,
    pub sum_fixed: u128,
    pub sum_sq_fixed: u128,
}

/// ‖p·x + q·mo‖²/d for each of `batch` samples: `mo` has `batch` rows of `mo_stride ≥ d`
/// elements (the first d used), `x` (needed only when p ≠ 0) `batch × d`.
pub fn per_sample_sq_norms<D: Elem, S: Elem>(
    mo: &[D],
    mo_stride: usize,
    x: Option<&[S]>,
    per_sample: usize,
    batch: usize,
    p: f32,
    q: f32,
) -> Vec<f64> {
    (0..batch)
        .into_par_iter()
        .map(|b| {
            let row = &mo[b * mo_stride..b * mo_stride + per_sample];
            let xr = x.map(|x| &x[b * per_sample..(b + 1) * per_sample]);
            let mut ys = [0f32; LANES];
            let mut xs = [0f32; LANES];
            let mut acc = 0f64;
            let mut start = 0;
            while start < per_sample {
                let n = LANES.min(per_sample - start);
                D::load(&row[start..start + n], &mut ys[..n]);
                // Eight independent f64 accumulators (a fixed order, so the value of a sample
                // does not depend on anything else) let the loop vectorise.
                let e = &mut xs[..n];
                match xr {
                    Some(xr) if p != 0.0 => {
                        let mut xin = [0f32; LANES];
                        S::load(&xr[start..start + n], &mut xin[..n]);
                        for i in 0..n {
                            e[i] = p * xin[i] + q * ys[i];
                        }
                    }
                    _ => {
                        for i in 0..n {
                            e[i] = q * ys[i];
                        }
                    }
                }
                let mut lanes = [0f64; 8];
                let chunks = e.chunks_exact(8);
                let rest = chunks.remainder();
                for c in chunks {
                    for (l, v) in lanes.iter_mut().zip(c) {
                        let v = *v as f64;
                        *l += v * v;
                    }
                }
                let mut part = lanes.iter().sum::<f64>();
                for v in rest {
                    let v = *v as f64;
                    part += v * v;
                }
                acc += part;
                start += n;
            }
            acc / per_sample as f64
        })
        .collect()
}

/// Σv and Σv² of per-sample values, in f64 and exact fixed point. Refuses non-finite values.
pub fn batch_sums(values: &[f64]) -> Result<BatchSums> {
    let mut s = BatchSums {
        count: values.len() as u64,
        ..Default::default()
    };
    for (i, &v) in values.iter().enumerate() {
        if !v.is_finite() || !(0.0..MAX_VALUE).contains(&v) {
            return value_err!(
                "model output: sample {i} has ‖ε‖²/d = {v}; the model output must be finite \
                 (and below {MAX_VALUE:e})"
            );
        }
        let sq = v * v;
        s.sum += v;
        s.sum_sq += sq;
        s.sum_fixed += (v * FIXED_SCALE).round_ties_even() as u128;
        s.sum_sq_fixed += (sq * FIXED_SCALE).round_ties_even() as u128;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_and_sums() {
        let mo: Vec<f32> = (0..12).map(|k| k as f32 * 0.5).collect();
        // two samples of 5 elements in rows of 6
        let v = per_sample_sq_norms::<f32, f32>(&mo, 6, None, 5, 2, 0.0, 1.0);
        let want0: f64 = (0..5).map(|k| (k as f64 * 0.5).powi(2)).sum::<f64>() / 5.0;
        let want1: f64 = (6..11).map(|k| (k as f64 * 0.5).powi(2)).sum::<f64>() / 5.0;
        assert!((v[0] - want0).abs() < 1e-12 && (v[1] - want1).abs() < 1e-12);
        let s = batch_sums(&v).unwrap();
        assert_eq!(s.count, 2);
        assert!((s.sum_fixed as f64 / FIXED_SCALE - (want0 + want1)).abs() < 1e-12);
        assert!(batch_sums(&[f64::NAN]).is_err());
    }
}
