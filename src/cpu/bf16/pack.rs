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

/// Two values as one packed pair: `even` rounded in the low half, `odd` in the high half.
#[inline(always)]
pub fn pair(even: f32, odd: f32) -> u32 {
    round(even) | (round(odd) << 16)
}

/// Packs rows `0..k`, columns `0..n` of `src` (row stride `rs`) into `out`
/// (`packed_len(k, n)` long).
pub fn pack(src: &[f32], rs: usize, k: usize, n: usize, out: &mut [u32]) {
    pack_pairs(src, rs, k, n, out, kpairs(k), 0);
    pad_depth(k, n, out);
}

/// Rows `0..rows` of `src` (row stride `rs`) as depth pairs `q0..` of every panel of `out`,
/// a packing of `kp` pairs per panel; `rows` is even unless they end the depth. Lets a
/// caller pack a product's depth in pieces (im2col columns a few channels at a time).
pub fn pack_pairs(
    src: &[f32],
    rs: usize,
    rows: usize,
    n: usize,
    out: &mut [u32],
    kp: usize,
    q0: usize,
) {
    let pairs = rows.div_ceil(2);
    assert!(q0 + pairs <= kp, "bf16 pack: pairs past the depth");
    assert!(
        out.len() >= panels(n) * kp * PANEL,
        "bf16 pack: output too short"
    );
    assert!(
        rows == 0 || src.len() >= (rows - 1) * rs + n,
        "bf16 pack: source too short"
    );
    for q in 0..pairs {
        let even = &src[2 * q * rs..][..n];
        let odd = (2 * q + 1 < rows).then(|| &src[(2 * q + 1) * rs..][..n]);
        pair_row(even, odd, &mut out[(q0 + q) * PANEL..], kp);
    }
}

simd_dispatch!(fn pair_row(even: &[f32], odd: Option<&[f32]>, out: &mut [u32], kp: usize) => pair_kernel);

/// One depth pair of every panel: `out[p·kp·16 + c]` for column p·16 + c (`out` starts at the
/// pair's first panel), zero past `even.len()` columns.
#[inline(always)]
fn pair_kernel(even: &[f32], odd: Option<&[f32]>, out: &mut [u32], kp: usize) {
    let n = even.len();
    for p in 0..panels(n) {
        let dst = &mut out[p * kp * PANEL..][..PANEL];
        let c0 = p * PANEL;
        if c0 + PANEL <= n {
            let e: &[f32; PANEL] = even[c0..c0 + PANEL].try_into().unwrap();
            match odd {
                Some(o) => {
                    let o: &[f32; PANEL] = o[c0..c0 + PANEL].try_into().unwrap();
                    for c in 0..PANEL {
                        dst[c] = pair(e[c], o[c]);
                    }
                }
                None => {
                    for c in 0..PANEL {
                        dst[c] = round(e[c]);
                    }
                }
            }
        } else {
            for (c, d) in dst.iter_mut().enumerate() {
                let j = c0 + c;
                *d = if j >= n {
                    0
                } else {
                    round(even[j]) | odd.map_or(0, |o| round(o[j]) << 16)
                };
            }
        }
    }
}

/// Zeroes the pairs past depth `k` of every panel of `out` (packed for `k` and `n`).
pub fn pad_depth(k: usize, n: usize, out: &mut [u32]) {
    let kp = kpairs(k);
    for p in 0..panels(n) {
        out[(p * kp + k.div_ceil(2)) * PANEL..(p + 1) * kp * PANEL].fill(0);
    }
}
