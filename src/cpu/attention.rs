//! Spatial self-attention on the internal layout: softmax(QᵀK / √d) per sample and head, with
//! the query axis cut into blocks so that only a `block × tokens` score matrix exists at a
//! time (per thread, in its scratch buffer). The softmax is exact (full rows), in f32, and its
//! normalisation is applied to the `d × block` output rather than to the scores.
//!
//! Rayon runs over (sample, head, query block); each task's two products call `gemm`
//! single-threaded.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::arena::with_scratch;
use super::vecmath::exp_f32;
use crate::simd_dispatch;
use crate::unet::layout::Dims;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: each task writes its own (head rows, sample, query block) region.
unsafe impl Send for SendPtr {}
// SAFETY: shared only to hand the same base pointer to every task; see Send.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the whole (Sync) wrapper.
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Row softmax numerators in place; returns 1 / Σ exp.
#[inline(always)]
fn softmax_row_kernel(row: &mut [f32]) -> f32 {
    let mut m = f32::NEG_INFINITY;
    for &v in row.iter() {
        m = m.max(v);
    }
    let mut acc = [0.0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for c in &mut chunks {
        for l in 0..16 {
            c[l] = exp_f32(c[l] - m);
            acc[l] += c[l];
        }
    }
    let mut s: f32 = 0.0;
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - m);
        s += *v;
    }
    s += acc.iter().sum::<f32>();
    1.0 / s
}

simd_dispatch!(fn softmax_row(row: &mut [f32]) -> f32 => softmax_row_kernel);

/// Multi-head self-attention. `qkv` is `[3·inner][b][h][w]` (queries, keys, values, each
/// `heads × dh` rows); writes the heads' outputs to `out`, `[inner][b][h][w]`.
pub fn self_attention(qkv: &[f32], inner: usize, heads: usize, dims: Dims, out: &mut [f32]) {
    let (n, t) = (dims.n(), dims.hw());
    assert_eq!(qkv.len(), 3 * inner * n, "qkv size");
    assert_eq!(out.len(), inner * n, "attention output size");
    assert!(heads > 0 && inner % heads == 0);
    let dh = inner / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    // Not the pool size: the partition must not depend on it (see PARTITION_THREADS).
    let threads = super::PARTITION_THREADS;
    let per = dims.b * heads;
    let blocks_wanted = (4 * threads).div_ceil(per).max(1);
    let max_block = ((1 << 20) / t).clamp(16, 256);
    let qb = t.div_ceil(blocks_wanted).clamp(16.min(t), max_block);
    let nblocks = t.div_ceil(qb);
    let outp = SendPtr(out.as_mut_ptr());
    (0..per * nblocks).into_par_iter().for_each(|task| {
        let (bh, blk) = (task / nblocks, task % nblocks);
        let (b, h) = (bh / heads, bh % heads);
        let q0 = blk * qb;
        let m = qb.min(t - q0);
        let col = b * t;
        let q = qkv[(h * dh) * n + col + q0..].as_ptr();
        let k = qkv[(inner + h * dh) * n + col..].as_ptr();
        let v = qkv[(2 * inner + h * dh) * n + col..].as_ptr();
        // SAFETY: rows h·dh.. of `out`, columns col+q0..col+q0+m belong to this task.
        let o = unsafe { outp.get().add(h * dh * n + col + q0) };
        with_scratch(m * t + m, |buf| {
            let (s, inv) = buf.split_at_mut(m * t);
            // SAFETY: all pointers and strides stay inside qkv, the scratch and the task's
            // block of `out` (checked sizes above).
            unsafe {
                // S[i][j] = scale · Σ_d q[d][i] k[d][j]
                gemm(
                    m,
                    t,
                    dh,
                    s.as_mut_ptr(),
                    1,
                    t as isize,
                    false,
                    q,
                    n as isize,
                    1,
                    k,
                    1,
                    n as isize,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            for (i, row) in s.chunks_exact_mut(t).enumerate() {
                inv[i] = softmax_row(row);
            }
            // SAFETY: v's dh rows of t keys stay inside qkv, s is the task's m×t scratch, and
            // o's dh rows (stride n) of m columns are this task's block of `out`, which no
            // other task touches.
            unsafe {
                // O[d][i] = Σ_j v[d][j] P[i][j]
                gemm(
                    dh,
                    m,
                    t,
                    o,
                    1,
                    n as isize,
                    false,
                    v,
                    1,
                    n as isize,
                    s.as_ptr(),
                    t as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
                for d in 0..dh {
                    let row = std::slice::from_raw_parts_mut(o.add(d * n), m);
                    for (x, &w) in row.iter_mut().zip(inv.iter()) {
                        *x *= w;
                    }
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_attention() {
        let dims = Dims { b: 2, h: 5, w: 7 };
        let (inner, heads) = (12, 3);
        let (n, t, dh) = (dims.n(), dims.hw(), 4);
        let qkv: Vec<f32> = (0..3 * inner * n)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let mut out = vec![0.0; inner * n];
        self_attention(&qkv, inner, heads, dims, &mut out);
        for b in 0..dims.b {
            for h in 0..heads {
                for i in 0..t {
                    let at = |blk: usize, d: usize, j: usize| {
                        qkv[(blk * inner + h * dh + d) * n + b * t + j] as f64
                    };
                    let sc: Vec<f64> = (0..t)
                        .map(|j| (0..dh).map(|d| at(0, d, i) * at(1, d, j)).sum::<f64>() / 2.0)
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..dh {
                        let want = (0..t).map(|j| e[j] * at(2, d, j)).sum::<f64>() / z;
                        let got = out[(h * dh + d) * n + b * t + i] as f64;
                        assert!((want - got).abs() < 1e-5, "{want} {got}");
                    }
                }
            }
        }
    }
}
