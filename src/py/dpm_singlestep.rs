//! `_DpmSinglestep`: the core of `rdiff.DPMSolverSinglestepScheduler`, and
//! `_singlestep_order_list` (diffusers' `get_order_list`).

use pyo3::prelude::*;

use super::dpm_multistep::{dpm_io, SolverArgs};
use super::run;
use crate::schedule::check_steps;
use crate::schedule::dpm_singlestep::{order_list, singlestep_coefficients};
use crate::step::dpm_singlestep::DpmSinglestep;

/// Per-loop constants of the singlestep solver: its σ̃ schedule and every step's order.
#[pyclass(name = "_DpmSinglestep", module = "rdiff._rdiff", frozen)]
pub struct PyDpmSinglestep {
    inner: DpmSinglestep,
}

#[pymethods]
impl PyDpmSinglestep {
    #[new]
    #[pyo3(signature = (solver, order_list))]
    fn new(solver: SolverArgs, order_list: Vec<usize>) -> PyResult<Self> {
        Ok(Self {
            inner: DpmSinglestep::new(solver.config()?, order_list)?,
        })
    }

    /// The step's scalars (p, q, r, w, a, w0, w1, w2, c); see `schedule::dpm_singlestep`.
    fn coefficients(&self, step_index: usize, order: usize) -> PyResult<[f64; 9]> {
        let c = singlestep_coefficients(&self.inner.cfg.step_at(step_index, order)?)?;
        Ok([c.p, c.q, c.r, c.w, c.a, c.w0, c.w1, c.w2, c.c])
    }

    /// One fused step, converting at the current `sample` and updating from `start` (the
    /// sample saved at the group's first step). Returns the step's order (1 opens a group).
    #[pyo3(signature = (step_index, *, model_output, sample, start, history, hist, prev,
        noise=None, bounds=None, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        step_index: usize,
        model_output: &Bound<'_, PyAny>,
        sample: &Bound<'_, PyAny>,
        start: Option<&Bound<'_, PyAny>>,
        history: Vec<Option<Bound<'_, PyAny>>>,
        hist: &Bound<'_, PyAny>,
        prev: &Bound<'_, PyAny>,
        noise: Option<&Bound<'_, PyAny>>,
        bounds: Option<&Bound<'_, PyAny>>,
        stream: usize,
    ) -> PyResult<usize> {
        let io = dpm_io(
            model_output,
            sample,
            start,
            history,
            hist,
            prev,
            noise,
            bounds,
        )?;
        let (lc, order) = self.inner.step(step_index, io)?;
        run(py, &lc, lc.tensors(), stream)?;
        Ok(order)
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
