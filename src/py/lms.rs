//! `_Lms`: the core of `rdiff.LMSDiscreteScheduler`, built by its `set_timesteps`.

use pyo3::prelude::*;

use super::run;
use super::tensor::{tensor, tensor_opt};
use crate::step::lms::{Lms, LmsIo};

/// Per-loop constants of the LMS step.
#[pyclass(name = "_Lms", module = "rdiff._rdiff", frozen)]
pub struct PyLms {
    inner: Lms,
}

#[pymethods]
impl PyLms {
    /// `sigmas`: the loop's σ (n + 1 values, the last 0).
    #[new]
    fn new(sigmas: Vec<f64>, prediction_type: &str) -> PyResult<Self> {
        Ok(Self {
            inner: Lms::new(sigmas, prediction_type)?,
        })
    }

    /// The coefficients c_0 … c_{order−1} of step `step_index` (c_j weighs the slope of j
    /// steps back).
    fn coefficients(&self, step_index: usize, order: usize) -> PyResult<Vec<f64>> {
        Ok(self.inner.coefficients(step_index, order)?)
    }

    /// One fused step of order `order`: the slope into `derivative`, x₀ into `x0`, the new
    /// sample into `prev` (all shaped like `sample`, in the model output's dtype, as are
    /// `sample` and the earlier slopes `history`, newest first). Above order 4, `scratch` is
    /// one more such buffer.
    #[pyo3(signature = (step_index, order, *, model_output, sample, history, derivative, x0,
        prev, scratch=None, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        step_index: usize,
        order: usize,
        model_output: &Bound<'_, PyAny>,
        sample: &Bound<'_, PyAny>,
        history: Vec<Bound<'_, PyAny>>,
        derivative: &Bound<'_, PyAny>,
        x0: &Bound<'_, PyAny>,
        prev: &Bound<'_, PyAny>,
        scratch: Option<&Bound<'_, PyAny>>,
        stream: usize,
    ) -> PyResult<()> {
        let history = history
            .iter()
            .enumerate()
            .map(|(k, h)| tensor(h, &format!("derivatives[-{}]", k + 1)))
            .collect::<PyResult<Vec<_>>>()?;
        let io = LmsIo {
            model_output: tensor(model_output, "model_output")?,
            sample: tensor(sample, "sample")?,
            history,
            derivative: tensor(derivative, "derivative buffer")?,
            x0: tensor(x0, "pred_original_sample buffer")?,
            prev: tensor(prev, "output buffer")?,
            scratch: tensor_opt(scratch, "scratch buffer")?,
        };
        for lc in self.inner.step(step_index, order, io)? {
            run(py, &lc, lc.tensors(), stream)?;
        }
        Ok(())
    }
}
