//! `_rdiff._diffusers_schedule`: diffusers' `set_timesteps` arithmetic for the scheduler classes.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;

use crate::error::RdiffError;

use crate::schedule::check_steps;
use crate::schedule::spacing::{
    diffusers_karras, diffusers_schedule as schedule_n, diffusers_schedule_from_timesteps,
    sigma_to_t, FinalSigma, SigmaKind, SpacingOptions, TimestepSpacing, UniPcSpacing,
};

type Schedule<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f64>>);

/// What diffusers' `DPMSolverMultistepScheduler.set_timesteps` computes.
///
/// `alphas_cumprod` (float64, shape (N,)) is the scheduler's ᾱ with the zero-SNR fix applied.
/// Pass exactly one of `num_inference_steps` and `timesteps`. `sigma_table` (two float32
/// arrays of shape (N,): σ and log σ as the caller's framework computes them, as diffusers
/// does) replaces rdiff's correctly rounded table. Returns `(timesteps, sigmas)`: int64 of
/// shape (n,) and float64 of shape (n + 1,) holding float32 values.
#[pyfunction]
#[pyo3(name = "_diffusers_schedule", signature = (alphas_cumprod, num_inference_steps=None,
    timesteps=None, spacing="linspace", steps_offset=0, sigma_kind="default", flow_shift=1.0,
    final_sigma="zero", lambda_min_clipped=f64::NEG_INFINITY, round_timesteps=true,
    sigma_table=None, unipc=false, flow_sigmas=None, shift_terminal=None, karras_flow=false,
    sigma_min=None, sigma_max=None))]
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
    sigma_table: Option<(PyReadonlyArray1<'py, f32>, PyReadonlyArray1<'py, f32>)>,
    unipc: bool,
    flow_sigmas: Option<Vec<f64>>,
    shift_terminal: Option<f64>,
    karras_flow: bool,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
) -> PyResult<Schedule<'py>> {
    let opts = SpacingOptions {
        spacing: TimestepSpacing::parse(spacing)?,
        steps_offset,
        sigma_kind: SigmaKind::parse(sigma_kind, flow_shift)?,
        final_sigma: FinalSigma::parse(final_sigma)?,
        lambda_min_clipped,
        round_timesteps,
        sigma_table: sigma_table.map(|(s, l)| (s.as_array().to_vec(), l.as_array().to_vec())),
        unipc: unipc.then_some(UniPcSpacing {
            flow_sigmas,
            shift_terminal,
            karras_flow,
            sigma_min,
            sigma_max,
        }),
    };
    let ac = alphas_cumprod.as_array().to_vec();
    let out = match (num_inference_steps, timesteps) {
        (Some(n), None) => {
            let n = inference_steps(n)?;
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

/// A caller's `num_inference_steps`: at least 1 and at most `MAX_STEPS`.
pub(super) fn inference_steps(n: i64) -> PyResult<usize> {
    if n < 1 {
        return Err(PyErr::from(RdiffError::Value(format!(
            "num_inference_steps: must be at least 1, got {n}"
        ))));
    }
    Ok(check_steps("num_inference_steps", n as usize)?)
}

/// diffusers' `_sigma_to_t(sigma, log_sigmas)`: the fractional timestep of each σ (float64,
/// shape (n,)) in the ascending log σ table (float32 or float64, shape (N,), N ≥ 2; a float32
/// table differences in float32, as numpy does).
#[pyfunction]
#[pyo3(name = "_sigma_to_t")]
pub fn sigma_to_t_py<'py>(
    py: Python<'py>,
    sigma: PyReadonlyArray1<'py, f64>,
    log_sigmas: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let sigma = sigma.as_array();
    let out = if let Ok(t) = log_sigmas.extract::<PyReadonlyArray1<'py, f32>>() {
        on_table(&t.as_array().to_vec(), sigma.iter())?
    } else if let Ok(t) = log_sigmas.extract::<PyReadonlyArray1<'py, f64>>() {
        on_table(&t.as_array().to_vec(), sigma.iter())?
    } else {
        return Err(
            RdiffError::Type("log_sigmas: expected a 1-d float32 or float64 array".into()).into(),
        );
    };
    Ok(out.into_pyarray(py))
}

/// `sigma_to_t` of every σ on a table of at least two entries.
fn on_table<'a, T>(table: &[T], sigma: impl Iterator<Item = &'a f64>) -> PyResult<Vec<f64>>
where
    T: Copy + Into<f64> + std::ops::Sub<Output = T>,
{
    if table.len() < 2 {
        return Err(RdiffError::Value(format!(
            "log_sigmas: needs at least 2 entries, got {}",
            table.len()
        ))
        .into());
    }
    Ok(sigma.map(|&s| sigma_to_t(table, s)).collect())
}

/// diffusers' `_convert_to_karras` arithmetic: `n` Karras σ (float64) from `sigma_max` down
/// to `sigma_min`, ρ = `rho`, on numpy's `linspace(0, 1, n)` ramp.
#[pyfunction]
#[pyo3(name = "_diffusers_karras", signature = (n, sigma_min, sigma_max, rho=7.0))]
pub fn diffusers_karras_py(
    py: Python<'_>,
    n: i64,
    sigma_min: f64,
    sigma_max: f64,
    rho: f64,
) -> PyResult<Bound<'_, PyArray1<f64>>> {
    let n = check_steps("num_inference_steps", n.max(0) as usize)?;
    Ok(diffusers_karras(n, sigma_min, sigma_max, rho).into_pyarray(py))
}
