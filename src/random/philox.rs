//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the
//! Random123 definition) and the standard-normal stream rdiff draws from it, identically on the
//! CPU (here) and in the CUDA kernels (`kernels/philox.cuh`, the same algorithm line by line).
//!
//! # The stream
//!
//! For a `seed: u64` and an `offset: u64` (a scheduler uses its step index), element `i`
//! (`u64`, the index in the flattened tensor, batch included) is
//!
//! ```text
//! key     = (seed mod 2³², seed >> 32)
//! counter = (g mod 2³², g >> 32, offset mod 2³², offset >> 32)     with g = i / 4
//! (w0, w1, w2, w3) = philox4x32_10(counter, key)
//! (z0, z1) = box_muller(w0, w1),  (z2, z3) = box_muller(w2, w3)
//! noise[i] = z_{i mod 4}
//! ```
//!
//! so element i depends only on (seed, offset, i): not on the grid shape, the thread count or
//! how the work is chunked.
//!
//! # Box–Muller, reproducible to the bit
//!
//! `box_muller(a, b)` uses only f32 additions, subtractions, multiplications, one division and
//! one square root, each correctly rounded and never fused (the CUDA side spells them
//! `__fadd_rn`, `__fmul_rn`, … so NVRTC cannot contract them into FMAs), and integer bit
//! manipulation; no library `log`/`sin`/`cos`, whose last bits differ between libm and CUDA.
//! So the CPU, the emulated launcher and a GPU produce the same f32 bit patterns.
//!
//! ```text
//! u  = (2·(a >> 9) + 1)·2⁻²⁴               ∈ (0, 1), 2²³ values, exact in f32
//! r  = √(−2·ln u)/√2                       ln by exponent split + atanh series (|s| ≤ 0.172,
//!                                          terms to s⁹: relative error < 1e-8 before rounding)
//! q  = b >> 30                              quadrant of the angle θ = 2π·(q + t)/4
//! t  = (2·((b >> 8) & 0x3fffff) + 1)·2⁻²³   ∈ (0, 1)
//! x  = (t − ½)·π/2                          ∈ (−π/4, π/4): θ = q·π/2 + π/4 + x
//! c, s = cos x, sin x                       Taylor to x¹⁰ / x⁹ (error < 2e-9)
//! (cos θ, sin θ)·√2 = rotate_q(c − s, c + s)
//! z0, z1 = r·(rotated pair)
//! ```
//!
//! The uniform u is never 0, so ln u is finite; |z| ≤ √(−2 ln 2⁻²⁴) ≈ 5.77: the tails beyond
//! 5.77σ (probability 8·10⁻⁹) are cut, which sampling cannot notice.

use rayon::prelude::*;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with `rounds` rounds (Random123's `philox4x32_R`): the key is bumped between
/// rounds.
#[inline(always)]
pub fn philox4x32_r(rounds: u32, ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for r in 0..rounds {
        if r > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Philox4x32-10, the variant the stream uses.
#[inline(always)]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox4x32_r(10, ctr, key)
}

// The f32 constants; kernels/philox.cuh spells them by bit pattern, and
// `constants_have_the_kernel_bits` checks that both agree.
// ln 2 split so that e·LN2_HI is exact for |e| < 2⁸.
const LN2_HI: f32 = 0.69314575;
const LN2_LO: f32 = 1.4286068e-6;
const SQRT2: f32 = std::f32::consts::SQRT_2;
const FRAC_PI_2: f32 = std::f32::consts::FRAC_PI_2;
// 1/9, 1/7, 1/5, 1/3 (atanh series)
const L9: f32 = 0.11111111;
const L7: f32 = 0.14285715;
const L5: f32 = 0.2;
const L3: f32 = 0.33333334;
// −1/10!, 1/8!, −1/6!, 1/4! (cos) and 1/9!, −1/7!, 1/5!, −1/3! (sin)
const C5: f32 = -2.755732e-7;
const C4: f32 = 2.4801588e-5;
const C3: f32 = -0.0013888889;
const C2: f32 = 0.041666668;
const S4: f32 = 2.7557319e-6;
const S3: f32 = -1.984127e-4;
const S2: f32 = 0.008333334;
const S1: f32 = -0.16666667;
// 2⁻²⁴ and 2⁻²³
const TWO_M24: f32 = 5.9604645e-8;
const TWO_M23: f32 = 1.1920929e-7;

/// ln u for u in (0, 1) a normal f32 (see the module docs; the CUDA twin is `rd_log_unit`).
#[inline(always)]
fn log_unit(u: f32) -> f32 {
    let bits = u.to_bits();
    let mut e = ((bits >> 23) as i32) - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000); // [1, 2)
    if m > SQRT2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2·atanh(s), s = (m − 1)/(m + 1), |s| ≤ 0.1716.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut p = L9;
    p = p * s2 + L7;
    p = p * s2 + L5;
    p = p * s2 + L3;
    let lm = (s + (s * s2) * p) * 2.0;
    let ef = e as f32;
    ef * LN2_HI + (lm + ef * LN2_LO)
}

/// (cos x, sin x) for |x| ≤ π/4 (Taylor, Horner order fixed; the CUDA twin is `rd_sincos`).
#[inline(always)]
fn cos_sin(x: f32) -> (f32, f32) {
    let x2 = x * x;
    let mut c = C5;
    c = c * x2 + C4;
    c = c * x2 + C3;
    c = c * x2 + C2;
    c = c * x2 + -0.5;
    let cos = c * x2 + 1.0;
    let mut s = S4;
    s = s * x2 + S3;
    s = s * x2 + S2;
    s = s * x2 + S1;
    let sin = x + (x * x2) * s;
    (cos, sin)
}

/// Two standard normals from two 32-bit words (the module docs' `box_muller`).
#[inline(always)]
pub fn box_muller(a: u32, b: u32) -> (f32, f32) {
    let u = ((a >> 9) * 2 + 1) as f32 * TWO_M24;
    // √(−2 ln u)/√2 = √(−ln u): the 1/√2 of the rotation below is folded in.
    let r = (-log_unit(u)).sqrt();
    let t = (((b >> 8) & 0x3f_ffff) * 2 + 1) as f32 * TWO_M23;
    let x = (t - 0.5) * FRAC_PI_2;
    let (c, s) = cos_sin(x);
    let (p, q) = (c - s, c + s); // √2·(cos, sin)(x + π/4)
    let (cs, sn) = match b >> 30 {
        0 => (p, q),
        1 => (-q, p),
        2 => (-p, -q),
        _ => (q, -p),
    };
    (r * cs, r * sn)
}

/// The four normals of lane group `g` (elements 4g..4g+4) of the stream (seed, offset).
#[inline(always)]
pub fn normals4(seed: u64, offset: u64, g: u64) -> [f32; 4] {
    let w = philox4x32_10(
        [
            g as u32,
            (g >> 32) as u32,
            offset as u32,
            (offset >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    );
    let (z0, z1) = box_muller(w[0], w[1]);
    let (z2, z3) = box_muller(w[2], w[3]);
    [z0, z1, z2, z3]
}

/// Elements `start .. start + out.len()` of the stream (seed, offset), single-threaded.
pub fn fill_normals(seed: u64, offset: u64, start: u64, out: &mut [f32]) {
    let mut i = start;
    let mut k = 0;
    while k < out.len() {
        let z = normals4(seed, offset, i / 4);
        let lane = (i % 4) as usize;
        let n = (4 - lane).min(out.len() - k);
        out[k..k + n].copy_from_slice(&z[lane..lane + n]);
        k += n;
        i += n as u64;
    }
}

/// Elements `0 .. out.len()` of the stream, in parallel (same values as `fill_normals`).
pub fn fill_normals_par(seed: u64, offset: u64, out: &mut [f32]) {
    const CHUNK: usize = 1 << 14; // a multiple of 4: chunks start on lane-group boundaries
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| fill_normals(seed, offset, (c * CHUNK) as u64, chunk));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's published known answers (`kat_vectors`, the three philox4x32 10 lines):
    /// counter, key → output.
    #[test]
    fn random123_known_answers() {
        let kat: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            (
                [0; 4],
                [0; 2],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (ctr, key, want) in kat {
            assert_eq!(philox4x32_10(ctr, key), want, "ctr {ctr:x?} key {key:x?}");
        }
    }

    #[test]
    fn constants_have_the_kernel_bits() {
        let want: [(f32, u32); 18] = [
            (LN2_HI, 0x3f317200),
            (LN2_LO, 0x35bfbe8e),
            (SQRT2, 0x3fb504f3),
            (FRAC_PI_2, 0x3fc90fdb),
            (L9, 0x3de38e39),
            (L7, 0x3e124925),
            (L5, 0x3e4ccccd),
            (L3, 0x3eaaaaab),
            (C5, 0xb493f27e),
            (C4, 0x37d00d01),
            (C3, 0xbab60b61),
            (C2, 0x3d2aaaab),
            (S4, 0x3638ef1d),
            (S3, 0xb9500d01),
            (S2, 0x3c088889),
            (S1, 0xbe2aaaab),
            (TWO_M24, 0x33800000),
            (TWO_M23, 0x34000000),
        ];
        for (k, (v, bits)) in want.iter().enumerate() {
            assert_eq!(v.to_bits(), *bits, "constant {k}");
        }
    }

    /// The helpers against f64 libm: ln to ~1 ulp of its magnitude, sin/cos to 1e-7.
    #[test]
    fn log_and_sincos_are_accurate() {
        for k in [1u32, 2, 3, 1000, 1 << 20, (1 << 23) - 1, 1 << 22, 5_000_000] {
            let u = (k * 2 + 1) as f32 / 16_777_216.0;
            let want = (u as f64).ln();
            let got = log_unit(u) as f64;
            assert!(
                (got - want).abs() <= 2.5e-7 * want.abs().max(1e-3),
                "{u}: {got} vs {want}"
            );
        }
        for k in -100..=100 {
            let x = k as f32 / 100.0 * std::f32::consts::FRAC_PI_4;
            let (c, s) = cos_sin(x);
            assert!((c as f64 - (x as f64).cos()).abs() < 2e-7, "cos {x}");
            assert!((s as f64 - (x as f64).sin()).abs() < 2e-7, "sin {x}");
        }
    }

    /// Box–Muller against the textbook formula in f64 on the same uniforms.
    #[test]
    fn box_muller_matches_the_f64_formula() {
        let mut s = 0x1234_5678_9abc_def0u64;
        for _ in 0..10_000 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (a, b) = ((s >> 32) as u32, s as u32);
            let (z0, z1) = box_muller(a, b);
            let u = ((a >> 9) * 2 + 1) as f64 / 16_777_216.0;
            let t = (((b >> 8) & 0x3f_ffff) * 2 + 1) as f64 / 8_388_608.0;
            let theta = std::f64::consts::FRAC_PI_2 * ((b >> 30) as f64 + t);
            let r = (-2.0 * u.ln()).sqrt();
            let tol = 1e-6 * (1.0 + r);
            assert!((z0 as f64 - r * theta.cos()).abs() < tol, "{a:x} {b:x}");
            assert!((z1 as f64 - r * theta.sin()).abs() < tol, "{a:x} {b:x}");
        }
    }

    /// Element i depends on (seed, offset, i) only: any start and chunking give the same values.
    #[test]
    fn the_stream_does_not_depend_on_chunking() {
        let mut all = vec![0f32; 40_003];
        fill_normals_par(7, 3, &mut all);
        for (start, len) in [(0usize, 1usize), (1, 6), (3, 9), (16_383, 5), (39_990, 13)] {
            let mut part = vec![0f32; len];
            fill_normals(7, 3, start as u64, &mut part);
            assert_eq!(part, all[start..start + len]);
        }
        let mut other = vec![0f32; 8];
        fill_normals(7, 4, 0, &mut other);
        assert_ne!(other, all[..8]);
        fill_normals(8, 3, 0, &mut other);
        assert_ne!(other, all[..8]);
    }

    /// Mean, variance, fourth moment and a Kolmogorov–Smirnov distance against Φ, on 2²⁰
    /// draws; each bound is several standard errors wide, so a wrong transform fails.
    #[test]
    fn the_stream_is_standard_normal() {
        let n = 1 << 20;
        let mut z = vec![0f32; n];
        fill_normals_par(2024, 0, &mut z);
        let nf = n as f64;
        let mean = z.iter().map(|&v| v as f64).sum::<f64>() / nf;
        let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / nf;
        let m4 = z.iter().map(|&v| (v as f64).powi(4)).sum::<f64>() / nf;
        // Standard errors: 1/√n ≈ 1e-3 for the mean, √(2/n) ≈ 1.4e-3 for the variance,
        // √(96/n) ≈ 9.6e-3 for E z⁴ = 3.
        assert!(mean.abs() < 5e-3, "mean {mean}");
        assert!((var - 1.0).abs() < 7e-3, "var {var}");
        assert!((m4 - 3.0).abs() < 0.05, "fourth moment {m4}");
        let mut s: Vec<f64> = z.iter().map(|&v| v as f64).collect();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mut d = 0f64;
        for (k, &v) in s.iter().enumerate() {
            let f = normal_cdf(v);
            d = d
                .max((f - k as f64 / nf).abs())
                .max(((k + 1) as f64 / nf - f).abs());
        }
        // The KS critical value at α = 0.001 is 1.95/√n ≈ 1.9e-3.
        assert!(d < 1.95 / nf.sqrt(), "KS distance {d}");
        // Consecutive elements are uncorrelated (within and across lane groups).
        let lag1 = z.windows(2).map(|w| w[0] as f64 * w[1] as f64).sum::<f64>() / nf;
        assert!(lag1.abs() < 5e-3, "lag-1 correlation {lag1}");
    }

    /// Φ(x) through erfc (Numerical Recipes' erfc Chebyshev fit, relative error < 1.2e-7).
    fn normal_cdf(x: f64) -> f64 {
        let z = x.abs() / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.5 * z);
        let poly = -z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77))))))));
        let erfc = t * poly.exp();
        if x >= 0.0 {
            1.0 - 0.5 * erfc
        } else {
            0.5 * erfc
        }
    }
}
