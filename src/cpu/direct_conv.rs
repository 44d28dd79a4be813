//! 3×3 f32 convolutions summed straight from the input planes (AVX-512): no im2col columns,
//! no packing. Stride 1 with padding 1, and stride 2 (downsamplers, any padding).
//!
//! A vector holds 16 consecutive pixels of an output channel's `[b][h][w]` plane (whole rows of
//! narrow images, or part of a wide row). Tap (ky, kx) of input channel ci contributes the 16
//! input pixels `(ky − 1)·w + kx − 1` further along ci's plane, times one broadcast weight; a
//! lane mask per vector and tap zeroes the pixels that fall outside their image (the padding,
//! and rows or columns that belong to the next image). So a block of `R` output channels × `V`
//! vectors is `R·V` FMA chains, each over the whole depth (ci, then tap), fed by `V` loads and
//! `R` broadcasts per depth step. The masked loads mostly straddle two cache lines, so with
//! several row blocks the first one stores the tap vectors it loads into aligned scratch
//! (9·cin vectors per pixel vector, in L2), and the others read them there. Strided, a lane's
//! source is not next to its neighbour's: the taps are gathered (`vgatherdps`) by their
//! positions.
//!
//! im2col wrote each input value nine times into columns that `gemm` then packed again: for
//! the small-channel layers of the bundled digits model (32–128 channels on 4×4–16×16 images
//! at batch 64) that traffic weighed as much as the products. Per layer there (2 threads,
//! AVX-512 Xeon, batch 64): 8×8 64→64 1.07 ms against im2col's 1.42, 4×4 64→64 0.32 against
//! 0.48, the downsamplers 16×16 32→32 0.42 against 1.06 and 8×8 64→64 0.41 against 0.88; the
//! output convolutions (a few output channels: im2col's product one or a few rows deep): 16×16
//! 32→1 0.35 against 0.49 ms, the DDPM-CIFAR-10 UNet's 128→3 0.11 against 0.17 ms at batch 1,
//! Stable Diffusion's 320→4 at 64×64 2.2 against 4.6 ms at batch 2 (`benches/README.md`).
//!
//! Each output element is one chain over the whole depth in a fixed order, whatever the
//! partition: the bits do not depend on the pool.

use rayon::prelude::*;

use super::arena::with_scratch;
use super::conv::{prefill, Init, Input};
use super::vecmath::has_avx512;
use super::SendPtr;
use crate::unet::layout::{Dims, Geometry};

/// Output channels per block (broadcasts per depth step).
const R: usize = 8;
/// 16-pixel vectors per block (loads per depth step).
const V: usize = 3;
const LANES: usize = 16;

/// Whether `conv2d` takes this convolution on this CPU: AVX-512, and weights small enough to
/// stay in L2 while every block of pixels passes over them (at most [`MAX_WEIGHTS`]), from 16
/// input channels (below, im2col's columns are short and its product is cheap).
pub fn applies(g: Geometry, cin: usize, cout: usize) -> bool {
    let shape = g == Geometry::SAME3 || (g.k == 3 && g.stride == 2 && !g.upsample);
    shape && cin >= 16 && cout * cin * 9 <= MAX_WEIGHTS && has_avx512()
}

/// Weights (f32 values) up to which [`applies`]: 512 KiB, a 128→64 layer's 295 KiB. With a
/// 256→256 layer's 2.4 MB every block of 48 pixels read the weights from L3 again, and im2col
/// was as fast (4×4 and 8×8 outputs, batch 1–8).
const MAX_WEIGHTS: usize = 1 << 17;

/// The convolution `out = scale · (init + conv(x, w))`, `w` `[cout][cin][3][3]`, `out`
/// `[cout][b][hout][wout]` (see the module; a geometry `applies` takes).
pub fn conv2d(x: Input<'_>, w: &[f32], cout: usize, g: Geometry, init: Init<'_>, out: &mut [f32]) {
    let d = x.dims;
    let od = g.out_dims(d);
    let (cin, n) = (x.channels(), od.n());
    assert!(g.k == 3 && !g.upsample, "direct convolution geometry");
    assert_eq!(w.len(), cout * cin * 9, "conv weight size");
    assert_eq!(out.len(), cout * n, "conv output size");
    assert!(has_avx512(), "direct convolution without AVX-512");
    let vectors = n.div_ceil(LANES);
    // Tasks: runs of whole blocks of vectors, times chunks of whole row blocks, two per thread.
    let want = 2 * super::partition_threads();
    let blocks = vectors.div_ceil(V);
    let pieces = want.min(blocks);
    let per_piece = blocks.div_ceil(pieces);
    let pieces = blocks.div_ceil(per_piece);
    let row_blocks = cout.div_ceil(R);
    let chunks = want.div_ceil(pieces).min(row_blocks);
    let per_chunk = row_blocks.div_ceil(chunks);
    let chunks = row_blocks.div_ceil(per_chunk);
    let outp = SendPtr(out.as_mut_ptr());
    (0..pieces * chunks).into_par_iter().for_each(|task| {
        let (piece, chunk) = (task / chunks, task % chunks);
        let v0 = piece * per_piece * V;
        let v1 = (v0 + per_piece * V).min(vectors);
        let m0 = chunk * per_chunk * R;
        let m1 = (m0 + per_chunk * R).min(cout);
        let (c0, c1) = (v0 * LANES, (v1 * LANES).min(n));
        // SAFETY: rows m0..m1, columns c0..c1 of `out` are this task's alone.
        unsafe {
            let dst = outp.get().add(m0 * n + c0);
            prefill(dst, n, m0, m1 - m0, c0, c1 - c0, od, &init);
            with_scratch(cin * 9 * V * LANES + LANES, |s| {
                // 64-byte aligned: whole cache lines for the aligned loads.
                let skip = s.as_ptr().align_offset(64).min(LANES);
                let cols = &mut s[skip..][..cin * 9 * V * LANES];
                let (rows, vecs) = ((m0, m1), (v0, v1));
                #[cfg(target_arch = "x86_64")]
                blocks_avx512(&x, w, g, rows, vecs, init.scale, (outp.get(), n), cols);
                // (elsewhere `applies` is false and the assertion above stops the call)
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (rows, vecs, cols);
            });
        }
    });
}

/// The nine taps' sources for output vector `v` (of `g.out_dims(d)`): a lane mask each, the
/// pixels whose source lies inside their image, and the sources' positions in the input plane.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[allow(clippy::needless_range_loop)] // lane l of every tap's mask and positions
fn sources(g: Geometry, d: Dims, v: usize) -> ([u16; 9], [[i32; LANES]; 9]) {
    let od = g.out_dims(d);
    let (mut m, mut at) = ([0u16; 9], [[0i32; LANES]; 9]);
    for l in 0..LANES {
        let p = v * LANES + l;
        if p >= od.n() {
            break;
        }
        let (b, y, x) = (p / od.hw(), (p / od.w) % od.h, p % od.w);
        for tap in 0..9 {
            let sy = (y * g.stride + tap / 3) as isize - g.pad[0] as isize;
            let sx = (x * g.stride + tap % 3) as isize - g.pad[1] as isize;
            if sy >= 0 && sy < d.h as isize && sx >= 0 && sx < d.w as isize {
                m[tap] |= 1 << l;
                at[tap][l] = (b * d.hw()) as i32 + (sy * d.w as isize + sx) as i32;
            }
        }
    }
    (m, at)
}

/// Output channels m0..m1 of vectors v0..v1 added onto `out` (row stride `n`).
///
/// # Safety
/// The CPU has AVX-512 F; rows m0..m1 and the vectors' columns of `out` are the caller's.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
unsafe fn blocks_avx512(
    x: &Input<'_>,
    w: &[f32],
    g: Geometry,
    (m0, m1): (usize, usize),
    (v0, v1): (usize, usize),
    scale: f32,
    (out, n): (*mut f32, usize),
    cols: &mut [f32],
) {
    use std::arch::x86_64::*;
    let d = x.dims;
    let cin = x.channels();
    let kk = cin * 9;
    let planes: Vec<*const f32> = (0..cin).map(|ci| x.channel(ci).as_ptr()).collect();
    let offs: [isize; 9] = std::array::from_fn(|t| {
        (t / 3) as isize * d.w as isize + (t % 3) as isize - d.w as isize - 1
    });
    let scale = _mm512_set1_ps(scale);
    let strided = g.stride != 1;
    // Stride 1 on images of whole vectors: a vector's masks depend only on where it lies in its
    // image, so they are made once per call (made per block, they were 7% of a 32→32 layer).
    let od = g.out_dims(d);
    let image_masks: Vec<[u16; 9]> = if strided || !od.hw().is_multiple_of(LANES) {
        Vec::new()
    } else {
        (0..od.hw() / LANES).map(|v| sources(g, d, v).0).collect()
    };
    // Strided, the block's vectors' source positions (`sources`); stride 1 reads none.
    let mut at = [[[0i32; LANES]; 9]; V];
    let mut vb = v0;
    while vb < v1 {
        // Vectors past v1 get empty masks: they load nothing and store nothing.
        let mut mk = [[0u16; 9]; V];
        for j in 0..V.min(v1 - vb) {
            if image_masks.is_empty() {
                (mk[j], at[j]) = sources(g, d, vb + j);
            } else {
                mk[j] = image_masks[(vb + j) % image_masks.len()];
            }
        }
        let base: [isize; V] = std::array::from_fn(|j| ((vb + j) * LANES) as isize);
        // Tap `tap` of input channel `plane` for the block's vectors: loaded where they lie,
        // with masks, or (strided) gathered by each lane's position (`sources`).
        macro_rules! taps {
            ($plane:expr, $tap:expr) => {{
                let (plane, tap): (*const f32, usize) = ($plane, $tap);
                // SAFETY: a lane's mask bit is set only when its source pixel lies inside its
                // image, so inside the plane; masked lanes are not read.
                let xs: [__m512; V] = std::array::from_fn(|j| unsafe {
                    if strided {
                        let at = _mm512_loadu_si512(at[j][tap].as_ptr().cast());
                        _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mk[j][tap], at, plane)
                    } else {
                        _mm512_maskz_loadu_ps(
                            mk[j][tap],
                            plane.wrapping_offset(base[j] + offs[tap]),
                        )
                    }
                });
                xs
            }};
        }
        // With several row blocks, the taps are gathered once into `cols` (depth-major, whole
        // aligned vectors) for all of them: each row block loading its own took 1.05–1.3× the
        // time per layer. The first row block stores them as it uses them (a separate pass
        // before it was 15% of a 32→32 layer). With one row block (a few output channels),
        // they are only loaded as they are used.
        let gather = m1 - m0 > R || strided;
        let mut mb = m0;
        while mb < m1 {
            // Rows past m1 repeat the last row and are not stored.
            let rows: [usize; R] = std::array::from_fn(|r| (mb + r).min(m1 - 1));
            let wr: [&[f32]; R] = std::array::from_fn(|r| &w[rows[r] * kk..][..kk]);
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            // acc[r][j] += w[r][depth i] · xs[j], the depth in order (channel, then tap).
            macro_rules! fma_step {
                ($i:expr, $xs:expr) => {{
                    let (i, xs): (usize, [__m512; V]) = ($i, $xs);
                    for r in 0..R {
                        // SAFETY: i < kk, each row's length.
                        let wv = _mm512_set1_ps(unsafe { *wr[r].get_unchecked(i) });
                        for j in 0..V {
                            acc[r][j] = _mm512_fmadd_ps(wv, xs[j], acc[r][j]);
                        }
                    }
                }};
            }
            if gather && mb > m0 {
                for (i, step) in cols.chunks_exact(V * LANES).enumerate() {
                    // SAFETY: the step holds V whole vectors, 64-byte aligned.
                    let xs = std::array::from_fn(|j| unsafe {
                        _mm512_load_ps(step.as_ptr().add(j * LANES))
                    });
                    fma_step!(i, xs);
                }
            } else {
                for (ci, &plane) in planes.iter().enumerate() {
                    for tap in 0..9 {
                        let xs = taps!(plane, tap);
                        if gather {
                            for (j, &v) in xs.iter().enumerate() {
                                let at = ((ci * 9 + tap) * V + j) * LANES;
                                // SAFETY: a whole aligned vector of `cols`.
                                unsafe { _mm512_store_ps(cols.as_mut_ptr().add(at), v) };
                            }
                        }
                        fma_step!(ci * 9 + tap, xs);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate().take(m1 - mb) {
                for (j, sum) in row.iter().enumerate().take(v1 - vb) {
                    let c = (vb + j) * LANES;
                    let keep: __mmask16 = if c + LANES <= n {
                        !0
                    } else {
                        (1 << (n - c)) - 1
                    };
                    // SAFETY: row mb + r < m1 and the vector's lanes inside the plane (`keep`)
                    // are the caller's.
                    unsafe {
                        let p = out.add((mb + r) * n + c);
                        let cur = _mm512_maskz_loadu_ps(keep, p);
                        _mm512_mask_storeu_ps(p, keep, _mm512_fmadd_ps(scale, *sum, cur));
                    }
                }
            }
            mb += R;
        }
        vb += V;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3×3 convolution in f64 with every input of `Init`, as a reference.
    fn reference(
        x: &[f32],
        d: Dims,
        w: &[f32],
        cout: usize,
        g: Geometry,
        init: &Init<'_>,
    ) -> Vec<f64> {
        let od = g.out_dims(d);
        let (cin, n) = (x.len() / d.n(), od.n());
        let mut out = vec![0.0f64; cout * n];
        for o in 0..cout {
            for b in 0..od.b {
                for y in 0..od.h {
                    for xx in 0..od.w {
                        let p = (b * od.h + y) * od.w + xx;
                        let mut s = init.bias.map_or(0.0, |v| v[o] as f64)
                            + init.temb.map_or(0.0, |t| t[b * cout + o] as f64)
                            + init.residual.map_or(0.0, |r| r[o * n + p] as f64);
                        for ci in 0..cin {
                            for tap in 0..9 {
                                let sy = (y * g.stride + tap / 3) as isize - g.pad[0] as isize;
                                let sx = (xx * g.stride + tap % 3) as isize - g.pad[1] as isize;
                                if sy < 0 || sy >= d.h as isize || sx < 0 || sx >= d.w as isize {
                                    continue;
                                }
                                let q = (b * d.h + sy as usize) * d.w + sx as usize;
                                s += w[(o * cin + ci) * 9 + tap] as f64 * x[ci * d.n() + q] as f64;
                            }
                        }
                        out[o * n + p] = s * init.scale as f64;
                    }
                }
            }
        }
        out
    }

    /// Same convolutions, stride 1 and 2 (padding 1, and diffusers' (0, 1) padding of
    /// downsamplers without it), one row block or several, odd sizes; the same bits in pools
    /// of 1, 2, 3 and 8 threads.
    #[test]
    fn matches_the_reference_and_not_the_pool() {
        if !has_avx512() {
            return;
        }
        let s2 = |pad| Geometry {
            stride: 2,
            pad,
            ..Geometry::SAME3
        };
        let cases = [
            (Dims { b: 3, h: 4, w: 4 }, 5, 3, Geometry::SAME3),
            (Dims { b: 2, h: 8, w: 8 }, 17, 19, Geometry::SAME3),
            (Dims { b: 1, h: 5, w: 7 }, 9, 8, Geometry::SAME3),
            (Dims { b: 2, h: 16, w: 16 }, 3, 1, Geometry::SAME3),
            (Dims { b: 1, h: 3, w: 33 }, 1, 26, Geometry::SAME3),
            (Dims { b: 5, h: 2, w: 3 }, 12, 9, Geometry::SAME3),
            (Dims { b: 3, h: 16, w: 16 }, 6, 20, s2([1; 4])),
            (Dims { b: 2, h: 8, w: 8 }, 7, 5, s2([1; 4])),
            (Dims { b: 2, h: 9, w: 7 }, 4, 11, s2([0, 0, 1, 1])),
            (Dims { b: 4, h: 8, w: 8 }, 5, 17, s2([0, 0, 1, 1])),
        ];
        for (d, cin, cout, g) in cases {
            let n = g.out_dims(d).n();
            let x: Vec<f32> = (0..cin * d.n())
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 37.0)
                .collect();
            let w: Vec<f32> = (0..cout * cin * 9)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 91.0)
                .collect();
            let bias: Vec<f32> = (0..cout).map(|i| i as f32 * 0.1 - 0.3).collect();
            let temb: Vec<f32> = (0..d.b * cout).map(|i| (i % 7) as f32 * 0.05).collect();
            let residual: Vec<f32> = (0..cout * n).map(|i| (i % 11) as f32 * 0.01).collect();
            let init = Init {
                bias: Some(&bias),
                bias2: None,
                temb: Some(&temb),
                residual: Some(&residual),
                keep: false,
                scale: 0.7,
            };
            let want = reference(&x, d, &w, cout, g, &init);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut out = vec![f32::NAN; cout * n];
                let (a, b) = x.split_at(cin / 2 * d.n());
                let segs = [(a, cin / 2), (b, cin - cin / 2)];
                let input = Input {
                    segs: &segs,
                    dims: d,
                };
                pool.install(|| conv2d(input, &w, cout, g, init, &mut out));
                out
            };
            let one = run(1);
            for (i, (&got, &r)) in one.iter().zip(&want).enumerate() {
                assert!(
                    (got as f64 - r).abs() < 1e-4 * (1.0 + r.abs()),
                    "{d:?} {cin}→{cout} {g:?} at {i}: {got} against {r}"
                );
            }
            for threads in [2, 3, 8] {
                let other = run(threads);
                assert!(
                    one.iter()
                        .zip(&other)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{d:?} {cin}→{cout} {g:?}: 1 vs {threads} threads"
                );
            }
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    /// Not a test: the bundled digits model's direct-convolution layers (and one at batch 16)
    /// alone, hot, best of 30 calls on the global pool. `cargo test --release --lib
    /// direct_conv::bench -- --ignored --nocapture` (figures in benches/README.md).
    #[test]
    #[ignore]
    fn digits_layers() {
        if !has_avx512() {
            eprintln!("no AVX-512 here");
            return;
        }
        let layers = [
            (64, 16, 32, 32),
            (64, 8, 64, 64),
            (64, 4, 64, 64),
            (64, 8, 128, 64),
            (64, 16, 16, 16),
            (64, 16, 32, 64),
            (16, 16, 32, 32),
        ];
        for (b, h, cin, cout) in layers {
            let d = Dims { b, h, w: h };
            let x: Vec<f32> = (0..cin * d.n())
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..cout * cin * 9)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 30.0)
                .collect();
            let bias = vec![0.1f32; cout];
            let segs = [(&x[..], cin)];
            let input = Input {
                segs: &segs,
                dims: d,
            };
            let mut out = vec![0.0f32; cout * d.n()];
            let mut best = f64::INFINITY;
            for _ in 0..30 {
                let start = std::time::Instant::now();
                conv2d(
                    input,
                    &w,
                    cout,
                    Geometry::SAME3,
                    Init::bias(&bias),
                    &mut out,
                );
                best = best.min(start.elapsed().as_secs_f64());
            }
            let gflop = 2.0 * (cout * cin * 9 * d.n()) as f64 / 1e9;
            eprintln!(
                "batch {b}, {h}×{h}, {cin}→{cout}: {:.3} ms, {:.0} GFLOP/s",
                best * 1e3,
                gflop / best
            );
        }
    }
}
