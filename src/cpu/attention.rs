//! Multi-head attention on the internal layout (self-attention of the spatial blocks and the
//! transformers, cross-attention onto the context): softmax(QᵀK / √d)·V per sample and head,
//! with the query axis cut into blocks so that only a `block × keys` score matrix exists at a
//! time (per thread, in its scratch buffer; never the whole `queries × keys` matrix, which is
//! 64 MiB per head at 4,096 tokens). The softmax is exact (full rows), in f32, and its
//! normalisation is applied to the `d × block` output rather than to the scores.
//!
//! Rayon runs over (sample, head, query block); each task's two products call `gemm`
//! single-threaded.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::arena::with_scratch;
use super::vecmath::exp_f32;
use super::SendPtr;
use crate::simd_dispatch;

/// Softmax over the keys of a key-major score block (`s[j·m + i]`, key j, query i) in
/// place: numerators exp(s − max) left in `s`, `inv[i]` = 1 / Σ_j. Every pass runs along a
/// key's row of `m` queries, so it vectorises across queries; `mx` is scratch of `m`.
#[inline(always)]
fn softmax_keys_kernel(s: &mut [f32], m: usize, mx: &mut [f32], inv: &mut [f32]) {
    mx.fill(f32::NEG_INFINITY);
    for row in s.chunks_exact(m) {
        for (x, &v) in mx.iter_mut().zip(row) {
            *x = x.max(v);
        }
    }
    inv.fill(0.0);
    for row in s.chunks_exact_mut(m) {
        for ((v, &x), z) in row.iter_mut().zip(mx.iter()).zip(inv.iter_mut()) {
            *v = exp_f32(*v - x);
            *z += *v;
        }
    }
    for z in inv.iter_mut() {
        *z = 1.0 / *z;
    }
}

simd_dispatch!(fn softmax_keys(s: &mut [f32], m: usize, mx: &mut [f32], inv: &mut [f32]) => softmax_keys_kernel);

/// One operand of an attention: rows `row..row + heads·dh` of `data`, a `[rows][b][t]` buffer
/// (`t` tokens per sample, so `b·t` columns).
#[derive(Clone, Copy)]
pub struct Tokens<'a> {
    pub data: &'a [f32],
    pub row: usize,
    pub t: usize,
}

/// Multi-head attention of `b` samples: queries `q`, keys `k` and values `v` (k and v with the
/// same tokens), `heads` heads of `dh` rows each; writes `out`, `[heads·dh][b][q.t]`.
pub fn attention(
    q: Tokens<'_>,
    k: Tokens<'_>,
    v: Tokens<'_>,
    b: usize,
    heads: usize,
    dh: usize,
    out: &mut [f32],
) {
    let inner = heads * dh;
    let (tq, tk) = (q.t, k.t);
    let (nq, nk) = (b * tq, b * tk);
    assert_eq!(v.t, tk, "keys and values differ in tokens");
    for (what, o, n) in [("queries", q, nq), ("keys", k, nk), ("values", v, nk)] {
        assert!(o.data.len() >= (o.row + inner) * n, "attention {what} size");
    }
    assert_eq!(out.len(), inner * nq, "attention output size");
    assert!(heads > 0 && dh > 0 && tq > 0 && tk > 0);
    let scale = 1.0 / (dh as f32).sqrt();
    // Not the pool size: the partition must not depend on it (see PARTITION_THREADS).
    let threads = super::PARTITION_THREADS;
    let per = b * heads;
    let blocks_wanted = (4 * threads).div_ceil(per).max(1);
    let max_block = ((1 << 20) / tk).clamp(16, 256);
    let qb = tq.div_ceil(blocks_wanted).clamp(16.min(tq), max_block);
    let nblocks = tq.div_ceil(qb);
    let outp = SendPtr(out.as_mut_ptr());
    (0..per * nblocks).into_par_iter().for_each(|task| {
        let (bh, blk) = (task / nblocks, task % nblocks);
        let (bi, h) = (bh / heads, bh % heads);
        let q0 = blk * qb;
        let m = qb.min(tq - q0);
        let (t, n) = (tk, nq);
        let qp = q.data[(q.row + h * dh) * nq + bi * tq + q0..].as_ptr();
        let kp = k.data[(k.row + h * dh) * nk + bi * tk..].as_ptr();
        let vp = v.data[(v.row + h * dh) * nk + bi * tk..].as_ptr();
        // SAFETY: rows h·dh.. of `out`, columns bi·tq+q0..+m belong to this task.
        let o = unsafe { outp.get().add(h * dh * n + bi * tq + q0) };
        with_scratch(m * t + 2 * m, |buf| {
            let (s, rest) = buf.split_at_mut(m * t);
            let (mx, inv) = rest.split_at_mut(m);
            // Scores key-major, S[j][i] = scale · Σ_d q[d][i] k[d][j]: gemm then reads the
            // probabilities below as a column-major operand, without repacking them.
            // SAFETY: all pointers and strides stay inside q, k, the scratch and the task's
            // block of `out` (checked sizes above).
            unsafe {
                gemm(
                    m,
                    t,
                    dh,
                    s.as_mut_ptr(),
                    m as isize,
                    1,
                    false,
                    qp,
                    nq as isize,
                    1,
                    kp,
                    1,
                    nk as isize,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            softmax_keys(s, m, mx, inv);
            // SAFETY: v's dh rows of t keys stay inside v, s is the task's t×m scratch, and
            // o's dh rows (stride n) of m columns are this task's block of `out`, which no
            // other task touches.
            unsafe {
                // Oᵀ[i][d] = Σ_j P[j][i] v[d][j]
                gemm(
                    m,
                    dh,
                    t,
                    o,
                    n as isize,
                    1,
                    false,
                    s.as_ptr(),
                    m as isize,
                    1,
                    vp,
                    nk as isize,
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
    use crate::unet::layout::Dims;

    #[test]
    fn matches_naive_attention() {
        let dims = Dims { b: 2, h: 5, w: 7 };
        let (inner, heads) = (12, 3);
        let (n, t, dh) = (dims.n(), dims.hw(), 4);
        let qkv: Vec<f32> = (0..3 * inner * n)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let mut out = vec![0.0; inner * n];
        let tok = |row| Tokens { data: &qkv, row, t };
        attention(
            tok(0),
            tok(inner),
            tok(2 * inner),
            dims.b,
            heads,
            dh,
            &mut out,
        );
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

    #[test]
    fn cross_attention_matches_naive() {
        // 2 samples of 6 query tokens attend to 3 context tokens; 2 heads of 4.
        let (b, tq, tk, heads, dh) = (2, 6, 3, 2, 4);
        let inner = heads * dh;
        let q: Vec<f32> = (0..inner * b * tq)
            .map(|i| ((i * 5 % 17) as f32 - 8.0) / 5.0)
            .collect();
        let kv: Vec<f32> = (0..2 * inner * b * tk)
            .map(|i| ((i * 11 % 19) as f32 - 9.0) / 6.0)
            .collect();
        let mut out = vec![0.0; inner * b * tq];
        let tok = |data, row, t| Tokens { data, row, t };
        attention(
            tok(&q, 0, tq),
            tok(&kv, 0, tk),
            tok(&kv, inner, tk),
            b,
            heads,
            dh,
            &mut out,
        );
        let (nq, nk) = (b * tq, b * tk);
        for s in 0..b {
            for h in 0..heads {
                for i in 0..tq {
                    let sc: Vec<f64> = (0..tk)
                        .map(|j| {
                            (0..dh)
                                .map(|d| {
                                    q[(h * dh + d) * nq + s * tq + i] as f64
                                        * kv[(h * dh + d) * nk + s * tk + j] as f64
                                })
                                .sum::<f64>()
                                / 2.0
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = sc.iter().map(|v| (v - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..dh {
                        let want = (0..tk)
                            .map(|j| e[j] * kv[(inner + h * dh + d) * nk + s * tk + j] as f64)
                            .sum::<f64>()
                            / z;
                        let got = out[(h * dh + d) * nq + s * tq + i] as f64;
                        assert!((want - got).abs() < 1e-5, "{want} {got}");
                    }
                }
            }
        }
    }
}
