//! The transforms of F(2×2, 3×3): each 2×2 output tile from a 4×4 input patch with 16 products
//! per channel pair instead of im2col's 36 (2.25× fewer multiply-adds). They multiply only by
//! 0, ±1 and ±½ (exact in binary), so the result differs from the direct sum only by rounding,
//! as im2col's does. Every step runs along the input channels (weights) or the tiles (patches,
//! outputs), in vectors: written per tile they took a third of a deep layer's time.

use super::super::conv::Input;
use super::PatchRows;
use crate::simd_dispatch;
use crate::unet::layout::{Dims, Geometry};
use crate::unet::weights::Weight;

/// Output tile side and transformed tile side.
pub const M: usize = 2;
pub const A: usize = 4;

/// Scratch `weights` and `add_tiles` need, for `kl` input channels and tile rows `tw` tiles
/// wide: a row of kernels widened to f32, then tap-major, and two rows of G g; four output
/// phases of a tile row.
pub fn scratch(kl: usize, tw: usize) -> usize {
    (24 * kl).max(4 * tw)
}

/// `U[ξ][i][j] = (G g Gᵀ)[ξ]` (each ξ's `m × (k1 - k0)` block `plane` values into `u`) for
/// the 3×3 kernel `g = w[m0 + i][k0 + j]` of output channels m0..m0+m and input channels
/// k0..k1, with `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
/// `scratch` holds one row's kernels tap-major (`[9][k1 - k0]`), rows 1 and 2 of `G g` (so
/// that every step below runs along j, in vectors) and the row widened when `w` is f16/bf16.
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
    plane: usize,
) {
    let kl = k1 - k0;
    let (taps, rest) = scratch.split_at_mut(9 * kl);
    let (gg, wide) = rest.split_at_mut(6 * kl);
    let (g1, g2) = gg.split_at_mut(3 * kl);
    for i in 0..m {
        super::taps(w, cin, m0 + i, k0, kl, kl, wide, taps);
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
            let at = |c: usize| (4 * r + c) * plane + i * kl;
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

/// Scratch `patches` needs for tile rows `tw` tiles wide, `th` to an image: the input rows of
/// one image's tile rows (two per tile row and two more) and four rows of `Bᵀ d`, each split
/// by column parity.
pub fn patches_scratch(th: usize, tw: usize) -> usize {
    (2 * th + 2 + 4) * 2 * (tw + 1)
}

/// Input row `y` of `img` (zero outside the image) split by column parity: `odd[e]` is column
/// 2e − 1 and `even[e]` column 2e, zero past the image's width (`odd` and `even` are `tw + 1`
/// long).
#[inline(always)]
fn split_row(img: &[f32], d: Dims, upsample: bool, y: isize, odd: &mut [f32], even: &mut [f32]) {
    let hv = if upsample { 2 * d.h } else { d.h };
    if y < 0 || y >= hv as isize {
        super::fill_short(odd, 0.0);
        super::fill_short(even, 0.0);
        return;
    }
    let y = y as usize;
    odd[0] = 0.0;
    if upsample {
        // Columns 2e and 2e + 1 both hold source column e.
        let src = &img[(y / 2) * d.w..][..d.w];
        super::copy_short(&mut even[..d.w], src);
        super::copy_short(&mut odd[1..=d.w], src);
        super::fill_short(&mut even[d.w..], 0.0);
        super::fill_short(&mut odd[d.w + 1..], 0.0);
    } else {
        let src = &img[y * d.w..][..d.w];
        let np = d.w / 2;
        let pairs = src.chunks_exact(2);
        let last = pairs.remainder().first().copied();
        for ((e, o), p) in even[..np].iter_mut().zip(&mut odd[1..=np]).zip(pairs) {
            *e = p[0];
            *o = p[1];
        }
        super::fill_short(&mut even[np..], 0.0);
        super::fill_short(&mut odd[np + 1..], 0.0);
        if let Some(v) = last {
            even[np] = v;
        }
    }
}

/// `v.row(ξ, ci - k0)[t] = (Bᵀ d B)[ξ]` for the 4×4 patch `d` of every tile t of tile rows r0..r1
/// and input channels k0..k1, with `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
/// [0, 1, 0, -1]]`. `scratch` ([`patches_scratch`]) holds the input rows of one image's tile
/// rows, each split by column parity once (neighbouring tile rows share two), and the four
/// rows of `Bᵀ d`, so that every step runs along the tiles, in vectors.
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
    // Tile tx reads columns 2tx-1 .. 2tx+2: odd[tx], even[tx], odd[tx+1], even[tx+1].
    let half = tw + 1;
    let line = 2 * half;
    let (bt, inputs) = scratch.split_at_mut(4 * line);
    for (j, chan) in super::channels(x, k0, k1) {
        // One run of tile rows per image: tile row ty reads input rows 2ty-1 .. 2ty+2.
        let mut r = r0;
        while r < r1 {
            let b = r / th;
            let run_end = ((b + 1) * th).min(r1);
            let (ty0, ty1) = (r - b * th, run_end - b * th);
            let img = &chan[b * d.hw()..][..d.hw()];
            for q in 0..2 * (ty1 - ty0) + 2 {
                let (odd, even) = inputs[q * line..][..line].split_at_mut(half);
                let y = (2 * ty0 + q) as isize - 1;
                split_row(img, d, g.upsample, y, odd, even);
            }
            for ty in ty0..ty1 {
                // Bᵀ on the rows: row k of Bᵀ d.
                let rows = &inputs[2 * (ty - ty0) * line..][..4 * line];
                let (i0, rest) = rows.split_at(line);
                let (i1, rest) = rest.split_at(line);
                let (i2, i3) = rest.split_at(line);
                let [p0, p1, p2, p3] = split4(bt, line);
                for (((((a, b1), c), dd), (&va, &vb)), (&vc, &vd)) in p0
                    .iter_mut()
                    .zip(p1.iter_mut())
                    .zip(p2.iter_mut())
                    .zip(p3.iter_mut())
                    .zip(i0.iter().zip(i1))
                    .zip(i2.iter().zip(i3))
                {
                    *a = va - vc;
                    *b1 = vb + vc;
                    *c = vc - vb;
                    *dd = vb - vd;
                }
                // B on the columns of each tile, into V.
                let tbase = (b * th + ty - r0) * tw;
                for i in 0..4 {
                    let (odd, even) = bt[i * line..][..line].split_at(half);
                    for ((o, &a), &b) in v.row(4 * i, j)[tbase..][..tw]
                        .iter_mut()
                        .zip(odd)
                        .zip(&odd[1..])
                    {
                        *o = a - b;
                    }
                    for ((o, &a), &b) in v.row(4 * i + 1, j)[tbase..][..tw]
                        .iter_mut()
                        .zip(even)
                        .zip(&odd[1..])
                    {
                        *o = a + b;
                    }
                    for ((o, &a), &b) in v.row(4 * i + 2, j)[tbase..][..tw]
                        .iter_mut()
                        .zip(even)
                        .zip(&odd[1..])
                    {
                        *o = b - a;
                    }
                    for ((o, &a), &b) in v.row(4 * i + 3, j)[tbase..][..tw]
                        .iter_mut()
                        .zip(even)
                        .zip(&even[1..])
                    {
                        *o = a - b;
                    }
                }
            }
            r = run_end;
        }
    }
}

simd_dispatch!(
    #[allow(clippy::too_many_arguments)]
    pub fn weights(w: &Weight, cin: usize, m0: usize, m: usize, k0: usize, k1: usize, scratch: &mut [f32], u: &mut [f32], plane: usize) => weights_kernel
);

simd_dispatch!(
    #[allow(clippy::too_many_arguments)]
    pub fn patches(x: &Input<'_>, g: Geometry, tiles: (usize, usize), r0: usize, r1: usize, k0: usize, k1: usize, scratch: &mut [f32], v: &mut PatchRows<'_>) => patches_kernel
);

/// `x` as four consecutive slices of `len`.
fn split4(x: &mut [f32], len: usize) -> [&mut [f32]; 4] {
    let (a, rest) = x.split_at_mut(len);
    let (b, rest) = rest.split_at_mut(len);
    let (c, d) = rest.split_at_mut(len);
    [a, b, c, &mut d[..len]]
}

/// Adds `scale · Aᵀ M A` (with `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`) of every tile of rows
/// r0..r1 and each of the m channels onto the output block at `dst`, clipped to the image.
/// `mm` holds the products `M[ξ]` (`m × t` each, `plane` apart). `ys` is scratch for one tile
/// row's four output phases, so that the transform runs along the tiles, in vectors.
///
/// # Safety
/// `dst` points at the block's first channel and column (column `col(r0)`) of an output with
/// row stride `n`, and the block is the caller's alone.
#[allow(clippy::too_many_arguments)]
pub unsafe fn add_tiles(
    mm: &[f32],
    plane: usize,
    m: usize,
    tiles: (usize, usize),
    h: usize,
    w: usize,
    r0: usize,
    r1: usize,
    scale: f32,
    ys: &mut [f32],
    dst: *mut f32,
    n: usize,
) {
    let th = tiles.0;
    // A channel's share of the block: the pixel rows of tile rows r0..r1, contiguous.
    let len: usize = (r0..r1).map(|r| (h - 2 * (r % th)).min(2) * w).sum();
    for i in 0..m {
        // SAFETY: channel i's columns of the caller's block (see the contract).
        let out = unsafe { std::slice::from_raw_parts_mut(dst.add(i * n), len) };
        add_channel(mm, plane, i, tiles, h, w, r0, r1, scale, ys, out);
    }
}

/// [`add_tiles`] for channel i, onto `out`, its pixels of the block.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn add_channel_kernel(
    mm: &[f32],
    plane: usize,
    i: usize,
    (th, tw): (usize, usize),
    h: usize,
    w: usize,
    r0: usize,
    r1: usize,
    scale: f32,
    ys: &mut [f32],
    out: &mut [f32],
) {
    let t = (r1 - r0) * tw;
    let (y00, rest) = ys.split_at_mut(tw);
    let (y01, rest) = rest.split_at_mut(tw);
    let (y10, rest) = rest.split_at_mut(tw);
    let y11 = &mut rest[..tw];
    let mut at = 0; // the output column of tile row r, from the block's start
    for r in r0..r1 {
        let ty = r % th;
        let rows = (h - 2 * ty).min(2);
        let base = (r - r0) * tw;
        let e = |xi: usize| &mm[xi * plane + i * t + base..][..tw];
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
            // Pixel row yy of tile row r: even columns from ya, odd ones from yb.
            let out = &mut out[at + yy * w..][..w];
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

simd_dispatch!(
    #[allow(clippy::too_many_arguments)]
    fn add_channel(mm: &[f32], plane: usize, i: usize, tiles: (usize, usize), h: usize, w: usize, r0: usize, r1: usize, scale: f32, ys: &mut [f32], out: &mut [f32]) => add_channel_kernel
);
