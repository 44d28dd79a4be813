//! `_UniPc`: the core of `rdiff.UniPCMultistepScheduler`, built by its `set_timesteps`; `step`
//! converts the step's tensors and runs the fused corrector + predictor pass.

use pyo3::prelude::*;

use super::run;
use super::tensor::{tensor, tensor_opt};
use crate::step::unipc::{UniPc, UniPcIo, UniPcOptions};

/// The solver options, by diffusers' config names.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct UniPcArgs {
    solver_type: String,
    prediction_type: String,
    predict_x0: bool,
    thresholding: bool,
    dynamic_thresholding_ratio: f64,
    sample_max_value: f64,
    flow: bool,
    solver_order: usize,
    lower_order_final: bool,
    sigmas: Vec<f64>,
}

/// Per-loop constants of UniPC and its σ̃ schedule.
#[pyclass(name = "_UniPc", module = "rdiff._rdiff", frozen)]
pub struct PyUniPc {
    inner: UniPc,
}

#[pymethods]
impl PyUniPc {
    /// `solver`: the options (a dict, see `UniPcArgs`).
    #[new]
    fn new(solver: UniPcArgs) -> PyResult<Self> {
        let a = solver;
        Ok(Self {
            inner: UniPc::new(UniPcOptions {
                solver_type: &a.solver_type,
                prediction_type: &a.prediction_type,
                predict_x0: a.predict_x0,
                thresholding: a.thresholding,
                dynamic_thresholding_ratio: a.dynamic_thresholding_ratio,
                sample_max_value: a.sample_max_value,
                flow: a.flow,
                solver_order: a.solver_order,
                lower_order_final: a.lower_order_final,
                sigmas: a.sigmas,
            })?,
        })
    }

    /// diffusers' predictor order at `step_index` with `lower_order_nums` earlier outputs.
    fn order(&self, step_index: usize, lower_order_nums: usize) -> usize {
        self.inner.order(step_index, lower_order_nums)
    }

    /// The conversion's (p, q, r, w) at step `step_index`: m = r·x + w·(p·x + q·mo).
    fn conversion(&self, step_index: usize) -> PyResult<[f64; 4]> {
        let (p, q, r, w) = self.inner.conversion(step_index)?;
        Ok([p, q, r, w])
    }

    /// The weights (a, w0, [w_1, …], wt) of the update over the interval from step
    /// `step_index` to the next: the predictor of that step, or (`corrector`) the corrector
    /// of the next one.
    fn weights(
        &self,
        step_index: usize,
        order: usize,
        corrector: bool,
    ) -> PyResult<(f64, f64, Vec<f64>, f64)> {
        let w = self.inner.weights(step_index, order, corrector)?;
        Ok((w.a, w.w0, w.w, w.wt))
    }

    /// One fused step: the converted output into `hist`, the corrected sample into
    /// `corrected` (when both corrector and predictor run), the step's result into `prev`.
    /// `corrector_order`: the previous step's predictor order, None with the corrector off;
    /// `history`: the earlier converted outputs, newest first. Returns the predictor's order
    /// (0 when `predict` is off).
    #[pyo3(signature = (step_index, lower_order_nums, corrector_order, *, model_output, sample,
        last_sample, history, hist, prev, corrected=None, bounds=None, predict=true, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        step_index: usize,
        lower_order_nums: usize,
        corrector_order: Option<usize>,
        model_output: &Bound<'_, PyAny>,
        sample: &Bound<'_, PyAny>,
        last_sample: Option<&Bound<'_, PyAny>>,
        history: Vec<Option<Bound<'_, PyAny>>>,
        hist: &Bound<'_, PyAny>,
        prev: &Bound<'_, PyAny>,
        corrected: Option<&Bound<'_, PyAny>>,
        bounds: Option<&Bound<'_, PyAny>>,
        predict: bool,
        stream: usize,
    ) -> PyResult<usize> {
        let history = history
            .iter()
            .enumerate()
            .map(|(k, m)| tensor_opt(m.as_ref(), &format!("model_outputs[-{}]", k + 2)))
            .collect::<PyResult<Vec<_>>>()?;
        let io = UniPcIo {
            model_output: tensor(model_output, "model_output")?,
            sample: tensor(sample, "sample")?,
            last_sample: tensor_opt(last_sample, "last_sample")?,
            history,
            hist: tensor(hist, "history buffer")?,
            corrected: tensor_opt(corrected, "corrected sample")?,
            prev: tensor(prev, "output buffer")?,
            bounds: tensor_opt(bounds, "bounds")?,
        };
        let (lc, orders) =
            self.inner
                .step(step_index, lower_order_nums, corrector_order, predict, io)?;
        run(py, &lc, lc.tensors(), stream)?;
        Ok(orders.predictor)
    }
}
