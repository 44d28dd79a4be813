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
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// SiLU (swish), x·σ(x).
#[inline(always)]
pub fn silu_f32(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
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
/// `#[inline(always)]` so that its body takes the instantiation's target features.
#[macro_export]
macro_rules! simd_dispatch {
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
}
