//! F(4×4, 3×3)'s patches gathered in registers by AVX-512 permutes, for the tile rows that fill
//! vectors evenly: 4 or 8 tiles (four or two tile rows per vector) or a multiple of 16 (a
//! vector of one row), the output width exactly four per tile.
//!
//! The portable gather (`patches_kernel`) splits each input row into its four column residues
//! and copies them into 36 position rows of the pass's tiles, 4–8 values at a time, before the
//! transform reads them back: about 60% of the patch transform's time, which was 12.6% of the
//! batch-8 DDPM-CIFAR-10 call. Here each position's vector comes straight from the input rows:
//! one permute per half-vector picks every fourth column (or, through a fused 2× upsampling,
//! every second source value) of up to 32 loaded values, and the positions that reach into the
//! next tile (the patch's first and last columns) are the middle ones shifted by a lane. The
//! patches are the portable gather's, zeros included, and the transform is the same code, so
//! the bits are the same. Per tile and channel on one core (`bench` below) it takes 0.38–0.70×
//! the portable gather's time; what remains is mostly writing the transformed patches (144
//! bytes per tile and channel, past L2). The CIFAR UNet's batch-8 call took 0.88× the time,
//! its batch-1 call 0.96× (only its 32×32 layers run F(4×4) there).

use std::arch::x86_64::*;

use super::super::super::conv::Input;
use super::super::PatchRows;
use super::{lanes_mut, transform, A, L, M};
use crate::unet::layout::{Dims, Geometry};

/// Tiles per segment of a vector (one tile row's, or 16 of a wider one), when this gather
/// applies to tile rows of `tw` tiles: the output width must be `4 · tw` (no partial tiles).
pub fn segment(g: Geometry, d: Dims, tw: usize) -> Option<usize> {
    let wv = if g.upsample { 2 * d.w } else { d.w };
    let s = match tw {
        4 | 8 => tw,
        _ if tw.is_multiple_of(L) => L,
        _ => return None,
    };
    (wv == M * tw && crate::cpu::vecmath::has_avx512()).then_some(s)
}

/// Scratch [`patches`] needs: the 36 position vectors and the transform's intermediates
/// (`patches_scratch` gives at least that).
pub const SCRATCH: usize = (2 * A * A + A) * L;

/// The permute indices of column residue q (0..4) for segments of `s` tiles: the lanes of
/// each half-vector pick from a table of two loaded vectors (32 values). Without upsampling a
/// table holds 32 consecutive columns (a wide row's, or an 8-tile row) or two 16-column rows
/// (4-tile rows); through the upsampling, 16 source values (32 columns) or two 8-value rows.
fn index(s: usize, upsample: bool, q: usize) -> [i32; L] {
    std::array::from_fn(|l| {
        let h = l % 8; // the lane within its half
        let (row, tx) = if s == 4 { (h / 4, h % 4) } else { (0, h) };
        let col = M * tx + q; // the column within the segment's row
        (16 * row + if upsample { col / 2 } else { col }) as i32
    })
}

/// `v.row(ξ, ci - k0)[t]` for tile rows r0..r1 and input channels k0..k1, as
/// [`super::patches`] computes them, for the geometries [`segment`] accepts (`s` its result).
///
/// # Safety
/// The CPU has AVX-512 F, VL and DQ, and `s` is `segment(g, x.dims, tw)`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
pub unsafe fn patches(
    x: &Input<'_>,
    g: Geometry,
    (th, tw): (usize, usize),
    s: usize,
    r0: usize,
    r1: usize,
    k0: usize,
    k1: usize,
    scratch: &mut [f32],
    v: &mut PatchRows<'_>,
) {
    let d = x.dims;
    let up = g.upsample;
    let hv = if up { 2 * d.h } else { d.h };
    let t = (r1 - r0) * tw;
    let (pos, tmp) = lanes_mut(&mut scratch[..SCRATCH]).split_at_mut(A * A);
    // SAFETY: each index array is 16 i32s, one 512-bit vector.
    let idx: [__m512i; 4] =
        std::array::from_fn(|q| unsafe { _mm512_loadu_si512(index(s, up, q).as_ptr().cast()) });
    // Lanes whose patch column 0 (5) lies left (right) of their tile row: zero padding.
    let (mut first, mut last) = (0u16, 0u16);
    for l in (0..L).step_by(s) {
        first |= 1 << l;
        last |= 1 << (l + s - 1);
    }
    // Values a table loads from one input row: 32 columns (16 source values when upsampled)
    // of a wide row, else the whole row.
    let load = |row: &[f32], at: usize| -> (__m512, __m512) {
        let n = row.len() - at;
        // SAFETY: the masks read only the row's values from `at` on.
        unsafe {
            let a = _mm512_maskz_loadu_ps(mask(n), row[at..].as_ptr());
            let b = if n > L {
                _mm512_maskz_loadu_ps(mask(n - L), row[at + L..].as_ptr())
            } else {
                _mm512_setzero_ps()
            };
            (a, b)
        }
    };
    for (j, chan) in super::super::channels(x, k0, k1) {
        // Input row k − 1 + 4·ty of tile row r (upsampled: its source row), if in the image.
        let row = |r: usize, k: usize| -> Option<&[f32]> {
            let (b, ty) = (r / th, r % th);
            let y = (M * ty + k).checked_sub(1).filter(|&y| y < hv)?;
            let y = if up { y / 2 } else { y };
            Some(&chan[(b * d.h + y) * d.w..][..d.w])
        };
        for c0 in (0..t).step_by(L) {
            let (rt, tx0) = (r0 + c0 / tw, c0 % tw);
            for k in 0..A {
                // The tables of the two halves, and the columns left and right of the
                // segment (a wide row's neighbours; zero padding otherwise).
                let zero = _mm512_setzero_ps();
                let mut tab = [zero; 4];
                let (mut left, mut right) = (0.0, 0.0);
                if s == L {
                    if let Some(src) = row(rt, k) {
                        let (c, step) = if up { (2 * tx0, L) } else { (M * tx0, 2 * L) };
                        (tab[0], tab[1]) = load(src, c);
                        (tab[2], tab[3]) = load(src, c + step);
                        let wv = if up { 2 * d.w } else { d.w };
                        let col = |x: usize| if up { src[x / 2] } else { src[x] };
                        if tx0 > 0 {
                            left = col(M * tx0 - 1);
                        }
                        if M * (tx0 + L) < wv {
                            right = col(M * (tx0 + L));
                        }
                    }
                } else {
                    // Segment i of the vector is tile row rt + i: a table per row of 8 tiles,
                    // half a table per row of 4.
                    for i in 0..(L / s).min(r1 - rt) {
                        let Some(src) = row(rt + i, k) else {
                            continue;
                        };
                        let (a, b) = load(src, 0);
                        if s == 8 {
                            (tab[2 * i], tab[2 * i + 1]) = (a, b);
                        } else {
                            tab[i] = a;
                        }
                    }
                }
                // Columns 4tx + q (patch columns u = q + 1), then u = 0 and 5 by a lane.
                let mut p = [zero; A];
                for q in 0..4 {
                    let lo = _mm512_permutex2var_ps(tab[0], idx[q], tab[1]);
                    let hi = _mm512_permutex2var_ps(tab[2], idx[q], tab[3]);
                    p[q + 1] = _mm512_mask_mov_ps(lo, 0xff00, hi);
                }
                let shift = |a: __m512, b: __m512, right: bool| {
                    let (a, b) = (_mm512_castps_si512(a), _mm512_castps_si512(b));
                    _mm512_castsi512_ps(if right {
                        _mm512_alignr_epi32::<1>(a, b)
                    } else {
                        _mm512_alignr_epi32::<15>(a, b)
                    })
                };
                p[0] = _mm512_maskz_mov_ps(!first | 1, shift(p[4], _mm512_set1_ps(left), false));
                p[5] = _mm512_maskz_mov_ps(
                    !last | 1 << (L - 1),
                    shift(_mm512_set1_ps(right), p[1], true),
                );
                for (u, pu) in p.iter().enumerate() {
                    // SAFETY: a position vector is 16 f32s.
                    unsafe { _mm512_storeu_ps(pos[A * k + u].as_mut_ptr(), *pu) };
                }
            }
            transform(|k, u| pos[A * k + u], tmp, v, j, c0, L.min(t - c0));
        }
    }
}

/// The first `n` lanes (all 16 from 16 up).
#[inline(always)]
fn mask(n: usize) -> __mmask16 {
    if n >= L {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::super::{patches_copied, patches_scratch};
    use super::*;

    /// An input of `b` images of `h × w`, the 3×3 geometry (upsampling or not) and its tile
    /// rows and columns.
    pub(super) fn layer(
        b: usize,
        h: usize,
        w: usize,
        upsample: bool,
    ) -> (Dims, Geometry, (usize, usize)) {
        let d = Dims { b, h, w };
        let g = Geometry {
            upsample,
            ..Geometry::SAME3
        };
        let od = g.out_dims(d);
        (d, g, (od.h / M, od.w / M))
    }

    /// The patches by the gather (`gather`) or the portable one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn either(
        gather: bool,
        input: &Input<'_>,
        g: Geometry,
        tiles: (usize, usize),
        s: usize,
        (r0, r1): (usize, usize),
        (k0, k1): (usize, usize),
        scratch: &mut [f32],
        v: &mut PatchRows<'_>,
    ) {
        if gather {
            // SAFETY: the callers checked AVX-512 (`segment`), and `s` is its result.
            unsafe { patches(input, g, tiles, s, r0, r1, k0, k1, scratch, v) };
        } else {
            patches_copied(input, g, tiles, r0, r1, k0, k1, scratch, v);
        }
    }

    /// The gather against the portable one, bit for bit: 4-, 8-, 16- and 32-tile rows, with
    /// and without the upsampling, several images, partial vectors (an odd count of tile rows)
    /// and a pass that starts inside the tile rows, over two input segments.
    #[test]
    fn matches_the_portable_gather() {
        if !crate::cpu::vecmath::has_avx512() {
            eprintln!("no AVX-512 here: nothing to compare");
            return;
        }
        for (b, h, w, up, r0, r1) in [
            (3, 16, 16, false, 0, 12),
            (2, 32, 32, false, 1, 16),
            (2, 64, 64, false, 3, 32),
            (1, 24, 128, false, 0, 6),
            (3, 8, 8, true, 0, 12),
            (2, 16, 16, true, 2, 16),
            (1, 32, 32, true, 1, 16),
            (2, 12, 64, true, 0, 12),
        ] {
            let (d, g, (th, tw)) = layer(b, h, w, up);
            let s = segment(g, d, tw).expect("a geometry the gather takes");
            let (c1, c2) = (3, 2);
            let x: Vec<f32> = (0..(c1 + c2) * d.n())
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let (a, bb) = x.split_at(c1 * d.n());
            let segs = [(a, c1), (bb, c2)];
            let input = Input {
                segs: &segs,
                dims: d,
            };
            let (k0, k1) = (1, 5);
            let t = (r1 - r0) * tw;
            let plane = (k1 - k0) * t;
            let run = |gather: bool| {
                let mut out = vec![f32::NAN; A * A * plane];
                // SAFETY: `out` holds 36 planes of (k1 - k0) rows of t, all of them this one's.
                let mut rows = unsafe {
                    PatchRows::new(out.as_mut_ptr(), A * A, plane, k1 - k0, t, 0, k1 - k0)
                };
                let mut scratch = vec![f32::NAN; patches_scratch(t, tw).max(SCRATCH)];
                either(
                    gather,
                    &input,
                    g,
                    (th, tw),
                    s,
                    (r0, r1),
                    (k0, k1),
                    &mut scratch,
                    &mut rows,
                );
                out
            };
            let (want, got) = (run(false), run(true));
            for (i, (o, r)) in got.iter().zip(&want).enumerate() {
                assert_eq!(o.to_bits(), r.to_bits(), "{d:?} up={up} at {i}: {o} vs {r}");
            }
        }
    }
}

#[cfg(test)]
mod bench {
    use super::super::patches_scratch;
    use super::tests::{either, layer};
    use super::*;

    /// Not a test: the gather against the portable one, per tile and channel, on the
    /// DDPM-CIFAR-10 UNet's batch-8 F(4×4) layers (128 input channels, a 512-tile pass) and
    /// SD 1.5's 64×64 ones, alternating in one process. `cargo test --release --lib
    /// f4::gather::bench -- --ignored --nocapture` (figures in benches/README.md).
    #[test]
    #[ignore]
    fn gather_against_portable() {
        for (b, h, w, up, c) in [
            (8, 32, 32, false, 128),
            (8, 16, 16, false, 256),
            (8, 16, 16, true, 256),
            (2, 64, 64, false, 320),
        ] {
            let (d, g, (th, tw)) = layer(b, h, w, up);
            let Some(s) = segment(g, d, tw) else {
                eprintln!("no AVX-512 here");
                return;
            };
            let rows = (512 / tw).min(b * th);
            let t = rows * tw;
            let kc = c.min(128);
            let x: Vec<f32> = (0..c * d.n()).map(|i| (i % 97) as f32).collect();
            let segs = [(&x[..], c)];
            let input = Input {
                segs: &segs,
                dims: d,
            };
            let plane = kc * t;
            let mut out = vec![0.0; A * A * plane];
            let mut scratch = vec![0.0; patches_scratch(t, tw)];
            let mut best = [f64::INFINITY; 2];
            for rep in 0..40 {
                let gather = rep % 2 == 1;
                let start = std::time::Instant::now();
                for r0 in (0..b * th).step_by(rows) {
                    for k0 in (0..c).step_by(kc).filter(|k0| k0 + kc <= c) {
                        // SAFETY: `out` holds 36 planes of kc rows of t, all this one's.
                        let mut v =
                            unsafe { PatchRows::new(out.as_mut_ptr(), A * A, plane, kc, t, 0, kc) };
                        let r1 = r0 + rows;
                        either(
                            gather,
                            &input,
                            g,
                            (th, tw),
                            s,
                            (r0, r1),
                            (k0, k0 + kc),
                            &mut scratch,
                            &mut v,
                        );
                    }
                }
                let ns = start.elapsed().as_secs_f64() * 1e9 / (c * b * th * tw) as f64;
                best[gather as usize] = best[gather as usize].min(ns);
            }
            let [p, q] = best;
            eprintln!(
                "{b}×{h}×{w}{} {c} channels, {tw} tiles per row: portable {p:.1} ns, gather {q:.1} ns per tile and channel ({:.2}×)",
                if up { " upsampled" } else { "" },
                p / q
            );
        }
    }
}
