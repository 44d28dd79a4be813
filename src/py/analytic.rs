//! Bindings of Analytic-DPM's statistics (`rdiff.analytic`): the Γ batch reduction, the
//! optimal trajectory and its cost.

use numpy::{IntoPyArray, PyArray1};
use pyo3::prelude::*;

use super::tensor::{tensor, tensor_opt};
use crate::cpu::gamma::{batch_sums, per_sample_sq_norms};
use crate::error::RdiffError;
use crate::schedule::prediction::PredictionType;
use crate::schedule::trajectory::{optimal_trajectory, trajectory_cost};
use crate::tensor::Device;
use crate::with_elem;

/// Σv, Σv² (f64 and exact fixed point, scale 2⁶⁴) of v = ‖ε‖²/d over a batch of model
/// outputs `mo` (CPU; rows may carry extra channels, of which the first `per_sample` count),
/// converted to ε from `prediction_type` at ᾱ_t = `alpha_cumprod` (x_t is needed for the
/// sample and v-prediction types): (count, sum, sum_sq, sum_fixed, sum_sq_fixed).
#[pyfunction]
#[pyo3(name = "_gamma_batch_sums", signature = (mo, x, per_sample, prediction_type,
    alpha_cumprod))]
pub fn gamma_batch_sums(
    py: Python<'_>,
    mo: &Bound<'_, PyAny>,
    x: Option<&Bound<'_, PyAny>>,
    per_sample: usize,
    prediction_type: &str,
    alpha_cumprod: f64,
) -> PyResult<(u64, f64, f64, u128, u128)> {
    let mo = tensor(mo, "model output")?;
    let (p, q) = PredictionType::parse(prediction_type)?.eps_at(alpha_cumprod, "estimate_gamma")?;
    let x = if p != 0.0 {
        Some(tensor_opt(x, "x_t")?.ok_or_else(|| {
            PyErr::from(RdiffError::Value(
                "x_t: needed for this prediction type".into(),
            ))
        })?)
    } else {
        None
    };
    let batch = mo.batch();
    if batch == 0 || per_sample == 0 || mo.numel % batch != 0 || mo.numel / batch < per_sample {
        return Err(PyErr::from(RdiffError::Value(format!(
            "model output: shape {:?} does not hold a batch of {batch} samples of {per_sample} \
             elements",
            mo.shape
        ))));
    }
    let mo_stride = mo.numel / batch;
    if let Some(x) = &x {
        x.expect_numel("x_t", batch * per_sample)?;
    }
    if mo.device != Device::Cpu || x.as_ref().is_some_and(|x| x.device != Device::Cpu) {
        return Err(RdiffError::Value(
            "model output: the Γ reduction runs on CPU tensors (rdiff.estimate_gamma copies \
             CUDA outputs to the host)"
                .into(),
        )
        .into());
    }
    let values = py.detach(|| {
        with_elem!(mo.dtype, D, {
            // SAFETY: lengths checked above; both buffers are the caller's, alive for the
            // call, on the host, and nobody writes them.
            let mo_s = unsafe { mo.slice::<D>() };
            match &x {
                Some(x) => with_elem!(x.dtype, S, {
                    // SAFETY: as above.
                    let xs = unsafe { x.slice::<S>() };
                    per_sample_sq_norms::<D, S>(
                        mo_s,
                        mo_stride,
                        Some(xs),
                        per_sample,
                        batch,
                        p as f32,
                        q as f32,
                    )
                }),
                None => per_sample_sq_norms::<D, f32>(
                    mo_s, mo_stride, None, per_sample, batch, p as f32, q as f32,
                ),
            }
        })
    });
    let s = batch_sums(&values)?;
    Ok((s.count, s.sum, s.sum_sq, s.sum_fixed, s.sum_sq_fixed))
}

/// The optimal trajectory (0-based timesteps, descending); see `schedule::trajectory`.
#[pyfunction]
#[pyo3(name = "_optimal_trajectory")]
pub fn optimal_trajectory_py<'py>(
    py: Python<'py>,
    gamma: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    num_steps: usize,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let ts = py.detach(|| optimal_trajectory(&gamma, &alphas_cumprod, num_steps))?;
    let v: Vec<i64> = ts.into_iter().map(|t| t as i64).collect();
    Ok(v.into_pyarray(py))
}

/// Σ log(1 − (1 − ᾱ_t/ᾱ_s)·Γ_t/β̄_t) over consecutive (t, s) of a descending trajectory.
#[pyfunction]
#[pyo3(name = "_trajectory_cost")]
pub fn trajectory_cost_py(
    gamma: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    timesteps: Vec<usize>,
) -> PyResult<f64> {
    let n = alphas_cumprod.len();
    if gamma.len() != n || timesteps.iter().any(|&t| t >= n) {
        return Err(PyErr::from(RdiffError::Value(
            "trajectory_cost: gamma must have N values and timesteps lie in [0, N)".into(),
        )));
    }
    Ok(trajectory_cost(&gamma, &alphas_cumprod, &timesteps))
}
