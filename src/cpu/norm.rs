//! GroupNorm over the internal `[c][b][h][w]` layout, fused with the affine transform, an
//! optional per-sample scale/shift (`h·(1 + scale) + shift`, diffusers' "scale_shift" time
//! conditioning) and an optional SiLU, in one read for the statistics and one read + write for
//! the output. The input may be a channel concatenation ([`Input`] segments).

use rayon::prelude::*;

use super::conv::Input;
use super::vecmath::silu_f32;
use super::SendPtr;
use crate::simd_dispatch;

/// Values summed in f32 lanes before they are folded into the f64 totals (8 per lane).
const FOLD: usize = 512;
/// f32 lanes of the statistics: with 16, LLVM vectorised the loop across chunks instead (16
/// reductions fed by scalar inserts); with 64 it runs along the lanes, in whole vectors.
const LANES: usize = 64;

/// Sum and sum of squares of planes (channel, sample `b`) for channels c0..c1: f32 lanes,
/// folded in f64 every [`FOLD`] values or so. The lanes run across plane boundaries: folded
/// per plane, a 4×4 plane's 16 values paid 16 widenings and adds (the bundled digits model's
/// GroupNorms spent most of their statistics pass there).
#[inline(always)]
fn sums_kernel(x: &Input<'_>, c0: usize, c1: usize, b: usize) -> (f64, f64) {
    let (mut s, mut q) = (0.0f64, 0.0f64);
    let (mut a, mut sq) = ([0.0f32; LANES], [0.0f32; LANES]);
    let mut pending = 0;
    for ch in c0..c1 {
        for block in plane(x, ch, b).chunks(FOLD) {
            if pending + block.len() > FOLD {
                (s, q) = (s + fold(&a), q + fold(&sq));
                (a, sq, pending) = ([0.0; LANES], [0.0; LANES], 0);
            }
            let mut it = block.chunks_exact(LANES);
            for c in &mut it {
                for l in 0..LANES {
                    a[l] += c[l];
                    sq[l] += c[l] * c[l];
                }
            }
            for ((x, y), &v) in a.iter_mut().zip(sq.iter_mut()).zip(it.remainder()) {
                *x += v;
                *y += v * v;
            }
            pending += block.len();
        }
    }
    (s + fold(&a), q + fold(&sq))
}

/// The lanes' total in f64, summed in eight lane-wise chains first (vectors of f64).
#[inline(always)]
fn fold(lanes: &[f32; LANES]) -> f64 {
    let mut acc = [0.0f64; 8];
    for c in lanes.chunks_exact(8) {
        for l in 0..8 {
            acc[l] += c[l] as f64;
        }
    }
    acc.iter().sum()
}

simd_dispatch!(fn sums_portable(x: &Input<'_>, c0: usize, c1: usize, b: usize) -> (f64, f64) => sums_kernel);

/// [`sums_kernel`]'s statistics, the AVX-512 kernel where the CPU has it.
fn sums(x: &Input<'_>, c0: usize, c1: usize, b: usize) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if super::vecmath::has_avx512() {
        // SAFETY: the CPU has the features `sums_avx512` is compiled for.
        return unsafe { sums_avx512(x, c0, c1, b) };
    }
    sums_portable(x, c0, c1, b)
}

/// [`sums_kernel`] with its 64 lanes in eight AVX-512 registers, the same sums in the same
/// order (the same bits). Compiled from the portable kernel, the lanes lived on the stack:
/// every add a load, an add and a store, the next chunk's add waiting on that store (the
/// statistics took 6% of the bundled digits model's batch-64 call, the normalisation 5%).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
unsafe fn sums_avx512(x: &Input<'_>, c0: usize, c1: usize, b: usize) -> (f64, f64) {
    use std::arch::x86_64::*;
    const V: usize = LANES / 16;
    // `fold` in registers, the same sums in the same order: its eight f64 chains are one
    // vector, eight lanes at a time widened into it (lanes 0–7 of each register, then 8–15),
    // then summed in lane order from -0.0, as `Iterator::sum` does. (Through memory, the
    // 64 lanes were stored and reloaded in halves, per sample and group: about a third of
    // the 4×4 planes' statistics.)
    let spill = |r: &[__m512; V]| {
        let mut acc = _mm512_setzero_pd();
        for r in r {
            acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(*r)));
            acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(*r)));
        }
        let mut lanes = [0.0f64; 8];
        // SAFETY: 8 values into an 8-value array.
        unsafe { _mm512_storeu_pd(lanes.as_mut_ptr(), acc) };
        lanes.iter().sum::<f64>()
    };
    let (mut s, mut q) = (0.0f64, 0.0f64);
    let zero = _mm512_setzero_ps();
    let (mut a, mut sq) = ([zero; V], [zero; V]);
    let mut pending = 0;
    for ch in c0..c1 {
        for block in plane(x, ch, b).chunks(FOLD) {
            if pending + block.len() > FOLD {
                (s, q) = (s + spill(&a), q + spill(&sq));
                (a, sq, pending) = ([zero; V], [zero; V], 0);
            }
            let (n, p) = (block.len(), block.as_ptr());
            let mut i = 0;
            // Separate products and sums, as the portable kernel's (no contraction into FMAs).
            while i + LANES <= n {
                for v in 0..V {
                    // SAFETY: i + 16·v + 16 ≤ n.
                    let x = unsafe { _mm512_loadu_ps(p.add(i + 16 * v)) };
                    a[v] = _mm512_add_ps(a[v], x);
                    sq[v] = _mm512_add_ps(sq[v], _mm512_mul_ps(x, x));
                }
                i += LANES;
            }
            // The remainder into the first lanes, as the portable kernel's: masked loads read
            // zeros past the block, and adding zeros leaves a lane's sum as it was.
            for v in 0..V {
                let at = i + 16 * v;
                if at >= n {
                    break;
                }
                let m: __mmask16 = if n - at >= 16 {
                    !0
                } else {
                    (1 << (n - at)) - 1
                };
                // SAFETY: the mask covers only values inside the block.
                let x = unsafe { _mm512_maskz_loadu_ps(m, p.add(at)) };
                a[v] = _mm512_add_ps(a[v], x);
                sq[v] = _mm512_add_ps(sq[v], _mm512_mul_ps(x, x));
            }
            pending += n;
        }
    }
    (s + spill(&a), q + spill(&sq))
}

/// `dst = act(src · a + b)` plane by plane: `src` and `dst` hold `coefs.len()` planes of
/// `hw` values, plane k with coefficients `coefs[k] = (a, b)`.
#[inline(always)]
fn affine_kernel(src: &[f32], dst: &mut [f32], hw: usize, coefs: &[(f32, f32)], silu: bool) {
    let planes = src.chunks_exact(hw).zip(dst.chunks_exact_mut(hw));
    for ((src, dst), &(a, b)) in planes.zip(coefs) {
        if silu {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = silu_f32(s * a + b);
            }
        } else {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s * a + b;
            }
        }
    }
}

simd_dispatch!(fn affine(src: &[f32], dst: &mut [f32], hw: usize, coefs: &[(f32, f32)], silu: bool) => affine_kernel);

/// GroupNorm's parameters.
#[derive(Clone, Copy)]
pub struct GroupNormParams<'a> {
    pub groups: usize,
    pub eps: f32,
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
}

/// Plane (channel c, sample b) of a segmented input.
#[inline(always)]
fn plane<'a>(x: &Input<'a>, c: usize, b: usize) -> &'a [f32] {
    planes(x, c, b, b + 1)
}

/// Planes (channel c, samples b0..b1) of a segmented input, contiguous (`[c][b][h][w]`).
#[inline(always)]
fn planes<'a>(x: &Input<'a>, mut c: usize, b0: usize, b1: usize) -> &'a [f32] {
    let n = x.dims.n();
    let hw = x.dims.hw();
    for &(seg, sc) in x.segs {
        if c < sc {
            return &seg[c * n + b0 * hw..][..(b1 - b0) * hw];
        }
        c -= sc;
    }
    panic!("channel out of range");
}

/// `out = act(GroupNorm(x) · (1 + scale[b]) + shift[b])`; `scale_shift` is `[b][2c]`
/// (scale first), `out` is `[c][b][h][w]`.
pub fn group_norm(
    x: Input<'_>,
    p: GroupNormParams<'_>,
    scale_shift: Option<&[f32]>,
    silu: bool,
    out: &mut [f32],
) {
    let c = x.channels();
    let d = x.dims;
    let (n, hw) = (d.n(), d.hw());
    assert_eq!(out.len(), c * n, "group norm output size");
    assert!(
        p.groups > 0 && c.is_multiple_of(p.groups),
        "channels not divisible by groups"
    );
    let cg = c / p.groups;
    if n == 0 {
        return; // (no planes: `affine` cuts its input into planes of hw values)
    }
    // Tasks of one group and up to MAX_SAMPLES samples, about 256 in all: a task's planes of
    // one channel are contiguous, so the affine pass runs over them in one call (on 4×4 planes
    // one call per plane left each call's chain of exponential and division exposed).
    let bchunk = (d.b * p.groups).div_ceil(256).clamp(1, MAX_SAMPLES);
    let bchunks = d.b.div_ceil(bchunk);
    let outp = SendPtr(out.as_mut_ptr());
    (0..p.groups * bchunks).into_par_iter().for_each(|task| {
        let (g, bc) = (task / bchunks, task % bchunks);
        let (b0, b1) = (bc * bchunk, ((bc + 1) * bchunk).min(d.b));
        let mut stats = [(0.0f64, 0.0f64); MAX_SAMPLES]; // (mean, 1/σ) per sample
        for b in b0..b1 {
            let (s, q) = sums(&x, g * cg, (g + 1) * cg, b);
            let cnt = (cg * hw) as f64;
            let mean = s / cnt;
            let var = (q / cnt - mean * mean).max(0.0);
            stats[b - b0] = (mean, 1.0 / (var + p.eps as f64).sqrt());
        }
        for ch in g * cg..(g + 1) * cg {
            let mut coefs = [(0.0f32, 0.0f32); MAX_SAMPLES];
            for (b, &(mean, rstd)) in (b0..b1).zip(&stats) {
                let mut a = rstd * p.gamma[ch] as f64;
                let mut o = p.beta[ch] as f64 - mean * a;
                if let Some(ss) = scale_shift {
                    let sc = 1.0 + ss[b * 2 * c + ch] as f64;
                    a *= sc;
                    o = o * sc + ss[b * 2 * c + c + ch] as f64;
                }
                coefs[b - b0] = (a as f32, o as f32);
            }
            let len = (b1 - b0) * hw;
            // SAFETY: planes (ch, b0..b1) of `out`, contiguous, belong to this task alone.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(outp.get().add(ch * n + b0 * hw), len) };
            let src = planes(&x, ch, b0, b1);
            affine(src, dst, hw, &coefs[..b1 - b0], silu);
        }
    });
}

/// Samples per GroupNorm task at most (the coefficients live on the stack).
const MAX_SAMPLES: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::layout::Dims;

    /// The AVX-512 statistics are the portable kernel's, bit for bit: planes shorter than a
    /// vector, between vectors, past one fold, groups straddling two segments.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_sums_are_the_portable_sums() {
        if !crate::cpu::vecmath::has_avx512() {
            return;
        }
        for (h, w) in [(1, 5), (4, 4), (3, 7), (8, 8), (9, 11), (16, 16), (24, 40)] {
            let d = Dims { b: 3, h, w };
            let x: Vec<f32> = (0..7 * d.n())
                .map(|i| ((i * 7919 % 997) as f32 - 498.0) * 0.013)
                .collect();
            let (lo, hi) = x.split_at(3 * d.n());
            let segs = [(lo, 3), (hi, 4)];
            let input = Input {
                segs: &segs,
                dims: d,
            };
            for (c0, c1) in [(0, 1), (0, 7), (2, 5), (6, 7)] {
                for b in 0..d.b {
                    let want = sums_portable(&input, c0, c1, b);
                    // SAFETY: the CPU has AVX-512 (checked above).
                    let got = unsafe { sums_avx512(&input, c0, c1, b) };
                    assert_eq!(
                        (want.0.to_bits(), want.1.to_bits()),
                        (got.0.to_bits(), got.1.to_bits()),
                        "{h}×{w} channels {c0}..{c1} sample {b}"
                    );
                }
            }
        }
    }

    /// Against an f64 reference: groups straddling two segments, with and without the
    /// per-sample scale/shift; two samples, and 301 (tasks of three samples, the last of one).
    #[test]
    fn normalises_groups_across_segments() {
        for (d, with_ss) in [
            (Dims { b: 2, h: 3, w: 5 }, false),
            (Dims { b: 2, h: 3, w: 5 }, true),
            (Dims { b: 301, h: 1, w: 3 }, true),
        ] {
            normalises_groups_at(d, with_ss);
        }
    }

    fn normalises_groups_at(d: Dims, with_ss: bool) {
        let c = 6;
        let x: Vec<f32> = (0..c * d.n())
            .map(|i| ((i * 7919 % 97) as f32) * 0.1 + 3.0)
            .collect();
        let (a, b) = x.split_at(2 * d.n()); // 2 + 4 channels, groups of 3 straddle the split
        let gamma: Vec<f32> = (0..c).map(|i| 1.0 + i as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..c).map(|i| i as f32 * -0.2).collect();
        let ss: Vec<f32> = (0..d.b * 2 * c)
            .map(|i| (i % 13) as f32 * 0.05 - 0.3)
            .collect();
        let p = GroupNormParams {
            groups: 2,
            eps: 1e-5,
            gamma: &gamma,
            beta: &beta,
        };
        let mut out = vec![0.0; x.len()];
        group_norm(
            Input {
                segs: &[(a, 2), (b, 4)],
                dims: d,
            },
            p,
            with_ss.then_some(&ss[..]),
            false,
            &mut out,
        );
        for bb in 0..d.b {
            for g in 0..2 {
                let vals: Vec<f64> = (g * 3..g * 3 + 3)
                    .flat_map(|ch| {
                        x[ch * d.n() + bb * d.hw()..][..d.hw()]
                            .iter()
                            .map(|&v| v as f64)
                    })
                    .collect();
                let m = vals.iter().sum::<f64>() / vals.len() as f64;
                let v = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / vals.len() as f64;
                for ch in g * 3..g * 3 + 3 {
                    let (sc, sh) = if with_ss {
                        (ss[bb * 2 * c + ch] as f64, ss[bb * 2 * c + c + ch] as f64)
                    } else {
                        (0.0, 0.0)
                    };
                    for i in 0..d.hw() {
                        let xi = x[ch * d.n() + bb * d.hw() + i] as f64;
                        let norm =
                            (xi - m) / (v + 1e-5).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
                        let want = norm * (1.0 + sc) + sh;
                        let got = out[ch * d.n() + bb * d.hw() + i] as f64;
                        assert!((want - got).abs() < 1e-5, "{d:?} {bb} {ch}: {want} {got}");
                    }
                }
            }
        }
    }
}
