//! 3×3, stride-1, padding-1 convolutions by Winograd's minimal filtering (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016): F(2×2, 3×3) (`f2`) and, where it
//! pays (`use_f4`), F(4×4, 3×3) (`f4`).
//!
//! Each m×m output tile comes from an (m+2)×(m+2) input patch: the weights `g` become
//! `U = G g Gᵀ`, each patch `d` becomes `V = Bᵀ d B`, and the tile is `Y = Aᵀ (U ⊙ V) A`.
//! Summed over input channels, the elementwise products are (m+2)² matrix products
//! `M[ξ] = U[ξ] × V[ξ]` (`[cout × cin] × [cin × tiles]`): `gemm` does 2.25× (F2) or 4× (F4)
//! fewer multiply-adds than on the im2col columns.
//!
//! The tiles go in passes of at most `PASS_TILES`, each in three parallel steps. For each
//! chunk of `KC` input channels: (1) the chunk's patches are transformed once, by channel
//! pieces, into a buffer shared by (2) the tasks, each a chunk of output channels (and, when
//! there are too few of those, a group of the pass's tile rows), which transform their own
//! weights into thread scratch and accumulate their products `M` single-threaded. Then (3)
//! each task prefills its output block with the epilogue (`conv::prefill`) and adds the
//! inverse transform onto it. (Transforming the patches inside every task instead repeated
//! them once per output-channel chunk: 8× at 1,280 channels.) The transforms are a few
//! operations per value against hundreds of multiply-adds in the products, but only if they
//! run in vectors (each variant's module says how). A fused 2× nearest upsampling of the
//! input (the up blocks' `Upsample2D` conv) is read through when the patches are gathered.

use std::marker::PhantomData;

use rayon::prelude::*;

use super::arena::{with_scratch, Arena};
use super::conv::{gemm_rows, prefill, Init, Input};
use super::SendPtr;
use crate::unet::layout::{Dims, Geometry};
use crate::unet::weights::Weight;

mod f2;
mod f4;

/// Input channels per chunk (the products' depth): 128 rather than 256 halves each task's
/// transformed weights, which then stay in L2 beside the patches (the batch-1 CIFAR UNet's
/// call 0.97× the time, SD 1.5's at batch 2 0.96×; batch 8 unchanged).
const KC: usize = 128;
/// Output channels per task, at most (the products' rows) ...
const MAX_ROWS: usize = 160;
/// ... and at least, when output channels are cut finer to make tasks: 32 rather than 64 let
/// the batch-1 DDPM-CIFAR-10 UNet's 128-channel 32×32 layers cut four ways by channels instead
/// of two by channels and two by tiles, which transformed every weight twice (the whole call
/// 0.95× the time; batch 2 and 8, and the digits model, unchanged).
const MIN_ROWS: usize = 32;
/// Tiles per pass at most: bounds the shared transformed patches and products (36 × 128
/// channels × 512 tiles is 9.4 MB for F4).
const PASS_TILES: usize = 512;
/// Tiles per pass for fewer than 64 output channels, whose weights are cheap to transform
/// again per pass: the bundled digits model's batch-64 call took the same time (41.6–42.7
/// against 42.1–42.3 ms) with 3.5 MiB less activation memory (28.5 against 32.0 MiB; 27.9 at
/// 128 tiles, but 1.07× the time).
const NARROW_PASS_TILES: usize = 256;
/// Values between consecutive planes (`U[ξ]`, `V[ξ]`, `M[ξ]`) past their own: one cache line.
/// The transforms touch all 16 or 36 planes at once, a row of each, and planes a power of two
/// apart (128 channels × 512 tiles) map those rows to one L2 set (16 ways).
const SKEW: usize = 16;
/// Tiles per task at least, when tile rows are cut into groups (F2 tiles; F4 tiles hold four
/// times the output, so a quarter of them).
const MIN_TILES: usize = 64;

/// Input channels k0..k1 of `x` (across its segments) as `(ci - k0, [b][h][w] plane)`.
fn channels<'a>(
    x: &'a Input<'_>,
    k0: usize,
    k1: usize,
) -> impl Iterator<Item = (usize, &'a [f32])> + 'a {
    (k0..k1).map(move |ci| (ci - k0, x.channel(ci)))
}

/// Rows j0..j0 + len of each phase of transformed patches `V[ξ]` (`rows × t`, row-major, the
/// phases `plane` apart): what one piece of a pass writes, the pieces running in parallel on
/// disjoint rows of the shared buffer.
pub struct PatchRows<'a> {
    ptr: *mut f32,
    phases: usize,
    plane: usize,
    t: usize,
    j0: usize,
    len: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

impl PatchRows<'_> {
    /// # Safety
    /// `ptr` addresses `phases · plane` values, valid while this lives, and nothing else
    /// reads or writes rows j0..j0 + len (≤ rows) of any phase meanwhile.
    unsafe fn new(
        ptr: *mut f32,
        phases: usize,
        plane: usize,
        rows: usize,
        t: usize,
        j0: usize,
        len: usize,
    ) -> Self {
        assert!(j0 + len <= rows && rows * t <= plane);
        PatchRows {
            ptr,
            phases,
            plane,
            t,
            j0,
            len,
            _buf: PhantomData,
        }
    }

    /// Row j0 + j of phase `xi` (`t` values).
    pub fn row(&mut self, xi: usize, j: usize) -> &mut [f32] {
        assert!(xi < self.phases && j < self.len, "patch row out of range");
        // SAFETY: inside the buffer (checked), in this value's own rows (see `new`).
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.add(xi * self.plane + (self.j0 + j) * self.t),
                self.t,
            )
        }
    }
}

/// The 3×3 kernels of output channel `o` and input channels k0..k0+kl, widened to f32 (in
/// `wide`, `9·kl`, when `w` is f16/bf16) and tap-major into `taps` (`[9][stride]`, stride ≥
/// kl), so that both variants' weight transforms run along the input channels.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn taps(
    w: &Weight,
    cin: usize,
    o: usize,
    k0: usize,
    stride: usize,
    kl: usize,
    wide: &mut [f32],
    taps: &mut [f32],
) {
    let row = w.f32_range((o * cin + k0) * 9, kl * 9, wide);
    for (j, g) in row.chunks_exact(9).enumerate() {
        for (tap, &v) in g.iter().enumerate() {
            taps[tap * stride + j] = v;
        }
    }
}

/// Values from one plane's start to the next's for planes of `rows × cols` values ([`SKEW`]).
fn plane(rows: usize, cols: usize) -> usize {
    rows * cols + SKEW
}

/// `dst.copy_from_slice(src)` for the transforms' short rows (4–16 values) without a call to
/// libc's `memmove`, whose call overhead is most of such a copy (the calls took 4% of a batch-8
/// CIFAR UNet call): whole 8- and 4-value blocks, the last one overlapping the one before it.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    let src = &src[..n];
    fn block<const B: usize>(dst: &mut [f32], src: &[f32], at: usize) {
        let d: &mut [f32; B] = (&mut dst[at..at + B]).try_into().expect("B values");
        *d = src[at..at + B].try_into().expect("B values");
    }
    if n >= 8 {
        for at in (0..n - 8).step_by(8) {
            block::<8>(dst, src, at);
        }
        block::<8>(dst, src, n - 8);
    } else if n >= 4 {
        block::<4>(dst, src, 0);
        block::<4>(dst, src, n - 4);
    } else {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s;
        }
    }
}

/// `dst.fill(v)` for short rows, as [`copy_short`] (without a call to `memset`).
#[inline(always)]
fn fill_short(dst: &mut [f32], v: f32) {
    let n = dst.len();
    if n >= 8 {
        for at in (0..n - 8).step_by(8) {
            dst[at..at + 8].copy_from_slice(&[v; 8]);
        }
        dst[n - 8..].copy_from_slice(&[v; 8]);
    } else if n >= 4 {
        dst[..4].copy_from_slice(&[v; 4]);
        dst[n - 4..].copy_from_slice(&[v; 4]);
    } else {
        for d in dst {
            *d = v;
        }
    }
}

/// Whether `winograd` computes this convolution: a 3×3 kernel, stride 1, padding 1 (with or
/// without a fused upsampling) on input `d`, unless switched off by `RDIFF_NO_WINOGRAD` (to time
/// or compare against im2col). On 2 cores (AVX2) it takes 0.6–0.75× im2col's time from 64
/// channels and 32 tiles (2×2 output pixels) up, and loses below: with 32 channels the
/// transforms weigh too much against the products, with 16 tiles the products are too narrow.
/// With AVX-512, whose products (`gemm`) run 1.6× faster, output rows narrower than 16 pixels
/// (tile rows of 4 tiles or fewer) lose too: im2col took 0.46–0.63× Winograd's time on the
/// bundled digits model's 64-channel 4×4 and 8×8 layers at batch 64, 0.66–0.89× on the
/// DDPM-CIFAR-10 UNet's 256- and 512-channel ones at batch 8, 0.79× on SD 1.5's 1,280-channel
/// 8×8 ones (2-core Xeon, per layer in the model's call).
///
/// With AVX-512 and at least `WIDE_TILES` F(4×4) tiles (so batches of small images), F(4×4)
/// wins from 32 channels and on 8-pixel-wide outputs of the fused upsampling too (whose im2col
/// gathers each value from half-resolution rows): per layer at batch 64 on the bundled digits
/// model (2 threads, `RDIFF_WINOGRAD=4` against im2col), 16×16 32→32 1.42 against 1.60 ms,
/// 64→32 2.17 against 3.01, 96→32 2.73 against 3.80, 4×4 upsampled to 8×8 64→64 1.34 against
/// 2.40; at batch 16 (256 tiles at 16×16) 0.62 against 0.78 and 0.87 against 1.11 ms (64→32,
/// 96→32). With 32 channels both in and out (not upsampled) the direct convolution is faster
/// still, and takes them: 16×16 32→32 at batch 64 1.32–1.34 against 1.41–1.58 ms. On 8×8 outputs without upsampling it stays close or loses (64→64 1.41 against 1.34
/// ms at batch 64: its 2-tile rows have no register gather), and below 256 tiles it loses.
///
/// Since F(4×4)'s patches are gathered by permutes, it also takes 8-pixel-wide outputs of 128
/// channels and more from 32 tiles (`eight`, AVX-512; with fewer channels the direct
/// convolution is faster): the CIFAR UNet's 8×8 layers at batch 8, 256→256 1.59 against
/// im2col's 2.10 ms, 512→256 3.17 against 4.10, 768→256 4.54 against 6.27, upsampled from 4×4
/// 1.62 against 2.60; at batch 16 0.62–0.58×; at batch 4 (16 tiles) even.
pub fn applies(g: Geometry, d: Dims, cin: usize, cout: usize) -> bool {
    let od = g.out_dims(d);
    let avx512 = super::vecmath::has_avx512();
    let wide = avx512
        && f4_tiles(od) >= WIDE_TILES
        && cin.min(cout) >= 32
        && (cin.max(cout) >= 64 || g.upsample)
        && (od.w >= 16 || g.upsample);
    let eight = avx512 && eight_wide(od, cin, cout);
    let deep = cin >= 64
        && cout >= 64
        && od.b * od.h.div_ceil(2) * od.w.div_ceil(2) >= 32
        && (od.w >= 16 || !avx512);
    g.k == 3
        && g.stride == 1
        && g.pad == [1; 4]
        && (wide || eight || deep)
        && std::env::var_os("RDIFF_NO_WINOGRAD").is_none_or(|v| v.is_empty())
}

/// F(4×4, 3×3) tiles from which `applies` takes 32-channel and upsampled 8-pixel-wide layers.
const WIDE_TILES: usize = 256;

fn f4_tiles(od: Dims) -> usize {
    od.b * od.h.div_ceil(f4::M) * od.w.div_ceil(f4::M)
}

/// An 8-pixel-wide output that `applies` gives F(4×4) under AVX-512 (see there).
fn eight_wide(od: Dims, cin: usize, cout: usize) -> bool {
    od.w == 8 && cin >= 128 && cout >= 128 && f4_tiles(od) >= 32
}

/// Whether a convolution to `od` with `cout` output channels runs by F(4×4, 3×3) rather than
/// F(2×2, 3×3): from 64 tiles of 4×4 output pixels up, or from 32 with at least 512 output
/// channels or on the 8-pixel-wide outputs `applies` takes under AVX-512 (`eight_wide`). Per layer on 2 AVX2 cores (patches transformed once, shared), F4 took 0.65–0.9×
/// F2's time at ≥ 128 tiles; at 32 tiles 0.77–0.96× with 640–2,560 channels (SD 1.5 at
/// 16×16) but 0.96–1.02× with 256 (the DDPM-CIFAR-10 UNet at batch 8), and with 8–16 tiles
/// it lost (1.1–1.6×): its weight transform is 36 values per kernel against 16, spread over
/// too few products, and its patch transforms weigh more against fewer output channels. At 64
/// tiles (AVX-512) it won: the CIFAR UNet's whole call took 0.97× the time at batch 1 (its
/// 32×32 layers) and 0.93× at batch 4 (its 16×16 ones); the digits model did not change.
/// `RDIFF_WINOGRAD=2` or `4` forces one, to time or compare them.
fn use_f4(od: Dims, cin: usize, cout: usize) -> bool {
    let tiles = f4_tiles(od);
    match std::env::var("RDIFF_WINOGRAD").as_deref() {
        Ok("2") => false,
        Ok("4") => true,
        _ => {
            tiles >= 64
                || (tiles >= 32 && cout >= 512)
                || (eight_wide(od, cin, cout) && super::vecmath::has_avx512())
        }
    }
}

/// The convolution `out = scale · (init + conv(x, w))` of a 3×3, stride-1, padding-1 geometry
/// (`applies`); `w` is `[cout][cin][3][3]`, `out` `[cout][b][h][w]` at the (possibly
/// upsampled) input's size. The transformed patches and the products live in `arena` buffers.
pub fn conv2d(
    x: Input<'_>,
    w: &Weight,
    cout: usize,
    g: Geometry,
    init: Init<'_>,
    out: &mut [f32],
    arena: &mut Arena,
) {
    let f4 = use_f4(g.out_dims(x.dims), x.channels(), cout);
    conv2d_by(x, w, cout, g, init, out, arena, f4);
}

/// [`conv2d`] by F(4×4, 3×3) when `f4`, else by F(2×2, 3×3).
#[allow(clippy::too_many_arguments)]
fn conv2d_by(
    x: Input<'_>,
    w: &Weight,
    cout: usize,
    g: Geometry,
    init: Init<'_>,
    out: &mut [f32],
    arena: &mut Arena,
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
    let max_tiles = if cout < 64 {
        NARROW_PASS_TILES
    } else {
        PASS_TILES
    };
    let pass_rows = (max_tiles / tw).clamp(1, tile_rows);

    // The tasks of a pass: chunks of output channels (finer than MAX_ROWS, down to MIN_ROWS,
    // while there are fewer than two per thread of the pool), then groups of its tile rows if
    // still too few, down to MIN_TILES. Cutting channels costs nothing (the patches are
    // transformed once per pass, shared); cutting tiles transforms the weights once more per
    // group. Every product's depth is one chunk of input channels however the pass is cut, so
    // the output bits do not depend on the pool (`partition_threads`). On 2 cores, four tasks
    // took 0.9–0.95× the time of eight (the CIFAR UNet, batch 1 and 8).
    let tasks = 2 * super::partition_threads();
    let mchunks = cout
        .div_ceil(MAX_ROWS)
        .max(tasks.min(cout / MIN_ROWS))
        .max(1);
    let mstep = cout.div_ceil(mchunks).next_multiple_of(16).min(cout);
    let mchunks = cout.div_ceil(mstep);
    let min_tiles = if f4 { MIN_TILES / 4 } else { MIN_TILES };
    let groups = tasks
        .div_ceil(mchunks)
        .min(pass_rows * tw / min_tiles)
        .clamp(1, pass_rows);
    let tr = pass_rows.div_ceil(groups);
    let groups = pass_rows.div_ceil(tr);
    let ntasks = groups * mchunks;

    let kc = KC.min(cin);
    let pass_tiles = pass_rows * tw;
    let task_m = xi_n * plane(mstep, tr * tw); // a task's products M[ξ] (m × t)
    let mut v = arena.take(xi_n * plane(kc, pass_tiles));
    let mut mm = arena.take(ntasks * task_m);
    // First output column of tile row r (row r of sample r / th).
    let col = |r: usize| {
        let (b, ty) = (r / th, r % th);
        (b * od.h + mt * ty) * od.w
    };
    for p0 in (0..tile_rows).step_by(pass_rows) {
        let p1 = (p0 + pass_rows).min(tile_rows);
        let pt = (p1 - p0) * tw;
        // Task (grp, mc): tile rows r0..r1 of the pass, output channels m0..m0 + m.
        let task = |task: usize| {
            let (grp, mc) = (task / mchunks, task % mchunks);
            let r0 = p0 + grp * tr;
            let r1 = (r0 + tr).min(p1);
            let m0 = mc * mstep;
            (r0, r1, m0, mstep.min(cout - m0))
        };
        let ntasks = (p1 - p0).div_ceil(tr) * mchunks;
        for k0 in (0..cin).step_by(kc) {
            let k1 = (k0 + kc).min(cin);
            let kl = k1 - k0;
            let vplane = plane(kl, pt);
            // The patches of channels k0..k1 over the pass's tiles, V[ξ] (kl × pt), by
            // channel pieces.
            let piece = kl.div_ceil(tasks);
            let scratch = if f4 {
                f4::patches_scratch(pt, tw)
            } else {
                f2::patches_scratch(th, tw)
            };
            let vp = SendPtr(v.as_mut_ptr());
            (0..kl.div_ceil(piece)).into_par_iter().for_each(|pc| {
                let (a, b) = (k0 + pc * piece, (k0 + (pc + 1) * piece).min(k1));
                // SAFETY: `v` holds xi_n · vplane values, and piece pc alone touches rows
                // a - k0 .. b - k0 of each V[ξ] until the pieces are joined.
                let mut v =
                    unsafe { PatchRows::new(vp.get(), xi_n, vplane, kl, pt, a - k0, b - a) };
                with_scratch(scratch, |s| {
                    if f4 {
                        f4::patches(&x, g, (th, tw), p0, p1, a, b, s, &mut v);
                    } else {
                        f2::patches(&x, g, (th, tw), p0, p1, a, b, s, &mut v);
                    }
                });
            });
            // The products, each task's M[ξ] += U[ξ] × V[ξ] over its tiles, U the task's
            // output channels' transformed weights.
            let (v, mp) = (&v[..], SendPtr(mm.as_mut_ptr()));
            (0..ntasks).into_par_iter().for_each(|i| {
                let (r0, r1, m0, m) = task(i);
                let (t, c0) = ((r1 - r0) * tw, (r0 - p0) * tw);
                let mplane = plane(m, t);
                let ws = if f4 {
                    f4::weights_scratch(kl)
                } else {
                    f2::scratch(kl, 0)
                };
                let uplane = plane(m, kl);
                with_scratch(xi_n * uplane + ws, |s| {
                    let (u, ws) = s.split_at_mut(xi_n * uplane);
                    if f4 {
                        f4::weights(w, cin, m0, m, k0, k1, ws, u, uplane);
                    } else {
                        f2::weights(w, cin, m0, m, k0, k1, ws, u, uplane);
                    }
                    for xi in 0..xi_n {
                        // SAFETY: U[ξ] is m×kl (row-major in the scratch); the task's tiles
                        // of V[ξ] are kl rows of t at stride pt; task i's M[ξ] is m×t inside
                        // its own region of `mm`.
                        unsafe {
                            gemm_rows(
                                (m, t, kl),
                                (mp.get().add(i * task_m + xi * mplane), t),
                                k0 > 0,
                                (u.as_ptr().add(xi * uplane), kl),
                                (v.as_ptr().add(xi * vplane + c0), pt),
                                1.0,
                            );
                        }
                    }
                });
            });
        }
        // The epilogue and the inverse transform onto each task's output block.
        let (mm, outp) = (&mm[..], SendPtr(out.as_mut_ptr()));
        (0..ntasks).into_par_iter().for_each(|i| {
            let (r0, r1, m0, m) = task(i);
            let t = (r1 - r0) * tw;
            let mplane = plane(m, t);
            let (c0, c1) = (col(r0), if r1 == tile_rows { n } else { col(r1) });
            // SAFETY: task i owns rows m0..m0+m and columns c0..c1 of `out`; no two tasks
            // share both.
            let dst = unsafe { outp.get().add(m0 * n + c0) };
            // SAFETY: prefill writes only the task's m×(c1-c0) block at dst (row stride n).
            unsafe { prefill(dst, n, m0, m, c0, c1 - c0, od, &init) };
            let scratch = if f4 {
                f4::tiles_scratch(t)
            } else {
                f2::scratch(0, tw)
            };
            let add = if f4 { f4::add_tiles } else { f2::add_tiles };
            with_scratch(scratch, |s| {
                // SAFETY: the task's block, as for prefill.
                unsafe {
                    add(
                        &mm[i * task_m..][..xi_n * mplane],
                        mplane,
                        m,
                        (th, tw),
                        od.h,
                        od.w,
                        r0,
                        r1,
                        init.scale,
                        s,
                        dst,
                        n,
                    )
                }
            });
        });
    }
    arena.give(v);
    arena.give(mm);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::conv;
    use half::bf16;

    /// Winograd against the im2col convolution, odd and even sizes, segments, an epilogue with
    /// a residual, with and without the fused upsampling, F(4×4) gathered or copied.
    #[test]
    fn matches_the_im2col_convolution() {
        for (d, c1, c2, cout, upsample) in [
            (Dims { b: 2, h: 6, w: 8 }, 16, 8, 40, false),
            (Dims { b: 3, h: 5, w: 7 }, 20, 0, 17, false),
            (Dims { b: 1, h: 3, w: 2 }, 9, 9, 16, true),
            (Dims { b: 2, h: 3, w: 5 }, 12, 0, 16, true),
            (Dims { b: 2, h: 33, w: 30 }, 24, 0, 64, false),
            (Dims { b: 1, h: 4, w: 5 }, 280, 250, 170, false),
            // F(4×4)'s gathered patches (on AVX-512): 8-tile rows, and 4-tile rows through
            // the upsampling with a last tile row past the image
            (Dims { b: 2, h: 12, w: 32 }, 20, 12, 24, false),
            (Dims { b: 3, h: 5, w: 8 }, 10, 6, 16, true),
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
                conv::conv2d(
                    input,
                    conv::Lhs::F32(&w.to_f32()),
                    cout,
                    g,
                    init,
                    &mut want,
                    &mut Arena::default(),
                );
                let mut got = vec![f32::NAN; cout * od.n()];
                conv2d_by(
                    input,
                    &w,
                    cout,
                    g,
                    init,
                    &mut got,
                    &mut Arena::default(),
                    f4,
                );
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
