//! `_DpmMultistep`: the core of `rdiff.DPMSolverMultistepScheduler`, built by its
//! `set_timesteps`; `step` converts the step's tensors and runs the fused pass.

use pyo3::prelude::*;

use super::run;
use super::tensor::{tensor, tensor_opt};
use crate::schedule::dpm_solver::MultistepRule;
use crate::step::dpm_multistep::DpmMultistep;
use crate::step::dpm_solver::{DpmIo, SolverConfig, SolverOptions};
use crate::tensor::Tensor;

/// The solver options both DPM-Solver cores take, by diffusers' config names.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct SolverArgs {
    algorithm_type: String,
    solver_type: String,
    prediction_type: String,
    thresholding: bool,
    dynamic_thresholding_ratio: f64,
    sample_max_value: f64,
    flow: bool,
    learned_variance: bool,
    sigmas: Vec<f64>,
}

impl SolverArgs {
    pub fn config(self) -> PyResult<SolverConfig> {
        Ok(SolverConfig::parse(SolverOptions {
            algorithm_type: &self.algorithm_type,
            solver_type: &self.solver_type,
            prediction_type: &self.prediction_type,
            thresholding: self.thresholding,
            dynamic_thresholding_ratio: self.dynamic_thresholding_ratio,
            sample_max_value: self.sample_max_value,
            flow: self.flow,
            learned_variance: self.learned_variance,
            sigmas: self.sigmas,
        })?)
    }
}

/// A DPM-Solver step's tensors, converted. `history`: `model_outputs[-1]`, `[-2]` (or None).
#[allow(clippy::too_many_arguments)]
pub fn dpm_io(
    model_output: &Bound<'_, PyAny>,
    sample: &Bound<'_, PyAny>,
    start: Option<&Bound<'_, PyAny>>,
    history: Vec<Option<Bound<'_, PyAny>>>,
    hist: &Bound<'_, PyAny>,
    prev: &Bound<'_, PyAny>,
    noise: Option<&Bound<'_, PyAny>>,
    bounds: Option<&Bound<'_, PyAny>>,
) -> PyResult<DpmIo> {
    let mut h: [Option<Tensor>; 2] = [None, None];
    for (k, m) in history.iter().take(2).enumerate() {
        h[k] = tensor_opt(m.as_ref(), ["model_outputs[-2]", "model_outputs[-3]"][k])?;
    }
    Ok(DpmIo {
        model_output: tensor(model_output, "model_output")?,
        sample: tensor(sample, "sample")?,
        start: tensor_opt(start, "start sample")?,
        history: h,
        noise: tensor_opt(noise, "noise")?,
        hist: tensor(hist, "history buffer")?,
        prev: tensor(prev, "output buffer")?,
        bounds: tensor_opt(bounds, "bounds")?,
    })
}

/// Per-loop constants of the multistep solver and its σ̃ schedule.
#[pyclass(name = "_DpmMultistep", module = "rdiff._rdiff", frozen)]
pub struct PyDpmMultistep {
    inner: DpmMultistep,
}

#[pymethods]
impl PyDpmMultistep {
    /// `solver`: the options of the solver (a dict, see `SolverArgs`).
    #[new]
    #[pyo3(signature = (solver, solver_order, lower_order_final, euler_at_final, final_sigma_zero))]
    fn new(
        solver: SolverArgs,
        solver_order: usize,
        lower_order_final: bool,
        euler_at_final: bool,
        final_sigma_zero: bool,
    ) -> PyResult<Self> {
        let rule = MultistepRule {
            lower_order_final,
            euler_at_final,
            final_sigma_zero,
        };
        Ok(Self {
            inner: DpmMultistep::new(solver.config()?, solver_order, rule)?,
        })
    }

    /// The order of step `step_index` with `lower_order_nums` outputs in the history.
    fn order(&self, step_index: usize, lower_order_nums: usize) -> usize {
        self.inner.order(step_index, lower_order_nums)
    }

    /// The step's scalars (p, q, r, w, a, w0, w1, w2, c); see `schedule::dpm_solver`.
    fn coefficients(&self, step_index: usize, order: usize) -> PyResult<[f64; 9]> {
        let st = self.inner.cfg.step_at(step_index, order)?;
        let c = crate::schedule::dpm_solver::multistep_coefficients(&st)?;
        Ok([c.p, c.q, c.r, c.w, c.a, c.w0, c.w1, c.w2, c.c])
    }

    /// One fused step: the converted model output into `hist`, the new sample into `prev`
    /// (both shaped like `sample`, in the model output's dtype). `history`: the earlier
    /// converted outputs, newest first; `noise`: float32, for the SDE types; `bounds`: the
    /// thresholding scratch; `stream`: the caller's CUDA stream for CUDA tensors.
    #[pyo3(signature = (step_index, lower_order_nums, *, model_output, sample, history, hist,
        prev, noise=None, bounds=None, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        step_index: usize,
        lower_order_nums: usize,
        model_output: &Bound<'_, PyAny>,
        sample: &Bound<'_, PyAny>,
        history: Vec<Option<Bound<'_, PyAny>>>,
        hist: &Bound<'_, PyAny>,
        prev: &Bound<'_, PyAny>,
        noise: Option<&Bound<'_, PyAny>>,
        bounds: Option<&Bound<'_, PyAny>>,
        stream: usize,
    ) -> PyResult<()> {
        let io = dpm_io(
            model_output,
            sample,
            None,
            history,
            hist,
            prev,
            noise,
            bounds,
        )?;
        let lc = self.inner.step(step_index, lower_order_nums, io)?;
        run(py, &lc, lc.tensors(), stream)
    }
}
