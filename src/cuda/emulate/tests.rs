//! The kernels, run by the emulated launcher, against the CPU path: the fused pass and its
//! reductions give the CPU loop's bits for every dtype pair and every stage of the pass.

use half::{bf16, f16};

use super::{launches, registered_kernels, EmulatedLauncher};
use crate::cpu::threshold::{bounds as cpu_bounds, Conv};
use crate::cuda::kernels::SOURCES;
use crate::dtype::{DType, Elem};
use crate::error_norm::ErrorNorm;
use crate::lincomb::{
    Chain, Clamp, Conversion, ElementWeights, Lincomb, Noise, NoiseSource, Recompute, Sigma,
};
use crate::random::philox::fill_normals;
use crate::target::Op;
use crate::tensor::{Device, Tensor};

/// Deterministic pseudo-random values in about [-2, 2].
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// `v` stored as T after `offset` leading elements (a misaligned view when offset is odd).
fn stored<T: Elem + Default>(v: &[f32], offset: usize) -> Vec<T> {
    let mut out = vec![T::default(); v.len() + offset];
    T::store(v, &mut out[offset..]);
    out
}

/// A tensor over `v[offset..]`. Outputs too: the passes write through the address, and the
/// tests read the vector only after they have returned.
fn tensor<T: Elem>(v: &mut [T], offset: usize, shape: &[usize]) -> Tensor {
    let ptr = v[offset..].as_mut_ptr() as u64;
    Tensor::new("t", ptr, T::DTYPE, Device::Cpu, shape.to_vec(), None).unwrap()
}

fn bits<T: Elem>(v: &[T]) -> Vec<u32> {
    let mut f = vec![0f32; v.len()];
    T::load(v, &mut f);
    f.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn every_entry_point_is_registered() {
    let mut got = registered_kernels();
    got.sort();
    let mut want: Vec<String> = SOURCES
        .iter()
        .flat_map(|s| s.entries.iter().map(|e| e.to_string()))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

/// The configurations of the pass the schedulers and samplers use, each run on the CPU and
/// through the kernel; the outputs must agree bit for bit.
#[derive(Clone, Copy, Debug)]
enum Case {
    /// DPM-Solver: conversion with thresholding, history, base, two terms, noise.
    Dpm,
    /// Singlestep: base ≠ x, no thresholding.
    Singlestep,
    /// DDIM: division, a clip range, recomputed ε from m, fixed σ.
    Ddim,
    /// DDPM learned-range σ from the variance channels (mo rows twice as long).
    Learned,
    /// √v σ, recomputation from the raw output.
    LearnedSqrt,
    /// Analytic-DPM: Philox noise.
    Philox,
    /// rdiff.k: base and terms only.
    Terms,
    /// UniPC: thresholded conversion, history, base ≠ x, two terms, the chained predictor
    /// (its corrected sample kept in the sample dtype), noise on the final sum.
    Chain,
    /// DPM-Solver-v3: the chain with per-element weights (rows of a coefficient tensor) on r,
    /// the base, m, the terms, the chained ones, and both biases; one term's slot scalar-only.
    Elem,
}

fn check_pass<D: Elem + Default, S: Elem + Default>(
    case: Case,
    batch: usize,
    ps: usize,
    off: usize,
) {
    let n = batch * ps;
    let elem_rows = 12;
    let stride = match case {
        Case::Learned | Case::LearnedSqrt => 2 * ps,
        _ => ps,
    };
    let x: Vec<S> = stored(&values(n, 1), off);
    let u: Vec<S> = stored(&values(n, 2), off);
    let mut mo_vals = values(batch * stride, 3);
    if matches!(case, Case::LearnedSqrt) {
        mo_vals.iter_mut().for_each(|v| *v = v.abs());
    }
    let mo: Vec<D> = stored(&mo_vals, off);
    let t1: Vec<D> = stored(&values(n, 4), off);
    let t2: Vec<D> = stored(&values(n, 5), off);
    let nz: Vec<f32> = stored(&values(n, 6), off);
    let coef_vals: Vec<f32> = values(elem_rows * ps, 7);
    let shape = [batch, ps];
    let run = |emulated: bool| -> (Vec<D>, Vec<D>, Vec<f32>, Vec<S>) {
        let mut out = vec![D::default(); n + off];
        let mut hist = vec![D::default(); n + off];
        let mut mid = vec![S::default(); n + off];
        let mut bounds = vec![0f32; batch];
        let (mut x, mut u, mut mo, mut t1, mut t2, mut nz) = (
            x.clone(),
            u.clone(),
            mo.clone(),
            t1.clone(),
            t2.clone(),
            nz.clone(),
        );
        let mut coef = coef_vals.clone();
        let mut lc = Lincomb::new("test", tensor(&mut out, off, &shape));
        let conv = |x: Tensor, mo: Tensor| Conversion {
            x,
            mo,
            mo_stride: stride,
            p: 1.3,
            q: -0.7,
            d: 1.0,
            clamp: Clamp::None,
            r: 0.0,
            w: 1.0,
            weight: 0.4,
            recompute: None,
        };
        let xt = tensor(&mut x, off, &shape);
        let mot = tensor(&mut mo, off, &[batch, stride]);
        match case {
            Case::Dpm | Case::Singlestep => {
                let mut c = conv(xt.clone(), mot);
                (c.r, c.w) = (0.2, 0.8);
                if matches!(case, Case::Dpm) {
                    c.clamp = Clamp::Dynamic {
                        ratio: 0.9,
                        lo: 1.0,
                        hi: 1.7,
                        bounds: tensor(&mut bounds, 0, &[batch]),
                    };
                    lc.base = Some((xt, 0.9));
                    lc.noise = Some(Noise {
                        source: NoiseSource::Buffer(tensor(&mut nz, off, &shape)),
                        sigma: Sigma::Fixed(0.3),
                    });
                } else {
                    lc.base = Some((tensor(&mut u, off, &shape), 0.9));
                }
                lc.conv = Some(c);
                lc.hist = Some(tensor(&mut hist, off, &shape));
                lc.terms.push((tensor(&mut t1, off, &shape), -0.2));
                lc.terms.push((tensor(&mut t2, off, &shape), 0.05));
            }
            Case::Ddim | Case::Learned | Case::LearnedSqrt => {
                let mut c = conv(xt.clone(), mot);
                c.d = 0.6;
                c.clamp = Clamp::Range { lo: -1.0, hi: 1.0 };
                c.recompute = Some(Recompute {
                    h1: 1.0,
                    h2: -0.6,
                    h3: 0.8,
                    from_m: !matches!(case, Case::LearnedSqrt),
                    weight: 0.5,
                });
                lc.conv = Some(c);
                lc.hist = Some(tensor(&mut hist, off, &shape));
                lc.base = Some((xt, 0.1));
                lc.noise = Some(Noise {
                    source: NoiseSource::Buffer(tensor(&mut nz, off, &shape)),
                    sigma: match case {
                        Case::Learned => Sigma::LearnedRange {
                            min_log: -5.0,
                            max_log: -1.0,
                        },
                        Case::LearnedSqrt => Sigma::Learned,
                        _ => Sigma::Fixed(0.3),
                    },
                });
            }
            Case::Philox => {
                let mut c = conv(xt.clone(), mot);
                c.clamp = Clamp::Range { lo: -1.0, hi: 0.5 };
                c.recompute = Some(Recompute {
                    h1: 0.0,
                    h2: 1.0,
                    h3: 1.0,
                    from_m: false,
                    weight: 0.25,
                });
                lc.conv = Some(c);
                lc.hist = Some(tensor(&mut hist, off, &shape));
                lc.base = Some((xt, 0.7));
                lc.noise = Some(Noise {
                    source: NoiseSource::Philox { seed: 5, offset: 3 },
                    sigma: Sigma::Fixed(0.2),
                });
            }
            Case::Terms => {
                lc.base = Some((xt, 0.5));
                lc.terms.push((tensor(&mut t1, off, &shape), -0.2));
                lc.terms.push((tensor(&mut t2, off, &shape), 1.5));
            }
            Case::Chain => {
                let mut c = conv(xt, mot);
                c.clamp = Clamp::Dynamic {
                    ratio: 0.8,
                    lo: 1.0,
                    hi: 1.5,
                    bounds: tensor(&mut bounds, 0, &[batch]),
                };
                lc.conv = Some(c);
                lc.hist = Some(tensor(&mut hist, off, &shape));
                lc.base = Some((tensor(&mut u, off, &shape), 0.8));
                lc.terms.push((tensor(&mut t1, off, &shape), -0.3));
                lc.terms.push((tensor(&mut t2, off, &shape), 0.15));
                lc.chain = Some(Chain {
                    mid: tensor(&mut mid, off, &shape),
                    a: 0.7,
                    wm: 0.45,
                    c: vec![-0.25, 0.1],
                });
                lc.noise = Some(Noise {
                    source: NoiseSource::Buffer(tensor(&mut nz, off, &shape)),
                    sigma: Sigma::Fixed(0.05),
                });
            }
            Case::Elem => {
                let mut c = conv(xt, mot);
                (c.r, c.w) = (1.0, 0.6);
                lc.conv = Some(c);
                lc.hist = Some(tensor(&mut hist, off, &shape));
                lc.base = Some((tensor(&mut u, off, &shape), 1.0));
                lc.terms.push((tensor(&mut t1, off, &shape), 1.0));
                lc.terms.push((tensor(&mut t2, off, &shape), 0.3));
                lc.chain = Some(Chain {
                    mid: tensor(&mut mid, off, &shape),
                    a: 1.0,
                    wm: 1.0,
                    c: vec![1.0, -0.5],
                });
                lc.elem = Some(ElementWeights {
                    coef: tensor(&mut coef, 0, &[elem_rows, ps]),
                    r: Some(0),
                    a: Some(1),
                    wm: Some(2),
                    c: vec![Some(3), None],
                    bias: Some(4),
                    chain_a: Some(5),
                    chain_wm: Some(6),
                    chain_c: vec![Some(7), Some(8)],
                    chain_bias: Some(9),
                });
            }
        }
        if emulated {
            lc.launch(&EmulatedLauncher { max_blocks: 3 }).unwrap();
        } else {
            lc.run_cpu().unwrap();
        }
        (
            out[off..].to_vec(),
            hist[off..].to_vec(),
            bounds,
            mid[off..].to_vec(),
        )
    };
    let before = launches();
    let (cpu, emu) = (run(false), run(true));
    assert!(launches() > before, "the emulated pass launched no kernel");
    let what = format!(
        "{case:?} {}/{} batch {batch} ps {ps} off {off}",
        D::DTYPE.name(),
        S::DTYPE.name()
    );
    assert_eq!(bits(&cpu.0), bits(&emu.0), "out: {what}");
    assert_eq!(bits(&cpu.1), bits(&emu.1), "hist: {what}");
    let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(b(&cpu.2), b(&emu.2), "bounds: {what}");
    assert_eq!(bits(&cpu.3), bits(&emu.3), "corrected sample: {what}");
    assert!(
        bits(&cpu.0).iter().any(|v| *v != 0),
        "{what}: nothing computed"
    );
}

/// Every shape of the pass for one case and dtype pair: aligned rows, odd rows (the scalar
/// tails), a misaligned start, a long row (grid-stride loops), rows that start off a Philox
/// lane group.
fn check_shapes<D: Elem + Default, S: Elem + Default>(case: Case) {
    for (batch, ps, off) in [
        (2, 1024, 0),
        (3, 333, 0),
        (2, 256, 1),
        (1, 5000, 0),
        (3, 6, 0),
    ] {
        check_pass::<D, S>(case, batch, ps, off);
    }
}

/// One module per dtype pair, one test per case.
macro_rules! pass_tests {
    ($($name:ident: $d:ty, $s:ty;)*) => {$(
        mod $name {
            use super::*;

            #[test]
            fn dpm() {
                check_shapes::<$d, $s>(Case::Dpm);
            }
            #[test]
            fn singlestep() {
                check_shapes::<$d, $s>(Case::Singlestep);
            }
            #[test]
            fn ddim() {
                check_shapes::<$d, $s>(Case::Ddim);
            }
            #[test]
            fn learned_range() {
                check_shapes::<$d, $s>(Case::Learned);
            }
            #[test]
            fn learned_sqrt() {
                check_shapes::<$d, $s>(Case::LearnedSqrt);
            }
            #[test]
            fn philox() {
                check_shapes::<$d, $s>(Case::Philox);
            }
            #[test]
            fn terms() {
                check_shapes::<$d, $s>(Case::Terms);
            }
            #[test]
            fn chain() {
                check_shapes::<$d, $s>(Case::Chain);
            }
            #[test]
            fn elem() {
                check_shapes::<$d, $s>(Case::Elem);
            }
        }
    )*};
}

pass_tests! {
    pass_f32_f32: f32, f32;
    pass_f32_f16: f32, f16;
    pass_f32_bf16: f32, bf16;
    pass_f16_f32: f16, f32;
    pass_f16_f16: f16, f16;
    pass_f16_bf16: f16, bf16;
    pass_bf16_f32: bf16, f32;
    pass_bf16_f16: bf16, f16;
    pass_bf16_bf16: bf16, bf16;
}

/// Conversions round like `half` (round to nearest even, subnormals, overflow to infinity,
/// NaN): every f16 and bf16 bit pattern through a pass that scales it.
#[test]
fn conversions_round_like_half() {
    fn check<T: Elem + Default + Copy>(all: Vec<T>, to_f32: fn(T) -> f32, from: fn(f32) -> T) {
        let n = all.len();
        for alpha in [1.0f32, 1.000_123_4, 0.000_976_562_5 * 1.37, 3.999] {
            let mut x = all.clone();
            let mut out = vec![T::default(); n];
            let mut lc = Lincomb::new("test", tensor(&mut out, 0, &[1, n]));
            lc.base = Some((tensor(&mut x, 0, &[1, n]), alpha as f64));
            lc.launch(&EmulatedLauncher::default()).unwrap();
            for (x, o) in all.iter().zip(&out) {
                let want = from(alpha * to_f32(*x));
                let (w, g) = (to_f32(want), to_f32(*o));
                assert!(
                    w.to_bits() == g.to_bits() || (w.is_nan() && g.is_nan()),
                    "{} · {alpha}",
                    to_f32(*x)
                );
            }
        }
    }
    check(
        (0..=u16::MAX).map(f16::from_bits).collect(),
        f16::to_f32,
        f16::from_f32,
    );
    check(
        (0..=u16::MAX).map(bf16::from_bits).collect(),
        bf16::to_f32,
        bf16::from_f32,
    );
}

#[test]
fn threshold_handles_ties_extremes_and_tiny_samples() {
    for (vals, ratio, (lo, hi)) in [
        (vec![3.0f32, 1.0, 2.0, 4.0], 0.995, (1.0, 10.0)),
        (vec![5.0; 100], 0.5, (1.0, 10.0)),
        (vec![7.0], 0.995, (1.0, 10.0)),
        (
            (0..1000).map(|k| (k % 17) as f32 * 0.3).collect(),
            0.0,
            (1.0, 10.0),
        ),
        (
            (0..1000).map(|k| (k % 17) as f32 * 0.3).collect(),
            1.0,
            (1.0, 10.0),
        ),
        (
            (0..999).map(|k| -(k as f32) * 0.01).collect(),
            0.37,
            (1.0, 0.5),
        ),
        (
            (0..999).map(|k| -(k as f32) * 0.01).collect(),
            0.37,
            (2.0, f64::INFINITY),
        ),
        (vec![f32::NAN, 1.0, 2.0], 0.9, (1.0, 10.0)),
    ] {
        let n = vals.len();
        let mo = vec![0f32; n];
        let c = Conv {
            p: 1.0,
            q: 0.0,
            d: 1.0,
        };
        let mut want = [0f32];
        cpu_bounds(&vals, &mo, n, n, c, ratio, (lo, hi), &mut want);
        // The kernel's bounds through a pass whose only job is the thresholding.
        let (mut x, mut m) = (vals.clone(), mo.clone());
        let mut out = vec![0f32; n];
        let mut got = vec![0f32; 1];
        let mut lc = Lincomb::new("test", tensor(&mut out, 0, &[1, n]));
        lc.conv = Some(Conversion {
            x: tensor(&mut x, 0, &[1, n]),
            mo: tensor(&mut m, 0, &[1, n]),
            mo_stride: n,
            p: 1.0,
            q: 0.0,
            d: 1.0,
            clamp: Clamp::Dynamic {
                ratio,
                lo,
                hi,
                bounds: tensor(&mut got, 0, &[1]),
            },
            r: 0.0,
            w: 1.0,
            weight: 1.0,
            recompute: None,
        });
        lc.launch(&EmulatedLauncher::default()).unwrap();
        assert!(
            got[0] == want[0] || (got[0].is_nan() && want[0].is_nan()),
            "{got:?} vs {want:?} for n={n}, ratio={ratio}"
        );
    }
}

/// The error norm: the kernel's f64 reduction gives the CPU loop's bits.
#[test]
fn error_norm_matches_the_cpu_loop() {
    for (batch, ps) in [(1, 1), (3, 1000), (2, 70_001)] {
        let n = batch * ps;
        let mut hi: Vec<bf16> = stored(&values(n, 1), 0);
        let mut lo: Vec<bf16> = stored(&values(n, 2), 0);
        let mut prev: Vec<bf16> = stored(&values(n, 3), 0);
        let mut run = |emulated: bool| {
            let mut out = vec![0f64; batch];
            let e = ErrorNorm {
                hi: tensor(&mut hi, 0, &[batch, ps]),
                lo: tensor(&mut lo, 0, &[batch, ps]),
                prev: tensor(&mut prev, 0, &[batch, ps]),
                atol: 0.0078,
                rtol: 0.05,
                out: Tensor::new(
                    "o",
                    out.as_mut_ptr() as u64,
                    DType::F64,
                    Device::Cpu,
                    vec![batch],
                    None,
                )
                .unwrap(),
            };
            if emulated {
                e.launch(&EmulatedLauncher::default()).unwrap();
            } else {
                e.run_cpu().unwrap();
            }
            out
        };
        let (c, g) = (run(false), run(true));
        assert!(c.iter().all(|v| *v > 0.0));
        assert_eq!(
            c.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            g.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn bad_launches_are_errors() {
    use crate::cuda::launch::{Dim3, Launcher};
    let l = EmulatedLauncher::default();
    assert!(l
        .launch("no_such_kernel", Dim3::x(1), Dim3::x(32), 0, &[])
        .is_err());
    assert!(l
        .launch("rdiff_lincomb_f32_f32", Dim3::x(1), Dim3::x(2048), 0, &[])
        .is_err());
    // float64 tensors have no kernel: a TypeError, not a launch.
    let mut x = [0f64; 4];
    let mut o = [0f64; 4];
    let mut lc = Lincomb::new("test", tensor(&mut o, 0, &[1, 4]));
    lc.base = Some((tensor(&mut x, 0, &[1, 4]), 1.0));
    let e = lc.launch(&l);
    assert!(matches!(e, Err(crate::error::RdiffError::Type(_))), "{e:?}");
}

/// The in-kernel Philox noise alone: the pass's output is the stream itself, bit for bit,
/// for grids of any size.
#[test]
fn kernel_philox_noise_is_the_cpu_stream() {
    let (batch, ps) = (3usize, 1001usize);
    let n = batch * ps;
    let mut want = vec![0f32; n];
    fill_normals(42, 9, 0, &mut want);
    for max_blocks in [1, 3, 64] {
        let mut out = vec![0f32; n];
        let mut lc = Lincomb::new("test", tensor(&mut out, 0, &[batch, ps]));
        lc.noise = Some(Noise {
            source: NoiseSource::Philox {
                seed: 42,
                offset: 9,
            },
            sigma: Sigma::Fixed(1.0),
        });
        lc.launch(&EmulatedLauncher { max_blocks }).unwrap();
        // 0 + 1·n: exactly n.
        assert_eq!(out, want, "max_blocks {max_blocks}");
    }
}
