//! The fused DPM-Solver step on the CPU: one pass reads every input element once and writes the
//! history entry and the new sample once (formula in `schedule::dpm_solver`). The singlestep
//! solver's update starts from the sample saved at its group's start, not the current sample the
//! conversion reads: [`fused_step_from`] takes that start sample as a second input.

use rayon::prelude::*;

use super::dtype::Elem;
use super::quantile::clamp_sym;
use crate::schedule::dpm_solver::StepCoefficients;

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance.
const TASK: usize = 1 << 15;
/// Elements per f32 scratch chunk inside a task (fits in L1 with all streams).
const LANES: usize = 256;

/// The buffers of one step. `x`, `hist`, `prev`, `m1`, `m2`, `noise` hold `batch × per_sample`
/// elements; `mo` holds `batch` rows of `mo_stride ≥ per_sample` elements of which the first
/// `per_sample` are used (diffusers' learned-variance models output extra channels).
pub struct StepIo<'a, D: Elem, S: Elem> {
    pub mo: &'a [D],
    pub mo_stride: usize,
    pub x: &'a [S],
    pub m1: Option<&'a [D]>,
    pub m2: Option<&'a [D]>,
    pub noise: Option<&'a [f32]>,
    pub hist: &'a mut [D],
    pub prev: &'a mut [D],
    pub per_sample: usize,
}

/// Coefficients narrowed to f32 once per step.
#[derive(Clone, Copy)]
struct Co {
    p: f32,
    q: f32,
    r: f32,
    w: f32,
    a: f32,
    w0: f32,
    w1: f32,
    w2: f32,
    c: f32,
}

impl From<&StepCoefficients> for Co {
    fn from(c: &StepCoefficients) -> Self {
        Self {
            p: c.p as f32,
            q: c.q as f32,
            r: c.r as f32,
            w: c.w as f32,
            a: c.a as f32,
            w0: c.w0 as f32,
            w1: c.w1 as f32,
            w2: c.w2 as f32,
            c: c.c as f32,
        }
    }
}

/// Runs the step. `thresholds`, when given, holds the dynamic-thresholding bound s of each
/// sample. Lengths must have been checked by the caller.
pub fn fused_step<D: Elem, S: Elem>(
    io: StepIo<'_, D, S>,
    coefficients: &StepCoefficients,
    thresholds: Option<&[f32]>,
) {
    fused_step_from(io, None, coefficients, thresholds)
}

/// Runs the step with the update `prev = a·start + w0·m0 + …` starting from `start` (same
/// length and dtype as `io.x`) while the conversion reads `io.x`; `None` means `start = io.x`.
pub fn fused_step_from<D: Elem, S: Elem>(
    io: StepIo<'_, D, S>,
    start: Option<&[S]>,
    coefficients: &StepCoefficients,
    thresholds: Option<&[f32]>,
) {
    let co = Co::from(coefficients);
    let ps = io.per_sample;
    if ps == 0 {
        return;
    }
    let StepIo {
        mo,
        mo_stride,
        x,
        m1,
        m2,
        noise,
        hist,
        prev,
        ..
    } = io;
    hist.par_chunks_mut(ps)
        .zip(prev.par_chunks_mut(ps))
        .enumerate()
        .for_each(|(b, (hist_b, prev_b))| {
            let thr = thresholds.map(|t| t[b]);
            let base = b * ps;
            hist_b
                .par_chunks_mut(TASK)
                .zip(prev_b.par_chunks_mut(TASK))
                .enumerate()
                .for_each(|(k, (hist_c, prev_c))| {
                    let off = k * TASK;
                    let len = hist_c.len();
                    let g = base + off..base + off + len;
                    let mo_c = &mo[b * mo_stride + off..b * mo_stride + off + len];
                    run_task(
                        co,
                        thr,
                        mo_c,
                        &x[g.clone()],
                        start.map(|s| &s[g.clone()]),
                        m1.map(|m| &m[g.clone()]),
                        m2.map(|m| &m[g.clone()]),
                        noise.map(|n| &n[g.clone()]),
                        hist_c,
                        prev_c,
                    );
                });
        });
}

#[allow(clippy::too_many_arguments)]
fn run_task<D: Elem, S: Elem>(
    co: Co,
    thr: Option<f32>,
    mo: &[D],
    x: &[S],
    from_x: Option<&[S]>,
    m1: Option<&[D]>,
    m2: Option<&[D]>,
    noise: Option<&[f32]>,
    hist: &mut [D],
    prev: &mut [D],
) {
    let mut xbuf = [0f32; LANES];
    let mut ubuf = [0f32; LANES];
    let mut ybuf = [0f32; LANES];
    let mut m0buf = [0f32; LANES];
    let mut accbuf = [0f32; LANES];
    let mut tmp = [0f32; LANES];
    let len = hist.len();
    let mut start = 0;
    while start < len {
        let n = LANES.min(len - start);
        let r = start..start + n;
        let xs = view(&x[r.clone()], &mut xbuf);
        let ys = view(&mo[r.clone()], &mut ybuf);
        // The converted model output (x₀ or ε), optionally thresholded, written straight into
        // the history entry when it is f32; otherwise stored and read back rounded, as
        // diffusers keeps the converted output in the model's dtype.
        let hist_c = &mut hist[r.clone()];
        let m0: &[f32] = match D::as_f32_mut(hist_c) {
            Some(h) => {
                convert(co, thr, xs, ys, h);
                h
            }
            None => {
                let m0 = &mut m0buf[..n];
                convert(co, thr, xs, ys, m0);
                D::store(m0, hist_c);
                D::load(hist_c, m0);
                m0
            }
        };
        let from = match from_x {
            Some(st) => view(&st[r.clone()], &mut ubuf),
            None => xs,
        };
        let prev_c = &mut prev[r.clone()];
        let direct = D::as_f32_mut(prev_c).is_some();
        let acc: &mut [f32] = match D::as_f32_mut(prev_c) {
            Some(p) => p,
            None => &mut accbuf[..n],
        };
        for ((a, f), m) in acc.iter_mut().zip(from).zip(m0) {
            *a = co.a * f + co.w0 * m;
        }
        if let Some(m1) = m1 {
            add_scaled(acc, co.w1, view(&m1[r.clone()], &mut tmp));
        }
        if let Some(m2) = m2 {
            add_scaled(acc, co.w2, view(&m2[r.clone()], &mut tmp));
        }
        if let Some(noise) = noise {
            add_scaled(acc, co.c, &noise[r.clone()]);
        }
        if !direct {
            D::store(&accbuf[..n], &mut prev[r]);
        }
        start += n;
    }
}

/// `src` as f32: borrowed when it already is, else widened into `buf`.
#[inline(always)]
fn view<'a, T: Elem>(src: &'a [T], buf: &'a mut [f32; LANES]) -> &'a [f32] {
    match T::as_f32(src) {
        Some(s) => s,
        None => {
            let b = &mut buf[..src.len()];
            T::load(src, b);
            b
        }
    }
}

/// out = r·x + w·y with y = p·x + q·mo, y clamped to [−s, s] and divided by s when given.
#[inline(always)]
fn convert(co: Co, thr: Option<f32>, xs: &[f32], ys: &[f32], out: &mut [f32]) {
    match thr {
        None => {
            for ((o, x), y) in out.iter_mut().zip(xs).zip(ys) {
                *o = co.r * x + co.w * (co.p * x + co.q * y);
            }
        }
        Some(s) => {
            let inv = 1.0 / s;
            for ((o, x), y) in out.iter_mut().zip(xs).zip(ys) {
                *o = co.r * x + co.w * (clamp_sym(co.p * x + co.q * y, s) * inv);
            }
        }
    }
}

#[inline(always)]
fn add_scaled(acc: &mut [f32], c: f32, v: &[f32]) {
    for (a, v) in acc.iter_mut().zip(v) {
        *a += c * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula_elementwise() {
        let co = StepCoefficients {
            p: 1.5,
            q: -0.5,
            r: 0.0,
            w: 1.0,
            a: 0.9,
            w0: 0.2,
            w1: -0.1,
            w2: 0.05,
            c: 0.3,
        };
        let (batch, ps) = (3, 1000);
        let n = batch * ps;
        let f = |k: usize| ((k * 7919) % 1000) as f32 / 500.0 - 1.0;
        let x: Vec<f32> = (0..n).map(f).collect();
        let mo: Vec<f32> = (0..n).map(|k| f(k + 1)).collect();
        let m1: Vec<f32> = (0..n).map(|k| f(k + 2)).collect();
        let m2: Vec<f32> = (0..n).map(|k| f(k + 3)).collect();
        let nz: Vec<f32> = (0..n).map(|k| f(k + 4)).collect();
        let (mut hist, mut prev) = (vec![0f32; n], vec![0f32; n]);
        let thr = [1.0f32, 0.5, 2.0];
        fused_step(
            StepIo {
                mo: &mo,
                mo_stride: ps,
                x: &x,
                m1: Some(&m1),
                m2: Some(&m2),
                noise: Some(&nz),
                hist: &mut hist,
                prev: &mut prev,
                per_sample: ps,
            },
            &co,
            Some(&thr),
        );
        for k in 0..n {
            let s = thr[k / ps];
            let y = (1.5 * x[k] - 0.5 * mo[k]).clamp(-s, s) / s;
            let want = 0.9 * x[k] + 0.2 * y - 0.1 * m1[k] + 0.05 * m2[k] + 0.3 * nz[k];
            assert!((hist[k] - y).abs() < 1e-6);
            assert!((prev[k] - want).abs() < 1e-5, "{k}: {} vs {want}", prev[k]);
        }
    }

    #[test]
    fn the_update_can_start_from_another_sample() {
        let co = StepCoefficients {
            p: 1.2,
            q: -0.7,
            r: 0.1,
            w: 0.9,
            a: 0.8,
            w0: 0.3,
            w1: -0.2,
            w2: 0.0,
            c: 0.0,
        };
        let (batch, ps) = (2, (1 << 15) + 300);
        let n = batch * ps;
        let f = |k: usize| ((k * 7919) % 1000) as f32 / 500.0 - 1.0;
        let x: Vec<f32> = (0..n).map(f).collect();
        let start: Vec<f32> = (0..n).map(|k| f(k + 5)).collect();
        let mo: Vec<f32> = (0..n).map(|k| f(k + 1)).collect();
        let m1: Vec<f32> = (0..n).map(|k| f(k + 2)).collect();
        let (mut hist, mut prev) = (vec![0f32; n], vec![0f32; n]);
        fused_step_from(
            StepIo {
                mo: &mo,
                mo_stride: ps,
                x: &x,
                m1: Some(&m1),
                m2: None,
                noise: None,
                hist: &mut hist,
                prev: &mut prev,
                per_sample: ps,
            },
            Some(&start),
            &co,
            None,
        );
        for k in 0..n {
            let m0 = 0.1 * x[k] + 0.9 * (1.2 * x[k] - 0.7 * mo[k]);
            let want = 0.8 * start[k] + 0.3 * m0 - 0.2 * m1[k];
            assert!((hist[k] - m0).abs() < 1e-6);
            assert!((prev[k] - want).abs() < 1e-5, "{k}: {} vs {want}", prev[k]);
        }
    }
}
