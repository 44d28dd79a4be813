//! The bf16 product in f32 arithmetic, for CPUs without AMX: the operands widened back to f32
//! (exactly: they are bf16 values) and multiplied by `gemm`, as the f32 path's products are
//! (`conv::gemm_rows`, fixed depth blocks, so the bits still do not depend on the pool).
//! bf16 × bf16 is exact in f32, so these are the AMX kernel's sums in another order. A
//! kernel of its own over the packed pairs ran 2.3–2.7× slower than the f32 path.

use std::cell::RefCell;

use half::slice::HalfFloatSliceExt;

use super::{kpairs, Lhs, PANEL};
use crate::cpu::conv::gemm_rows;

thread_local! {
    static WIDE: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// See [`super::gemm`].
///
/// # Safety
/// As [`super::gemm`], whose checks this relies on.
pub(super) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    accumulate: bool,
    a: Lhs<'_>,
    b: &[u32],
    beta: f32,
) {
    let kp = kpairs(k);
    WIDE.with(|wide| {
        let (wa, wb) = &mut *wide.borrow_mut();
        wa.resize(m * k, 0.0);
        wb.resize(k * n, 0.0);
        // A as f32 rows [m][k].
        for (i, row) in wa.chunks_exact_mut(k).enumerate() {
            match a {
                Lhs::Rows(a, lda) => {
                    let src = &a.reinterpret_cast()[i * lda..][..k];
                    for (d, &s) in row.iter_mut().zip(src) {
                        *d = f32::from_bits(u32::from(s) << 16);
                    }
                }
                Lhs::Tiles(w, t0, kb0) => w.widen_stored((16 * t0 + i) * w.depth() + 32 * kb0, row),
            }
        }
        // B unpacked to f32 rows [k][n]: pair q of panel p holds rows 2q, 2q + 1 of its columns.
        for (p, c0) in (0..n).step_by(PANEL).enumerate() {
            let cols = PANEL.min(n - c0);
            let panel = &b[p * kp * PANEL..];
            for q in 0..k.div_ceil(2) {
                let pair = &panel[q * PANEL..][..cols];
                for (c, &v) in pair.iter().enumerate() {
                    wb[2 * q * n + c0 + c] = f32::from_bits(v << 16);
                    if 2 * q + 1 < k {
                        wb[(2 * q + 1) * n + c0 + c] = f32::from_bits(v & 0xFFFF_0000);
                    }
                }
            }
        }
        // SAFETY: the caller's contract for dst; wa is m×k and wb k×n, row-major.
        unsafe {
            gemm_rows(
                (m, n, k),
                (dst, dst_rs),
                accumulate,
                (wa.as_ptr(), k),
                (wb.as_ptr(), n),
                beta,
            )
        }
    });
}
