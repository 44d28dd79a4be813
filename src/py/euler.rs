//! `_Euler`: the core of `rdiff.EulerDiscreteScheduler`, `rdiff.EulerAncestralDiscreteScheduler`
//! and `rdiff.FlowMatchEulerDiscreteScheduler`; `_euler_schedule`, `_euler_schedule_from_sigmas`,
//! `_flow_match_training_sigmas` and `_flow_match_schedule`, their `set_timesteps`.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;

use super::run;
use super::spacing::inference_steps;
use super::tensor::{tensor, tensor_opt};
use crate::error::RdiffError;
use crate::schedule::check_steps;
use crate::schedule::euler_spacing::{
    euler_schedule as schedule_n, euler_schedule_from_sigmas as schedule_sigmas,
    flow_match_schedule as flow_schedule, flow_match_training_sigmas as flow_training,
    EulerSpacing, FlowShift, FlowSpacing, Interpolation, SigmaSchedule,
};
use crate::schedule::spacing::{FinalSigma, SigmaKind, TimestepSpacing};
use crate::step::euler::{Euler, EulerIo, EulerKind, HeunIo};

type Schedule<'py> = (Bound<'py, PyArray1<f32>>, Bound<'py, PyArray1<f32>>);

fn out<'py>(py: Python<'py>, s: SigmaSchedule) -> Schedule<'py> {
    (s.timesteps.into_pyarray(py), s.sigmas.into_pyarray(py))
}

fn sigma_kind(name: &str) -> PyResult<SigmaKind> {
    let kind = SigmaKind::parse(name, 1.0)?;
    if matches!(kind, SigmaKind::Lu | SigmaKind::Flow { .. }) {
        return Err(PyErr::from(RdiffError::Value(format!(
            "sigma_kind: {name:?} is not available here; expected \"default\", \"karras\", \
             \"exponential\" or \"beta\""
        ))));
    }
    Ok(kind)
}

/// The per-loop constants of the Euler family's step.
#[pyclass(name = "_Euler", module = "rdiff._rdiff", frozen)]
pub struct PyEuler {
    inner: Euler,
}

#[pymethods]
impl PyEuler {
    /// `sigmas`: the loop's σ (n + 1 values; Heun's interleaved); `kind`: "euler",
    /// "ancestral", "flow" (`stochastic`: the flow scheduler's `stochastic_sampling`) or
    /// "heun" or "kdpm2" (`sigmas_interpol`: its interleaved log-midpoints);
    /// `clip_sample_range`: x₀ clamped to ±range before the update.
    #[new]
    #[pyo3(signature = (sigmas, prediction_type, kind, stochastic=false, clip_sample_range=None,
        sigmas_interpol=None, sigmas_down=None, sigmas_up=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        sigmas: Vec<f64>,
        prediction_type: &str,
        kind: &str,
        stochastic: bool,
        clip_sample_range: Option<f64>,
        sigmas_interpol: Option<Vec<f64>>,
        sigmas_down: Option<Vec<f64>>,
        sigmas_up: Option<Vec<f64>>,
    ) -> PyResult<Self> {
        let kind = match kind {
            "euler" => EulerKind::Euler,
            "ancestral" => EulerKind::Ancestral,
            "flow" => EulerKind::Flow { stochastic },
            "heun" => EulerKind::Heun,
            "kdpm2" => EulerKind::Kdpm2,
            "kdpm2_ancestral" => EulerKind::Kdpm2Ancestral,
            other => {
                return Err(PyErr::from(RdiffError::Value(format!(
                    "kind: unknown {other:?}; expected \"euler\", \"ancestral\", \"flow\", \
                     \"heun\", \"kdpm2\" or \"kdpm2_ancestral\""
                ))))
            }
        };
        let mut inner = Euler::new(sigmas, prediction_type, kind)?;
        if let Some(range) = clip_sample_range {
            inner = inner.with_clip(range)?;
        }
        if let Some(interpol) = sigmas_interpol {
            inner = inner.with_interpol(interpol)?;
        } else if matches!(kind, EulerKind::Kdpm2 | EulerKind::Kdpm2Ancestral) {
            return Err(PyErr::from(RdiffError::Value(
                "sigmas_interpol: the KDPM2 step needs its midpoint σ".into(),
            )));
        }
        match (sigmas_down, sigmas_up) {
            (Some(down), Some(up)) => inner = inner.with_ancestral(down, up)?,
            _ if kind == EulerKind::Kdpm2Ancestral => {
                return Err(PyErr::from(RdiffError::Value(
                    "sigmas_down, sigmas_up: the KDPM2 ancestral step needs both".into(),
                )))
            }
            _ => {}
        }
        Ok(Self { inner })
    }

    /// The churn γ of step `step_index` (0 outside [s_tmin, s_tmax]).
    fn churn(&self, step_index: usize, s_churn: f64, s_tmin: f64, s_tmax: f64) -> PyResult<f64> {
        Ok(self.inner.churn(step_index, s_churn, s_tmin, s_tmax)?)
    }

    /// (p, q, a, c, noise) of step `step_index`: x₀ = p·x + q·mo, prev = a·x + c·mo + noise·n.
    #[pyo3(signature = (step_index, gamma=0.0))]
    fn coefficients(&self, step_index: usize, gamma: f64) -> PyResult<(f64, f64, f64, f64, f64)> {
        let c = self.inner.coefficients(step_index, gamma)?;
        Ok((c.p, c.q, c.a, c.c, c.noise))
    }

    /// One fused step: the new sample into `prev` and, if given, x₀ into `x0` (both shaped
    /// like `sample`, in the model output's dtype); `noise` (float32) for the noisy kinds;
    /// `sample` is the churned sample when γ > 0.
    #[pyo3(signature = (step_index, gamma=0.0, *, model_output, sample, prev, x0=None,
        noise=None, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        step_index: usize,
        gamma: f64,
        model_output: &Bound<'_, PyAny>,
        sample: &Bound<'_, PyAny>,
        prev: &Bound<'_, PyAny>,
        x0: Option<&Bound<'_, PyAny>>,
        noise: Option<&Bound<'_, PyAny>>,
        stream: usize,
    ) -> PyResult<()> {
        let io = EulerIo {
            model_output: tensor(model_output, "model_output")?,
            sample: tensor(sample, "sample")?,
            noise: tensor_opt(noise, "noise")?,
            x0: tensor_opt(x0, "pred_original_sample buffer")?,
            prev: tensor(prev, "output buffer")?,
        };
        let lc = self.inner.step(step_index, gamma, io)?;
        run(py, &lc, lc.tensors(), stream)
    }

    /// The second stage (Heun, KDPM2, KDPM2 ancestral) at `step_index`: `sample` is x₂ (the
    /// first stage's result) and `first_x0` the first stage's x₀, both in the model output's
    /// dtype, `first_sample` the first stage's sample (any float dtype); `gamma` the first
    /// stage's churn; `noise` (float32) KDPM2 ancestral's; writes x₀ and the new sample.
    #[pyo3(signature = (step_index, gamma=0.0, *, model_output, sample, first_sample, first_x0,
        x0, prev, noise=None, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn second_stage(
        &self,
        py: Python<'_>,
        step_index: usize,
        gamma: f64,
        model_output: &Bound<'_, PyAny>,
        sample: &Bound<'_, PyAny>,
        first_sample: &Bound<'_, PyAny>,
        first_x0: &Bound<'_, PyAny>,
        x0: &Bound<'_, PyAny>,
        prev: &Bound<'_, PyAny>,
        noise: Option<&Bound<'_, PyAny>>,
        stream: usize,
    ) -> PyResult<()> {
        let io = HeunIo {
            model_output: tensor(model_output, "model_output")?,
            sample: tensor(sample, "sample")?,
            first_sample: tensor(first_sample, "first-stage sample")?,
            first_x0: tensor(first_x0, "first-stage pred_original_sample")?,
            x0: tensor(x0, "pred_original_sample buffer")?,
            prev: tensor(prev, "output buffer")?,
            noise: tensor_opt(noise, "noise")?,
        };
        let lc = self.inner.second_stage(step_index, gamma, io)?;
        run(py, &lc, lc.tensors(), stream)
    }
}

/// `EulerDiscreteScheduler.set_timesteps(num_inference_steps)` (or custom `timesteps`) over
/// diffusers' float32 σ table and its log (shape (N,)). Returns float32 `(timesteps, sigmas)`.
#[pyfunction]
#[pyo3(name = "_euler_schedule", signature = (table, log_table, num_inference_steps=None,
    timesteps=None, spacing="linspace", steps_offset=0, interpolation="linear",
    sigma_kind="default", sigma_min=None, sigma_max=None, final_sigma="zero",
    continuous=false))]
#[allow(clippy::too_many_arguments)]
pub fn euler_schedule<'py>(
    py: Python<'py>,
    table: PyReadonlyArray1<'py, f32>,
    log_table: PyReadonlyArray1<'py, f32>,
    num_inference_steps: Option<i64>,
    timesteps: Option<Vec<f32>>,
    spacing: &str,
    steps_offset: i64,
    interpolation: &str,
    sigma_kind: &str,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    final_sigma: &str,
    continuous: bool,
) -> PyResult<Schedule<'py>> {
    let opts = EulerSpacing {
        spacing: TimestepSpacing::parse(spacing)?,
        steps_offset,
        interpolation: Interpolation::parse(interpolation)?,
        sigma_kind: self::sigma_kind(sigma_kind)?,
        sigma_min,
        sigma_max,
        final_sigma: FinalSigma::parse(final_sigma)?,
        continuous,
    };
    let n = match (&timesteps, num_inference_steps) {
        (Some(t), _) => t.len(),
        (None, Some(n)) => inference_steps(n)?,
        (None, None) => {
            return Err(PyErr::from(RdiffError::Value(
                "set_timesteps: pass num_inference_steps, timesteps or sigmas".into(),
            )))
        }
    };
    let s = schedule_n(
        table.as_slice()?,
        log_table.as_slice()?,
        n,
        timesteps.as_deref(),
        &opts,
    )?;
    Ok(out(py, s))
}

/// `EulerDiscreteScheduler.set_timesteps(sigmas=...)`: the caller's σ and their timesteps.
#[pyfunction]
#[pyo3(name = "_euler_schedule_from_sigmas", signature = (log_table, sigmas, continuous=false))]
pub fn euler_schedule_from_sigmas<'py>(
    py: Python<'py>,
    log_table: PyReadonlyArray1<'py, f32>,
    sigmas: Vec<f64>,
    continuous: bool,
) -> PyResult<Schedule<'py>> {
    Ok(out(
        py,
        schedule_sigmas(log_table.as_slice()?, &sigmas, continuous)?,
    ))
}

/// The training σ of `FlowMatchEulerDiscreteScheduler` (float32, shape (N,), descending),
/// statically shifted by `shift` (None: dynamic shifting, unshifted).
#[pyfunction]
#[pyo3(name = "_flow_match_training_sigmas", signature = (num_train_timesteps, shift=None))]
pub fn flow_match_training_sigmas<'py>(
    py: Python<'py>,
    num_train_timesteps: usize,
    shift: Option<f64>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let n = check_steps("num_train_timesteps", num_train_timesteps)?;
    if n < 1 {
        return Err(PyErr::from(RdiffError::Value(
            "num_train_timesteps: must be at least 1".into(),
        )));
    }
    Ok(flow_training(n, shift).into_pyarray(py))
}

/// `FlowMatchEulerDiscreteScheduler.set_timesteps`: `shift_type` "static" (`shift`),
/// "exponential" or "linear" (`shift` = μ). Returns float32 `(timesteps, sigmas)`.
#[pyfunction]
#[pyo3(name = "_flow_match_schedule", signature = (num_inference_steps, sigmas, timesteps,
    num_train_timesteps, shift_type, shift, shift_terminal, sigma_kind, invert, sigma_min,
    sigma_max))]
#[allow(clippy::too_many_arguments)]
pub fn flow_match_schedule<'py>(
    py: Python<'py>,
    num_inference_steps: Option<i64>,
    sigmas: Option<Vec<f64>>,
    timesteps: Option<Vec<f64>>,
    num_train_timesteps: usize,
    shift_type: &str,
    shift: f64,
    shift_terminal: Option<f64>,
    sigma_kind: &str,
    invert: bool,
    sigma_min: f64,
    sigma_max: f64,
) -> PyResult<Schedule<'py>> {
    let shift = match shift_type {
        "static" => FlowShift::Static(shift),
        "exponential" => FlowShift::Exponential(shift),
        "linear" => FlowShift::Linear(shift),
        other => {
            return Err(PyErr::from(RdiffError::Value(format!(
                "time_shift_type: unknown {other:?}; expected \"exponential\" or \"linear\""
            ))))
        }
    };
    let opts = FlowSpacing {
        num_train: check_steps("num_train_timesteps", num_train_timesteps)?,
        shift,
        shift_terminal,
        sigma_kind: self::sigma_kind(sigma_kind)?,
        invert,
        sigma_min,
        sigma_max,
    };
    let n = match (&sigmas, &timesteps, num_inference_steps) {
        (Some(s), _, _) => s.len(),
        (None, Some(t), _) => t.len(),
        (None, None, Some(n)) => inference_steps(n)?,
        (None, None, None) => {
            return Err(PyErr::from(RdiffError::Value(
                "set_timesteps: pass num_inference_steps, sigmas or timesteps".into(),
            )))
        }
    };
    let s = flow_schedule(n, sigmas.as_deref(), timesteps.as_deref(), &opts)?;
    Ok(out(py, s))
}
