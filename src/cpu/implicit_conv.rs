//! 3×3 convolutions of the bf16 compute path as an implicit product: no im2col.
//!
//! The input is rounded once into padded channel-pair planes, `[cin/2][b][h+2][w+2]` u32 (the
//! bf16 values of channels 2p and 2p + 1 of one pixel, the pair an AMX B row holds), zero on
//! the border. With the weights' depth tap-major (`Tiles::taps`), depth block kb (32 values:
//! 16 channel pairs at one tap (ky, kx)) of output pixels x0..x0 + 16 of row y is the 16×16
//! block of those pairs' planes at padded row y + ky, columns x0 + kx.. : a B tile the kernel
//! loads where it lies, one plane apart per row ([`bf16::BTiles::strided`]). Each input value
//! is rounded and written once, instead of nine times into im2col columns and again into
//! packed pairs.
//!
//! Applies with AMX, tap-major weights (input channels a multiple of 32), stride 1 and
//! padding 1, with or without the fused 2× upsampling (the planes hold the upsampled input),
//! and output rows a whole number of 16-pixel panels wide. Each output element is summed over
//! the whole depth by one kernel call, in depth order, whatever the partition.

use rayon::prelude::*;

use super::arena::{Arena, Words};
use super::bf16::{self, amx, BTiles, Tiles, KBLOCK, PANEL};
use super::conv::{prefill, Init, Input, Partition};
use super::SendPtr;
use crate::simd_dispatch;
use crate::unet::layout::{Dims, Geometry};

/// Whether `conv2d` takes this convolution (see the module's conditions).
pub fn applies(w: &Tiles, g: Geometry, od: Dims) -> bool {
    w.taps() == 9
        && g.k == 3
        && g.stride == 1
        && g.pad == [1; 4]
        && od.w.is_multiple_of(PANEL)
        && amx::available()
}

/// The padded channel-pair planes of an input, at the output's resolution.
#[derive(Clone, Copy)]
struct Planes {
    pairs: usize,
    od: Dims,
    /// Words from one plane to the next: the plane's `b·(h+2)·(w+2)` rounded up to whole
    /// cache lines, an odd number of them, so that a tile's 16 rows (16 planes) fall in
    /// different cache sets.
    stride: usize,
}

impl Planes {
    fn new(cin: usize, od: Dims) -> Self {
        let words = od.b * (od.h + 2) * (od.w + 2);
        let mut lines = words.div_ceil(16);
        if lines.is_multiple_of(2) {
            lines += 1;
        }
        Self {
            pairs: cin / 2,
            od,
            stride: 16 * lines,
        }
    }

    fn len(&self) -> usize {
        self.pairs * self.stride
    }

    /// Words from a plane's start to padded pixel (y, x) of image b.
    fn at(&self, b: usize, y: usize, x: usize) -> usize {
        (b * (self.od.h + 2) + y) * (self.od.w + 2) + x
    }

    /// Rounds input `x` into the planes `out` (`len()` words), in parallel over planes.
    fn fill(&self, x: &Input<'_>, upsample: bool, out: &mut [u32]) {
        let d = x.dims;
        let od = self.od;
        out.par_chunks_mut(self.stride)
            .enumerate()
            .for_each(|(p, plane)| {
                let (even, odd) = (x.channel(2 * p), x.channel(2 * p + 1));
                plane.fill(0);
                for b in 0..od.b {
                    for y in 0..od.h {
                        let sy = if upsample { y / 2 } else { y };
                        let src = b * d.hw() + sy * d.w;
                        let row = &mut plane[self.at(b, y + 1, 1)..][..od.w];
                        pair_row(&even[src..][..d.w], &odd[src..][..d.w], upsample, row);
                    }
                }
            });
    }
}

simd_dispatch!(fn pair_row(even: &[f32], odd: &[f32], upsample: bool, out: &mut [u32]) => pair_kernel);

/// One row of a pair plane: `out[x] = round(even[x]) | round(odd[x]) << 16`, each source
/// value twice with `upsample`.
#[inline(always)]
fn pair_kernel(even: &[f32], odd: &[f32], upsample: bool, out: &mut [u32]) {
    if upsample {
        for (o, (&e, &d)) in out.chunks_exact_mut(2).zip(even.iter().zip(odd)) {
            o.fill(bf16::pair(e, d));
        }
    } else {
        for (o, (&e, &d)) in out.iter_mut().zip(even.iter().zip(odd)) {
            *o = bf16::pair(e, d);
        }
    }
}

/// The convolution `out = scale · (init + conv(x, w))` (as `conv::conv2d`), where
/// [`applies`] holds.
pub fn conv2d(
    x: Input<'_>,
    w: &Tiles,
    cout: usize,
    g: Geometry,
    init: Init<'_>,
    out: &mut [f32],
    arena: &mut Arena,
) {
    let cin = x.channels();
    let od = g.out_dims(x.dims);
    assert!(applies(w, g, od), "implicit convolution: not applicable");
    assert_eq!(
        (w.rows(), w.depth()),
        (cout, 9 * cin),
        "implicit convolution: weight size"
    );
    let n = od.n();
    assert_eq!(out.len(), cout * n, "implicit convolution: output size");

    let planes = Planes::new(cin, od);
    let mut buf = Words::take(arena, planes.len());
    planes.fill(&x, g.upsample, buf.words_mut());
    let data = buf.words();

    // Depth block kb: tap kb·32 / cin, channel pairs from (kb·32 mod cin) / 2.
    let blocks: Vec<usize> = (0..9 * cin / KBLOCK)
        .map(|kb| {
            let (tap, c) = (kb * KBLOCK / cin, kb * KBLOCK % cin);
            c / 2 * planes.stride + planes.at(0, tap / 3, tap % 3)
        })
        .collect();
    let part = Partition::new(od, cout);
    let outp = SendPtr(out.as_mut_ptr());
    (0..part.tasks()).into_par_iter().for_each(|task| {
        let ((r0, r1), (m0, m)) = part.task(task);
        let (c0, tn) = (r0 * od.w, (r1 - r0) * od.w);
        // Panel j: 16 pixels of output row r0 + j / per_row (padded row y + ky, column
        // x0 + kx for tap (ky, kx)); an odd count is evened out by repeating the last panel,
        // whose sums the kernel discards.
        let per_row = od.w / PANEL;
        let mut panels: Vec<usize> = (0..tn / PANEL)
            .map(|j| {
                let r = r0 + j / per_row;
                planes.at(r / od.h, r % od.h, j % per_row * PANEL)
            })
            .collect();
        if panels.len() % 2 == 1 {
            panels.push(*panels.last().unwrap());
        }
        // SAFETY: task (tile, chunk) owns rows m0..m0 + m and columns c0..c0 + tn of `out`;
        // no two tasks share both.
        let dst = unsafe { outp.get().add(m0 * n + c0) };
        // SAFETY: prefill writes only the task's m×tn block at dst (row stride n).
        unsafe { prefill(dst, n, m0, m, c0, tn, od, &init) };
        let b = BTiles::strided(data, &panels, &blocks, planes.stride);
        let a = bf16::Lhs::Tiles(w, m0 / 16, 0);
        // SAFETY: as above for dst; `BTiles::strided` and the kernel check the operands.
        unsafe { bf16::gemm_strided((m, tn, 9 * cin), (dst, n), true, a, b, init.scale) };
    });
    buf.give(arena);
}

#[cfg(test)]
mod tests {
    use half::bf16 as half_bf16;

    use super::*;
    use crate::cpu::conv::{self, Lhs};

    fn value(i: usize, a: usize, b: usize) -> f32 {
        ((i * a % b) as f32 - (b / 2) as f32) / b as f32
    }

    /// The implicit product against the im2col one on the same tap-major tiles (the same B
    /// tiles' contents, read in place instead of packed), over two input segments (one
    /// splitting a channel pair), an odd panel count, channel chunks, the fused upsampling
    /// and an epilogue with a residual and a scale.
    #[test]
    fn matches_the_im2col_product() {
        if !amx::available() {
            return;
        }
        let cases = [
            (Dims { b: 2, h: 5, w: 16 }, (64, 32), 48, false),
            (Dims { b: 1, h: 3, w: 48 }, (32, 32), 80, false),
            (Dims { b: 2, h: 4, w: 8 }, (96, 0), 32, true),
            (Dims { b: 3, h: 16, w: 32 }, (128, 0), 128, false),
            // A channel pair split between the segments.
            (Dims { b: 1, h: 2, w: 16 }, (33, 31), 16, false),
        ];
        for (d, (c1, c2), cout, upsample) in cases {
            let cin = c1 + c2;
            let g = Geometry {
                upsample,
                ..Geometry::SAME3
            };
            let od = g.out_dims(d);
            let x: Vec<f32> = (0..cin * d.n()).map(|i| value(i, 37, 101)).collect();
            let w: Vec<half_bf16> = (0..cout * cin * 9)
                .map(|i| half_bf16::from_f32(value(i, 13, 29)))
                .collect();
            let tiles = Tiles::from_rows_tap_major(&w, cout, cin * 9, 9);
            assert!(applies(&tiles, g, od));
            let bias: Vec<f32> = (0..cout).map(|i| value(i, 3, 7)).collect();
            let residual: Vec<f32> = (0..cout * od.n()).map(|i| value(i, 5, 11)).collect();
            let init = Init {
                residual: Some(&residual),
                scale: 0.5,
                ..Init::bias(&bias)
            };
            let (a, b) = x.split_at(c1 * d.n());
            let segs = [(a, c1), (b, c2)];
            let input = Input {
                segs: &segs[..if c2 > 0 { 2 } else { 1 }],
                dims: d,
            };
            let mut want = vec![f32::NAN; cout * od.n()];
            let mut arena = Arena::default();
            conv::conv2d(
                input,
                Lhs::Tiles(&tiles),
                cout,
                g,
                init,
                &mut want,
                &mut arena,
            );
            let mut got = vec![f32::NAN; cout * od.n()];
            conv2d(input, &tiles, cout, g, init, &mut got, &mut arena);
            // The same tiles' values in the same order: the same bits.
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{d:?} [{i}]: {g} vs {w}");
            }
        }
    }
}
