//! B of the bf16 product, rounded to bf16 and packed: `out[panel][pair][16]`, each u32 the
//! bf16 values of depth 2·pair (low half) and 2·pair + 1 (high half) of one column, the
//! layout AMX's B tiles (and the portable kernel) read; zero past the depth and the columns.

use super::{kpairs, panels, PANEL};
use crate::simd_dispatch;

/// f32 → bf16 bits, rounded to nearest even (a NaN stays a quiet NaN), branch-free so that
/// packing vectorises.
#[inline(always)]
pub fn round(x: f32) -> u32 {
    let b = x.to_bits();
    let r = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    if x.is_nan() {
        (b >> 16) | 0x40
    } else {
        r
    }
}

/// Packs rows `0..k`, columns `0..n` of `src` (row stride `rs`) into `out`
/// (`packed_len(k, n)` long).
pub fn pack(src: &[f32], rs: usize, k: usize, n: usize, out: &mut [u32]) {
    let kp = kpairs(k);
    assert!(
        out.len() >= panels(n) * kp * PANEL,
        "bf16 pack: output too short"
    );
    assert!(
        k == 0 || src.len() >= (k - 1) * rs + n,
        "bf16 pack: source too short"
    );
    for q in 0..kp {
        let even = (2 * q < k).then(|| &src[2 * q * rs..][..n]);
        let odd = (2 * q + 1 < k).then(|| &src[(2 * q + 1) * rs..][..n]);
        for p in 0..panels(n) {
            let dst = &mut out[(p * kp + q) * PANEL..][..PANEL];
            let (c0, c1) = ((p * PANEL).min(n), ((p + 1) * PANEL).min(n));
            let w = c1 - c0;
            match (even, odd) {
                (Some(e), Some(o)) => pair_row(&e[c0..c1], &o[c0..c1], &mut dst[..w]),
                (Some(e), None) => {
                    for (d, &v) in dst[..w].iter_mut().zip(&e[c0..c1]) {
                        *d = round(v);
                    }
                }
                _ => dst[..w].fill(0),
            }
            dst[w..].fill(0);
        }
    }
}

simd_dispatch!(fn pair_row(even: &[f32], odd: &[f32], out: &mut [u32]) => pair_kernel);

#[inline(always)]
fn pair_kernel(even: &[f32], odd: &[f32], out: &mut [u32]) {
    for ((d, &e), &o) in out.iter_mut().zip(even).zip(odd) {
        *d = round(e) | (round(o) << 16);
    }
}
