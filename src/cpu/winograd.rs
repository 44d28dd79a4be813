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
//! kept or written to memory beyond the output, and what is transformed stays in cache: the
//! transforms are a few adds per value against hundreds of multiply-adds per value in the
//! products, and cheap as long as they do not stream through memory. A fused 2× nearest
//! upsampling of the input (the up blocks' `Upsample2D` conv) is read through when the patches
//! are gathered.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::arena::with_scratch;
use super::conv::{prefill, Init, Input};
use super::SendPtr;
use crate::unet::layout::{Dims, Geometry};

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
pub fn conv2d(x: Input<'_>, w: &[f32], cout: usize, g: Geometry, init: Init<'_>, out: &mut [f32]) {
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
        let rowlen = 2 * tw + 2;
        with_scratch(XI * (m * kc + kc * t + m * t) + 4 * rowlen, |s| {
            let (u, rest) = s.split_at_mut(XI * m * kc);
            let (v, rest) = rest.split_at_mut(XI * kc * t);
            let (mm, rows) = rest.split_at_mut(XI * m * t);
            for k0 in (0..cin).step_by(kc) {
                let k1 = (k0 + kc).min(cin);
                let kl = k1 - k0;
                weights(w, cin, m0, m, k0, k1, u);
                patches(&x, g, (th, tw), r0, r1, k0, k1, rows, v);
                for xi in 0..XI {
                    // SAFETY: U[ξ] is m×kl, V[ξ] kl×t and M[ξ] m×t, each row-major inside
                    // the scratch.
                    unsafe {
                        gemm(
                            m,
                            t,
                            kl,
                            mm.as_mut_ptr().add(xi * m * t),
                            1,
                            t as isize,
                            k0 > 0,
                            u.as_ptr().add(xi * m * kl),
                            1,
                            kl as isize,
                            v.as_ptr().add(xi * kl * t),
                            1,
                            t as isize,
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
            // SAFETY: the task's block, as for prefill.
            unsafe { add_tiles(mm, m, (th, tw), od.h, od.w, r0, r1, init.scale, dst, n) };
        });
    });
}

/// `U[ξ][i][j] = (G g Gᵀ)[ξ]` for the 3×3 kernel `g = w[m0 + i][k0 + j]` of output channels
/// m0..m0+m and input channels k0..k1, with `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
fn weights(w: &[f32], cin: usize, m0: usize, m: usize, k0: usize, k1: usize, u: &mut [f32]) {
    let kl = k1 - k0;
    for i in 0..m {
        let row = &w[((m0 + i) * cin + k0) * 9..][..kl * 9];
        for (j, g) in row.chunks_exact(9).enumerate() {
            // G g: 4 rows of 3.
            let mut gg = [[0.0f32; 3]; 4];
            for c in 0..3 {
                let (a, b, d) = (g[c], g[3 + c], g[6 + c]);
                gg[0][c] = a;
                gg[1][c] = 0.5 * (a + b + d);
                gg[2][c] = 0.5 * (a - b + d);
                gg[3][c] = d;
            }
            for (r, q) in gg.iter().enumerate() {
                let vals = [
                    q[0],
                    0.5 * (q[0] + q[1] + q[2]),
                    0.5 * (q[0] - q[1] + q[2]),
                    q[2],
                ];
                for (c, val) in vals.into_iter().enumerate() {
                    u[((4 * r + c) * m + i) * kl + j] = val;
                }
            }
        }
    }
}

/// `V[ξ][ci - k0][t] = (Bᵀ d B)[ξ]` for the 4×4 patch `d` of every tile t of tile rows r0..r1
/// and input channels k0..k1, with `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
/// [0, 1, 0, -1]]`. `rows` is scratch for four padded input rows.
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
    let (hv, wv) = if g.upsample {
        (2 * d.h, 2 * d.w)
    } else {
        (d.h, d.w)
    };
    let (kl, t) = (k1 - k0, (r1 - r0) * tw);
    let rowlen = 2 * tw + 2;
    let (p0, rest) = rows.split_at_mut(rowlen);
    let (p1, rest) = rest.split_at_mut(rowlen);
    let (p2, p3) = rest.split_at_mut(rowlen);
    let mut s0 = 0; // first channel of the segment
    for &(seg, sc) in x.segs {
        for ci in s0.max(k0)..(s0 + sc).min(k1) {
            let chan = &seg[(ci - s0) * d.n()..][..d.n()];
            let j = ci - k0;
            for r in r0..r1 {
                let (b, ty) = (r / th, r % th);
                let img = &chan[b * d.hw()..][..d.hw()];
                // Input rows 2ty-1 .. 2ty+2, padded: p[k + 1] is column k, zero outside.
                for (k, p) in [&mut *p0, &mut *p1, &mut *p2, &mut *p3]
                    .into_iter()
                    .enumerate()
                {
                    let y = (2 * ty + k) as isize - 1;
                    p.fill(0.0);
                    if y < 0 || y >= hv as isize {
                        continue;
                    }
                    let y = y as usize;
                    if g.upsample {
                        let src = &img[(y / 2) * d.w..][..d.w];
                        for (i, &s) in src.iter().enumerate() {
                            p[1 + 2 * i] = s;
                            p[2 + 2 * i] = s;
                        }
                    } else {
                        p[1..1 + wv].copy_from_slice(&img[y * d.w..][..d.w]);
                    }
                }
                // Bᵀ on the rows, in place: p0..p3 become its four rows.
                for k in 0..rowlen {
                    let (a, b1, c, e) = (p0[k], p1[k], p2[k], p3[k]);
                    p0[k] = a - c;
                    p1[k] = b1 + c;
                    p2[k] = c - b1;
                    p3[k] = b1 - e;
                }
                // B on the columns of each tile, into V.
                let tbase = (r - r0) * tw;
                for (i, p) in [&*p0, &*p1, &*p2, &*p3].into_iter().enumerate() {
                    let [o0, o1, o2, o3] = [0, 1, 2, 3].map(|c| ((4 * i + c) * kl + j) * t);
                    for tx in 0..tw {
                        let q = &p[2 * tx..][..4];
                        let at = tbase + tx;
                        v[o0 + at] = q[0] - q[2];
                        v[o1 + at] = q[1] + q[2];
                        v[o2 + at] = q[2] - q[1];
                        v[o3 + at] = q[1] - q[3];
                    }
                }
            }
        }
        s0 += sc;
    }
}

/// Adds `scale · Aᵀ M A` (with `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`) of every tile of rows
/// r0..r1 and each of the m channels onto the output block at `dst`, clipped to the image.
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
    dst: *mut f32,
    n: usize,
) {
    let t = (r1 - r0) * tw;
    for i in 0..m {
        let mut at = 0; // the output column of tile row r, from the block's start
        for r in r0..r1 {
            let ty = r % th;
            let rows = (h - 2 * ty).min(2);
            for tx in 0..tw {
                let k = (r - r0) * tw + tx;
                let e = |xi: usize| mm[(xi * m + i) * t + k];
                // Aᵀ on the rows (s[r][j] over the 4 columns j), then A on the columns.
                let col = |j: usize| (e(j), e(4 + j), e(8 + j), e(12 + j));
                let s = [
                    [0, 1, 2, 3].map(|j| {
                        let (a, b, c, _) = col(j);
                        a + b + c
                    }),
                    [0, 1, 2, 3].map(|j| {
                        let (_, b, c, d) = col(j);
                        b - c - d
                    }),
                ];
                let cols = (w - 2 * tx).min(2);
                for (yy, sr) in s.iter().enumerate().take(rows) {
                    let y = [sr[0] + sr[1] + sr[2], sr[1] - sr[2] - sr[3]];
                    for (xx, &val) in y.iter().enumerate().take(cols) {
                        // SAFETY: channel i < m of the block, column inside tile row r's
                        // pixels (clipped to the image), which the block holds.
                        unsafe { *dst.add(i * n + at + yy * w + 2 * tx + xx) += scale * val };
                    }
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
            let mut want = vec![f32::NAN; cout * od.n()];
            conv::conv2d(input, &w, cout, g, init, &mut want);
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
