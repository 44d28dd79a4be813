//! What the multistep and singlestep DPM-Solver steps share: the solver's constants and the σ̃
//! schedule of `set_timesteps`, and the step as a fused pass.

use super::{batch_of, expect_like, mo_stride, thresholding, thresholding_options};
use crate::dtype::DType;
use crate::error::Result;
use crate::lincomb::{Conversion, Lincomb, Noise, NoiseSource, Sigma};
use crate::schedule::dpm_solver::{Algorithm, MultistepStep, Point, SolverType, StepCoefficients};
use crate::schedule::prediction::PredictionType;
use crate::tensor::Tensor;
use crate::value_err;

/// The constants of a DPM-Solver scheduler (multistep or singlestep).
#[derive(Clone, Debug)]
pub struct SolverConfig {
    pub algorithm: Algorithm,
    pub solver_type: SolverType,
    pub prediction: PredictionType,
    /// (ratio, sample_max_value) when dynamic thresholding is on.
    pub thresholding: Option<(f64, f64)>,
    pub flow: bool,
    /// Whether the model output may carry a learned variance as extra channels (diffusers
    /// ignores them: `variance_type` learned/learned_range with ε prediction).
    pub learned_variance: bool,
    /// diffusers' σ̃ of every step, n + 1 values (the last one 0 or σ_min).
    pub sigmas: Vec<f64>,
}

/// The options of [`SolverConfig::parse`], as the schedulers' config names them.
pub struct SolverOptions<'a> {
    pub algorithm_type: &'a str,
    pub solver_type: &'a str,
    pub prediction_type: &'a str,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub flow: bool,
    pub learned_variance: bool,
    pub sigmas: Vec<f64>,
}

/// The tensors of one DPM-Solver step. `history[0]`, `history[1]` are the converted outputs of
/// the one and two steps before (diffusers' `model_outputs[-1]`, `[-2]`), as far as there are
/// any; `start` is the singlestep group's start sample (None: the current sample).
pub struct DpmIo {
    pub model_output: Tensor,
    pub sample: Tensor,
    pub start: Option<Tensor>,
    pub history: [Option<Tensor>; 2],
    /// float32 noise of the sample's shape (the SDE algorithm types).
    pub noise: Option<Tensor>,
    /// Outputs: the converted model output (the next history entry) and the new sample, in
    /// the model output's dtype.
    pub hist: Tensor,
    pub prev: Tensor,
    /// The thresholding scratch (`batch` float32 values, float64 for float64 samples).
    pub bounds: Option<Tensor>,
}

impl SolverConfig {
    pub fn parse(o: SolverOptions<'_>) -> Result<Self> {
        if o.sigmas.len() < 2 {
            return value_err!("sigmas: need at least two values");
        }
        let algorithm = Algorithm::parse(o.algorithm_type)?;
        let solver_type = SolverType::parse(o.solver_type)?;
        if (algorithm == Algorithm::Deis) != (solver_type == SolverType::LogRho) {
            return value_err!(
                "solver_type: {:?} does not go with algorithm_type {:?} (DEIS's is \"logrho\", \
                 the only one it has)",
                o.solver_type,
                o.algorithm_type
            );
        }
        Ok(Self {
            algorithm,
            solver_type,
            prediction: PredictionType::parse(o.prediction_type)?,
            thresholding: thresholding_options(
                o.thresholding,
                o.dynamic_thresholding_ratio,
                o.sample_max_value,
            )?,
            flow: o.flow,
            learned_variance: o.learned_variance,
            sigmas: o.sigmas,
        })
    }

    /// The number of steps of the loop.
    pub fn steps(&self) -> usize {
        self.sigmas.len() - 1
    }

    /// Checks that a step of `order` at `step_index` has its σ values in the schedule.
    pub fn check_step(&self, step_index: usize, order: usize) -> Result<()> {
        let n = self.sigmas.len();
        if step_index + 1 >= n {
            return value_err!(
                "step index {step_index} is past the end of the schedule ({} steps)",
                n - 1
            );
        }
        if order == 0 || order > 3 || order > step_index + 1 {
            return value_err!("order {order} is not possible at step index {step_index}");
        }
        Ok(())
    }

    fn point(&self, i: usize) -> Point {
        Point::from_sigma(self.sigmas[i], self.flow)
    }

    /// Whether the schedule's points `i` and `j` have the same σ (a zero-length interval:
    /// diffusers' linspace spacing repeats a timestep when the steps nearly equal the
    /// training timesteps, e.g. 1000 of 1000, and its higher-order updates then divide by 0).
    pub fn same_point(&self, i: usize, j: usize) -> bool {
        self.sigmas[i] == self.sigmas[j]
    }

    /// The checked inputs of an order-`order` update from step `step_index` to the next: the
    /// target, the current point and the two before it (clamped at the schedule's start).
    pub fn step_at(&self, step_index: usize, order: usize) -> Result<MultistepStep> {
        self.check_step(step_index, order)?;
        let back = |k: usize| self.point(step_index.saturating_sub(k));
        Ok(MultistepStep {
            algorithm: self.algorithm,
            solver_type: self.solver_type,
            prediction: self.prediction,
            thresholding: self.thresholding.is_some(),
            order,
            t: self.point(step_index + 1),
            s0: self.point(step_index),
            s1: back(1),
            s2: back(2),
            flow_sigma: self.sigmas[step_index],
        })
    }

    /// The step as a fused pass: the conversion of the model output at the current sample
    /// (thresholded, kept in `hist`), the order-`order` update from the start sample.
    pub fn pass(&self, co: &StepCoefficients, order: usize, io: DpmIo) -> Result<Lincomb> {
        let DpmIo {
            model_output: mo,
            sample: x,
            start,
            history,
            noise,
            hist,
            prev,
            bounds,
        } = io;
        batch_of(&x)?;
        let mo_stride = mo_stride(&mo, &x, self.learned_variance)?;
        let d = mo.dtype;
        expect_like(&hist, "history buffer", &x, d)?;
        expect_like(&prev, "output buffer", &x, d)?;
        if let Some(s) = &start {
            expect_like(s, "start sample", &x, x.dtype)?;
        }
        let mut lc = Lincomb::new("the DPM-Solver step", prev);
        for (k, (m, w)) in history.into_iter().zip([co.w1, co.w2]).enumerate() {
            if order < k + 2 {
                break;
            }
            let what = ["model_outputs[-2]", "model_outputs[-3]"][k];
            let Some(m) = m else {
                return value_err!("{what}: required by an order-{order} step");
            };
            if m.shape != x.shape || m.dtype != d {
                return value_err!(
                    "{what}: the history entry does not match this step's shape and dtype; call \
                     set_timesteps to start a new loop"
                );
            }
            lc.terms.push((m, w));
        }
        if co.c != 0.0 || self.algorithm.stochastic() {
            let Some(nz) = noise else {
                return value_err!("noise: the SDE algorithm types need noise");
            };
            expect_like(&nz, "noise", &x, DType::F32)?;
            lc.noise = Some(Noise {
                source: NoiseSource::Buffer(nz),
                sigma: Sigma::Fixed(co.c),
            });
        }
        lc.conv = Some(Conversion {
            x: x.clone(),
            mo,
            mo_stride,
            p: co.p,
            q: co.q,
            d: 1.0,
            clamp: thresholding(self.thresholding, bounds)?,
            r: co.r,
            w: co.w,
            weight: co.w0,
            recompute: None,
        });
        lc.hist = Some(hist);
        lc.base = Some((start.unwrap_or(x), co.a));
        Ok(lc)
    }
}
