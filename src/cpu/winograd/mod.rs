//! 3×3, stride-1, padding-1 convolutions by Winograd's minimal filtering (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016): F(2×2, 3×3) (`f2`) and, from 128
//! output tiles of 4×4 up, F(4×4, 3×3) (`f4`).
//!
//! Each m×m output tile comes from an (m+2)×(m+2) input patch: the weights `g` become
//! `U = G g Gᵀ`, each patch `d` becomes `V = Bᵀ d B`, and the tile is `Y = Aᵀ (U ⊙ V) A`.
//! Summed over input channels, the elementwise products are (m+2)² matrix products
//! `M[ξ] = U[ξ] × V[ξ]` (`[cout × cin] × [cin × tiles]`): `gemm` does 2.25× (F2) or 4× (F4)
//! fewer multiply-adds than on the im2col columns.
//!
//! The work is split as in `conv`: each rayon task takes whole rows of tiles (so its output
//! block is contiguous columns, prefilled with the epilogue by `conv::prefill`) and a chunk of
//! output channels. It walks the input channels in chunks: transforms that chunk's weights
//! (rows of its output channels) and patches into its thread's scratch, and accumulates the
//! products single-threaded; then it adds the inverse transform onto its block. So nothing is
//! kept or written to memory beyond the output, and what is transformed stays in cache. The
//! transforms are a few operations per value against hundreds of multiply-adds in the
//! products, but only if they run in vectors (each variant's module says how). A fused 2×
//! nearest upsampling of the input (the up blocks' `Upsample2D` conv) is read through when
//! the patches are gathered.

use rayon::prelude::*;

use super::arena::with_scratch;
use super::conv::{gemm_rows, prefill, Init, Input};
use super::SendPtr;
use crate::unet::layout::{Dims, Geometry};
use crate::unet::weights::Weight;

mod f2;
mod f4;

/// Input channels per chunk (the products' depth).
const KC: usize = 256;
/// Output channels per task, at most (the products' rows).
const MAX_ROWS: usize = 160;
/// Tiles per task (the products' columns): at most, and the fewest a task is cut down to.
const TILE_TILES: usize = 256;
/// (F2 tiles; F4 tiles hold four times the output, so a quarter of them.)
const MIN_TILES: usize = 64;

/// Input channels k0..k1 of `x` (across its segments) as `(ci - k0, [b][h][w] plane)`.
fn channels<'a>(
    x: &'a Input<'_>,
    k0: usize,
    k1: usize,
) -> impl Iterator<Item = (usize, &'a [f32])> + 'a {
    let n = x.dims.n();
    let starts = x.segs.iter().scan(0, |s0, &(_, sc)| {
        let s = *s0;
        *s0 += sc;
        Some(s)
    });
    x.segs.iter().zip(starts).flat_map(move |(&(seg, sc), s0)| {
        (s0.max(k0)..(s0 + sc).min(k1)).map(move |ci| (ci - k0, &seg[(ci - s0) * n..][..n]))
    })
}

/// The 3×3 kernels of output channel `o` and input channels k0..k0+kl, widened to f32 (in
/// `wide`, `9·kl`, when `w` is f16/bf16) and tap-major into `taps` (`[9][kl]`), so that both
/// variants' weight transforms run along the input channels.
#[inline(always)]
fn taps(
    w: &Weight,
    cin: usize,
    o: usize,
    k0: usize,
    kl: usize,
    wide: &mut [f32],
    taps: &mut [f32],
) {
    let row = w.f32_range((o * cin + k0) * 9, kl * 9, wide);
    for (j, g) in row.chunks_exact(9).enumerate() {
        for (tap, &v) in g.iter().enumerate() {
            taps[tap * kl + j] = v;
        }
    }
}

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

/// Whether a convolution to `od` runs by F(4×4, 3×3) rather than F(2×2, 3×3): from 128 tiles
/// of 4×4 output pixels up, where it took 0.64–0.89× F(2×2)'s time on 2 AVX2 cores (SD 1.5 at
/// 64×64 and 32×32, the DDPM-CIFAR-10 UNet at batch 8); with fewer tiles its weight transform
/// is spread over too few products and it lost (1.1–1.3× at 32–64 tiles). `RDIFF_WINOGRAD=2`
/// or `4` forces one, to time or compare them.
fn use_f4(od: Dims) -> bool {
    match std::env::var("RDIFF_WINOGRAD").as_deref() {
        Ok("2") => false,
        Ok("4") => true,
        _ => od.b * od.h.div_ceil(f4::M) * od.w.div_ceil(f4::M) >= 128,
    }
}

/// The convolution `out = scale · (init + conv(x, w))` of a 3×3, stride-1, padding-1 geometry
/// (`applies`); `w` is `[cout][cin][3][3]`, `out` `[cout][b][h][w]` at the (possibly
/// upsampled) input's size.
pub fn conv2d(x: Input<'_>, w: &Weight, cout: usize, g: Geometry, init: Init<'_>, out: &mut [f32]) {
    let f4 = use_f4(g.out_dims(x.dims));
    conv2d_by(x, w, cout, g, init, out, f4);
}

/// [`conv2d`] by F(4×4, 3×3) when `f4`, else by F(2×2, 3×3).
fn conv2d_by(
    x: Input<'_>,
    w: &Weight,
    cout: usize,
    g: Geometry,
    init: Init<'_>,
    out: &mut [f32],
    f4: bool,
) {
    let cin = x.channels();
    assert_eq!(w.len(), cout * cin * 9, "conv weight size");
    let od = g.out_dims(x.dims);
    let n = od.n();
    assert_eq!(out.len(), cout * n, "conv output size");
    let (mt, xi_n) = if f4 {
        (f4::M, f4::A * f4::A)
    } else {
        (f2::M, f2::A * f2::A)
    };
    let (th, tw) = (od.h.div_ceil(mt), od.w.div_ceil(mt));
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
        let min_tiles = if f4 { MIN_TILES / 4 } else { MIN_TILES };
        groups = need.min(tile_rows * tw / min_tiles).max(groups);
    }
    let tr = tile_rows.div_ceil(groups.min(tile_rows));
    let groups = tile_rows.div_ceil(tr);

    // First output column of tile row r (row r of sample r / th).
    let col = |r: usize| {
        let (b, ty) = (r / th, r % th);
        (b * od.h + mt * ty) * od.w
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
        let rows_len = if f4 {
            f4::weights_scratch(kc)
                .max(f4::patches_scratch(t, tw))
                .max(f4::tiles_scratch(t))
        } else {
            f2::scratch(kc, tw)
        };
        with_scratch(xi_n * (m * kc + kc * t + m * t) + rows_len, |s| {
            let (u, rest) = s.split_at_mut(xi_n * m * kc);
            let (v, rest) = rest.split_at_mut(xi_n * kc * t);
            let (mm, rows) = rest.split_at_mut(xi_n * m * t);
            for k0 in (0..cin).step_by(kc) {
                let k1 = (k0 + kc).min(cin);
                let kl = k1 - k0;
                if f4 {
                    f4::weights(w, cin, m0, m, k0, k1, rows, u);
                    f4::patches(&x, g, (th, tw), r0, r1, k0, k1, rows, v);
                } else {
                    f2::weights(w, cin, m0, m, k0, k1, rows, u);
                    f2::patches(&x, g, (th, tw), r0, r1, k0, k1, rows, v);
                }
                for xi in 0..xi_n {
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
            let add = if f4 { f4::add_tiles } else { f2::add_tiles };
            // SAFETY: the task's block, as for prefill.
            unsafe {
                add(
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
            // f32 weights, and a bf16 checkpoint's (widened row by row in `weights`); both
            // variants.
            let half = Weight::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect());
            for (w, f4) in [Weight::F32(w), half]
                .into_iter()
                .flat_map(|w| [(w.clone(), false), (w, true)])
            {
                let mut want = vec![f32::NAN; cout * od.n()];
                conv::conv2d(input, &w.to_f32(), cout, g, init, &mut want);
                let mut got = vec![f32::NAN; cout * od.n()];
                conv2d_by(input, &w, cout, g, init, &mut got, f4);
                for (i, (o, r)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (o - r).abs() < 1e-4 * (1.0 + r.abs()),
                        "{d:?} f4={f4} {i}: {o} vs {r}"
                    );
                }
            }
        }
    }
}
