//! `_rdiff._diffusers_schedule`: diffusers' `set_timesteps` arithmetic for the scheduler classes.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;

use crate::error::RdiffError;

use crate::schedule::check_steps;
use crate::schedule::spacing::{
    diffusers_schedule as schedule_n, diffusers_schedule_from_timesteps, FinalSigma, SigmaKind,
    SpacingOptions, TimestepSpacing,
};

type Schedule<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f64>>);

/// What diffusers' `DPMSolverMultistepScheduler.set_timesteps` computes.
///
/// `alphas_cumprod` (float64, shape (N,)) is the scheduler's ᾱ with the zero-SNR fix applied.
/// Pass exactly one of `num_inference_steps` and `timesteps`. Returns `(timesteps, sigmas)`:
/// int64 of shape (n,) and float64 of shape (n + 1,) holding float32 values.
#[pyfunction]
#[pyo3(name = "_diffusers_schedule", signature = (alphas_cumprod, num_inference_steps=None,
    timesteps=None, spacing="linspace", steps_offset=0, sigma_kind="default", flow_shift=1.0,
    final_sigma="zero", lambda_min_clipped=f64::NEG_INFINITY, round_timesteps=true))]
#[allow(clippy::too_many_arguments)]
pub fn diffusers_schedule<'py>(
    py: Python<'py>,
    alphas_cumprod: PyReadonlyArray1<'py, f64>,
    num_inference_steps: Option<i64>,
    timesteps: Option<Vec<i64>>,
    spacing: &str,
    steps_offset: i64,
    sigma_kind: &str,
    flow_shift: f64,
    final_sigma: &str,
    lambda_min_clipped: f64,
    round_timesteps: bool,
) -> PyResult<Schedule<'py>> {
    let opts = SpacingOptions {
        spacing: TimestepSpacing::parse(spacing)?,
        steps_offset,
        sigma_kind: SigmaKind::parse(sigma_kind, flow_shift)?,
        final_sigma: FinalSigma::parse(final_sigma)?,
        lambda_min_clipped,
        round_timesteps,
    };
    let ac = alphas_cumprod.as_array().to_vec();
    let out = match (num_inference_steps, timesteps) {
        (Some(n), None) => {
            if n < 1 {
                return Err(PyErr::from(RdiffError::Value(format!(
                    "num_inference_steps: must be at least 1, got {n}"
                ))));
            }
            let n = check_steps("num_inference_steps", n as usize)?;
            py.detach(|| schedule_n(&ac, n, &opts))?
        }
        (None, Some(ts)) => py.detach(|| diffusers_schedule_from_timesteps(&ac, &ts, &opts))?,
        _ => {
            return Err(PyErr::from(RdiffError::Value(
                "num_inference_steps: pass exactly one of `num_inference_steps` or `timesteps`"
                    .into(),
            )))
        }
    };
    Ok((out.timesteps.into_pyarray(py), out.sigmas.into_pyarray(py)))
}
