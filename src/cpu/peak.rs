//! The machine's float32 FMA peak, measured: what the UNet benchmarks report their GFLOP/s
//! against (a datasheet figure would not know this machine's clocks or cores).

use std::time::Instant;

/// Independent accumulator chains: enough to cover the FMA latency on both FMA ports
/// (8+ chains), few enough to stay in registers (AVX2: 12 of 16 ymm; AVX-512: 16 of 32 zmm).
const ACC_AVX2: usize = 12 * 8;
const ACC_AVX512: usize = 16 * 16;

#[inline(always)]
fn fma_chains<const N: usize>(iters: usize) -> f32 {
    let mut acc = [0f32; N];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = i as f32 * 1e-3;
    }
    let (m, c) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-6f32),
    );
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(m, c);
        }
    }
    acc.iter().sum()
}

/// `iters` rounds of FMAs on one thread; the number of FMAs done.
fn fma_loop(iters: usize) -> (f32, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
        unsafe fn v4(iters: usize) -> f32 {
            fma_chains::<ACC_AVX512>(iters)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn v3(iters: usize) -> f32 {
            fma_chains::<ACC_AVX2>(iters)
        }
        if super::vecmath::has_avx512() {
            // SAFETY: the CPU supports the features v4 was compiled for.
            return (unsafe { v4(iters) }, iters * ACC_AVX512);
        }
        if super::vecmath::has_avx2() {
            // SAFETY: as above, for v3.
            return (unsafe { v3(iters) }, iters * ACC_AVX2);
        }
    }
    (fma_chains::<ACC_AVX2>(iters), iters * ACC_AVX2)
}

/// GFLOP/s (2 per FMA) of every thread of the rayon pool running FMAs at once: the best of
/// five rounds of about `seconds` / 5 each.
pub fn fma_peak_gflops(seconds: f64) -> f64 {
    // calibrate one round's length on one thread
    let mut iters = 1 << 16;
    loop {
        let t = Instant::now();
        std::hint::black_box(fma_loop(iters));
        let dt = t.elapsed().as_secs_f64();
        if dt > 0.01 || iters > 1 << 30 {
            iters = ((iters as f64) * (seconds / 5.0 / dt.max(1e-9))).max(1.0) as usize;
            break;
        }
        iters *= 4;
    }
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let fmas: usize = rayon::broadcast(|_| std::hint::black_box(fma_loop(iters)).1)
            .into_iter()
            .sum();
        best = best.max(2.0 * fmas as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// The instruction set the CPU loops run with here.
pub fn simd_level() -> &'static str {
    if super::vecmath::has_avx512() {
        "avx512"
    } else if super::vecmath::has_avx2() {
        "avx2"
    } else {
        "baseline"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_is_positive_and_finite() {
        let g = super::fma_peak_gflops(0.05);
        assert!(g.is_finite() && g > 0.1, "{g}");
    }
}
