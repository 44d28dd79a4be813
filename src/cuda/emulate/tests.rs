//! The kernels, run by the emulated launcher, against the CPU path.

use half::{bf16, f16};

use super::{registered_kernels, EmulatedLauncher};
use crate::cpu::dpm_step::{fused_step_from, StepIo};
use crate::cpu::dtype::Elem;
use crate::cpu::quantile::threshold_bounds;
use crate::cuda::kernels::SOURCES;
use crate::cuda::ops::{self, Buf, DpmStepBuffers, Thresholding};
use crate::schedule::dpm_solver::StepCoefficients;

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

fn stored<T: Elem + Default>(v: &[f32], offset: usize) -> Vec<T> {
    let mut out = vec![T::default(); v.len() + offset];
    T::store(v, &mut out[offset..]);
    out
}

fn buf<T: Elem>(v: &[T]) -> Buf {
    Buf {
        ptr: v.as_ptr() as u64,
        dtype: T::DTYPE,
    }
}

/// An output buffer: the kernel writes through this pointer, so it comes from `&mut`.
fn buf_mut<T: Elem>(v: &mut [T]) -> Buf {
    Buf {
        ptr: v.as_mut_ptr() as u64,
        dtype: T::DTYPE,
    }
}

fn widen<T: Elem>(v: &[T]) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    T::load(v, &mut out);
    out
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

/// The host conversion helpers round like `half` (round to nearest even, subnormals,
/// overflow to infinity, NaN): every f16 bit pattern, scaled so the products land everywhere.
#[test]
fn conversions_round_like_half() {
    let l = EmulatedLauncher::default();
    let x0: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let eps = vec![f16::ZERO; x0.len()];
    for alpha in [1.0f32, 1.000_123_4, 0.000_976_562_5 * 1.37, 3.999] {
        let (a, s) = (vec![alpha], vec![0.0f32]);
        let mut out = vec![f16::ZERO; x0.len()];
        ops::add_noise(
            &l,
            buf(&x0),
            buf(&eps),
            a.as_ptr() as u64,
            s.as_ptr() as u64,
            buf_mut(&mut out),
            1,
            x0.len(),
        )
        .unwrap();
        for (x, o) in x0.iter().zip(&out) {
            // The kernel adds σ·ε = +0, which turns −0 into +0.
            let want = f16::from_f32(alpha * x.to_f32() + 0.0);
            if want.is_nan() {
                assert!(o.is_nan(), "{x}");
            } else {
                assert_eq!(o.to_bits(), want.to_bits(), "{x} · {alpha}");
            }
        }
        // The same through bf16.
        let xb: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        let eb = vec![bf16::ZERO; xb.len()];
        let mut ob = vec![bf16::ZERO; xb.len()];
        ops::add_noise(
            &l,
            buf(&xb),
            buf(&eb),
            a.as_ptr() as u64,
            s.as_ptr() as u64,
            buf_mut(&mut ob),
            1,
            xb.len(),
        )
        .unwrap();
        for (x, o) in xb.iter().zip(&ob) {
            let want = bf16::from_f32(alpha * x.to_f32() + 0.0);
            assert!(
                o.to_bits() == want.to_bits() || (want.is_nan() && o.is_nan()),
                "{x}"
            );
        }
    }
}

fn check_step<D: Elem + Default, S: Elem + Default>(
    batch: usize,
    per_sample: usize,
    extra: usize,
    offset: usize,
    thresholding: bool,
    singlestep: bool,
) {
    let n = batch * per_sample;
    let mo_stride = per_sample + extra;
    let co = StepCoefficients {
        p: 1.3,
        q: -0.7,
        r: 0.1,
        w: 0.95,
        a: 0.8,
        w0: 0.3,
        w1: -0.15,
        w2: 0.05,
        c: 0.2,
    };
    let x: Vec<S> = stored(&values(n, 1), offset);
    let mo: Vec<D> = stored(&values(batch * mo_stride, 2), offset);
    let m1: Vec<D> = stored(&values(n, 3), offset);
    let m2: Vec<D> = stored(&values(n, 4), offset);
    let noise: Vec<f32> = stored(&values(n, 5), offset);
    // A singlestep update starts from the group's first sample, not from x.
    let start: Vec<S> = stored(&values(n, 6), offset);
    let (x, mo, m1, m2, noise) = (
        &x[offset..],
        &mo[offset..],
        &m1[offset..],
        &m2[offset..],
        &noise[offset..],
    );
    let start = singlestep.then_some(&start[offset..]);
    let (ratio, max_value) = (0.9, 1.5);
    let bounds = thresholding
        .then(|| threshold_bounds(x, mo, mo_stride, per_sample, co.p, co.q, ratio, max_value));
    let (mut hist_c, mut prev_c) = (vec![D::default(); n], vec![D::default(); n]);
    fused_step_from(
        StepIo {
            mo,
            mo_stride,
            x,
            m1: Some(m1),
            m2: Some(m2),
            noise: Some(noise),
            hist: &mut hist_c,
            prev: &mut prev_c,
            per_sample,
        },
        start,
        &co,
        bounds.as_deref(),
    );
    let mut hist_e = vec![D::default(); n + offset];
    let mut prev_e = vec![D::default(); n + offset];
    let mut scratch = vec![0f32; batch];
    let l = EmulatedLauncher::default();
    ops::dpm_step(
        &l,
        &DpmStepBuffers {
            mo: buf(mo),
            mo_stride,
            x: buf(x),
            start: start.map(buf),
            m1: Some(buf(m1)),
            m2: Some(buf(m2)),
            noise: Some(noise.as_ptr() as u64),
            hist: buf_mut(&mut hist_e[offset..]),
            prev: buf_mut(&mut prev_e[offset..]),
            batch,
            per_sample,
        },
        &co,
        thresholding.then_some(Thresholding {
            ratio,
            max_value,
            bounds: scratch.as_mut_ptr() as u64,
        }),
    )
    .unwrap();
    if let Some(b) = &bounds {
        assert_eq!(&scratch, b, "threshold bounds");
    }
    // The emulation does the CPU path's f32 operations in the same order without FMA
    // contraction, so the results agree exactly.
    let what = format!(
        "{:?}/{:?} batch {batch} × {per_sample} offset {offset} thr {thresholding} \
         singlestep {singlestep}",
        D::DTYPE,
        S::DTYPE
    );
    assert_eq!(widen(&hist_e[offset..]), widen(&hist_c), "hist {what}");
    assert_eq!(widen(&prev_e[offset..]), widen(&prev_c), "prev {what}");
}

macro_rules! step_for_all {
    ($($name:ident: $d:ty, $s:ty;)*) => {$(
        #[test]
        fn $name() {
            // Odd sizes (not multiples of the vector width or the block), learned-variance
            // strides, misaligned views (offset 1), with and without thresholding, multistep
            // and singlestep (the update from a start sample).
            for &(batch, ps, extra) in &[(1, 1, 0), (2, 1027, 0), (3, 4096, 4096), (2, 2053, 7)] {
                for offset in [0, 1] {
                    for (thr, single) in [(false, false), (true, false), (false, true), (true, true)] {
                        check_step::<$d, $s>(batch, ps, extra, offset, thr, single);
                    }
                }
            }
        }
    )*};
}

step_for_all! {
    step_f32_f32: f32, f32;
    step_f32_f16: f32, f16;
    step_f32_bf16: f32, bf16;
    step_f16_f32: f16, f32;
    step_f16_f16: f16, f16;
    step_f16_bf16: f16, bf16;
    step_bf16_f32: bf16, f32;
    step_bf16_f16: bf16, f16;
    step_bf16_bf16: bf16, bf16;
}

#[test]
fn threshold_handles_ties_extremes_and_tiny_samples() {
    let l = EmulatedLauncher::default();
    for (vals, ratio, max) in [
        (vec![3.0f32, 1.0, 2.0, 4.0], 0.995, 10.0),
        (vec![5.0; 100], 0.5, 10.0),
        (vec![7.0], 0.995, 10.0),
        (
            (0..1000).map(|k| (k % 17) as f32 * 0.3).collect(),
            0.0,
            10.0,
        ),
        (
            (0..1000).map(|k| (k % 17) as f32 * 0.3).collect(),
            1.0,
            10.0,
        ),
        ((0..999).map(|k| -(k as f32) * 0.01).collect(), 0.37, 0.5),
        (vec![f32::NAN, 1.0, 2.0], 0.9, 10.0),
    ] {
        let n = vals.len();
        let mo = vec![0f32; n];
        let want = threshold_bounds(&vals, &mo, n, n, 1.0, 0.0, ratio, max);
        let mut got = vec![0f32; 1];
        ops::threshold_bounds(
            &l,
            buf(&mo),
            n,
            buf(&vals),
            1,
            n,
            1.0,
            0.0,
            ratio,
            max,
            got.as_mut_ptr() as u64,
        )
        .unwrap();
        assert!(
            got[0] == want[0] || (got[0].is_nan() && want[0].is_nan()),
            "{got:?} vs {want:?} for n={n}, ratio={ratio}"
        );
    }
}

#[test]
fn gamma_matches_f64() {
    let l = EmulatedLauncher::default();
    for (batch, ps, offset) in [(1, 1, 0), (3, 1000, 1), (2, 65539, 0)] {
        let v = values(batch * ps, 9);
        let e: Vec<f16> = stored(&v, offset);
        let e = &e[offset..];
        let mut out = vec![0f32; batch];
        ops::gamma(&l, buf(e), batch, ps, out.as_mut_ptr() as u64).unwrap();
        for b in 0..batch {
            let want: f64 = e[b * ps..(b + 1) * ps]
                .iter()
                .map(|x| (x.to_f32() as f64).powi(2))
                .sum::<f64>()
                / ps as f64;
            assert!(
                ((out[b] as f64) - want).abs() <= want * 1e-5,
                "{b}: {} vs {want}",
                out[b]
            );
        }
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
        .launch("rdiff_gamma_f32", Dim3::x(1), Dim3::x(2048), 0, &[])
        .is_err());
    let x = [0f64; 4];
    let e = ops::gamma(
        &l,
        Buf {
            ptr: x.as_ptr() as u64,
            dtype: crate::cpu::dtype::DType::F64,
        },
        1,
        4,
        0,
    );
    assert!(matches!(e, Err(crate::error::RdiffError::Type(_))));
}

// --- the Analytic-DPM step ---------------------------------------------------------------

use crate::cpu::analytic_step::{fused_analytic_step, AnalyticIo, Noise, PassScalars};
use crate::cuda::analytic_step::{analytic_step, AnalyticStepBuffers, KernelNoise};
use crate::random::philox::fill_normals;

fn analytic_scalars(clip: bool) -> PassScalars {
    PassScalars {
        p: 0.35,
        q: 0.9,
        sb: 0.8,
        isa: 1.0 / 0.6,
        c_x0: 0.7,
        c_x: 0.2,
        c_eps: 0.1,
        sigma: 0.3,
        clip: clip.then_some((-1.0, 1.0)),
    }
}

/// The kernel and the CPU loop on the same inputs (given, Philox or no noise); the emulation
/// does the CPU path's f32 operations in the same order without FMA, so they agree exactly.
fn check_analytic<D: Elem + Default, S: Elem + Default>(
    batch: usize,
    per_sample: usize,
    extra: usize,
    offset: usize,
    clip: bool,
    mode: usize,
) {
    let n = batch * per_sample;
    let mo_stride = per_sample + extra;
    let sc = analytic_scalars(clip);
    let x: Vec<S> = stored(&values(n, 11), offset);
    let mo: Vec<D> = stored(&values(batch * mo_stride, 12), offset);
    let noise: Vec<f32> = stored(&values(n, 13), offset);
    let (x, mo, noise) = (&x[offset..], &mo[offset..], &noise[offset..]);
    let (seed, step) = (0xdead_beef_0123_4567u64, 7u64);
    let (cpu_noise, kernel_noise) = match mode {
        0 => (Noise::None, KernelNoise::None),
        1 => (
            Noise::Given(noise),
            KernelNoise::Given(noise.as_ptr() as u64),
        ),
        _ => (
            Noise::Philox { seed, offset: step },
            KernelNoise::Philox { seed, offset: step },
        ),
    };
    let (mut x0_c, mut prev_c) = (vec![D::default(); n], vec![D::default(); n]);
    fused_analytic_step(
        AnalyticIo {
            mo,
            mo_stride,
            x,
            noise: cpu_noise,
            x0: &mut x0_c,
            prev: &mut prev_c,
            per_sample,
        },
        &sc,
    );
    let mut x0_e = vec![D::default(); n + offset];
    let mut prev_e = vec![D::default(); n + offset];
    analytic_step(
        &EmulatedLauncher::default(),
        &AnalyticStepBuffers {
            mo: buf(mo),
            mo_stride,
            x: buf(x),
            noise: kernel_noise,
            x0: buf_mut(&mut x0_e[offset..]),
            prev: buf_mut(&mut prev_e[offset..]),
            batch,
            per_sample,
        },
        &sc,
    )
    .unwrap();
    let what = format!(
        "{:?}/{:?} batch {batch} × {per_sample} (+{extra}) offset {offset} clip {clip} noise {mode}",
        D::DTYPE,
        S::DTYPE
    );
    assert_eq!(widen(&x0_e[offset..]), widen(&x0_c), "x0 {what}");
    assert_eq!(widen(&prev_e[offset..]), widen(&prev_c), "prev {what}");
}

macro_rules! analytic_for_all {
    ($($name:ident: $d:ty, $s:ty;)*) => {$(
        #[test]
        fn $name() {
            // Odd sizes (the vector and Philox-group paths and the scalar tails, rows that
            // start mid lane group), learned-variance strides, misaligned views.
            for &(batch, ps, extra) in &[(1, 1, 0), (2, 1027, 0), (3, 4096, 4096), (2, 2054, 7)] {
                for offset in [0, 1] {
                    for (clip, mode) in [(true, 0), (false, 1), (true, 2), (false, 2)] {
                        check_analytic::<$d, $s>(batch, ps, extra, offset, clip, mode);
                    }
                }
            }
        }
    )*};
}

analytic_for_all! {
    analytic_f32_f32: f32, f32;
    analytic_f32_f16: f32, f16;
    analytic_f32_bf16: f32, bf16;
    analytic_f16_f32: f16, f32;
    analytic_f16_f16: f16, f16;
    analytic_f16_bf16: f16, bf16;
    analytic_bf16_f32: bf16, f32;
    analytic_bf16_f16: bf16, f16;
    analytic_bf16_bf16: bf16, bf16;
}

/// The in-kernel Philox noise alone (x = mo = 0, σ = 1, no clip, c = 0): prev is the stream
/// itself, bit for bit, for grids of any size.
#[test]
fn kernel_philox_noise_is_the_cpu_stream() {
    let (batch, ps) = (3usize, 1001usize);
    let n = batch * ps;
    let zeros = vec![0f32; n];
    let sc = PassScalars {
        p: 0.0,
        q: 1.0,
        sb: 0.0,
        isa: 1.0,
        c_x0: 0.0,
        c_x: 0.0,
        c_eps: 0.0,
        sigma: 1.0,
        clip: None,
    };
    let mut want = vec![0f32; n];
    fill_normals(42, 9, 0, &mut want);
    for max_blocks in [1, 3, 64] {
        let mut x0 = vec![0f32; n];
        let mut prev = vec![0f32; n];
        analytic_step(
            &EmulatedLauncher { max_blocks },
            &AnalyticStepBuffers {
                mo: buf(&zeros),
                mo_stride: ps,
                x: buf(&zeros),
                noise: KernelNoise::Philox {
                    seed: 42,
                    offset: 9,
                },
                x0: buf_mut(&mut x0),
                prev: buf_mut(&mut prev),
                batch,
                per_sample: ps,
            },
            &sc,
        )
        .unwrap();
        // 0·x0 + 0·x + 0·e + 1·n: exactly n (+0 + n).
        assert_eq!(prev, want, "max_blocks {max_blocks}");
    }
}

// --- the DDIM / DDPM step ----------------------------------------------------------------

use crate::cpu::ddim_step::{ddim_step as cpu_ddim_step, Clip, DdimIo};
use crate::cuda::ddim_step::{ddim_step, DdimStepBuffers, KernelClip};
use crate::schedule::ddim::{DdimCoefficients, NoiseScale};

fn ddim_co(noise: NoiseScale, eps_from_x0: bool) -> DdimCoefficients {
    DdimCoefficients {
        p: 1.0,
        q: -0.8,
        d: 0.6,
        eps_from_x0,
        h1: 1.0,
        h2: -0.6,
        h3: 0.8,
        a: 0.1,
        w0: 0.7,
        w_eps: 0.5,
        noise,
    }
}

fn check_ddim<D: Elem + Default, S: Elem + Default>(
    batch: usize,
    per_sample: usize,
    offset: usize,
    noise: NoiseScale,
    clip: usize,
) {
    let n = batch * per_sample;
    let learned = matches!(noise, NoiseScale::Learned | NoiseScale::LearnedRange { .. });
    // Learned variances: the variance channels follow the output (positive for √v).
    let mo_stride = if learned {
        2 * per_sample
    } else {
        per_sample + 3
    };
    let co = ddim_co(noise, clip != 1);
    let x: Vec<S> = stored(&values(n, 21), offset);
    let mut mo_v = values(batch * mo_stride, 22);
    if learned {
        for b in 0..batch {
            for v in &mut mo_v[b * mo_stride + per_sample..(b + 1) * mo_stride] {
                *v = v.abs() * 0.4 + 0.01;
            }
        }
    }
    let mo: Vec<D> = stored(&mo_v, offset);
    let nz: Vec<D> = stored(&values(n, 23), offset);
    let (x, mo, nz) = (&x[offset..], &mo[offset..], &nz[offset..]);
    let (ratio, max_value) = (0.8, 1.2);
    let bounds = (clip == 2).then(|| {
        threshold_bounds(
            x,
            mo,
            mo_stride,
            per_sample,
            co.p / co.d,
            co.q / co.d,
            ratio,
            max_value,
        )
    });
    let cpu_clip = match (clip, &bounds) {
        (1, _) => Clip::Range(0.9),
        (2, Some(b)) => Clip::Dynamic(b),
        _ => Clip::None,
    };
    let (mut x0_c, mut prev_c) = (vec![D::default(); n], vec![D::default(); n]);
    cpu_ddim_step(
        DdimIo {
            mo,
            mo_stride,
            x,
            noise: Some(nz),
            x0: &mut x0_c,
            prev: &mut prev_c,
            per_sample,
        },
        &co,
        cpu_clip,
    );
    let mut x0_e = vec![D::default(); n + offset];
    let mut prev_e = vec![D::default(); n + offset];
    let mut scratch = vec![0f32; batch];
    let kclip = match clip {
        1 => KernelClip::Range(0.9),
        2 => KernelClip::Dynamic {
            ratio,
            max_value,
            bounds: scratch.as_mut_ptr() as u64,
        },
        _ => KernelClip::None,
    };
    ddim_step(
        &EmulatedLauncher::default(),
        &DdimStepBuffers {
            mo: buf(mo),
            mo_stride,
            x: buf(x),
            noise: Some(buf(nz)),
            x0: buf_mut(&mut x0_e[offset..]),
            prev: buf_mut(&mut prev_e[offset..]),
            batch,
            per_sample,
        },
        &co,
        kclip,
    )
    .unwrap();
    let what = format!(
        "{:?}/{:?} batch {batch} × {per_sample} offset {offset} noise {noise:?} clip {clip}",
        D::DTYPE,
        S::DTYPE
    );
    assert_eq!(widen(&x0_e[offset..]), widen(&x0_c), "x0 {what}");
    assert_eq!(widen(&prev_e[offset..]), widen(&prev_c), "prev {what}");
}

macro_rules! ddim_for_all {
    ($($name:ident: $d:ty, $s:ty;)*) => {$(
        #[test]
        fn $name() {
            let scales = [
                NoiseScale::None,
                NoiseScale::Fixed(0.3),
                NoiseScale::Learned,
                NoiseScale::LearnedRange { min_log: -7.0, max_log: -2.0 },
            ];
            for &(batch, ps) in &[(1, 1), (2, 1027), (3, 2048)] {
                for offset in [0, 1] {
                    for (k, &noise) in scales.iter().enumerate() {
                        check_ddim::<$d, $s>(batch, ps, offset, noise, k % 3);
                    }
                }
            }
        }
    )*};
}

ddim_for_all! {
    ddim_f32_f32: f32, f32;
    ddim_f32_f16: f32, f16;
    ddim_f32_bf16: f32, bf16;
    ddim_f16_f32: f16, f32;
    ddim_f16_f16: f16, f16;
    ddim_f16_bf16: f16, bf16;
    ddim_bf16_f32: bf16, f32;
    ddim_bf16_f16: bf16, f16;
    ddim_bf16_bf16: bf16, bf16;
}
