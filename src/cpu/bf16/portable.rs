//! The bf16 product in f32 arithmetic, for CPUs without AMX: each output row of a panel
//! accumulates its 16 columns over the depth pairs, even then odd, in fused multiply-adds
//! (bf16 × bf16 is exact in f32, so these are the AMX kernel's sums in another order).

use half::slice::HalfFloatSliceExt;

use super::{kpairs, Lhs, PANEL};
use crate::simd_dispatch;

/// Output rows per pass over a panel (each reuses the panel's loads).
const ROWS: usize = 4;

/// See [`super::gemm`].
///
/// # Safety
/// As [`super::gemm`], whose checks this relies on.
pub(super) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    a: Lhs<'_>,
    b: &[u32],
    beta: f32,
) {
    let kp = kpairs(k);
    let pairs = k.div_ceil(2);
    let mut arow = vec![0.0f32; ROWS * 2 * pairs];
    for r0 in (0..m).step_by(ROWS) {
        let rows = ROWS.min(m - r0);
        // The rows' A values widened, zero past the depth.
        for i in 0..ROWS {
            let dst_row = &mut arow[i * 2 * pairs..][..2 * pairs];
            if i < rows {
                match a {
                    Lhs::Rows(a, lda) => {
                        let src = &a.reinterpret_cast()[(r0 + i) * lda..][..k];
                        for (d, &s) in dst_row.iter_mut().zip(src) {
                            *d = f32::from_bits(u32::from(s) << 16);
                        }
                    }
                    Lhs::Tiles(w, t0, kb0) => {
                        let row = 16 * t0 + r0 + i;
                        w.widen(row * w.depth() + 32 * kb0, &mut dst_row[..k]);
                    }
                }
                dst_row[k..].fill(0.0);
            } else {
                dst_row.fill(0.0);
            }
        }
        for (p, c0) in (0..n).step_by(PANEL).enumerate() {
            let mut acc = [[0.0f32; PANEL]; ROWS];
            panel(
                &arow,
                pairs,
                &b[p * kp * PANEL..][..pairs * PANEL],
                &mut acc,
            );
            let cols = PANEL.min(n - c0);
            for (i, acc) in acc.iter().take(rows).enumerate() {
                // SAFETY: row r0 + i < m, columns c0..c0 + cols < n of the caller's dst.
                let d = unsafe {
                    std::slice::from_raw_parts_mut(dst.add((r0 + i) * dst_rs + c0), cols)
                };
                for (o, &v) in d.iter_mut().zip(acc) {
                    *o += beta * v;
                }
            }
        }
    }
}

simd_dispatch!(fn panel(arow: &[f32], pairs: usize, b: &[u32], acc: &mut [[f32; PANEL]; ROWS]) => panel_kernel);

#[inline(always)]
fn panel_kernel(arow: &[f32], pairs: usize, b: &[u32], acc: &mut [[f32; PANEL]; ROWS]) {
    for (q, bq) in b.chunks_exact(PANEL).enumerate().take(pairs) {
        let lo: [f32; PANEL] = std::array::from_fn(|c| f32::from_bits(bq[c] << 16));
        let hi: [f32; PANEL] = std::array::from_fn(|c| f32::from_bits(bq[c] & 0xFFFF_0000));
        for (i, acc) in acc.iter_mut().enumerate() {
            let (ae, ao) = (arow[i * 2 * pairs + 2 * q], arow[i * 2 * pairs + 2 * q + 1]);
            for c in 0..PANEL {
                acc[c] = ae.mul_add(lo[c], acc[c]);
                acc[c] = ao.mul_add(hi[c], acc[c]);
            }
        }
    }
}
