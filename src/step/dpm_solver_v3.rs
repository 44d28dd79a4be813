//! The DPM-Solver-v3 step: the corrector of the interval just taken and the predictor of the
//! next share one model output, so a step is one fused pass whose weights are vectors over one
//! sample's elements (`lincomb::ElementWeights`): f of the fresh output (→ the history), the
//! corrected sample (→ `corrected`, the next corrector's anchor) and the predictor from it
//! (→ `prev`). Coefficients: `schedule::dpm_solver_v3`, all of a run's computed once by
//! `set_timesteps` (the caller keeps them as a tensor on the sample's device).

use super::{batch_of, expect_like, mo_stride};
use crate::error::Result;
use crate::lincomb::{Chain, Clamp, Conversion, ElementWeights, Lincomb};
use crate::schedule::dpm_solver_v3::{
    edm_lambdas, grid_points, step_orders, Ems, GridPoint, V3Options,
};
use crate::schedule::prediction::PredictionType;
use crate::schedule::spacing::{reference_time_steps, SkipType};
use crate::schedule::NoiseSchedule;
use crate::tensor::Tensor;
use crate::value_err;

/// Coefficient rows per step (one sample's length each), in this order.
pub const ROWS: usize = 13;
const R: usize = 0; // f = r·x + (σ/α)·ε
const A: usize = 1; // the first combination: its anchor, m, the history terms, the bias
const WM: usize = 2;
const C: usize = 3; // 3, 4, 5
const BIAS: usize = 6;
const CA: usize = 7; // the chained predictor (after a corrector)
const CWM: usize = 8;
const CC: usize = 9; // 9, 10, 11
const CBIAS: usize = 12;

/// One loop's constants and its coefficients.
pub struct DpmSolverV3 {
    pub ems: Ems,
    pub schedule: NoiseSchedule,
    pub options: V3Options,
    pub prediction: PredictionType,
    /// The run's time steps on the EMS grid.
    pub points: Vec<GridPoint>,
    /// (corrector order or 0, predictor order) of every step.
    pub orders: Vec<(usize, usize)>,
    /// `ROWS` rows of `per_sample` values per step.
    pub coefficients: Vec<f64>,
}

/// The tensors of one step. `history`: f of the steps before, newest first, as far as there
/// are any; `last_sample`: the previous step's corrected sample (the corrector's anchor).
pub struct DpmSolverV3Io {
    pub model_output: Tensor,
    pub sample: Tensor,
    pub last_sample: Option<Tensor>,
    pub history: Vec<Tensor>,
    /// This step's rows of the coefficients, in the pass's arithmetic dtype.
    pub coef: Tensor,
    pub hist: Tensor,
    pub corrected: Option<Tensor>,
    pub prev: Tensor,
}

impl DpmSolverV3 {
    pub fn new(
        ems: Ems,
        schedule: NoiseSchedule,
        options: V3Options,
        prediction: &str,
    ) -> Result<Self> {
        let prediction = PredictionType::parse(prediction)?;
        if prediction == PredictionType::FlowPrediction {
            return value_err!("prediction_type: DPM-Solver-v3 has no flow-matching form");
        }
        step_orders(&[1.0, 0.0], &options)?; // checks the order
        Ok(Self {
            ems,
            schedule,
            options,
            prediction,
            points: Vec::new(),
            orders: Vec::new(),
            coefficients: Vec::new(),
        })
    }

    /// The run's time steps (`steps` + 1 grid points from the grid's noisy end) and every
    /// step's coefficients, for a loop that starts at step `begin` (img2img: the multistep
    /// warm-up starts there; the steps before it are never taken and have no coefficients).
    pub fn set_timesteps(&mut self, steps: usize, skip_type: &str, begin: usize) -> Result<()> {
        if steps == 0 {
            return value_err!("num_inference_steps: must be at least 1, got 0");
        }
        if begin >= steps {
            return value_err!("begin_index: {begin} is not one of the {steps} steps");
        }
        let ems = &self.ems;
        if steps > ems.intervals() {
            return value_err!(
                "num_inference_steps: {steps} is more than the EMS grid's {} intervals (the \
                 time steps are snapped to the grid: estimate the statistics on a finer grid)",
                ems.intervals()
            );
        }
        let sch = &self.schedule;
        let (lo, hi) = (ems.lambdas()[0], ems.lambdas()[ems.intervals()]);
        let raw: Vec<f64> = if skip_type == "edm" {
            edm_lambdas(ems, steps)
        } else {
            let skip = SkipType::parse(skip_type).map_err(|_| {
                crate::error::RdiffError::Value(format!(
                    "skip_type: unknown {skip_type:?}; expected \"time_uniform\", \"logSNR\", \
                     \"time_quadratic\" or \"edm\""
                ))
            })?;
            let (t_start, t_end) = (sch.inverse_lambda(lo), sch.inverse_lambda(hi));
            reference_time_steps(sch, skip, t_start, t_end, steps)?
                .into_iter()
                .map(|t| sch.lambda(t))
                .collect()
        };
        let points = grid_points(ems, sch, &raw)?;
        let times: Vec<f64> = points.iter().map(|p| p.t).collect();
        let mut orders = vec![(0, 1); begin];
        orders.extend(step_orders(&times[begin..], &self.options)?);
        let ps = ems.per_sample();
        let mut coef = vec![0.0; steps * ROWS * ps];
        let blocks = coef
            .chunks_mut(ROWS * ps)
            .zip(&orders)
            .enumerate()
            .skip(begin);
        for (i, (block, &(c, p))) in blocks {
            let row = |block: &mut [f64], r: usize, v: &[f64]| {
                block[r * ps..(r + 1) * ps].copy_from_slice(v);
            };
            let pt = points[i];
            let l: Vec<f64> = ems.l(pt.index).iter().map(|l| -l / pt.alpha).collect();
            row(block, R, &l);
            // the predictor from point i through i, i−1, …
            let pts: Vec<GridPoint> = (0..p).map(|j| points[i - j]).collect();
            let up = ems.update(&pts, points[i + 1], self.options.p_pseudo)?;
            let (pa, pm, pc, pb) = if c > 0 {
                (CA, CWM, CC, CBIAS)
            } else {
                (A, WM, C, BIAS)
            };
            row(block, pa, &up.a);
            row(block, pm, &up.k[0]);
            for j in 1..p {
                row(block, pc + j - 1, &up.k[j]);
            }
            row(block, pb, &up.w);
            if c > 0 {
                // the corrector of i−1 → i through i−1 (anchor), i, i−2, i−3
                let order: Vec<usize> =
                    [i - 1, i, i.wrapping_sub(2), i.wrapping_sub(3)][..c].to_vec();
                let pts: Vec<GridPoint> = order.iter().map(|&k| points[k]).collect();
                let up = ems.update(&pts, pt, self.options.c_pseudo)?;
                row(block, A, &up.a);
                row(block, WM, &up.k[1]);
                row(block, C, &up.k[0]);
                for j in 2..c {
                    row(block, C + j - 1, &up.k[j]);
                }
                row(block, BIAS, &up.w);
            }
        }
        self.points = points;
        self.orders = orders;
        self.coefficients = coef;
        Ok(())
    }

    pub fn steps(&self) -> usize {
        self.orders.len()
    }

    /// History entries step `i` reads.
    pub fn history_needed(&self, i: usize) -> usize {
        self.orders
            .get(i)
            .map_or(0, |&(c, p)| c.saturating_sub(1).max(p - 1))
    }

    /// The fused pass of step `i`.
    pub fn step(&self, i: usize, io: DpmSolverV3Io) -> Result<Lincomb> {
        if i >= self.steps() {
            return value_err!(
                "step index {i} is past the last of the {} steps (call set_timesteps again)",
                self.steps()
            );
        }
        let (c, _) = self.orders[i];
        let x = &io.sample;
        batch_of(x)?;
        let stride = mo_stride(&io.model_output, x, false)?;
        let d = io.model_output.dtype;
        expect_like(&io.hist, "history buffer", x, d)?;
        expect_like(&io.prev, "output buffer", x, d)?;
        let n_hist = self.history_needed(i);
        if io.history.len() < n_hist {
            return value_err!(
                "history: step {i} needs the {n_hist} earlier values of f, got {} (steps taken \
                 out of order?)",
                io.history.len()
            );
        }
        let terms: Vec<Tensor> = io.history.into_iter().take(n_hist).collect();
        for (k, t) in terms.iter().enumerate() {
            expect_like(t, &format!("history[{k}]"), x, d)?;
        }
        let pt = self.points[i];
        let (pe, qe) = match self.prediction {
            PredictionType::Epsilon => (0.0, 1.0),
            PredictionType::Sample => (1.0 / pt.sigma, -pt.alpha / pt.sigma),
            PredictionType::VPrediction => (pt.sigma, pt.alpha),
            PredictionType::FlowPrediction => unreachable!("refused in new"),
        };
        let mut lc = Lincomb::new("the DPM-Solver-v3 step", io.prev);
        lc.conv = Some(Conversion {
            x: x.clone(),
            mo: io.model_output,
            mo_stride: stride,
            p: pe,
            q: qe,
            d: 1.0,
            clamp: Clamp::None,
            r: 1.0,
            w: pt.sigma / pt.alpha,
            weight: 1.0,
            recompute: None,
        });
        lc.hist = Some(io.hist);
        let rows =
            |k: usize, n: usize| -> Vec<Option<usize>> { (0..n).map(|j| Some(k + j)).collect() };
        let nt = terms.len();
        let mut ew = ElementWeights {
            coef: io.coef,
            r: Some(R),
            a: Some(A),
            wm: Some(WM),
            c: rows(C, nt),
            bias: Some(BIAS),
            chain_a: None,
            chain_wm: None,
            chain_c: Vec::new(),
            chain_bias: None,
        };
        if c > 0 {
            let last = io.last_sample.ok_or_else(|| {
                crate::error::RdiffError::Value(
                    "last_sample: the corrector needs the previous corrected sample".into(),
                )
            })?;
            expect_like(&last, "last_sample", x, x.dtype)?;
            let mid = io.corrected.ok_or_else(|| {
                crate::error::RdiffError::Value(
                    "corrected: the corrector needs a buffer for the corrected sample".into(),
                )
            })?;
            expect_like(&mid, "corrected sample", x, x.dtype)?;
            lc.base = Some((last, 1.0));
            lc.chain = Some(Chain {
                mid,
                a: 1.0,
                wm: 1.0,
                c: vec![1.0; nt],
            });
            ew.chain_a = Some(CA);
            ew.chain_wm = Some(CWM);
            ew.chain_c = rows(CC, nt);
            ew.chain_bias = Some(CBIAS);
        } else {
            lc.base = Some((x.clone(), 1.0));
        }
        let ps = x.numel / x.shape[0];
        if ps != self.ems.per_sample() {
            return value_err!(
                "sample: {ps} elements per sample, but the EMS table has {} (estimated for \
                 another shape)",
                self.ems.per_sample()
            );
        }
        lc.terms = terms.into_iter().map(|t| (t, 1.0)).collect();
        ew.coef.expect_numel("coefficients", ROWS * ps)?;
        lc.elem = Some(ew);
        Ok(lc)
    }
}
