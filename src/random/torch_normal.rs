//! `torch.randn(n, generator=g, dtype=...)` on the CPU, number for number (`normal_fill` in
//! `ATen/native/cpu/DistributionTemplates.h`, for n ≥ 16 contiguous elements), with the
//! Box–Muller transform in parallel where torch runs it on one thread.
//!
//! Torch fills the tensor with uniforms u ∈ [0, 1) and turns each group of 16 into normals:
//! for j < 8, with u₁ = 1 − u_j and u₂ = u_{j+8},
//!
//! ```text
//! r = √(−2·ln u₁),  θ = 2π·u₂,  z_j = r·cos θ,  z_{j+8} = r·sin θ
//! ```
//!
//! When 16 does not divide n, 16 more uniforms make the last 16 elements again. float32 draws
//! all n uniforms first (the last n mod 16 are overwritten); bfloat16 and float16 draw 16 per
//! group, in float32, and round each normal to the dtype. So the two consume
//! `n + 16` and `16·⌊n/16⌋ + 16` words when 16 does not divide n.
//!
//! Which ln, cos and sin torch uses depends on how it was built, and its bits follow: a build
//! dispatched to AVX2 runs Pommier's Cephes-based `log256_ps` and `sincos256_ps`
//! (`avx_mathfun.h`, for float32 and, through float32, for bfloat16 and float16), other builds
//! call the C library's `logf`, `cosf` and `sinf`. [`Math`] names the three candidates (the
//! Cephes pair as written, or with the multiply-adds the compiler fuses); the Python layer finds
//! the one that reproduces the installed torch to the bit, once per process, and otherwise
//! leaves the drawing to torch.

// The Cephes constants are spelled as `avx_mathfun.h` spells them, digits and all: they must
// round to the same floats.
#![allow(clippy::excessive_precision, clippy::approx_constant)]

use half::{bf16, f16};

use super::mt19937::Mt19937;
use crate::dtype::DType;

/// The ln / cos / sin torch's Box–Muller uses (see the module note).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Math {
    /// The C library's `logf`, `cosf`, `sinf` (torch's scalar `NormalFill16`).
    Libm,
    /// `avx_mathfun.h`'s Cephes polynomials, each multiply and add rounded.
    Cephes,
    /// The same with `a·b + c` fused where GCC contracts the intrinsics (`-ffp-contract=fast`).
    CephesFma,
}

impl Math {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "libm" => Some(Self::Libm),
            "cephes" => Some(Self::Cephes),
            "cephes_fma" => Some(Self::CephesFma),
            _ => None,
        }
    }
}

/// `a·b + c`, fused or rounded twice.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// f32 constants as C writes them: the decimal rounded to double, then to float.
macro_rules! c32 {
    ($v:expr) => {
        ($v as f64) as f32
    };
}

/// Cephes `logf` as `log256_ps` computes it, for x in (0, 1] (no denormal or invalid lanes).
#[inline(always)]
fn cephes_ln<const FMA: bool>(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
    let mut m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits()); // [0.5, 1)
    let small = m < c32!(0.707106781186547524);
    let tmp = if small { m } else { 0.0 };
    m -= 1.0;
    e -= if small { 1.0 } else { 0.0 };
    m += tmp;
    let z = m * m;
    let mut y = c32!(7.0376836292E-2);
    for p in [
        -1.1514610310E-1,
        1.1676998740E-1,
        -1.2420140846E-1,
        1.4249322787E-1,
        -1.6668057665E-1,
        2.0000714765E-1,
        -2.4999993993E-1,
        3.3333331174E-1,
    ] {
        y = madd::<FMA>(y, m, c32!(p));
    }
    y *= m;
    // y·z + e·q1 − z/2, then m + y + e·q2: where GCC fuses, the product whose only use is
    // the next addition is the one that fuses.
    let y = if FMA {
        let y = y.mul_add(z, e * c32!(-2.12194440e-4));
        (-z).mul_add(0.5, y)
    } else {
        y * z + e * c32!(-2.12194440e-4) - z * 0.5
    };
    madd::<FMA>(e, c32!(0.693359375), m + y)
}

/// Cephes `sincosf` as `sincos256_ps` computes it, for θ in [0, 2π): (sin θ, cos θ).
#[inline(always)]
fn cephes_sincos<const FMA: bool>(theta: f32) -> (f32, f32) {
    // SAFETY: θ ∈ [0, 2π), so θ·4/π ∈ [0, 8) converts exactly (truncation, as cvttps).
    let j = (unsafe { (theta * c32!(1.27323954473516)).to_int_unchecked::<i32>() } + 1) & !1;
    let y = j as f32;
    let sin_sign = ((j & 4) as u32) << 29;
    let cos_sign = ((!(j - 2) & 4) as u32) << 29;
    let poly_sin = j & 2 == 0;
    let mut x = theta;
    x = madd::<FMA>(y, c32!(-0.78515625), x);
    x = madd::<FMA>(y, c32!(-2.4187564849853515625e-4), x);
    x = madd::<FMA>(y, c32!(-3.77489497744594108e-8), x);
    let z = x * x;
    let mut c = madd::<FMA>(
        c32!(2.443315711809948E-005),
        z,
        c32!(-1.388731625493765E-003),
    );
    c = madd::<FMA>(c, z, c32!(4.166664568298827E-002));
    c *= z;
    c = if FMA {
        c.mul_add(z, -(z * 0.5))
    } else {
        c * z - z * 0.5
    };
    c += 1.0;
    let mut s = madd::<FMA>(c32!(-1.9515295891E-4), z, c32!(8.3321608736E-3));
    s = madd::<FMA>(s, z, c32!(-1.6666654611E-1));
    s *= z;
    s = madd::<FMA>(s, x, x);
    let (sin, cos) = if poly_sin { (s, c) } else { (c, s) };
    (
        f32::from_bits(sin.to_bits() ^ sin_sign),
        f32::from_bits(cos.to_bits() ^ cos_sign),
    )
}

/// Torch's scalar `NormalFill16` for mean 0 and standard deviation 1: z_j = r·cos θ and
/// z_{j+8} = r·sin θ from the uniforms u_j, u_{j+8}, with libm.
#[inline(always)]
fn libm_16(d: &mut [f32; 16]) {
    for j in 0..8 {
        let radius = (-2.0 * (1.0 - d[j]).ln()).sqrt(); // 1 − u ∈ (0, 1]: ln is finite
        let theta = (2.0 * std::f64::consts::PI * d[j + 8] as f64) as f32; // double 2π × u₂
        d[j] = radius * theta.cos();
        d[j + 8] = radius * theta.sin();
    }
}

/// Torch's AVX2 `NormalFill16`: the same with the Cephes functions, eight lanes at once.
#[inline(always)]
fn cephes_16<const FMA: bool>(d: &mut [f32; 16]) {
    for j in 0..8 {
        let radius = (-2.0 * cephes_ln::<FMA>(1.0 - d[j])).sqrt();
        let (sin, cos) = cephes_sincos::<FMA>(c32!(2.0 * std::f64::consts::PI) * d[j + 8]);
        d[j] = radius * cos;
        d[j + 8] = radius * sin;
    }
}

/// Each element rounded to `dtype` (round to nearest even, as torch's cast) and widened back.
#[inline(always)]
fn round_to(dtype: DType, d: &mut [f32]) {
    match dtype {
        DType::BF16 => {
            for v in d {
                *v = bf16::from_f32(*v).to_f32();
            }
        }
        DType::F16 => {
            for v in d {
                *v = f16::from_f32(*v).to_f32();
            }
        }
        DType::F32 | DType::F64 => {}
    }
}

/// The groups of 16 uniforms in `out` turned into normals in `dtype`'s values, in place;
/// compiled for AVX2+FMA where the CPU has it (the Cephes functions are branch-free, so a
/// group's eight lanes vectorise).
#[inline(always)]
fn normals(math: Math, dtype: DType, out: &mut [f32]) {
    // Plain loops, one per variant: a closure would not inherit the dispatched target
    // features, and a choice inside the lane loop would keep it from vectorising.
    let groups = out
        .chunks_exact_mut(16)
        .map(|g| <&mut [f32; 16]>::try_from(g).unwrap());
    match math {
        Math::Libm => {
            for g in groups {
                libm_16(g);
                round_to(dtype, g);
            }
        }
        Math::Cephes => {
            for g in groups {
                cephes_16::<false>(g);
                round_to(dtype, g);
            }
        }
        Math::CephesFma => {
            for g in groups {
                cephes_16::<true>(g);
                round_to(dtype, g);
            }
        }
    }
}

crate::simd_dispatch!(fn normals_dispatch(math: Math, dtype: DType, out: &mut [f32]) => normals);

/// Fills `out` (n ≥ 16) with what `torch.randn(n, generator=g, dtype=dtype)` draws, as f32
/// values (exact for bfloat16 and float16), and advances `g` as torch would. `dtype` is
/// float32, bfloat16 or float16.
pub fn fill_torch_normal(g: &mut Mt19937, math: Math, dtype: DType, out: &mut [f32]) {
    let n = out.len();
    assert!(n >= 16, "torch's grouped fill needs 16 elements");
    let full = n - n % 16;
    let drawn = if dtype == DType::F32 { n } else { full };
    let mut tail = [0f32; 16];
    // The uniforms come from one serial stream; each block's normals are spawned as soon as
    // the block is drawn, so the other threads transform while this one draws the next.
    // Blocks are whole groups (only float32's last may end with the n mod 16 it discards).
    const BLOCK: usize = 16 * 4096;
    if drawn <= BLOCK {
        // One block: waking another thread would cost more than the transform.
        g.fill_uniform(&mut out[..drawn]);
        normals_dispatch(math, dtype, &mut out[..full]);
        if !n.is_multiple_of(16) {
            g.fill_uniform(&mut tail);
        }
    } else {
        rayon::scope(|s| {
            let mut rest = &mut out[..drawn];
            while !rest.is_empty() {
                let k = BLOCK.min(rest.len());
                let (block, next) = std::mem::take(&mut rest).split_at_mut(k);
                g.fill_uniform(block);
                let groups = block.len() - block.len() % 16;
                s.spawn(move |_| normals_dispatch(math, dtype, &mut block[..groups]));
                rest = next;
            }
            if !n.is_multiple_of(16) {
                g.fill_uniform(&mut tail);
            }
        });
    }
    if !n.is_multiple_of(16) {
        normals_dispatch(math, dtype, &mut tail);
        out[n - 16..].copy_from_slice(&tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_in_groups_of_sixteen_with_the_tail_redrawn() {
        // n = 21: float32 consumes 21 + 16 words; the first 5 normals are group 0's.
        let mut g = Mt19937::from_seed(0);
        let mut out = vec![0f32; 21];
        fill_torch_normal(&mut g, Math::Libm, DType::F32, &mut out);
        let mut h = Mt19937::from_seed(0);
        let mut u = vec![0f32; 21 + 16];
        h.fill_uniform(&mut u);
        let mut first = u[..16].to_vec();
        libm_16((&mut first[..]).try_into().unwrap());
        let mut last = u[21..].to_vec();
        libm_16((&mut last[..]).try_into().unwrap());
        assert_eq!(&out[..5], &first[..5]);
        assert_eq!(&out[5..], &last[..]);
        assert_eq!(g.next_u32(), h.next_u32());
        // bfloat16 consumes 16 + 16 words.
        let mut g = Mt19937::from_seed(0);
        fill_torch_normal(&mut g, Math::Cephes, DType::BF16, &mut out);
        let mut h = Mt19937::from_seed(0);
        h.fill_uniform(&mut u[..32]);
        assert_eq!(g.next_u32(), h.next_u32());
        assert!(out.iter().all(|v| bf16::from_f32(*v).to_f32() == *v));
    }

    #[test]
    fn normals_have_unit_variance() {
        let mut g = Mt19937::from_seed(1);
        let mut out = vec![0f32; 1 << 18];
        for math in [Math::Libm, Math::Cephes, Math::CephesFma] {
            fill_torch_normal(&mut g, math, DType::F32, &mut out);
            let n = out.len() as f64;
            let mean = out.iter().map(|v| *v as f64).sum::<f64>() / n;
            let var = out.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
            assert!(
                mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
                "{math:?} {mean} {var}"
            );
        }
    }

    #[test]
    fn cephes_functions_are_within_a_few_ulps_of_libm() {
        for i in 1..=100_000 {
            let u = i as f32 / 100_000.0;
            let theta = u * 6.283_185;
            for (ln, (sin, cos)) in [
                (cephes_ln::<false>(u), cephes_sincos::<false>(theta)),
                (cephes_ln::<true>(u), cephes_sincos::<true>(theta)),
            ] {
                assert!(
                    (ln - u.ln()).abs() <= 4e-7 * u.ln().abs().max(1e-3),
                    "ln {u}"
                );
                assert!((sin - theta.sin()).abs() < 3e-7, "sin {theta}");
                assert!((cos - theta.cos()).abs() < 3e-7, "cos {theta}");
            }
        }
    }
}
