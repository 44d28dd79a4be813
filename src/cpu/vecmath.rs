//! Vectorisable f32 math for the UNet ops (exp, SiLU) and a run-time SIMD dispatch.
//!
//! The wheel is built for baseline x86-64, so loops written plainly would only get SSE2. Each
//! hot elementwise kernel is an `#[inline(always)]` body instantiated by [`simd_dispatch!`] for
//! AVX-512 and AVX2+FMA and chosen at run time; the math below is branch-free so LLVM
//! vectorises it at whatever width the instantiation allows.

/// exp(x) in f32, branch-free: Cody–Waite reduction by ln 2 and a degree-6 polynomial
/// (about 1 ulp on [-87, 88]; inputs are clamped there, so exp(-inf) gives ~1e-38, not 0).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to an integer
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // The integer n sits in t's low mantissa bits (t's ulp is 1): read it there rather than
    // with `n as i32`, whose saturating conversion LLVM does not vectorise.
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    p * scale
}

/// exp(x) for x ≤ 0 (softmax numerators, x − max), as [`exp_f32`] but with fused multiply-adds
/// and one clamp: the attention's softmax runs it on every score, where it is compute-bound.
/// Only for the `simd_dispatch!` instantiations (which enable FMA): elsewhere `mul_add` would
/// be a library call.
#[inline(always)]
pub fn exp_nonpositive_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0;
    // One compare, and a NaN passes through (f32::max would drop it).
    let x = if x < -87.3 { -87.3 } else { x };
    let t = x.mul_add(LOG2E, ROUND);
    let n = t - ROUND;
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let p = (1.0f32 / 720.0).mul_add(r, 1.0 / 120.0);
    let p = p.mul_add(r, 1.0 / 24.0);
    let p = p.mul_add(r, 1.0 / 6.0);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r, 1.0);
    let p = p.mul_add(r, 1.0);
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    p * scale
}

/// SiLU (swish), x·σ(x).
#[inline(always)]
pub fn silu_f32(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

/// GELU with the exact erf form (torch's `approximate="none"`): x·Φ(x), through
/// erfc(|x|/√2) by the Chebyshev fit of Numerical Recipes (`erfcc`, relative error below
/// 1.2e-7 everywhere), so both signs keep their relative accuracy; branch-free.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the coefficients as published
pub fn gelu_f32(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = 0.170_872_77f32;
    let p = p * t - 0.822_152_23;
    let p = p * t + 1.488_515_87;
    let p = p * t - 1.135_203_98;
    let p = p * t + 0.278_868_07;
    let p = p * t - 0.186_288_06;
    let p = p * t + 0.096_784_18;
    let p = p * t + 0.374_091_96;
    let p = p * t + 1.000_023_68;
    let p = p * t - 1.265_512_23;
    // erfc(z) for z ≥ 0.
    let erfc = t * exp_f32(p - z * z);
    // Φ(x) = 1 − erfc(z)/2 for x ≥ 0, erfc(z)/2 for x < 0.
    let half = 0.5 * erfc;
    x * if x < 0.0 { half } else { 1.0 - half }
}

/// Whether the AVX-512 / AVX2+FMA instantiations may run here (cached by std).
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `pub fn $name(args) -> ret` that runs `$kernel(args)` compiled for AVX-512, for
/// AVX2+FMA or for the baseline, whichever this CPU supports. `$kernel` must be
/// `#[inline(always)]` so that its body takes the instantiation's target features. An
/// `unsafe fn` (a kernel on raw pointers) keeps its kernel's safety contract.
#[macro_export]
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis unsafe fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? => $kernel:path) => {
        $(#[$m])*
        /// # Safety
        #[doc = concat!("As `", stringify!($kernel), "`.")]
        $vis unsafe fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn v4($($a: $t),*) $(-> $r)? {
                    // SAFETY: the caller's contract (the kernel's).
                    unsafe { $kernel($($a),*) }
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($a: $t),*) $(-> $r)? {
                    // SAFETY: as above.
                    unsafe { $kernel($($a),*) }
                }
                if $crate::cpu::vecmath::has_avx512() {
                    // SAFETY: the CPU supports the features v4 was compiled for; the caller's
                    // contract.
                    return unsafe { v4($($a),*) };
                }
                if $crate::cpu::vecmath::has_avx2() {
                    // SAFETY: as above, for v3.
                    return unsafe { v3($($a),*) };
                }
            }
            // SAFETY: the caller's contract.
            unsafe { $kernel($($a),*) }
        }
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? => $kernel:path) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn v4($($a: $t),*) $(-> $r)? { $kernel($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($a: $t),*) $(-> $r)? { $kernel($($a),*) }
                if $crate::cpu::vecmath::has_avx512() {
                    // SAFETY: the CPU supports the features v4 was compiled for.
                    return unsafe { v4($($a),*) };
                }
                if $crate::cpu::vecmath::has_avx2() {
                    // SAFETY: as above, for v3.
                    return unsafe { v3($($a),*) };
                }
            }
            $kernel($($a),*)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let ours = exp_f32(x) as f64;
            let exact = (x as f64).exp();
            worst = worst.max(((ours - exact) / exact).abs());
            x += 0.013;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp_f32(f32::NEG_INFINITY) < 1e-37);
        assert!(silu_f32(-200.0).abs() < 1e-30);
        assert_eq!(silu_f32(200.0), 200.0);
    }

    #[test]
    fn gelu_is_accurate() {
        // Reference: x·Φ(x) with Φ from the f64 erfc continued to high accuracy by
        // integrating the normal density (Simpson, fine steps) from far out.
        let phi = |x: f64| -> f64 {
            let (a, n) = (-12.0f64, 200_000);
            let hstep = (x - a) / n as f64;
            let f = |u: f64| (-0.5 * u * u).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let mut s = f(a) + f(x);
            for i in 1..n {
                s += f(a + i as f64 * hstep) * if i % 2 == 1 { 4.0 } else { 2.0 };
            }
            s * hstep / 3.0
        };
        for &x in &[
            -9.0f32, -5.5, -3.0, -1.7, -0.6, -1e-3, 0.0, 1e-3, 0.4, 1.3, 2.9, 6.0, 11.0,
        ] {
            let want = x as f64 * phi(x as f64);
            let got = gelu_f32(x) as f64;
            // Far out (|x| > 4, where Φ < 3e-5) the f32 exponent −z² costs relative accuracy;
            // the error stays below 1e-9 absolute there (plus the f32 rounding of the value).
            let tol = if x.abs() <= 4.0 {
                5e-7 * want.abs() + 1e-30
            } else {
                1.2e-7 * want.abs() + 1e-9
            };
            assert!((got - want).abs() <= tol, "gelu({x}) = {got}, want {want}");
        }
    }
}
