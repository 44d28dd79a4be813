//! Bindings of the singlestep DPM-Solver step: `_SinglestepCore`, built by the Python scheduler
//! in `set_timesteps`, computes each step's coefficients and runs the fused loop with two
//! samples (the current one for the model-output conversion, the group's start for the update);
//! `_singlestep_order_list` is diffusers' `get_order_list`.

use pyo3::prelude::*;

use super::dpm_solver::{run_fused_step, SolverConfig, StepBuffers};
use super::tensor::TensorRef;
use crate::schedule::check_steps;
use crate::schedule::dpm_singlestep::{order_list, singlestep_coefficients};
use crate::schedule::dpm_solver::{Algorithm, StepCoefficients};

/// Per-scheduler constants of the singlestep solver and its σ̃ schedule.
#[pyclass(name = "_SinglestepCore", module = "rdiff._rdiff", frozen)]
pub struct SinglestepCore {
    cfg: SolverConfig,
}

impl SinglestepCore {
    fn coefficients_at(&self, step_index: usize, order: usize) -> PyResult<StepCoefficients> {
        Ok(singlestep_coefficients(
            &self.cfg.step_at(step_index, order)?,
        )?)
    }
}

#[pymethods]
impl SinglestepCore {
    #[new]
    #[pyo3(signature = (algorithm_type, solver_type, prediction_type, thresholding,
        dynamic_thresholding_ratio, sample_max_value, flow, sigmas))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        algorithm_type: &str,
        solver_type: &str,
        prediction_type: &str,
        thresholding: bool,
        dynamic_thresholding_ratio: f64,
        sample_max_value: f64,
        flow: bool,
        sigmas: Vec<f64>,
    ) -> PyResult<Self> {
        let cfg = SolverConfig::parse(
            algorithm_type,
            solver_type,
            prediction_type,
            thresholding,
            dynamic_thresholding_ratio,
            sample_max_value,
            flow,
            sigmas,
        )?;
        if cfg.algorithm == Algorithm::SdeDpmSolver {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "algorithm_type: \"sde-dpmsolver\" has no singlestep form in diffusers; use \
                 \"sde-dpmsolver++\"",
            ));
        }
        Ok(Self { cfg })
    }

    /// The step's scalars (p, q, r, w, a, w0, w1, w2, c); see `schedule::dpm_singlestep`.
    fn coefficients(&self, step_index: usize, order: usize) -> PyResult<[f64; 9]> {
        let c = self.coefficients_at(step_index, order)?;
        Ok([c.p, c.q, c.r, c.w, c.a, c.w0, c.w1, c.w2, c.c])
    }

    /// One fused step: writes the converted model output (from `mo` and the current sample `x`)
    /// into `hist` and the new sample, the order-`order` update from `start` (the sample saved
    /// at the group's start; None when it is `x`, as at a group's first step), into `prev`.
    /// m1/m2 are the converted outputs of the group's earlier steps. CUDA tensors run on the
    /// caller's `stream`, with `bounds` (float32, `batch` long) as thresholding scratch.
    #[pyo3(signature = (step_index, order, mo, x, start, m1, m2, noise, hist, prev, batch,
        mo_stride, stream=None, bounds=None))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        step_index: usize,
        order: usize,
        mo: TensorRef,
        x: TensorRef,
        start: Option<TensorRef>,
        m1: Option<TensorRef>,
        m2: Option<TensorRef>,
        noise: Option<TensorRef>,
        hist: TensorRef,
        prev: TensorRef,
        batch: usize,
        mo_stride: usize,
        stream: Option<usize>,
        bounds: Option<TensorRef>,
    ) -> PyResult<()> {
        let co = self.coefficients_at(step_index, order)?;
        run_fused_step(
            py,
            &self.cfg,
            &co,
            order,
            StepBuffers {
                mo,
                x,
                start,
                m1,
                m2,
                noise,
                hist,
                prev,
                batch,
                mo_stride,
                stream,
                bounds,
            },
        )
    }
}

/// diffusers' `DPMSolverSinglestepScheduler.get_order_list`: the solver order of each step.
#[pyfunction]
#[pyo3(name = "_singlestep_order_list", signature = (steps, solver_order, lower_order_final,
    final_sigma_zero))]
pub fn singlestep_order_list(
    steps: usize,
    solver_order: usize,
    lower_order_final: bool,
    final_sigma_zero: bool,
) -> PyResult<Vec<usize>> {
    Ok(order_list(
        check_steps("steps", steps)?,
        solver_order,
        lower_order_final,
        final_sigma_zero,
    )?)
}
