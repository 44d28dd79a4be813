//! `_AnalyticDpm`: the core of `rdiff.AnalyticDPMScheduler`, built by its `set_timesteps`;
//! it holds every step's scalars and runs the fused step.

use numpy::{IntoPyArray, PyArray1};
use pyo3::prelude::*;

use super::run;
use super::tensor::{tensor, tensor_opt};
use crate::schedule::analytic_dpm::{AnalyticOptions, Form};
use crate::schedule::prediction::PredictionType;
use crate::step::analytic_dpm::{AnalyticDpm, AnalyticIo, NoiseFrom};

#[pyclass(name = "_AnalyticDpm", module = "rdiff._rdiff", frozen)]
pub struct PyAnalyticDpm {
    inner: AnalyticDpm,
}

#[pymethods]
impl PyAnalyticDpm {
    /// `alphas_cumprod`: the full ᾱ (N); `timesteps`: the visited ones (descending); `gamma`:
    /// Γ at each visited timestep; `variances`: an optional override of every step's σ².
    #[new]
    #[pyo3(signature = (alphas_cumprod, timesteps, gamma, form, eta, cov_max, last_cap,
        prediction_type, variances=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        alphas_cumprod: Vec<f64>,
        timesteps: Vec<usize>,
        gamma: Vec<f64>,
        form: &str,
        eta: f64,
        cov_max: f64,
        last_cap: Option<f64>,
        prediction_type: &str,
        variances: Option<Vec<f64>>,
    ) -> PyResult<Self> {
        let opts = AnalyticOptions {
            form: Form::parse(form)?,
            eta,
            cov_max,
            last_cap,
        };
        let prediction = PredictionType::parse(prediction_type)?;
        Ok(Self {
            inner: AnalyticDpm::new(
                alphas_cumprod,
                timesteps,
                &gamma,
                &opts,
                prediction,
                variances,
            )?,
        })
    }

    /// σ² of every step (float64, aligned with the timesteps).
    #[getter]
    fn variances<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        let v: Vec<f64> = self.inner.steps.iter().map(|s| s.sigma2).collect();
        v.into_pyarray(py)
    }

    /// λ² of every step (float64).
    #[getter]
    fn lambda2<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        let v: Vec<f64> = self.inner.steps.iter().map(|s| s.lambda2).collect();
        v.into_pyarray(py)
    }

    /// One step's scalars: (c_x0, c_x, c_eps, sigma2).
    fn coefficients(&self, step_index: usize) -> PyResult<[f64; 4]> {
        let st = self.inner.step_at(step_index)?;
        Ok([st.c_x0, st.c_x, st.c_eps, st.sigma2])
    }

    /// One fused step: x̂₀ into `x0`, the new sample into `prev`. The noise is the float32
    /// `noise` when given, else element i of the Philox stream `philox = (seed, offset)`
    /// (`rdiff.randn`) drawn in the pass; `clip = (lo, hi)` clips x̂₀.
    #[pyo3(signature = (step_index, *, model_output, sample, x0, prev, noise=None, clip=None,
        philox=None, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        step_index: usize,
        model_output: &Bound<'_, PyAny>,
        sample: &Bound<'_, PyAny>,
        x0: &Bound<'_, PyAny>,
        prev: &Bound<'_, PyAny>,
        noise: Option<&Bound<'_, PyAny>>,
        clip: Option<(f64, f64)>,
        philox: Option<(u64, u64)>,
        stream: usize,
    ) -> PyResult<()> {
        let io = AnalyticIo {
            model_output: tensor(model_output, "model_output")?,
            sample: tensor(sample, "sample")?,
            noise: tensor_opt(noise, "noise")?,
            x0: tensor(x0, "x0 buffer")?,
            prev: tensor(prev, "output buffer")?,
        };
        let from = match philox {
            Some((seed, offset)) => NoiseFrom::Philox { seed, offset },
            None => NoiseFrom::Buffer,
        };
        let lc = self.inner.step(step_index, clip, from, io)?;
        run(py, &lc, lc.tensors(), stream)
    }
}
