//! `dst += beta · W × X` (onto the convolution's prefilled output) for products 16 or 32
//! columns wide: a batch-1 or -2 UNet's 4×4 layers (the DDPM-CIFAR-10 UNet's deepest), where
//! the product is a pass over the weights with 16 or 32 multiply-adds per weight. `gemm` packs
//! each call's weight rows before multiplying them, another pass over the largest operand for
//! little work; here every weight is read once, straight from the weight matrix, and broadcast
//! against the one or two vectors of its depth row of `X` (at most a few hundred KB, in L2
//! while the row blocks pass over it).
//!
//! Timed inside the CIFAR UNet's call (2-core AVX-512 Xeon, old and new alternating per call):
//! at batch 1 its 4×4 layers took about two-thirds of `gemm`'s time, the whole call 0.98×; at
//! batch 2 0.85–0.93× per layer, the call 0.98–1.00×. Blocks of 8 rows beat 6 (equal), 12
//! (1.07× the call) and 16 (1.12×); prefetching the weight rows ahead did not help (1.00).
//! At 64 columns it was no faster than `gemm` (whose kernels then get the whole FMA
//! throughput), so wider products stay there. The accumulators are flat arrays of lanes: as
//! arrays of 16-lane vectors, LLVM did not unroll the 32-column block (2.2× `gemm`'s time).
//!
//! Each output element is one FMA chain over the whole depth, in order, whatever rows are
//! around it: the bits do not depend on how an op's output channels were cut into tasks.

use crate::simd_dispatch;

/// Columns per 512-bit vector of f32: the products are one or two of them wide.
const LANES: usize = 16;

/// Rows per block: 8 or 16 accumulator vectors (16 or 32 columns), enough independent FMA
/// chains for both ports; the 6-, 12- and 16-row blocks above were timed at 16 columns.
const ROWS: usize = 8;

/// Whether a product `n` columns wide goes here on this CPU (AVX-512, whose vectors hold a
/// row of the product in one or two; elsewhere `gemm`).
pub fn applies(n: usize) -> bool {
    (n == LANES || n == 2 * LANES) && super::vecmath::has_avx512()
}

/// The product's operands: `dst` (`m` rows of `n` at row stride `dst_rs`), `w` (`m` rows of
/// `k` at row stride `lda`) and `x` (`k` rows of `n` at row stride `xs`).
pub struct Operands<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dst: &'a mut [f32],
    pub dst_rs: usize,
    pub w: &'a [f32],
    pub lda: usize,
    pub x: &'a [f32],
    pub xs: usize,
}

/// The product (see the module).
///
/// # Panics
/// If an operand is shorter than its shape and stride say.
pub fn product(o: Operands<'_>, beta: f32) {
    let Operands {
        m,
        n,
        k,
        dst_rs,
        lda,
        xs,
        ..
    } = o;
    if m == 0 {
        return;
    }
    assert!(n == LANES || n == 2 * LANES, "narrow product width {n}");
    assert!(o.dst.len() >= (m - 1) * dst_rs + n, "narrow product output");
    assert!(o.w.len() >= (m - 1) * lda + k, "narrow product weights");
    assert!(
        k == 0 || o.x.len() >= (k - 1) * xs + n,
        "narrow product columns"
    );
    if n == LANES {
        rows16(o, beta);
    } else {
        rows32(o, beta);
    }
}

simd_dispatch!(fn rows16(o: Operands<'_>, beta: f32) => rows_kernel::<16>);
simd_dispatch!(fn rows32(o: Operands<'_>, beta: f32) => rows_kernel::<32>);

/// Blocks of [`ROWS`] rows, then the rest one row at a time; `N` columns.
#[inline(always)]
fn rows_kernel<const N: usize>(mut o: Operands<'_>, beta: f32) {
    let mut i = 0;
    while i + ROWS <= o.m {
        // SAFETY: `product` checked the operands' extents for all m rows.
        unsafe { block::<N, ROWS>(&mut o, i, beta) };
        i += ROWS;
    }
    while i < o.m {
        // SAFETY: as above.
        unsafe { block::<N, 1>(&mut o, i, beta) };
        i += 1;
    }
}

/// Rows `i..i + R`.
///
/// # Safety
/// The operands hold rows `i..i + R` (`product`'s checks).
#[inline(always)]
unsafe fn block<const N: usize, const R: usize>(o: &mut Operands<'_>, i: usize, beta: f32) {
    let mut acc = [[0.0f32; N]; R];
    let (w, x) = (o.w.as_ptr(), o.x.as_ptr());
    for kk in 0..o.k {
        // SAFETY: row kk of x holds N values.
        let xv: [f32; N] = unsafe { std::ptr::read_unaligned(x.add(kk * o.xs).cast()) };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row i + r of w holds k values.
            let wv = unsafe { *w.add((i + r) * o.lda + kk) };
            for (a, &xv) in acc.iter_mut().zip(&xv) {
                *a = wv.mul_add(xv, *a);
            }
        }
    }
    let d = o.dst.as_mut_ptr();
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row i + r of dst holds N values, and `o.dst` is borrowed mutably.
        let row = unsafe { std::slice::from_raw_parts_mut(d.add((i + r) * o.dst_rs), N) };
        for (d, &a) in row.iter_mut().zip(acc) {
            *d += beta * a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 product added onto what `dst` held, both widths: row blocks and the
    /// rows past them, strides wider than the operands.
    #[test]
    fn matches_a_reference_product() {
        for n in [LANES, 2 * LANES] {
            matches_a_reference_product_of_width(n);
        }
    }

    fn matches_a_reference_product_of_width(n: usize) {
        let (m, k, lda, xs, dst_rs) = (19, 37, 41, n + 4, n + 2);
        let val = |i: usize, s: usize| ((i * s + 7) % 23) as f32 / 11.0 - 1.0;
        let w: Vec<f32> = (0..m * lda).map(|i| val(i, 5)).collect();
        let x: Vec<f32> = (0..k * xs).map(|i| val(i, 3)).collect();
        let mut dst: Vec<f32> = (0..m * dst_rs).map(|i| val(i, 2)).collect();
        let before = dst.clone();
        product(
            Operands {
                m,
                n,
                k,
                dst: &mut dst,
                dst_rs,
                w: &w,
                lda,
                x: &x,
                xs,
            },
            0.5,
        );
        for i in 0..m {
            for j in 0..dst_rs {
                let (got, was) = (dst[i * dst_rs + j], before[i * dst_rs + j]);
                if j >= n {
                    assert_eq!(got, was, "past the product's columns");
                    continue;
                }
                let sum: f64 = (0..k)
                    .map(|p| w[i * lda + p] as f64 * x[p * xs + j] as f64)
                    .sum();
                let want = was as f64 + 0.5 * sum;
                assert!(
                    (got as f64 - want).abs() < 1e-5,
                    "({i}, {j}): {got} vs {want}"
                );
            }
        }
    }

    /// A row's bits do not depend on which rows are computed with it (the op's task cuts).
    #[test]
    fn rows_do_not_depend_on_their_block() {
        let (m, k, n) = (16, 300, 2 * LANES);
        let w: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 999.0)
            .collect();
        let x: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104_729) % 997) as f32 / 500.0)
            .collect();
        let run = |r0: usize, r1: usize| {
            let mut dst = vec![0.0f32; (r1 - r0) * n];
            product(
                Operands {
                    m: r1 - r0,
                    n,
                    k,
                    dst: &mut dst,
                    dst_rs: n,
                    w: &w[r0 * k..],
                    lda: k,
                    x: &x,
                    xs: n,
                },
                1.0,
            );
            dst
        };
        let whole = run(0, m);
        let mut cut = run(0, 5);
        cut.extend(run(5, m));
        assert_eq!(whole, cut);
    }
}
