//! Up- and downsampling on the internal `[c][b][h][w]` layout that the convolutions do not
//! absorb: nearest 2× upsampling and 2×2 average pooling (used by the "resnet" up/down
//! samplers on their residual path). Nearest upsampling in front of a convolution is fused
//! into the convolution's im2col instead (`Geometry::upsample`).

use rayon::prelude::*;

use crate::unet::layout::Dims;

/// Nearest-neighbour 2× upsampling: `out` is `[c][b][2h][2w]`.
pub fn upsample_nearest2x(x: &[f32], c: usize, d: Dims, out: &mut [f32]) {
    assert_eq!(x.len(), c * d.n());
    assert_eq!(out.len(), 4 * x.len());
    let (w2, planes) = (2 * d.w, c * d.b);
    let _ = planes;
    out.par_chunks_mut(4 * d.hw())
        .zip(x.par_chunks(d.hw()))
        .for_each(|(o, p)| {
            for (y, row) in p.chunks_exact(d.w).enumerate() {
                let (top, rest) = o[2 * y * w2..][..2 * w2].split_at_mut(w2);
                for (xx, &v) in row.iter().enumerate() {
                    top[2 * xx] = v;
                    top[2 * xx + 1] = v;
                }
                rest.copy_from_slice(top);
            }
        });
}

/// 2×2 average pooling with stride 2: `out` is `[c][b][h/2][w/2]`.
pub fn avg_pool2x(x: &[f32], c: usize, d: Dims, out: &mut [f32]) {
    let (ho, wo) = (d.h / 2, d.w / 2);
    assert_eq!(x.len(), c * d.n());
    assert_eq!(out.len(), c * d.b * ho * wo);
    out.par_chunks_mut((ho * wo).max(1))
        .zip(x.par_chunks(d.hw()))
        .for_each(|(o, p)| {
            for y in 0..ho {
                let (r0, r1) = (&p[2 * y * d.w..][..d.w], &p[(2 * y + 1) * d.w..][..d.w]);
                for xx in 0..wo {
                    o[y * wo + xx] =
                        (r0[2 * xx] + r0[2 * xx + 1] + r1[2 * xx] + r1[2 * xx + 1]) * 0.25;
                }
            }
        });
}
