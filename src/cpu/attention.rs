//! Multi-head attention on the internal layout (self-attention of the spatial blocks and the
//! transformers, cross-attention onto the context): softmax(QᵀK / √d)·V per sample and head.
//!
//! Rayon runs over (sample, head, query block); each task computes its block's scores against
//! up to `BLOCK_SCORES / queries` keys at a time (4 MiB: 4,096 keys for 256 queries, whole
//! rows at Stable Diffusion's sizes), never the whole `queries × keys` matrix of a head. Longer
//! rows go in key blocks, flash-attention's order (Dao et al. 2022): the softmax is exact and
//! online, each block's maximum updating the running one, the sum and the output so far
//! rescaled by exp(old − new) before the block's probabilities are added. The normalisation
//! is applied to the `d × block` output at the end. Both products call `gemm`
//! single-threaded. (Smaller blocks that stay in L2 were measured slower on 2 Zen 3 cores:
//! 374 against 338 ms at 4,096 tokens; `gemm` repacks the queries for every key block and
//! the output is rescaled and re-read for each.)
//!
//! In bf16 (`compute_dtype="bfloat16"`, from 1,024 keys, or 256 with heads of 256 channels)
//! both products are bf16 products
//! summed in f32 (`cpu::bf16::gemm`: AMX tiles where the CPU has them): each sample's and
//! head's keys and values rounded into rows once (an arena buffer the query blocks share), the
//! queries rounded and packed once per task, and the probabilities rounded and packed after
//! the softmax, which stays f32, as do the running maxima, sums and output. Key blocks are
//! smaller there (scores in L2). At SD 1.5's large sizes that is 1.4–1.6× f32; the f32
//! softmax (an exp per score) and these passes, not the products, bound it.

use gemm::{gemm, Parallelism};
use half::bf16;
use rayon::prelude::*;

use super::arena::{with_scratch, Arena, Words};
use super::bf16 as bf16_gemm;
use super::vecmath::exp_nonpositive_f32;
use super::SendPtr;
use crate::simd_dispatch;

/// Scores per block (queries × keys) at most: 4 MiB of scratch per thread.
const BLOCK_SCORES: usize = 1 << 20;
/// Queries per task at least. Every task's `gemm` calls pack its keys and values again, so
/// small query blocks repeat that packing many times over: on the DDPM-CIFAR-10 UNet's
/// 256-token attentions (2-core AVX-512 Xeon, timed alternating in one process) 64 rather
/// than 16 took 0.66× the time at batch 1 (241 against 365 µs), 0.58× at batch 2 and 4, and
/// 0.82× at batch 8 (where 32 was the block before); 128 was no faster, and 256 (one task)
/// slower at batch 1. Larger sizes (Stable Diffusion's 256 tokens and up) already had
/// blocks this large.
const MIN_QUERIES: usize = 64;
/// In bf16, at most this many (1 MiB): the scores then stay in L2 through the passes the
/// bf16 products add (the kernel's sums stored into them, the packing of P).
const BF16_BLOCK_SCORES: usize = 1 << 18;
/// The bf16 products from this many keys: below it, rounding and packing the operands cost
/// more than the products save (SD 1.5's 256-token attention, heads of 160: 2.8–2.9 ms
/// against f32's 2.6) ...
const BF16_MIN_KEYS: usize = 1024;
/// ... unless the heads are at least this wide, whose products weigh more against the
/// per-score rounding and packing: from this many keys. The DDPM-CIFAR-10 UNet's 256-token,
/// 256-channel attention took 0.8× f32's time at batch 8 and 0.87× at batch 1 (2-core AMX
/// Xeon, per op in the model's call).
const BF16_MIN_KEYS_WIDE: usize = 256;
const BF16_WIDE_HEAD: usize = 256;

/// One key block of the online softmax over a key-major score block (`s[j·m + i]`, key j,
/// query i), in place: the running maxima `mx` and sums `l` of the m queries are updated,
/// the numerators exp(s − max) left in `s`, and `alpha[i]` = exp(old max − new max), the factor
/// by which the output accumulated so far must be rescaled. Every pass runs along a key's row
/// of `m` queries, so it vectorises across queries.
#[inline(always)]
fn softmax_block_kernel(s: &mut [f32], m: usize, mx: &mut [f32], l: &mut [f32], alpha: &mut [f32]) {
    new_maxima_kernel(s, m, mx, l, alpha);
    numerators_kernel(s, m, mx, l);
}

/// The first half of [`softmax_block_kernel`]: the running maxima, the rescale factors
/// `alpha` and the rescaled sums.
#[inline(always)]
fn new_maxima_kernel(s: &[f32], m: usize, mx: &mut [f32], l: &mut [f32], alpha: &mut [f32]) {
    alpha.copy_from_slice(mx);
    for row in s.chunks_exact(m) {
        for (x, &v) in alpha.iter_mut().zip(row) {
            *x = x.max(v);
        }
    }
    // alpha holds the new maxima: swap them into mx, leaving the rescale factors.
    for ((a, x), z) in alpha.iter_mut().zip(mx.iter_mut()).zip(l.iter_mut()) {
        let new = *a;
        // The first block's old maximum is -inf: the exp clamps it to ~1e-38 × l = 0.
        *a = exp_nonpositive_f32(*x - new);
        *x = new;
        *z *= *a;
    }
}

/// The second half: the numerators exp(s − max) of the rows of `s`, in place, added onto the
/// sums row after row.
#[inline(always)]
fn numerators_kernel(s: &mut [f32], m: usize, mx: &[f32], l: &mut [f32]) {
    for row in s.chunks_exact_mut(m) {
        for ((v, &x), z) in row.iter_mut().zip(mx.iter()).zip(l.iter_mut()) {
            *v = exp_nonpositive_f32(*v - x);
            *z += *v;
        }
    }
}

simd_dispatch!(fn softmax_block(s: &mut [f32], m: usize, mx: &mut [f32], l: &mut [f32], alpha: &mut [f32]) => softmax_block_kernel);
simd_dispatch!(fn new_maxima(s: &[f32], m: usize, mx: &mut [f32], l: &mut [f32], alpha: &mut [f32]) => new_maxima_kernel);
simd_dispatch!(fn numerators(s: &mut [f32], m: usize, mx: &[f32], l: &mut [f32]) => numerators_kernel);

/// One operand of an attention: rows `row..row + heads·dh` of `data`, a `[rows][b][t]` buffer
/// (`t` tokens per sample, so `b·t` columns).
#[derive(Clone, Copy)]
pub struct Tokens<'a> {
    pub data: &'a [f32],
    pub row: usize,
    pub t: usize,
}

/// Multi-head attention of `b` samples: queries `q`, keys `k` and values `v` (k and v with the
/// same tokens), `heads` heads of `dh` rows each; writes `out`, `[heads·dh][b][q.t]`; its
/// products in bf16 when given an arena `bf16` (for the rounded keys and values) and there are
/// enough keys.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: Tokens<'_>,
    k: Tokens<'_>,
    v: Tokens<'_>,
    b: usize,
    heads: usize,
    dh: usize,
    out: &mut [f32],
    bf16: Option<&mut Arena>,
) {
    let bf16 = bf16
        .filter(|_| k.t >= BF16_MIN_KEYS || (k.t >= BF16_MIN_KEYS_WIDE && dh >= BF16_WIDE_HEAD));
    attention_in_blocks(q, k, v, b, heads, dh, out, BLOCK_SCORES, bf16);
}

/// [`attention`] with at most `block_scores` scores per block (small in the tests, to cover
/// many key blocks), in bf16 whenever an arena is given.
#[allow(clippy::too_many_arguments)]
fn attention_in_blocks(
    q: Tokens<'_>,
    k: Tokens<'_>,
    v: Tokens<'_>,
    b: usize,
    heads: usize,
    dh: usize,
    out: &mut [f32],
    block_scores: usize,
    bf16: Option<&mut Arena>,
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
    // Not the pool size: the partition must not depend on it (see ATTENTION_THREADS).
    let threads = super::ATTENTION_THREADS;
    let per = b * heads;
    let blocks_wanted = (4 * threads).div_ceil(per).max(1);
    let qb = tq.div_ceil(blocks_wanted).clamp(MIN_QUERIES.min(tq), 256);
    let nblocks = tq.div_ceil(qb);
    let kb = (if bf16.is_some() {
        block_scores.min(BF16_BLOCK_SCORES)
    } else {
        block_scores
    } / qb)
        .clamp(1, tk);
    // bf16: every sample's and head's keys and values rounded once, for all its query blocks.
    let mut rounded = bf16.map(|arena| {
        let mut words = Words::take(arena, per * tk * dh);
        round_kv(k, v, b, heads, dh, as_bf16(words.words_mut()));
        (words, arena)
    });
    let kv = rounded.as_mut().map(|(w, _)| &*as_bf16(w.words_mut()));
    let outp = SendPtr(out.as_mut_ptr());
    (0..per * nblocks).into_par_iter().for_each(|task| {
        let (bh, blk) = (task / nblocks, task % nblocks);
        let (bi, h) = (bh / heads, bh % heads);
        let q0 = blk * qb;
        let m = qb.min(tq - q0);
        let n = nq;
        let qp = q.data[(q.row + h * dh) * nq + bi * tq + q0..].as_ptr();
        let kp = k.data[(k.row + h * dh) * nk + bi * tk..].as_ptr();
        let vp = v.data[(v.row + h * dh) * nk + bi * tk..].as_ptr();
        // SAFETY: rows h·dh.. of `out`, columns bi·tq+q0..+m belong to this task.
        let o = unsafe { outp.get().add(h * dh * n + bi * tq + q0) };
        with_scratch(m * kb + 3 * m, |buf| {
            let (s, rest) = buf.split_at_mut(m * kb);
            let (mx, rest) = rest.split_at_mut(m);
            let (l, alpha) = rest.split_at_mut(m);
            mx.fill(f32::NEG_INFINITY);
            l.fill(0.0);
            if let Some(kv) = kv {
                let stats = Softmax { s, mx, l, alpha };
                let (krows, vrows) = kv[bh * 2 * tk * dh..][..2 * tk * dh].split_at(tk * dh);
                // SAFETY: as for the f32 products below (same pointers and extents).
                unsafe {
                    blocks_bf16(
                        (qp, o),
                        (krows, vrows),
                        (m, dh, tk, kb),
                        (nq, n),
                        scale,
                        stats,
                    )
                };
            } else {
                for j0 in (0..tk).step_by(kb) {
                    let nb = kb.min(tk - j0);
                    let s = &mut s[..m * nb];
                    // Scores key-major, S[j][i] = scale · Σ_d q[d][i] k[d][j0 + j]: gemm then
                    // reads the probabilities below as a column-major operand, without repacking.
                    // SAFETY: all pointers and strides stay inside q, k (keys j0..j0+nb) and the
                    // scratch (checked sizes above).
                    unsafe {
                        gemm(
                            m,
                            nb,
                            dh,
                            s.as_mut_ptr(),
                            m as isize,
                            1,
                            false,
                            qp,
                            nq as isize,
                            1,
                            kp.add(j0),
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
                    softmax_block(s, m, mx, l, alpha);
                    // SAFETY: v's dh rows of keys j0..j0+nb stay inside v, s is the task's nb×m
                    // scratch, and o's dh rows (stride n) of m columns are this task's block of
                    // `out`, which no other task touches.
                    unsafe {
                        if j0 > 0 {
                            for d in 0..dh {
                                let row = std::slice::from_raw_parts_mut(o.add(d * n), m);
                                for (x, &a) in row.iter_mut().zip(alpha.iter()) {
                                    *x *= a;
                                }
                            }
                        }
                        // Oᵀ[i][d] += Σ_j P[j][i] v[d][j0 + j]
                        gemm(
                            m,
                            dh,
                            nb,
                            o,
                            n as isize,
                            1,
                            j0 > 0,
                            s.as_ptr(),
                            m as isize,
                            1,
                            vp.add(j0),
                            nk as isize,
                            1,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                }
            }
            // SAFETY: the task's block of `out`, as above.
            unsafe {
                for d in 0..dh {
                    let row = std::slice::from_raw_parts_mut(o.add(d * n), m);
                    for (x, &z) in row.iter_mut().zip(l.iter()) {
                        *x /= z;
                    }
                }
            }
        });
    });
    if let Some((words, arena)) = rounded {
        words.give(arena);
    }
}

/// u32 words as twice as many bf16 values.
fn as_bf16(words: &mut [u32]) -> &mut [bf16] {
    // SAFETY: bf16 is a 2-byte value type for which every bit pattern is valid; the words'
    // bytes hold 2·len of them at an alignment of at least 2, borrowed as long as the result.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<bf16>(), 2 * words.len()) }
}

/// The keys and values of each (sample, head) `bh` rounded to bf16 into `out[bh]`: keys as
/// rows `[key][d]` (the score product's A), then values as rows `[d][key]` (the output's A).
fn round_kv<'a>(k: Tokens<'a>, v: Tokens<'a>, b: usize, heads: usize, dh: usize, out: &mut [bf16]) {
    let (tk, nk) = (k.t, b * k.t);
    let per = b * heads;
    assert!(
        out.len() >= per * 2 * tk * dh,
        "rounded keys and values size"
    );
    // About 64 tasks of whole 64-key blocks, not one per head: a batch-1 single-head
    // attention (the DDPM-CIFAR-10 UNet's) rounded on one thread.
    let kblk = (tk * per / 64).next_multiple_of(64).clamp(64, tk.max(64));
    let blocks = tk.div_ceil(kblk);
    let outp = SendPtr(out.as_mut_ptr());
    (0..per * blocks).into_par_iter().for_each(|task| {
        let (bh, j0) = (task / blocks, (task % blocks) * kblk);
        let j1 = (j0 + kblk).min(tk);
        let (bi, h) = (bh / heads, bh % heads);
        let row = |t: Tokens<'a>, d: usize| -> &'a [f32] {
            &t.data[(t.row + h * dh + d) * nk + bi * tk..][..tk]
        };
        // Head bh holds its keys `[tk][dh]`, then its values `[dh][tk]`; this task writes
        // keys j0..j1 of each: its own rows of the keys, its own columns of the values.
        let head = bh * 2 * tk * dh;
        let nj = j1 - j0;
        for d in 0..dh {
            // SAFETY: values row d, columns j0..j1 of head bh: inside `out` (asserted above)
            // and written by this task alone.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(outp.get().add(head + tk * dh + d * tk + j0), nj)
            };
            round_row(&row(v, d)[j0..j1], dst);
        }
        // SAFETY: key rows j0..j1 of head bh, likewise.
        let krows =
            unsafe { std::slice::from_raw_parts_mut(outp.get().add(head + j0 * dh), nj * dh) };
        // The keys transposed in blocks of 64, whose rows stay in L1.
        for b0 in (0..nj).step_by(64) {
            let nb = 64.min(nj - b0);
            for d in 0..dh {
                let src = &row(k, d)[j0 + b0..j0 + b0 + nb];
                for (j, &x) in src.iter().enumerate() {
                    krows[(b0 + j) * dh + d] = to_bf16(x);
                }
            }
        }
    });
}

simd_dispatch!(fn round_row(src: &[f32], dst: &mut [bf16]) => round_row_kernel);

#[inline(always)]
fn round_row_kernel(src: &[f32], dst: &mut [bf16]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = to_bf16(x);
    }
}

/// `x` rounded to nearest even, as the packing rounds (branch-free, so loops vectorise).
#[inline(always)]
fn to_bf16(x: f32) -> bf16 {
    bf16::from_bits(bf16_gemm::round(x) as u16)
}

/// A task's score scratch and online-softmax state (see `softmax_block`).
struct Softmax<'a> {
    s: &'a mut [f32],
    mx: &'a mut [f32],
    l: &'a mut [f32],
    alpha: &'a mut [f32],
}

/// The key blocks of one task in bf16: `m` queries from `qp` (`dh` rows at stride `nq`), the
/// sample's and head's rounded keys `krows` (`[tk][dh]`) and values `vrows` (`[dh][tk]`), `kb`
/// keys per block, into `o` (row stride `n`), not yet divided by the sums left in `st.l`.
///
/// # Safety
/// The pointers reach the extents [`attention_in_blocks`] checks for the task; `o`'s `dh` rows
/// of `m` columns are the task's alone.
unsafe fn blocks_bf16(
    (qp, o): (*const f32, *mut f32),
    (krows, vrows): (&[bf16], &[bf16]),
    (m, dh, tk, kb): (usize, usize, usize, usize),
    (nq, n): (usize, usize),
    scale: f32,
    st: Softmax<'_>,
) {
    let (qlen, plen) = (bf16_gemm::packed_len(dh, m), bf16_gemm::packed_len(kb, m));
    bf16_gemm::with_packed(qlen + plen, |buf| {
        // (qlen is whole panels of 16 u32: the second buffer stays on 64-byte lines)
        let (qpk, ppk) = buf.split_at_mut(qlen);
        // SAFETY: the queries' dh rows of m columns (the caller's contract).
        let qs = unsafe { std::slice::from_raw_parts(qp, (dh - 1) * nq + m) };
        bf16_gemm::pack(qs, nq, dh, m, qpk);
        for j0 in (0..tk).step_by(kb) {
            let nb = kb.min(tk - j0);
            // S[j][i] = scale · Σ_d k[d][j0 + j] q[d][i], key-major as the f32 path has it
            // (Stored, not added onto zeros: zeroing the scores first was 3–4% of SD 1.5's
            // bf16 call.)
            let s = &mut st.s[..m * nb];
            let keys = bf16_gemm::Lhs::Rows(&krows[j0 * dh..][..nb * dh], dh);
            // SAFETY: s is an nb×m matrix at row stride m, this task's scratch.
            unsafe { bf16_gemm::gemm((nb, m, dh), (s.as_mut_ptr(), m), false, keys, qpk, scale) };
            // The softmax, its numerators rounded and packed two keys at a time as they are
            // made, while those two rows are still in L1 (the same values as the whole block's
            // numerators first, then `bf16_gemm::pack`, one pass over the block fewer).
            new_maxima(s, m, st.mx, st.l, st.alpha);
            let kp = bf16_gemm::kpairs(nb);
            for (q, rows) in s.chunks_mut(2 * m).enumerate() {
                numerators(rows, m, st.mx, st.l);
                bf16_gemm::pack_pairs(rows, m, rows.len() / m, m, ppk, kp, q);
            }
            bf16_gemm::pad_depth(nb, m, ppk);
            // The first key block's O is stored, the next ones' rescaled and added onto it.
            if j0 > 0 {
                for d in 0..dh {
                    // SAFETY: the task's rows of `o` (the caller's contract).
                    let row = unsafe { std::slice::from_raw_parts_mut(o.add(d * n), m) };
                    for (x, &a) in row.iter_mut().zip(st.alpha.iter()) {
                        *x *= a;
                    }
                }
            }
            // O[d][i] += Σ_j v[d][j0 + j] P[j][i]
            let values = bf16_gemm::Lhs::Rows(&vrows[j0..], tk);
            // SAFETY: o's dh rows of m columns at row stride n, the task's alone.
            unsafe { bf16_gemm::gemm((dh, m, nb), (o, n), j0 > 0, values, ppk, 1.0) };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::layout::Dims;

    #[test]
    fn matches_naive_attention() {
        // 35 tokens; and 150 in one sample, whose keys and values are rounded to bf16 in
        // several 64-key tasks per head.
        for dims in [Dims { b: 2, h: 5, w: 7 }, Dims { b: 1, h: 10, w: 15 }] {
            matches_naive_attention_at(dims);
        }
    }

    fn matches_naive_attention_at(dims: Dims) {
        let (inner, heads) = (12, 3);
        let (n, t, dh) = (dims.n(), dims.hw(), 4);
        let qkv: Vec<f32> = (0..3 * inner * n)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let tok = |row| Tokens { data: &qkv, row, t };
        // One key block, blocks of 6 keys (the last of 5), and one key per block; in f32 and
        // in bf16. In one key block the bf16 result is checked against its own definition
        // (q, k, v and the softmax numerators rounded to bf16, sums in f64); over several,
        // each block's numerators are rounded against that block's running maximum, so only
        // against the exact attention, at bf16's scale.
        for bf16 in [false, true] {
            for scores in [BLOCK_SCORES, 100, 16] {
                let mut out = vec![0.0; inner * n];
                attention_in_blocks(
                    tok(0),
                    tok(inner),
                    tok(2 * inner),
                    dims.b,
                    heads,
                    dh,
                    &mut out,
                    scores,
                    bf16.then_some(&mut Arena::default()),
                );
                let (round, tol) = match (bf16, scores == BLOCK_SCORES) {
                    (false, _) => (false, 1e-5),
                    (true, true) => (true, 1e-4),
                    (true, false) => (false, 3e-2),
                };
                check_self_attention(&qkv, &out, dims, (inner, heads, dh), round, tol);
            }
        }
    }

    fn check_self_attention(
        qkv: &[f32],
        out: &[f32],
        dims: Dims,
        (inner, heads, dh): (usize, usize, usize),
        round: bool,
        tol: f64,
    ) {
        let (n, t) = (dims.n(), dims.hw());
        let r = |v: f64| {
            if round {
                bf16::from_f64(v).to_f64()
            } else {
                v
            }
        };
        for b in 0..dims.b {
            for h in 0..heads {
                for i in 0..t {
                    let at = |blk: usize, d: usize, j: usize| {
                        r(qkv[(blk * inner + h * dh + d) * n + b * t + j] as f64)
                    };
                    let sc: Vec<f64> = (0..t)
                        .map(|j| (0..dh).map(|d| at(0, d, i) * at(1, d, j)).sum::<f64>() / 2.0)
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..dh {
                        let want = (0..t).map(|j| r(e[j]) * at(2, d, j)).sum::<f64>() / z;
                        let got = out[(h * dh + d) * n + b * t + i] as f64;
                        assert!((want - got).abs() < tol, "{want} {got} (tol {tol})");
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
        let tok = |data, row, t| Tokens { data, row, t };
        // One key block, and blocks of 2 and 1 keys.
        for scores in [BLOCK_SCORES, 12] {
            let mut out = vec![0.0; inner * b * tq];
            attention_in_blocks(
                tok(&q, 0, tq),
                tok(&kv, 0, tk),
                tok(&kv, inner, tk),
                b,
                heads,
                dh,
                &mut out,
                scores,
                None,
            );
            check_cross_attention(&q, &kv, &out, (b, tq, tk, heads, dh));
        }
    }

    fn check_cross_attention(
        q: &[f32],
        kv: &[f32],
        out: &[f32],
        (b, tq, tk, heads, dh): (usize, usize, usize, usize, usize),
    ) {
        let inner = heads * dh;
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

#[cfg(test)]
mod bench {
    use super::*;

    /// Not a test: f32 against bf16 attention at Stable Diffusion 1.5's shapes (batch 2, 8
    /// heads), alternating in one process. `cargo test --release --lib attention::bench --
    /// --ignored --nocapture` (figures in benches/README.md).
    #[test]
    #[ignore]
    fn f32_against_bf16() {
        let shapes = [
            (4096, 4096, 40),
            (4096, 77, 40),
            (1024, 1024, 80),
            (256, 256, 160),
        ];
        for (tq, tk, dh) in shapes {
            let (b, heads) = (2, 8);
            let inner = heads * dh;
            let val = |i: usize, m: usize| ((i * 7 % m) as f32 - (m / 2) as f32) / 31.0;
            let q: Vec<f32> = (0..inner * b * tq).map(|i| val(i, 23)).collect();
            let kv: Vec<f32> = (0..2 * inner * b * tk).map(|i| val(i, 19)).collect();
            let mut out = vec![0.0; inner * b * tq];
            let mut best = [f64::INFINITY; 2];
            for rep in 0..8 {
                let bf16 = rep % 2 == 1;
                let start = std::time::Instant::now();
                let tok = |data, row, t| Tokens { data, row, t };
                let (qt, kt, vt) = (tok(&q, 0, tq), tok(&kv, 0, tk), tok(&kv, inner, tk));
                let mut arena = Arena::default();
                attention(
                    qt,
                    kt,
                    vt,
                    b,
                    heads,
                    dh,
                    &mut out,
                    bf16.then_some(&mut arena),
                );
                let ms = start.elapsed().as_secs_f64() * 1e3;
                best[bf16 as usize] = best[bf16 as usize].min(ms);
            }
            let [f, h] = best;
            eprintln!("{tq} queries, {tk} keys, dh {dh}: f32 {f:.1} ms, bf16 {h:.1} ms");
        }
    }
}
