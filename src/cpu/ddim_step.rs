//! The fused DDIM / DDPM step on the CPU: one pass reads every input element once and writes
//! the x₀ prediction and the new sample once (formula in `schedule::ddim`).

use rayon::prelude::*;

use super::dtype::Elem;
use super::quantile::clamp_sym;
use crate::schedule::ddim::{DdimCoefficients, NoiseScale};

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance.
const TASK: usize = 1 << 15;
/// Elements per f32 scratch chunk inside a task.
const LANES: usize = 256;

/// How x₀ is bounded after the prediction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Clip<'a> {
    None,
    /// clamp(x0, −c, c) (clip_sample).
    Range(f32),
    /// clamp(x0, −s_b, s_b)/s_b with one bound per sample (dynamic thresholding).
    Dynamic(&'a [f32]),
}

/// The buffers of one step. `x`, `noise`, `x0`, `prev` hold `batch × per_sample` elements; `mo`
/// holds `batch` rows of `mo_stride` elements: the first `per_sample` are the model output and,
/// for learned variances, the next `per_sample` the variance channels.
pub struct DdimIo<'a, D: Elem, S: Elem> {
    pub mo: &'a [D],
    pub mo_stride: usize,
    pub x: &'a [S],
    pub noise: Option<&'a [D]>,
    pub x0: &'a mut [D],
    pub prev: &'a mut [D],
    pub per_sample: usize,
}

/// One sample's bound: none, a clamp, or a clamp then a division by the bound.
#[derive(Clone, Copy)]
enum Bound {
    None,
    Range(f32),
    Scaled(f32),
}

#[derive(Clone, Copy)]
enum Std {
    None,
    Fixed(f32),
    Learned,
    LearnedRange { min_log: f32, max_log: f32 },
}

/// Coefficients narrowed to f32 once per step.
#[derive(Clone, Copy)]
struct Co {
    p: f32,
    q: f32,
    d: f32,
    eps_from_x0: bool,
    h1: f32,
    h2: f32,
    h3: f32,
    a: f32,
    w0: f32,
    w_eps: f32,
    std: Std,
}

impl From<&DdimCoefficients> for Co {
    fn from(c: &DdimCoefficients) -> Self {
        Self {
            p: c.p as f32,
            q: c.q as f32,
            d: c.d as f32,
            eps_from_x0: c.eps_from_x0,
            h1: c.h1 as f32,
            h2: c.h2 as f32,
            h3: c.h3 as f32,
            a: c.a as f32,
            w0: c.w0 as f32,
            w_eps: c.w_eps as f32,
            std: match c.noise {
                NoiseScale::None => Std::None,
                NoiseScale::Fixed(s) => Std::Fixed(s as f32),
                NoiseScale::Learned => Std::Learned,
                NoiseScale::LearnedRange { min_log, max_log } => Std::LearnedRange {
                    min_log: min_log as f32,
                    max_log: max_log as f32,
                },
            },
        }
    }
}

/// Runs the step. Lengths (and, for noise or learned variances, their presence) must have been
/// checked by the caller: the noise buffer is required unless the scale is `None`, and
/// `mo_stride ≥ 2·per_sample` for the learned scales.
pub fn ddim_step<D: Elem, S: Elem>(
    io: DdimIo<'_, D, S>,
    coefficients: &DdimCoefficients,
    clip: Clip<'_>,
) {
    let co = Co::from(coefficients);
    let ps = io.per_sample;
    if ps == 0 {
        return;
    }
    let DdimIo {
        mo,
        mo_stride,
        x,
        noise,
        x0,
        prev,
        ..
    } = io;
    let noise = match co.std {
        Std::None => None,
        _ => noise,
    };
    let learned = matches!(co.std, Std::Learned | Std::LearnedRange { .. });
    x0.par_chunks_mut(ps)
        .zip(prev.par_chunks_mut(ps))
        .enumerate()
        .for_each(|(b, (x0_b, prev_b))| {
            let bound = match clip {
                Clip::None => Bound::None,
                Clip::Range(c) => Bound::Range(c),
                Clip::Dynamic(s) => Bound::Scaled(s[b]),
            };
            let base = b * ps;
            x0_b.par_chunks_mut(TASK)
                .zip(prev_b.par_chunks_mut(TASK))
                .enumerate()
                .for_each(|(k, (x0_c, prev_c))| {
                    let off = k * TASK;
                    let len = x0_c.len();
                    let g = base + off..base + off + len;
                    let m0 = b * mo_stride + off;
                    let var = learned.then(|| &mo[m0 + ps..m0 + ps + len]);
                    run_task(
                        co,
                        bound,
                        &mo[m0..m0 + len],
                        var,
                        &x[g.clone()],
                        noise.map(|n| &n[g.clone()]),
                        x0_c,
                        prev_c,
                    );
                });
        });
}

#[allow(clippy::too_many_arguments)]
fn run_task<D: Elem, S: Elem>(
    co: Co,
    bound: Bound,
    mo: &[D],
    var: Option<&[D]>,
    x: &[S],
    noise: Option<&[D]>,
    x0: &mut [D],
    prev: &mut [D],
) {
    let mut xs = [0f32; LANES];
    let mut ms = [0f32; LANES];
    let mut ys = [0f32; LANES];
    let mut acc = [0f32; LANES];
    let mut tmp = [0f32; LANES];
    let len = x0.len();
    let mut start = 0;
    while start < len {
        let n = LANES.min(len - start);
        let r = start..start + n;
        S::load(&x[r.clone()], &mut xs[..n]);
        D::load(&mo[r.clone()], &mut ms[..n]);
        for i in 0..n {
            ys[i] = (co.p * xs[i] + co.q * ms[i]) / co.d;
        }
        match bound {
            Bound::None => {}
            Bound::Range(c) => {
                for y in &mut ys[..n] {
                    *y = y.clamp(-c, c);
                }
            }
            Bound::Scaled(s) => {
                for y in &mut ys[..n] {
                    *y = clamp_sym(*y, s) / s;
                }
            }
        }
        // Store x₀ and continue with its stored (rounded) value, as diffusers keeps it in the
        // model's dtype.
        D::store(&ys[..n], &mut x0[r.clone()]);
        D::load(&x0[r.clone()], &mut ys[..n]);
        for i in 0..n {
            acc[i] = co.a * xs[i] + co.w0 * ys[i];
        }
        if co.w_eps != 0.0 {
            let z = if co.eps_from_x0 { &ys } else { &ms };
            for i in 0..n {
                acc[i] += co.w_eps * ((co.h1 * xs[i] + co.h2 * z[i]) / co.h3);
            }
        }
        if let Some(noise) = noise {
            D::load(&noise[r.clone()], &mut tmp[..n]);
            match co.std {
                Std::None => {}
                Std::Fixed(s) => {
                    for i in 0..n {
                        acc[i] += s * tmp[i];
                    }
                }
                Std::Learned => {
                    D::load(&var.expect("variance channels")[r.clone()], &mut ms[..n]);
                    for i in 0..n {
                        acc[i] += ms[i].sqrt() * tmp[i];
                    }
                }
                Std::LearnedRange { min_log, max_log } => {
                    D::load(&var.expect("variance channels")[r.clone()], &mut ms[..n]);
                    for i in 0..n {
                        let f = (ms[i] + 1.0) * 0.5;
                        let v = f * max_log + (1.0 - f) * min_log;
                        acc[i] += (0.5 * v).exp() * tmp[i];
                    }
                }
            }
        }
        D::store(&acc[..n], &mut prev[r]);
        start += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn co(noise: NoiseScale) -> DdimCoefficients {
        DdimCoefficients {
            p: 1.0,
            q: -0.8,
            d: 0.6,
            eps_from_x0: true,
            h1: 1.0,
            h2: -0.6,
            h3: 0.8,
            a: 0.1,
            w0: 0.7,
            w_eps: 0.5,
            noise,
        }
    }

    #[test]
    fn matches_the_formula_elementwise() {
        let (batch, ps) = (3, 1000);
        let n = batch * ps;
        let f = |k: usize| ((k * 7919) % 1000) as f32 / 500.0 - 1.0;
        let x: Vec<f32> = (0..n).map(f).collect();
        let mut mo = vec![0f32; 2 * n];
        for b in 0..batch {
            for i in 0..ps {
                mo[b * 2 * ps + i] = f(b * ps + i + 1);
                mo[b * 2 * ps + ps + i] = 0.5 * f(b * ps + i + 2);
            }
        }
        let nz: Vec<f32> = (0..n).map(|k| f(k + 4)).collect();
        let thr = [1.0f32, 0.5, 2.0];
        let (min_log, max_log) = (-5.0, -1.0);
        for (noise, clip) in [
            (NoiseScale::Fixed(0.3), Clip::Dynamic(&thr)),
            (
                NoiseScale::LearnedRange { min_log, max_log },
                Clip::Range(1.0),
            ),
            (NoiseScale::None, Clip::None),
        ] {
            let (mut x0, mut prev) = (vec![0f32; n], vec![0f32; n]);
            let c = co(noise);
            ddim_step(
                DdimIo {
                    mo: &mo,
                    mo_stride: 2 * ps,
                    x: &x,
                    noise: Some(&nz),
                    x0: &mut x0,
                    prev: &mut prev,
                    per_sample: ps,
                },
                &c,
                clip,
            );
            for k in 0..n {
                let (b, i) = (k / ps, k % ps);
                let m = mo[b * 2 * ps + i];
                let v = mo[b * 2 * ps + ps + i];
                let mut y = (x[k] - 0.8 * m) / 0.6;
                y = match clip {
                    Clip::None => y,
                    Clip::Range(c) => y.clamp(-c, c),
                    Clip::Dynamic(s) => y.clamp(-s[b], s[b]) / s[b],
                };
                let eps = (x[k] - 0.6 * y) / 0.8;
                let std = match noise {
                    NoiseScale::None => 0.0,
                    NoiseScale::Fixed(s) => s as f32,
                    NoiseScale::Learned => v.sqrt(),
                    NoiseScale::LearnedRange { min_log, max_log } => {
                        let f = (v + 1.0) / 2.0;
                        (0.5 * (f * max_log as f32 + (1.0 - f) * min_log as f32)).exp()
                    }
                };
                let want = 0.1 * x[k] + 0.7 * y + 0.5 * eps + std * nz[k];
                assert!((x0[k] - y).abs() < 1e-5);
                assert!((prev[k] - want).abs() < 1e-5, "{k}: {} vs {want}", prev[k]);
            }
        }
    }
}
