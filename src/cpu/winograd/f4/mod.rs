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

#[cfg(target_arch = "x86_64")]
mod gather;

/// Output tile side and transformed tile side.
pub const M: usize = 4;
pub const A: usize = 6;

/// Tiles (or input channels) per transform step: one 512-bit vector of each position. Each
/// transform's two halves go through a few vectors of scratch (`tmp`), and their inputs are
/// written as array literals: local arrays of 36 vectors were zero-filled and copied by
/// `memset`/`memcpy` calls, and closures passed through `array::from_fn` / `array::map` were
/// not inlined into the `simd_dispatch!` bodies.
const L: usize = 16;
/// One position of `L` tiles (or kernels).
type Lanes = [f32; L];

/// `x` as whole vectors (a partial one at the end dropped).
#[inline(always)]
fn lanes(x: &[f32]) -> &[Lanes] {
    // SAFETY: `[f32; L]` has f32's alignment and no padding; the length rounds down.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<Lanes>(), x.len() / L) }
}

/// [`lanes`] of a mutable slice.
#[inline(always)]
fn lanes_mut(x: &mut [f32]) -> &mut [Lanes] {
    // SAFETY: as for `lanes`, and the borrow moves into the result.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<Lanes>(), x.len() / L) }
}

/// `L` values of `src`, zero past the first `n` (the last tiles' vector).
#[inline(always)]
fn load(src: &[f32], n: usize) -> Lanes {
    if n == L {
        src[..L].try_into().expect("L lanes")
    } else {
        let mut v = [0.0; L];
        v[..n].copy_from_slice(&src[..n]);
        v
    }
}

/// `N` vectors of `tmp` from `at`, as an array (a transform's outputs).
#[inline(always)]
fn vectors<const N: usize>(tmp: &mut [Lanes], at: usize) -> &mut [Lanes; N] {
    (&mut tmp[at..at + N]).try_into().expect("N vectors")
}

/// The first `n` values of `v` into `dst`.
#[inline(always)]
fn store(dst: &mut [f32], v: &Lanes, n: usize) {
    if n == L {
        dst[..L].copy_from_slice(v);
    } else {
        dst[..n].copy_from_slice(&v[..n]);
    }
}

/// Scratch `weights` needs for `kl` input channels: one output channel's kernels tap-major,
/// padded to whole vectors, and widened from f16/bf16.
pub fn weights_scratch(kl: usize) -> usize {
    9 * kl.next_multiple_of(L) + 4 * A * L + 9 * kl
}

/// `G x` for one column (or row) `x` of `L` kernels: `G`'s rows written out, as in [`bt6`].
#[inline(always)]
fn g3(x: [Lanes; 3], o: &mut [Lanes; A]) {
    for l in 0..L {
        let [g0, g1, g2] = [x[0][l], x[1][l], x[2][l]];
        let e = g0 + g2;
        let (f, h) = (g0 * (1.0 / 24.0) + g2 * (1.0 / 6.0), g1 * (1.0 / 12.0));
        o[0][l] = 0.25 * g0;
        o[1][l] = (e + g1) * (-1.0 / 6.0);
        o[2][l] = (e - g1) * (-1.0 / 6.0);
        o[3][l] = f + h;
        o[4][l] = f - h;
        o[5][l] = g2;
    }
}

/// `U[ξ][i][j] = (G g Gᵀ)[ξ]` (each ξ's `m × (k1 - k0)` block `plane` values into `u`) for
/// the 3×3 kernel `g = w[m0 + i][k0 + j]` of output channels m0..m0+m and input channels
/// k0..k1 (`ξ = 6r + s`), `L` input channels at a time.
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
    let kp = kl.next_multiple_of(L);
    let (taps, rest) = scratch.split_at_mut(9 * kp);
    let (tmp, wide) = rest.split_at_mut(4 * A * L);
    let tmp = lanes_mut(tmp);
    for i in 0..m {
        super::taps(w, cin, m0 + i, k0, kp, kl, wide, taps);
        for j0 in (0..kl).step_by(L) {
            let n = L.min(kl - j0);
            // G on each column of the kernels (g[a][c] over a), then Gᵀ on each row of that:
            // U[6r + s] = (G g Gᵀ)[r][s]. `tmp[6c + r]` is (G g)[r][c].
            let tap = |k: usize| load(&taps[k * kp + j0..], L);
            for c in 0..3 {
                g3([tap(c), tap(3 + c), tap(6 + c)], vectors(tmp, A * c));
            }
            for r in 0..A {
                let (gg, out) = tmp.split_at_mut(3 * A);
                let out = vectors(out, 0);
                g3([gg[r], gg[A + r], gg[2 * A + r]], out);
                for (s, v) in out.iter().enumerate() {
                    store(&mut u[(A * r + s) * plane + i * kl + j0..], v, n);
                }
            }
        }
    }
}

simd_dispatch!(
    #[allow(clippy::too_many_arguments)]
    pub fn weights(w: &Weight, cin: usize, m0: usize, m: usize, k0: usize, k1: usize, scratch: &mut [f32], u: &mut [f32], plane: usize) => weights_kernel
);

/// `Bᵀ x` for one column (or row) `x` of `L` patches: `Bᵀ`'s rows written out so that its
/// zeros cost nothing and shared sums are formed once (12 operations per value against
/// 36 multiply-adds by the matrix).
#[inline(always)]
fn bt6(x: [Lanes; A], o: &mut [Lanes; A]) {
    for l in 0..L {
        let [d0, d1, d2, d3, d4, d5] = [x[0][l], x[1][l], x[2][l], x[3][l], x[4][l], x[5][l]];
        let (a, b) = (d4 - 4.0 * d2, d3 - 4.0 * d1);
        let (c, e) = (d4 - d2, 2.0 * (d3 - d1));
        o[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        o[1][l] = a + b;
        o[2][l] = a - b;
        o[3][l] = c + e;
        o[4][l] = c - e;
        o[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
}

/// Scratch `patches` needs for `t` tiles: the 36 positions of a channel's patches, each padded
/// to whole vectors, the transform's intermediates, and a row's four column residues (more
/// than `gather` needs).
pub fn patches_scratch(t: usize, tw: usize) -> usize {
    A * A * t.next_multiple_of(L) + (A * A + A) * L + 4 * (tw + 2)
}

/// `v.row(ξ, ci - k0)[t] = (Bᵀ d B)[ξ]` for the 6×6 patch `d` (rows 4ty−1 .. 4ty+4, columns
/// 4tx−1 .. 4tx+4) of every tile t of tile rows r0..r1 and input channels k0..k1. A channel's
/// patches are gathered position-major (`d[36][t]`), then transformed `L` tiles at a time
/// (both halves of `Bᵀ d B` on 36 vectors, each output written once into `v`): transforming
/// whole rows of positions a half at a time streamed 36 rows of `t` through L2 six times.
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
    let tl = t.next_multiple_of(L);
    // Column residues reach e = (wv + 1) / 4 ≤ tw + 1 (the last tile's columns past the
    // image are zero).
    let e1 = tw + 2;
    let (dd, rest) = scratch.split_at_mut(A * A * tl);
    let (tmp, res) = rest.split_at_mut((A * A + A) * L);
    let tmp = lanes_mut(tmp);
    let res = &mut res[..4 * e1];
    // The padding past t is transformed with the last tiles and dropped: zero, not stale.
    for p in 0..A * A {
        dd[p * tl + t..(p + 1) * tl].fill(0.0);
    }
    for (j, chan) in super::channels(x, k0, k1) {
        for r in r0..r1 {
            let (b, ty) = (r / th, r % th);
            let img = &chan[b * d.hw()..][..d.hw()];
            let tbase = (r - r0) * tw;
            for k in 0..A {
                let y = (M * ty + k) as isize - 1;
                if y < 0 || y >= hv as isize {
                    for u in 0..A {
                        super::fill_short(&mut dd[(A * k + u) * tl + tbase..][..tw], 0.0);
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
                        &mut dd[(A * k + u) * tl + tbase..][..tw],
                        &res[(u & 3) * e1 + (u >> 2)..][..tw],
                    );
                }
            }
        }
        for c0 in (0..t).step_by(L) {
            let (dv, q) = (lanes(dd), c0 / L);
            transform(
                |k, u| dv[(A * k + u) * (tl / L) + q],
                tmp,
                v,
                j,
                c0,
                L.min(t - c0),
            );
        }
    }
}

/// Row `j` of `V[ξ] = (Bᵀ d B)[ξ]`, columns c0..c0 + n, from the 6×6 patches `d(k, u)` of `L`
/// tiles (position row k, column u): `Bᵀ` on each column of the patches (over k), then `B`
/// on each row of that, each output written once. `tmp` holds `A · A + A` vectors;
/// `tmp[6u + i]` is (Bᵀ d)[i][u].
#[inline(always)]
fn transform(
    d: impl Fn(usize, usize) -> Lanes,
    tmp: &mut [Lanes],
    v: &mut PatchRows<'_>,
    j: usize,
    c0: usize,
    n: usize,
) {
    for u in 0..A {
        bt6(
            [d(0, u), d(1, u), d(2, u), d(3, u), d(4, u), d(5, u)],
            vectors(tmp, A * u),
        );
    }
    for i in 0..A {
        let (bd, out) = tmp.split_at_mut(A * A);
        let out = vectors(out, 0);
        let r = |u: usize| bd[A * u + i];
        bt6([r(0), r(1), r(2), r(3), r(4), r(5)], out);
        for (c, o) in out.iter().enumerate() {
            store(&mut v.row(A * i + c, j)[c0..], o, n);
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
    fn patches_copied(x: &Input<'_>, g: Geometry, tiles: (usize, usize), r0: usize, r1: usize, k0: usize, k1: usize, scratch: &mut [f32], v: &mut PatchRows<'_>) => patches_kernel
);

/// [`patches_kernel`]'s result: by [`gather`] where it applies, else by the portable gather.
#[allow(clippy::too_many_arguments)]
pub fn patches(
    x: &Input<'_>,
    g: Geometry,
    tiles: (usize, usize),
    r0: usize,
    r1: usize,
    k0: usize,
    k1: usize,
    scratch: &mut [f32],
    v: &mut PatchRows<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(s) = gather::segment(g, x.dims, tiles.1) {
        // SAFETY: `segment` found AVX-512 here, and `s` is its result.
        unsafe { gather::patches(x, g, tiles, s, r0, r1, k0, k1, scratch, v) };
        return;
    }
    patches_copied(x, g, tiles, r0, r1, k0, k1, scratch, v);
}

/// Scratch `add_tiles` needs for `t` tiles: a channel's 16 output phases and the transform's
/// intermediates.
pub fn tiles_scratch(t: usize) -> usize {
    M * M * t + (A * M + M) * L
}

/// `Aᵀ x` for one column (or row) `x` of `L` tiles' products, `Aᵀ`'s rows written out as in
/// [`bt6`].
#[inline(always)]
fn at6(x: [Lanes; A], o: &mut [Lanes; M]) {
    for l in 0..L {
        let [m0, m1, m2, m3, m4, m5] = [x[0][l], x[1][l], x[2][l], x[3][l], x[4][l], x[5][l]];
        let (p, q, r, s) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        o[0][l] = m0 + p + r;
        o[1][l] = q + 2.0 * s;
        o[2][l] = p + 4.0 * r;
        o[3][l] = q + 8.0 * s + m5;
    }
}

/// The 16 output phases `ys[a][b][t] = scale · (Aᵀ M A)[a][b]` of channel i (`M[ξ]` the
/// products, `plane` apart, channel i's row of `t` in each), `L` tiles at a time.
#[inline(always)]
fn phases_kernel(
    mm: &[f32],
    plane: usize,
    i: usize,
    t: usize,
    scale: f32,
    tmp: &mut [f32],
    ys: &mut [f32],
) {
    let tmp = lanes_mut(tmp);
    for c0 in (0..t).step_by(L) {
        let n = L.min(t - c0);
        // Aᵀ on each column of the products (M[6u + c] over u), then A on each row of that,
        // scaled. `tmp[4c + a]` is (Aᵀ M)[a][c].
        for c in 0..A {
            let p = |u: usize| load(&mm[(A * u + c) * plane + i * t + c0..], n);
            at6([p(0), p(1), p(2), p(3), p(4), p(5)], vectors(tmp, M * c));
        }
        for a in 0..M {
            let (am, out) = tmp.split_at_mut(A * M);
            let out = vectors(out, 0);
            let r = |c: usize| am[M * c + a];
            at6([r(0), r(1), r(2), r(3), r(4), r(5)], out);
            for (b, v) in out.iter().enumerate() {
                let mut v = *v;
                for x in &mut v {
                    *x *= scale;
                }
                store(&mut ys[(M * a + b) * t + c0..], &v, n);
            }
        }
    }
}

simd_dispatch!(fn phases(mm: &[f32], plane: usize, i: usize, t: usize, scale: f32, tmp: &mut [f32], ys: &mut [f32]) => phases_kernel);

/// Adds `scale · Aᵀ M A` of every tile of rows r0..r1 and each of the m channels onto the
/// output block at `dst`, clipped to the image (`mm`: the products `M[ξ]`, `m × t` each,
/// `plane` apart). A channel's transform runs `L` tiles at a time into its 16 output phases
/// (`phases`), which are then added into place.
///
/// # Safety
/// `dst` points at the block's first channel and column (column `col(r0)`) of an output with
/// row stride `n`, and the block is the caller's alone.
#[allow(clippy::too_many_arguments)]
pub unsafe fn add_tiles(
    mm: &[f32],
    plane: usize,
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
    let (ys, tmp) = scratch.split_at_mut(M * M * t);
    for i in 0..m {
        phases(mm, plane, i, t, scale, tmp, ys);
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// `f(x)` against `mat · x` (summed in f64) on values of mixed sign and size, each within
    /// a few roundings of the sum of its terms' magnitudes.
    fn check<const N: usize, const R: usize>(
        f: fn([Lanes; N], &mut [Lanes; R]),
        mat: [[f32; N]; R],
    ) {
        let x: [Lanes; N] = std::array::from_fn(|k| {
            std::array::from_fn(|l| (((k * L + l) * 37 % 101) as f32 - 50.0) / 7.0)
        });
        let mut got = [[0.0; L]; R];
        f(x, &mut got);
        for (r, row) in mat.iter().enumerate() {
            for l in 0..L {
                let terms = row.iter().zip(&x).map(|(&c, v)| c as f64 * v[l] as f64);
                let want: f64 = terms.clone().sum();
                let size: f64 = terms.map(f64::abs).sum();
                let err = (got[r][l] as f64 - want).abs();
                assert!(
                    err <= 4e-7 * size,
                    "row {r} lane {l}: {} vs {want}",
                    got[r][l]
                );
            }
        }
    }

    #[test]
    fn written_out_transforms_match_their_matrices() {
        check(g3, G);
        check(bt6, BT);
        check(at6, AT);
    }
}
