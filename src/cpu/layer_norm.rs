//! LayerNorm over the channels of the internal `[c][b][h][w]` layout: each column (token) is
//! normalised across its `c` rows, with the affine transform — the transformer blocks'
//! `norm1..3`. Work runs over blocks of [`COLS`] adjacent columns, so every row read is a
//! contiguous run that the loop vectorises across tokens; the statistics are two passes (mean,
//! then the variance about it) in f32, as torch computes them.

use rayon::prelude::*;

use super::SendPtr;
use crate::simd_dispatch;

/// Columns per block: a few vectors wide, and `c · COLS` floats stay in L2 for the three
/// passes.
const COLS: usize = 32;

/// The parameters of one LayerNorm.
#[derive(Clone, Copy)]
pub struct LayerNormParams<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

/// Normalises columns `j0..j0 + COLS` (all `COLS` of them lie inside the row).
#[inline(always)]
fn block_kernel(x: &[f32], n: usize, j0: usize, p: LayerNormParams<'_>, out: SendPtr) {
    let c = p.gamma.len();
    let row = |r: usize| -> &[f32; COLS] { x[r * n + j0..][..COLS].try_into().unwrap() };
    let mut mean = [0.0f32; COLS];
    for r in 0..c {
        let v = row(r);
        for l in 0..COLS {
            mean[l] += v[l];
        }
    }
    let inv_c = 1.0 / c as f32;
    for m in mean.iter_mut() {
        *m *= inv_c;
    }
    let mut var = [0.0f32; COLS];
    for r in 0..c {
        let v = row(r);
        for l in 0..COLS {
            let d = v[l] - mean[l];
            var[l] += d * d;
        }
    }
    let mut rstd = [0.0f32; COLS];
    for l in 0..COLS {
        rstd[l] = 1.0 / (var[l] * inv_c + p.eps).sqrt();
    }
    for r in 0..c {
        let v = row(r);
        let (g, b) = (p.gamma[r], p.beta[r]);
        // SAFETY: row r, columns j0..j0+COLS of `out` belong to this block's task alone.
        let o = unsafe { std::slice::from_raw_parts_mut(out.get().add(r * n + j0), COLS) };
        for l in 0..COLS {
            o[l] = (v[l] - mean[l]) * rstd[l] * g + b;
        }
    }
}

simd_dispatch!(fn block(x: &[f32], n: usize, j0: usize, p: LayerNormParams<'_>, out: SendPtr) => block_kernel);

/// Columns `j0..j1` one at a time (the ragged end of the row).
fn columns(x: &[f32], n: usize, j0: usize, j1: usize, p: LayerNormParams<'_>, out: SendPtr) {
    let c = p.gamma.len();
    for j in j0..j1 {
        let mean = (0..c).map(|r| x[r * n + j]).sum::<f32>() / c as f32;
        let var = (0..c)
            .map(|r| {
                let d = x[r * n + j] - mean;
                d * d
            })
            .sum::<f32>()
            / c as f32;
        let rstd = 1.0 / (var + p.eps).sqrt();
        for r in 0..c {
            // SAFETY: column j of `out` belongs to this task alone.
            unsafe {
                *out.get().add(r * n + j) = (x[r * n + j] - mean) * rstd * p.gamma[r] + p.beta[r]
            };
        }
    }
}

/// `out[r][j] = (x[r][j] − mean_j) / √(var_j + eps) · γ[r] + β[r]`, the statistics over the
/// `c = γ.len()` rows of column j; `x` and `out` are `[c][n]`.
pub fn layer_norm(x: &[f32], n: usize, p: LayerNormParams<'_>, out: &mut [f32]) {
    let c = p.gamma.len();
    assert_eq!(p.beta.len(), c, "layer norm β size");
    assert_eq!(x.len(), c * n, "layer norm input size");
    assert_eq!(out.len(), c * n, "layer norm output size");
    let outp = SendPtr(out.as_mut_ptr());
    let full = n / COLS;
    (0..full.max(1)).into_par_iter().for_each(|blk| {
        if blk < full {
            block(x, n, blk * COLS, p, outp);
        }
        if blk + 1 == full.max(1) {
            columns(x, n, full * COLS, n, p, outp);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_each_column() {
        for n in [5usize, 32, 77, 100] {
            let c = 24;
            let x: Vec<f32> = (0..c * n)
                .map(|i| ((i * 7919 % 101) as f32) * 0.05 - 2.0 + (i % n) as f32 * 0.3)
                .collect();
            let gamma: Vec<f32> = (0..c).map(|i| 1.0 + i as f32 * 0.05).collect();
            let beta: Vec<f32> = (0..c).map(|i| i as f32 * -0.1).collect();
            let mut out = vec![0.0; c * n];
            let p = LayerNormParams {
                gamma: &gamma,
                beta: &beta,
                eps: 1e-5,
            };
            layer_norm(&x, n, p, &mut out);
            for j in 0..n {
                let col: Vec<f64> = (0..c).map(|r| x[r * n + j] as f64).collect();
                let m = col.iter().sum::<f64>() / c as f64;
                let v = col.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / c as f64;
                for r in 0..c {
                    let want = (col[r] - m) / (v + 1e-5).sqrt() * gamma[r] as f64 + beta[r] as f64;
                    let got = out[r * n + j] as f64;
                    assert!((want - got).abs() < 2e-5, "n={n} ({r},{j}): {want} {got}");
                }
            }
        }
    }
}
