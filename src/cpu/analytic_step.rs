//! The fused Analytic-DPM step on the CPU: one pass reads the model output, the sample and the
//! noise once and writes x̂₀ and the new sample once (formula in `schedule::analytic_dpm`).
//! The noise is a caller's buffer or drawn in the pass from the Philox stream
//! (`random::philox`), the same numbers the CUDA kernel (`kernels/analytic_step.cu`) draws.

use rayon::prelude::*;

use super::dtype::Elem;
use crate::random::philox::fill_normals;
use crate::schedule::analytic_dpm::AnalyticStep;

/// Elements per rayon task.
const TASK: usize = 1 << 15;
/// Elements per f32 scratch chunk inside a task.
const LANES: usize = 256;

/// Where σ·n's n comes from.
#[derive(Clone, Copy, Debug)]
pub enum Noise<'a> {
    /// No noise term (σ = 0).
    None,
    /// The caller's f32 buffer, `batch × per_sample` elements.
    Given(&'a [f32]),
    /// Element i (flattened, batch included) of the Philox stream (seed, offset).
    Philox { seed: u64, offset: u64 },
}

/// The buffers of one step: `mo` has `batch` rows of `mo_stride ≥ per_sample` elements; `x`,
/// a given noise, `x0`, `prev` hold `batch × per_sample` elements.
pub struct AnalyticIo<'a, D: Elem, S: Elem> {
    pub mo: &'a [D],
    pub mo_stride: usize,
    pub x: &'a [S],
    pub noise: Noise<'a>,
    pub x0: &'a mut [D],
    pub prev: &'a mut [D],
    pub per_sample: usize,
}

/// The f32 scalars of one pass: ε = p·x + q·mo (the prediction-type conversion), then the step.
#[derive(Clone, Copy, Debug)]
pub struct PassScalars {
    pub p: f32,
    pub q: f32,
    pub sb: f32,
    pub isa: f32,
    pub c_x0: f32,
    pub c_x: f32,
    pub c_eps: f32,
    pub sigma: f32,
    /// [a, b] for x̂₀ when clipping.
    pub clip: Option<(f32, f32)>,
}

impl PassScalars {
    pub fn new(st: &AnalyticStep, p: f64, q: f64, clip: Option<(f64, f64)>) -> Self {
        Self {
            p: p as f32,
            q: q as f32,
            sb: st.sqrt_beta_bar_t as f32,
            isa: st.inv_sqrt_alpha_bar_t as f32,
            c_x0: st.c_x0 as f32,
            c_x: st.c_x as f32,
            c_eps: st.c_eps as f32,
            sigma: st.sigma2.max(0.0).sqrt() as f32,
            clip: clip.map(|(a, b)| (a as f32, b as f32)),
        }
    }
}

/// Runs the step. Lengths must have been checked by the caller.
pub fn fused_analytic_step<D: Elem, S: Elem>(io: AnalyticIo<'_, D, S>, sc: &PassScalars) {
    let ps = io.per_sample;
    if ps == 0 {
        return;
    }
    let AnalyticIo {
        mo,
        mo_stride,
        x,
        noise,
        x0,
        prev,
        ..
    } = io;
    let sc = *sc;
    x0.par_chunks_mut(ps)
        .zip(prev.par_chunks_mut(ps))
        .enumerate()
        .for_each(|(b, (x0_b, prev_b))| {
            let base = b * ps;
            x0_b.par_chunks_mut(TASK)
                .zip(prev_b.par_chunks_mut(TASK))
                .enumerate()
                .for_each(|(k, (x0_c, prev_c))| {
                    let off = k * TASK;
                    let len = x0_c.len();
                    let g = base + off..base + off + len;
                    let m = b * mo_stride + off;
                    let noise = match noise {
                        Noise::None => Noise::None,
                        Noise::Given(n) => Noise::Given(&n[g.clone()]),
                        Noise::Philox { .. } => noise,
                    };
                    run_task(
                        &sc,
                        &mo[m..m + len],
                        &x[g.clone()],
                        noise,
                        g.start as u64,
                        x0_c,
                        prev_c,
                    );
                });
        });
}

/// One task's elements; `first` is the flattened index of its first element (the Philox
/// stream's element index).
fn run_task<D: Elem, S: Elem>(
    sc: &PassScalars,
    mo: &[D],
    x: &[S],
    noise: Noise<'_>,
    first: u64,
    x0: &mut [D],
    prev: &mut [D],
) {
    let mut xs = [0f32; LANES];
    let mut ns = [0f32; LANES];
    let mut ys = [0f32; LANES];
    let mut e0 = [0f32; LANES];
    let mut acc = [0f32; LANES];
    let len = x0.len();
    let mut start = 0;
    while start < len {
        let n = LANES.min(len - start);
        let r = start..start + n;
        S::load(&x[r.clone()], &mut xs[..n]);
        D::load(&mo[r.clone()], &mut ys[..n]);
        for i in 0..n {
            let e = sc.p * xs[i] + sc.q * ys[i];
            ys[i] = e;
            e0[i] = (xs[i] - sc.sb * e) * sc.isa;
        }
        if let Some((a, b)) = sc.clip {
            for v in &mut e0[..n] {
                *v = v.clamp(a, b);
            }
        }
        for i in 0..n {
            acc[i] = sc.c_x0 * e0[i] + sc.c_x * xs[i] + sc.c_eps * ys[i];
        }
        match noise {
            Noise::None => {}
            Noise::Given(noise) => {
                for i in 0..n {
                    acc[i] += sc.sigma * noise[start + i];
                }
            }
            Noise::Philox { seed, offset } => {
                fill_normals(seed, offset, first + start as u64, &mut ns[..n]);
                for i in 0..n {
                    acc[i] += sc.sigma * ns[i];
                }
            }
        }
        D::store(&e0[..n], &mut x0[r.clone()]);
        D::store(&acc[..n], &mut prev[r]);
        start += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula() {
        let st = AnalyticStep {
            sqrt_beta_bar_t: 0.8,
            inv_sqrt_alpha_bar_t: 1.0 / 0.6,
            c_x0: 0.7,
            c_x: 0.2,
            c_eps: 0.1,
            lambda2: 0.0,
            sigma2: 0.09,
        };
        let sc = PassScalars::new(&st, 0.0, 1.0, Some((-1.0, 1.0)));
        let (batch, ps) = (2, 700);
        let n = batch * ps;
        let f = |k: usize| ((k * 7919) % 1000) as f32 / 500.0 - 1.0;
        let x: Vec<f32> = (0..n).map(f).collect();
        let mo: Vec<f32> = (0..n).map(|k| f(k + 3)).collect();
        let nz: Vec<f32> = (0..n).map(|k| f(k + 5)).collect();
        let (mut x0, mut prev) = (vec![0f32; n], vec![0f32; n]);
        fused_analytic_step(
            AnalyticIo {
                mo: &mo,
                mo_stride: ps,
                x: &x,
                noise: Noise::Given(&nz),
                x0: &mut x0,
                prev: &mut prev,
                per_sample: ps,
            },
            &sc,
        );
        for k in 0..n {
            let e = mo[k];
            let x0w = ((x[k] - 0.8 * e) / 0.6).clamp(-1.0, 1.0);
            let want = 0.7 * x0w + 0.2 * x[k] + 0.1 * e + 0.3 * nz[k];
            assert!((x0[k] - x0w).abs() < 1e-5);
            assert!((prev[k] - want).abs() < 1e-5);
        }
    }
    /// In-pass Philox noise is the stream `fill_normals_par` gives, element by element, for
    /// any task split (sizes around the task and lane boundaries, batch > 1).
    #[test]
    fn philox_noise_is_the_stream() {
        use crate::random::philox::fill_normals_par;
        let st = AnalyticStep {
            sqrt_beta_bar_t: 0.8,
            inv_sqrt_alpha_bar_t: 1.0 / 0.6,
            c_x0: 0.7,
            c_x: 0.2,
            c_eps: 0.1,
            lambda2: 0.0,
            sigma2: 0.09,
        };
        let sc = PassScalars::new(&st, 0.3, 0.9, None);
        for (batch, ps) in [(1usize, 1usize), (3, 257), (2, TASK + 3)] {
            let n = batch * ps;
            let f = |k: usize| ((k * 7919) % 1000) as f32 / 500.0 - 1.0;
            let x: Vec<f32> = (0..n).map(f).collect();
            let mo: Vec<f32> = (0..n).map(|k| f(k + 3)).collect();
            let mut nz = vec![0f32; n];
            fill_normals_par(11, 4, &mut nz);
            let mut out = Vec::new();
            for noise in [
                Noise::Given(&nz),
                Noise::Philox {
                    seed: 11,
                    offset: 4,
                },
            ] {
                let (mut x0, mut prev) = (vec![0f32; n], vec![0f32; n]);
                fused_analytic_step(
                    AnalyticIo {
                        mo: &mo,
                        mo_stride: ps,
                        x: &x,
                        noise,
                        x0: &mut x0,
                        prev: &mut prev,
                        per_sample: ps,
                    },
                    &sc,
                );
                out.push(prev);
            }
            assert_eq!(out[0], out[1], "batch {batch} × {ps}");
        }
    }
}
