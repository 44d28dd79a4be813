//! The transforms of F(4×4, 3×3) (Lavin & Gray's points 0, ±1, ±2 and ∞): each 4×4 output tile
//! from a 6×6 input patch with 36 products per channel pair instead of im2col's 144, 4× fewer
//! multiply-adds (F(2×2, 3×3): 2.25×). The price is in the transforms, which multiply by 4, 5,
//! 1/6, 1/24, ... (rounding a little more than F(2×2)'s halves: about 1e-6 relative more on
//! the convolutions here) and touch 36 values per tile. Every step runs along the input
//! channels (weights) or the tiles (patches, outputs), in vectors, as in F(2×2).

use super::super::conv::Input;
use super::PatchRows;
use crate::simd_dispatch;
use crate::unet::layout::Geometry;
use crate::unet::weights::Weight;

/// Output tile side and transformed tile side.
pub const M: usize = 4;
pub const A: usize = 6;

/// `G` (6×3): the weights' transform.
const G: [[f32; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `Bᵀ` (6×6): the patches' transform.
const BT: [[f32; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];

/// `Aᵀ` (4×6): the outputs' transform.
const AT: [[f32; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// `out = Σ_u c[u] · src[u]` over vectors, in one pass (each output element is loaded from
/// its sources and stored once; a zero coefficient costs a multiply-add, not a pass).
#[inline(always)]
fn combine<const N: usize>(out: &mut [f32], c: &[f32; N], src: &[&[f32]; N]) {
    let n = out.len();
    let src: [&[f32]; N] = std::array::from_fn(|u| &src[u][..n]);
    for (idx, o) in out.iter_mut().enumerate() {
        let mut acc = c[0] * src[0][idx];
        for u in 1..N {
            acc += c[u] * src[u][idx];
        }
        *o = acc;
    }
}

/// Scratch `weights` needs for `kl` input channels.
pub fn weights_scratch(kl: usize) -> usize {
    (9 + 18 + 9) * kl
}

/// `U[ξ][i][j] = (G g Gᵀ)[ξ]` for the 3×3 kernel `g = w[m0 + i][k0 + j]` of output channels
/// m0..m0+m and input channels k0..k1 (`ξ = 6r + s`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn weights_kernel(
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
    let (gg, wide) = rest.split_at_mut(18 * kl);
    for i in 0..m {
        super::taps(w, cin, m0 + i, k0, kl, wide, taps);
        // G g: gg[r][c] = Σ_a G[r][a] g[a][c], each a vector along j.
        for r in 0..A {
            for c in 0..3 {
                let src: [&[f32]; 3] = std::array::from_fn(|a| &taps[(3 * a + c) * kl..][..kl]);
                combine(&mut gg[(3 * r + c) * kl..][..kl], &G[r], &src);
            }
        }
        // (G g) Gᵀ: U[6r + s] = Σ_c gg[r][c] G[s][c].
        for r in 0..A {
            let src: [&[f32]; 3] = std::array::from_fn(|c| &gg[(3 * r + c) * kl..][..kl]);
            for (s, gs) in G.iter().enumerate() {
                let at = (A * r + s) * m * kl + i * kl;
                combine(&mut u[at..][..kl], gs, &src);
            }
        }
    }
}

simd_dispatch!(
    #[allow(clippy::too_many_arguments)]
    pub fn weights(w: &Weight, cin: usize, m0: usize, m: usize, k0: usize, k1: usize, scratch: &mut [f32], u: &mut [f32]) => weights_kernel
);

/// Scratch `patches` needs for `t` tiles.
pub fn patches_scratch(t: usize, tw: usize) -> usize {
    2 * A * A * t + 4 * (tw + 2)
}

/// `v.row(ξ, ci - k0)[t] = (Bᵀ d B)[ξ]` for the 6×6 patch `d` (rows 4ty−1 .. 4ty+4, columns
/// 4tx−1 .. 4tx+4) of every tile t of tile rows r0..r1 and input channels k0..k1. A channel's
/// patches are gathered position-major (`d[36][t]`), so that both halves of the transform run
/// along all the task's tiles at once, in long vectors.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn patches_kernel(
    x: &Input<'_>,
    g: Geometry,
    (th, tw): (usize, usize),
    r0: usize,
    r1: usize,
    k0: usize,
    k1: usize,
    scratch: &mut [f32],
    v: &mut PatchRows<'_>,
) {
    let d = x.dims;
    let hv = if g.upsample { 2 * d.h } else { d.h };
    let t = (r1 - r0) * tw;
    // Column residues reach e = (wv + 1) / 4 ≤ tw + 1 (the last tile's columns past the
    // image are zero).
    let e1 = tw + 2;
    let (dd, rest) = scratch.split_at_mut(A * A * t);
    let (rows, res) = rest.split_at_mut(A * A * t);
    let res = &mut res[..4 * e1];
    for (j, chan) in super::channels(x, k0, k1) {
        for r in r0..r1 {
            let (b, ty) = (r / th, r % th);
            let img = &chan[b * d.hw()..][..d.hw()];
            let tbase = (r - r0) * tw;
            for k in 0..A {
                let y = (M * ty + k) as isize - 1;
                if y < 0 || y >= hv as isize {
                    for u in 0..A {
                        super::fill_short(&mut dd[(A * k + u) * t + tbase..][..tw], 0.0);
                    }
                    continue;
                }
                let y = y as usize;
                let src = if g.upsample {
                    &img[(y / 2) * d.w..][..d.w]
                } else {
                    &img[y * d.w..][..d.w]
                };
                split_residues(src, g.upsample, e1, res);
                // Patch column u of tile tx is column 4tx + u − 1: residue u mod 4 at
                // e = tx + u / 4.
                for u in 0..A {
                    super::copy_short(
                        &mut dd[(A * k + u) * t + tbase..][..tw],
                        &res[(u & 3) * e1 + (u >> 2)..][..tw],
                    );
                }
            }
        }
        // Bᵀ on the rows: rows[i][u] = Σ_k Bᵀ[i][k] d[k][u].
        for u in 0..A {
            let src: [&[f32]; A] = std::array::from_fn(|k| &dd[(A * k + u) * t..][..t]);
            for (i, bt) in BT.iter().enumerate() {
                combine(&mut rows[(A * i + u) * t..][..t], bt, &src);
            }
        }
        // B on the columns: V[i][c] = Σ_u rows[i][u] Bᵀ[c][u].
        for i in 0..A {
            let src: [&[f32]; A] = std::array::from_fn(|u| &rows[(A * i + u) * t..][..t]);
            for (c, bt) in BT.iter().enumerate() {
                combine(&mut v.row(A * i + c, j)[..t], bt, &src);
            }
        }
    }
}

/// Input row `src` (upsampled 2× when `upsample`) by column residue: `res[q][e]` (`[4][e1]`)
/// is column 4e + q − 1, zero outside. Whole groups of four columns move at once (a scatter
/// per value, with its index arithmetic and bounds check, took a third of the patches' time).
#[inline(always)]
fn split_residues(src: &[f32], upsample: bool, e1: usize, res: &mut [f32]) {
    super::fill_short(res, 0.0);
    let (r0, rest) = res.split_at_mut(e1);
    let (r1, rest) = rest.split_at_mut(e1);
    let (r2, r3) = rest.split_at_mut(e1);
    // Column 4e + q − 1 for q = 1, 2, 3 lies in group e; q = 0 is group e − 1's last column.
    // (Zipped, not indexed, so that the loops have no bounds checks and run in vectors.)
    let groups = r1
        .iter_mut()
        .zip(r2.iter_mut())
        .zip(r3.iter_mut().zip(r0[1..].iter_mut()));
    if upsample {
        // Columns 2c and 2c + 1 both hold source column c.
        let pairs = src.chunks_exact(2);
        let tail = pairs.remainder();
        for (((a, b), (c, d)), p) in groups.zip(pairs) {
            (*a, *b, *c, *d) = (p[0], p[0], p[1], p[1]);
        }
        if let [v] = tail {
            let e = src.len() / 2;
            (r1[e], r2[e]) = (*v, *v);
        }
    } else {
        let quads = src.chunks_exact(4);
        let tail = quads.remainder();
        for (((a, b), (c, d)), q) in groups.zip(quads) {
            (*a, *b, *c, *d) = (q[0], q[1], q[2], q[3]);
        }
        let e = src.len() / 4;
        for (q, &v) in [r1, r2, r3].into_iter().zip(tail) {
            q[e] = v;
        }
    }
}

simd_dispatch!(
    #[allow(clippy::too_many_arguments)]
    pub fn patches(x: &Input<'_>, g: Geometry, tiles: (usize, usize), r0: usize, r1: usize, k0: usize, k1: usize, scratch: &mut [f32], v: &mut PatchRows<'_>) => patches_kernel
);

/// Scratch `add_tiles` needs for `t` tiles.
pub fn tiles_scratch(t: usize) -> usize {
    (4 * A + 16) * t
}

/// The 16 output phases `ys[a][b][t] = Σ_c s[a][c] sat[b][c]` of channel i, where
/// `s[a][c] = Σ_u Aᵀ[a][u] M[6u + c]` and `sat` is the scaled `Aᵀ`.
#[inline(always)]
fn phases_kernel(
    mm: &[f32],
    m: usize,
    i: usize,
    t: usize,
    sat: &[[f32; A]; 4],
    s: &mut [f32],
    ys: &mut [f32],
) {
    for c in 0..A {
        let src: [&[f32]; A] = std::array::from_fn(|u| &mm[((A * u + c) * m + i) * t..][..t]);
        for (a, row) in AT.iter().enumerate() {
            combine(&mut s[(A * a + c) * t..][..t], row, &src);
        }
    }
    for a in 0..M {
        let src: [&[f32]; A] = std::array::from_fn(|c| &s[(A * a + c) * t..][..t]);
        for (bcol, row) in sat.iter().enumerate() {
            combine(&mut ys[(M * a + bcol) * t..][..t], row, &src);
        }
    }
}

simd_dispatch!(fn phases(mm: &[f32], m: usize, i: usize, t: usize, sat: &[[f32; A]; 4], s: &mut [f32], ys: &mut [f32]) => phases_kernel);

/// Adds `scale · Aᵀ M A` of every tile of rows r0..r1 and each of the m channels onto the
/// output block at `dst`, clipped to the image. Both halves of the transform run along all
/// the task's tiles at once; the 16 output phases are then added into place.
///
/// # Safety
/// `dst` points at the block's first channel and column (column `col(r0)`) of an output with
/// row stride `n`, and the block is the caller's alone.
#[allow(clippy::too_many_arguments)]
pub unsafe fn add_tiles(
    mm: &[f32],
    m: usize,
    (th, tw): (usize, usize),
    h: usize,
    w: usize,
    r0: usize,
    r1: usize,
    scale: f32,
    scratch: &mut [f32],
    dst: *mut f32,
    n: usize,
) {
    let t = (r1 - r0) * tw;
    let (s, ys) = scratch.split_at_mut(4 * A * t);
    let mut sat = [[0.0f32; A]; 4];
    for (a, row) in AT.iter().enumerate() {
        for (u, &c) in row.iter().enumerate() {
            sat[a][u] = c * scale;
        }
    }
    for i in 0..m {
        phases(mm, m, i, t, &sat, s, ys);
        let mut at = 0; // the output column of tile row r, from the block's start
        for r in r0..r1 {
            let ty = r % th;
            let rows = (h - M * ty).min(M);
            let base = (r - r0) * tw;
            for a in 0..rows {
                // SAFETY: channel i < m of the block, pixel row a of tile row r, which the
                // block holds (w columns).
                let out = unsafe { std::slice::from_raw_parts_mut(dst.add(i * n + at + a * w), w) };
                let y: [&[f32]; M] = std::array::from_fn(|b| &ys[(M * a + b) * t + base..][..tw]);
                let mut quads = out.chunks_exact_mut(M);
                for (tx, o) in (&mut quads).enumerate() {
                    for (bcol, ob) in o.iter_mut().enumerate() {
                        *ob += y[bcol][tx];
                    }
                }
                let rest = quads.into_remainder();
                for (bcol, ob) in rest.iter_mut().enumerate() {
                    *ob += y[bcol][w / M];
                }
            }
            at += rows * w;
        }
    }
}
