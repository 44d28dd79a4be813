//! 3×3, stride-1, padding-1 convolutions by Winograd's minimal filtering F(2×2, 3×3) (Lavin &
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2×2 output tile comes from a 4×4 input patch with 16 products per (input, output)
//! channel pair instead of im2col's 36: the weights `g` become `U = G g Gᵀ`, each patch `d`
//! becomes `V = Bᵀ d B`, and the tile is `Y = Aᵀ (U ⊙ V) A`. Summed over input channels, the
//! elementwise products are 16 matrix products `M[ξ] = U[ξ] × V[ξ]` (`[cout × cin] ×
//! [cin × tiles]`), so `gemm` does 2.25× fewer multiply-adds than on the im2col columns. The
//! transforms multiply only by 0, ±1 and ±½ (exact in binary), so the result differs from the
//! direct sum only by rounding, as im2col's does.
//!
//! The work is split as in `conv`: each rayon task takes whole rows of tiles (so its output
//! block is contiguous columns, prefilled with the epilogue by `conv::prefill`) and a chunk of
//! output channels. It walks the input channels in chunks: transforms that chunk's weights
//! (rows of its output channels) and patches into its thread's scratch, and accumulates the 16
//! products single-threaded; then it adds the inverse transform onto its block. So nothing is
//! kept or written to memory beyond the output, and what is transformed stays in cache. The
//! transforms are a few adds per value against hundreds of multiply-adds in the products, but
//! only if they run in vectors (each step along the tiles or the input channels, never per
//! element): written per tile they took a third of a deep layer's time. A fused 2× nearest
//! upsampling of the input (the up blocks' `Upsample2D` conv) is read through when the patches
//! are gathered.

use rayon::prelude::*;

use super::arena::with_scratch;
use super::conv::{gemm_rows, prefill, Init, Input};
use super::SendPtr;
use crate::unet::layout::{Dims, Geometry};
use crate::unet::weights::Weight;

/// Positions of the transformed tile (4×4).
const XI: usize = 16;
/// Input channels per chunk (the products' depth).
const KC: usize = 256;
/// Output channels per task, at most (the products' rows).
const MAX_ROWS: usize = 160;
/// Tiles per task (the products' columns): at most, and the fewest a task is cut down to.
const TILE_TILES: usize = 256;
const MIN_TILES: usize = 64;

/// Whether `winograd` computes this convolution: a 3×3 kernel, stride 1, padding 1 (with or
/// without a fused upsampling) on input `d`, unless switched off by `RDIFF_NO_WINOGRAD` (to time
/// or compare against im2col). On 2 cores (AVX2) it takes 0.6–0.75× im2col's time from 64
/// channels and 32 tiles (2×2 output pixels) up, and loses below: with 32 channels the
/// transforms weigh too much against the products, with 16 tiles the products are too narrow.
pub fn applies(g: Geometry, d: Dims, cin: usize, cout: usize) -> bool {
    let od = g.out_dims(d);
    g.k == 3
        && g.stride == 1
        && g.pad == [1; 4]
        && cin >= 64
        && cout >= 64
        && od.b * od.h.div_ceil(2) * od.w.div_ceil(2) >= 32
        && std::env::var_os("RDIFF_NO_WINOGRAD").is_none_or(|v| v.is_empty())
}

/// The convolution `out = scale · (init + conv(x, w))` of a 3×3, stride-1, padding-1 geometry
/// (`applies`); `w` is `[cout][cin][3][3]`, `out` `[cout][b][h][w]` at the (possibly
/// upsampled) input's size.
pub fn conv2d(x: Input<'_>, w: &Weight, cout: usize, g: Geometry, init: Init<'_>, out: &mut [f32]) {
    let cin = x.channels();
    assert_eq!(w.len(), cout * cin * 9, "conv weight size");
    let od = g.out_dims(x.dims);
    let n = od.n();
    assert_eq!(out.len(), cout * n, "conv output size");
    let (th, tw) = (od.h.div_ceil(2), od.w.div_ceil(2));
    let tile_rows = od.b * th;

    // Chunks of output channels, then groups of tile rows: as many as fit TILE_TILES, more
    // (down to MIN_TILES) while there are too few tasks. The partition depends on the shapes
    // only, never on the pool, so every output bit does too.
    let mchunks = cout.div_ceil(MAX_ROWS);
    let mstep = cout.div_ceil(mchunks).next_multiple_of(16).min(cout);
    let mchunks = cout.div_ceil(mstep);
    let mut groups = tile_rows.div_ceil((TILE_TILES / tw).max(1));
    let need = (super::PARTITION_THREADS / 2).div_ceil(mchunks);
    if groups < need {
        groups = need.min(tile_rows * tw / MIN_TILES).max(groups);
    }
    let tr = tile_rows.div_ceil(groups.min(tile_rows));
    let groups = tile_rows.div_ceil(tr);

    // First output column of tile row r (row r of sample r / th).
    let col = |r: usize| {
        let (b, ty) = (r / th, r % th);
        (b * od.h + 2 * ty) * od.w
    };
    let outp = SendPtr(out.as_mut_ptr());
    (0..groups * mchunks).into_par_iter().for_each(|task| {
        let (grp, mc) = (task / mchunks, task % mchunks);
        let (r0, r1) = (grp * tr, ((grp + 1) * tr).min(tile_rows));
        let t = (r1 - r0) * tw;
        let (c0, c1) = (col(r0), if r1 == tile_rows { n } else { col(r1) });
        let m0 = mc * mstep;
        let m = mstep.min(cout - m0);
        // SAFETY: task (grp, mc) owns rows m0..m0+m and columns c0..c1 of `out`; no two tasks
        // share both.
        let dst = unsafe { outp.get().add(m0 * n + c0) };
        // SAFETY: prefill writes only the task's m×(c1-c0) block at dst (row stride n).
        unsafe { prefill(dst, n, m0, m, c0, c1 - c0, od, &init) };
        let kc = KC.min(cin);
        // Scratch after U, V and M, for each step in turn: `weights` (a row of kernels widened
        // to f32, then tap-major, and two rows of G g), `patches` (four input rows by parity),
        // `add_tiles` (four output phases of a tile row).
        let rows_len = (24 * kc).max(8 * (tw + 1)).max(4 * tw);
        with_scratch(XI * (m * kc + kc * t + m * t) + rows_len, |s| {
            let (u, rest) = s.split_at_mut(XI * m * kc);
            let (v, rest) = rest.split_at_mut(XI * kc * t);
            let (mm, rows) = rest.split_at_mut(XI * m * t);
            for k0 in (0..cin).step_by(kc) {
                let k1 = (k0 + kc).min(cin);
                let kl = k1 - k0;
                weights(w, cin, m0, m, k0, k1, rows, u);
                patches(&x, g, (th, tw), r0, r1, k0, k1, rows, v);
                for xi in 0..XI {
                    // SAFETY: U[ξ] is m×kl, V[ξ] kl×t and M[ξ] m×t, each row-major inside
                    // the scratch.
                    unsafe {
                        gemm_rows(
                            (m, t, kl),
                            (mm.as_mut_ptr().add(xi * m * t), t),
                            k0 > 0,
                            (u.as_ptr().add(xi * m * kl), kl),
                            (v.as_ptr().add(xi * kl * t), t),
                            1.0,
                        );
                    }
                }
            }
            // SAFETY: the task's block, as for prefill.
            unsafe {
                add_tiles(
                    mm,
                    m,
                    (th, tw),
                    od.h,
                    od.w,
                    r0,
                    r1,
                    init.scale,
                    rows,
                    dst,
                    n,
                )
            };
        });
    });
}

/// `U[ξ][i][j] = (G g Gᵀ)[ξ]` for the 3×3 kernel `g = w[m0 + i][k0 + j]` of output channels
/// m0..m0+m and input channels k0..k1, with `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
/// `scratch` holds one row's kernels tap-major (`[9][k1 - k0]`), rows 1 and 2 of `G g` (so
/// that every step below runs along j, in vectors) and the row widened when `w` is f16/bf16.
#[allow(clippy::too_many_arguments)]
fn weights(
    w: &Weight,
    cin: usize,
    m0: usize,
    m: usize,
    k0: usize,
    k1: usize,
    scratch: &mut [f32],
    u: &mut [f32],
) {
    let kl = k1 - k0;
    let (taps, rest) = scratch.split_at_mut(9 * kl);
    let (gg, wide) = rest.split_at_mut(6 * kl);
    let (g1, g2) = gg.split_at_mut(3 * kl);
    for i in 0..m {
        let row = w.f32_range(((m0 + i) * cin + k0) * 9, kl * 9, wide);
        for (j, g) in row.chunks_exact(9).enumerate() {
            for (tap, &v) in g.iter().enumerate() {
                taps[tap * kl + j] = v;
            }
        }
        // Rows 1 and 2 of G g (rows 0 and 3 are the kernel's first and last rows), each
        // column c a vector along j.
        for c in 0..3 {
            let (a, b, d) = (
                &taps[c * kl..][..kl],
                &taps[(3 + c) * kl..][..kl],
                &taps[(6 + c) * kl..][..kl],
            );
            let (o1, o2) = (&mut g1[c * kl..][..kl], &mut g2[c * kl..][..kl]);
            for ((((p, q), &x), &y), &z) in o1.iter_mut().zip(o2.iter_mut()).zip(a).zip(b).zip(d) {
                *p = 0.5 * (x + y + z);
                *q = 0.5 * (x - y + z);
            }
        }
        for r in 0..4 {
            let src: &[f32] = match r {
                0 => &taps[..3 * kl],
                1 => g1,
                2 => g2,
                _ => &taps[6 * kl..9 * kl],
            };
            let (x, y, z) = (&src[..kl], &src[kl..2 * kl], &src[2 * kl..3 * kl]);
            let at = |c: usize| (4 * r + c) * m * kl + i * kl;
            u[at(0)..][..kl].copy_from_slice(x);
            for (((o, &a), &b), &c) in u[at(1)..][..kl].iter_mut().zip(x).zip(y).zip(z) {
                *o = 0.5 * (a + b + c);
            }
            for (((o, &a), &b), &c) in u[at(2)..][..kl].iter_mut().zip(x).zip(y).zip(z) {
                *o = 0.5 * (a - b + c);
            }
            u[at(3)..][..kl].copy_from_slice(z);
        }
    }
}

/// `V[ξ][ci - k0][t] = (Bᵀ d B)[ξ]` for the 4×4 patch `d` of every tile t of tile rows r0..r1
/// and input channels k0..k1, with `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
/// [0, 1, 0, -1]]`. `rows` is scratch for four input rows, each split by column parity so
/// that every step runs along the tiles, in vectors.
#[allow(clippy::too_many_arguments)]
fn patches(
    x: &Input<'_>,
    g: Geometry,
    (th, tw): (usize, usize),
    r0: usize,
    r1: usize,
    k0: usize,
    k1: usize,
    rows: &mut [f32],
    v: &mut [f32],
) {
    let d = x.dims;
    let hv = if g.upsample { 2 * d.h } else { d.h };
    let (kl, t) = (k1 - k0, (r1 - r0) * tw);
    // Tile tx reads columns 2tx-1 .. 2tx+2: odd[tx], even[tx], odd[tx+1], even[tx+1], with
    // odd[e] = column 2e - 1 and even[e] = column 2e (zero outside the image).
    let half = tw + 1;
    let mut s0 = 0; // first channel of the segment
    for &(seg, sc) in x.segs {
        for ci in s0.max(k0)..(s0 + sc).min(k1) {
            let chan = &seg[(ci - s0) * d.n()..][..d.n()];
            let j = ci - k0;
            for r in r0..r1 {
                let (b, ty) = (r / th, r % th);
                let img = &chan[b * d.hw()..][..d.hw()];
                // Input rows 2ty-1 .. 2ty+2 (k = 0..4), odd columns then even ones.
                for k in 0..4 {
                    let (odd, even) = rows[2 * k * half..][..2 * half].split_at_mut(half);
                    odd.fill(0.0);
                    even.fill(0.0);
                    let y = (2 * ty + k) as isize - 1;
                    if y < 0 || y >= hv as isize {
                        continue;
                    }
                    let y = y as usize;
                    if g.upsample {
                        // Columns 2e and 2e + 1 both hold source column e.
                        let src = &img[(y / 2) * d.w..][..d.w];
                        even[..d.w].copy_from_slice(src);
                        odd[1..=d.w].copy_from_slice(src);
                    } else {
                        let src = &img[y * d.w..][..d.w];
                        for (e, pair) in src.chunks(2).enumerate() {
                            even[e] = pair[0];
                            if let Some(&o) = pair.get(1) {
                                odd[e + 1] = o;
                            }
                        }
                    }
                }
                // Bᵀ on the rows, in place: row k becomes row k of Bᵀ d.
                let [p0, p1, p2, p3] = split4(&mut rows[..8 * half], 2 * half);
                for (((a, b1), c), dd) in p0
                    .iter_mut()
                    .zip(p1.iter_mut())
                    .zip(p2.iter_mut())
                    .zip(p3.iter_mut())
                {
                    let (va, vb, vc, vd) = (*a, *b1, *c, *dd);
                    *a = va - vc;
                    *b1 = vb + vc;
                    *c = vc - vb;
                    *dd = vb - vd;
                }
                // B on the columns of each tile, into V.
                let tbase = (r - r0) * tw;
                for i in 0..4 {
                    let (odd, even) = rows[2 * i * half..][..2 * half].split_at(half);
                    let at = |c: usize| ((4 * i + c) * kl + j) * t + tbase;
                    for ((o, &a), &b) in v[at(0)..][..tw].iter_mut().zip(odd).zip(&odd[1..]) {
                        *o = a - b;
                    }
                    for ((o, &a), &b) in v[at(1)..][..tw].iter_mut().zip(even).zip(&odd[1..]) {
                        *o = a + b;
                    }
                    for ((o, &a), &b) in v[at(2)..][..tw].iter_mut().zip(even).zip(&odd[1..]) {
                        *o = b - a;
                    }
                    for ((o, &a), &b) in v[at(3)..][..tw].iter_mut().zip(even).zip(&even[1..]) {
                        *o = a - b;
                    }
                }
            }
        }
        s0 += sc;
    }
}

/// `x` as four consecutive slices of `len`.
fn split4(x: &mut [f32], len: usize) -> [&mut [f32]; 4] {
    let (a, rest) = x.split_at_mut(len);
    let (b, rest) = rest.split_at_mut(len);
    let (c, d) = rest.split_at_mut(len);
    [a, b, c, &mut d[..len]]
}

/// Adds `scale · Aᵀ M A` (with `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`) of every tile of rows
/// r0..r1 and each of the m channels onto the output block at `dst`, clipped to the image.
/// `ys` is scratch for one tile row's four output phases, so that the transform runs along the
/// tiles, in vectors.
///
/// # Safety
/// `dst` points at the block's first channel and column (column `col(r0)`) of an output with
/// row stride `n`, and the block is the caller's alone.
#[allow(clippy::too_many_arguments)]
unsafe fn add_tiles(
    mm: &[f32],
    m: usize,
    (th, tw): (usize, usize),
    h: usize,
    w: usize,
    r0: usize,
    r1: usize,
    scale: f32,
    ys: &mut [f32],
    dst: *mut f32,
    n: usize,
) {
    let t = (r1 - r0) * tw;
    let (y00, rest) = ys.split_at_mut(tw);
    let (y01, rest) = rest.split_at_mut(tw);
    let (y10, rest) = rest.split_at_mut(tw);
    let y11 = &mut rest[..tw];
    for i in 0..m {
        let mut at = 0; // the output column of tile row r, from the block's start
        for r in r0..r1 {
            let ty = r % th;
            let rows = (h - 2 * ty).min(2);
            let base = (r - r0) * tw;
            let e = |xi: usize| &mm[(xi * m + i) * t + base..][..tw];
            let (m00, m01, m02, m03) = (e(0), e(1), e(2), e(3));
            let (m10, m11, m12, m13) = (e(4), e(5), e(6), e(7));
            let (m20, m21, m22, m23) = (e(8), e(9), e(10), e(11));
            let (m30, m31, m32, m33) = (e(12), e(13), e(14), e(15));
            for tx in 0..tw {
                // Aᵀ on the rows (s0, s1 over the four columns), then A on the columns.
                let s0 = [
                    m00[tx] + m10[tx] + m20[tx],
                    m01[tx] + m11[tx] + m21[tx],
                    m02[tx] + m12[tx] + m22[tx],
                    m03[tx] + m13[tx] + m23[tx],
                ];
                let s1 = [
                    m10[tx] - m20[tx] - m30[tx],
                    m11[tx] - m21[tx] - m31[tx],
                    m12[tx] - m22[tx] - m32[tx],
                    m13[tx] - m23[tx] - m33[tx],
                ];
                y00[tx] = scale * (s0[0] + s0[1] + s0[2]);
                y01[tx] = scale * (s0[1] - s0[2] - s0[3]);
                y10[tx] = scale * (s1[0] + s1[1] + s1[2]);
                y11[tx] = scale * (s1[1] - s1[2] - s1[3]);
            }
            for (yy, (ya, yb)) in [(&*y00, &*y01), (&*y10, &*y11)].into_iter().enumerate() {
                if yy >= rows {
                    break;
                }
                // SAFETY: channel i < m of the block, pixel row yy of tile row r, which the
                // block holds (w columns).
                let out =
                    unsafe { std::slice::from_raw_parts_mut(dst.add(i * n + at + yy * w), w) };
                let mut pairs = out.chunks_exact_mut(2);
                for ((o, &a), &b) in (&mut pairs).zip(ya.iter()).zip(yb.iter()) {
                    o[0] += a;
                    o[1] += b;
                }
                if let [last] = pairs.into_remainder() {
                    *last += ya[tw - 1];
                }
            }
            at += rows * w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::conv;
    use half::bf16;

    /// Winograd against the im2col convolution, odd and even sizes, segments, an epilogue with
    /// a residual, with and without the fused upsampling.
    #[test]
    fn matches_the_im2col_convolution() {
        for (d, c1, c2, cout, upsample) in [
            (Dims { b: 2, h: 6, w: 8 }, 16, 8, 40, false),
            (Dims { b: 3, h: 5, w: 7 }, 20, 0, 17, false),
            (Dims { b: 1, h: 3, w: 2 }, 9, 9, 16, true),
            (Dims { b: 2, h: 33, w: 30 }, 24, 0, 64, false),
            (Dims { b: 1, h: 4, w: 5 }, 280, 250, 170, false),
        ] {
            let cin = c1 + c2;
            let g = Geometry {
                upsample,
                ..Geometry::SAME3
            };
            let od = g.out_dims(d);
            let x: Vec<f32> = (0..cin * d.n())
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..cout * cin * 9)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 30.0)
                .collect();
            let bias: Vec<f32> = (0..cout).map(|i| i as f32 * 0.1).collect();
            let res: Vec<f32> = (0..cout * od.n()).map(|i| (i % 7) as f32).collect();
            let init = Init {
                residual: Some(&res),
                scale: 0.5,
                ..Init::bias(&bias)
            };
            let (a, b) = x.split_at(c1 * d.n());
            let segs: Vec<(&[f32], usize)> =
                [(a, c1), (b, c2)].into_iter().filter(|s| s.1 > 0).collect();
            let input = Input {
                segs: &segs,
                dims: d,
            };
            // f32 weights, and a bf16 checkpoint's (widened row by row in `weights`).
            let half = Weight::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect());
            for w in [Weight::F32(w), half] {
                let mut want = vec![f32::NAN; cout * od.n()];
                conv::conv2d(input, &w.to_f32(), cout, g, init, &mut want);
                let mut got = vec![f32::NAN; cout * od.n()];
                conv2d(input, &w, cout, g, init, &mut got);
                for (i, (o, r)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (o - r).abs() < 1e-4 * (1.0 + r.abs()),
                        "{d:?} {i}: {o} vs {r}"
                    );
                }
            }
        }
    }
}
