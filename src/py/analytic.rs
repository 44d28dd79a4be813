//! Bindings of Analytic-DPM: the Γ batch reduction, the optimal trajectory and `_AnalyticCore`,
//! built by `AnalyticDPMScheduler.set_timesteps`, which holds every step's scalars and runs the
//! fused step.

use numpy::{IntoPyArray, PyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::tensor::{mixed_devices, Device, TensorRef};
use crate::cpu::analytic_step::{fused_analytic_step, AnalyticIo, Noise, PassScalars};
use crate::cpu::dtype::DType;
use crate::cpu::gamma::{batch_sums, per_sample_sq_norms};
use crate::cuda::analytic_step::{analytic_step, AnalyticStepBuffers, KernelNoise};
use crate::cuda::emulate::EmulatedLauncher;
use crate::error::RdiffError;
use crate::schedule::analytic_dpm::{eps_conversion, plan, AnalyticOptions, AnalyticStep, Form};
use crate::schedule::dpm_solver::PredictionType;
use crate::schedule::trajectory::{optimal_trajectory, trajectory_cost};
use crate::with_elem;

fn cpu_only(ts: &[Option<TensorRef>]) -> PyResult<()> {
    if ts.iter().flatten().any(|t| t.device != Device::Cpu) {
        return Err(crate::cuda::no_kernel("Analytic-DPM").into());
    }
    Ok(())
}

/// Σv, Σv² (f64 and exact fixed point, scale 2⁶⁴) of v = ‖p·x + q·mo‖²/d over a batch:
/// returns (count, sum, sum_sq, sum_fixed, sum_sq_fixed).
#[pyfunction]
#[pyo3(name = "_gamma_batch_sums", signature = (mo, x, batch, mo_stride, per_sample, p, q))]
#[allow(clippy::too_many_arguments)]
pub fn gamma_batch_sums(
    py: Python<'_>,
    mo: TensorRef,
    x: Option<TensorRef>,
    batch: usize,
    mo_stride: usize,
    per_sample: usize,
    p: f64,
    q: f64,
) -> PyResult<(u64, f64, f64, u128, u128)> {
    if batch == 0 || per_sample == 0 || mo_stride < per_sample {
        return Err(PyValueError::new_err(format!(
            "model output: bad layout (batch {batch}, {per_sample} elements per sample, \
             row stride {mo_stride})"
        )));
    }
    mo.expect_len_of("model output", &[batch, mo_stride])?;
    if p != 0.0 {
        let xt = x.ok_or_else(|| PyValueError::new_err("x: needed for this prediction type"))?;
        xt.expect_len_of("x", &[batch, per_sample])?;
    }
    cpu_only(&[Some(mo), x])?;
    let x = if p != 0.0 { x } else { None };
    let values = py.detach(|| {
        with_elem!(mo.dtype, D, {
            match x {
                // SAFETY: lengths checked above; the Python layer keeps both buffers alive
                // and contiguous for the call, and nobody writes them.
                Some(x) => with_elem!(x.dtype, S, unsafe {
                    per_sample_sq_norms::<D, S>(
                        mo.slice::<D>(),
                        mo_stride,
                        Some(x.slice::<S>()),
                        per_sample,
                        batch,
                        p as f32,
                        q as f32,
                    )
                }),
                // SAFETY: as for the arm above (the model output alone).
                None => unsafe {
                    per_sample_sq_norms::<D, f32>(
                        mo.slice::<D>(),
                        mo_stride,
                        None,
                        per_sample,
                        batch,
                        p as f32,
                        q as f32,
                    )
                },
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
        return Err(PyValueError::new_err(
            "trajectory_cost: gamma must have N values and timesteps lie in [0, N)",
        ));
    }
    Ok(trajectory_cost(&gamma, &alphas_cumprod, &timesteps))
}

/// Every step's scalars for one sampling loop.
#[pyclass(name = "_AnalyticCore", module = "rdiff._rdiff", frozen)]
pub struct AnalyticCore {
    alphas_cumprod: Vec<f64>,
    timesteps: Vec<usize>,
    prediction: PredictionType,
    steps: Vec<AnalyticStep>,
}

#[pymethods]
impl AnalyticCore {
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
        eps_conversion(prediction, 0.5)?;
        let mut steps = plan(&alphas_cumprod, &timesteps, &gamma, &opts)?;
        if let Some(v) = variances {
            if v.len() != steps.len() {
                return Err(PyValueError::new_err(format!(
                    "variances: {} values for {} steps",
                    v.len(),
                    steps.len()
                )));
            }
            if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
                return Err(PyValueError::new_err(format!(
                    "variances: must be finite and ≥ 0, got {bad}"
                )));
            }
            for (st, x) in steps.iter_mut().zip(v) {
                st.sigma2 = x;
            }
        }
        Ok(Self {
            alphas_cumprod,
            timesteps,
            prediction,
            steps,
        })
    }

    /// σ² of every step (float64, aligned with the timesteps).
    #[getter]
    fn variances<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        let v: Vec<f64> = self.steps.iter().map(|s| s.sigma2).collect();
        v.into_pyarray(py)
    }

    /// λ² of every step (float64).
    #[getter]
    fn lambda2<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        let v: Vec<f64> = self.steps.iter().map(|s| s.lambda2).collect();
        v.into_pyarray(py)
    }

    /// One step's scalars: (c_x0, c_x, c_eps, sigma2).
    fn coefficients(&self, step_index: usize) -> PyResult<[f64; 4]> {
        let st = self.step_at(step_index)?;
        Ok([st.c_x0, st.c_x, st.c_eps, st.sigma2])
    }

    /// One fused step: writes x̂₀ into `x0` and the new sample into `prev`. The noise is the
    /// f32 buffer `noise` when given, else element i of the Philox stream
    /// `philox = (seed, offset)` (`rdiff.randn`), drawn in the pass. CPU tensors run the CPU
    /// loop; CUDA tensors the kernel on `stream` (the caller's `cudaStream_t`; 0 = default).
    #[pyo3(signature = (step_index, mo, x, noise, x0, prev, batch, mo_stride, clip,
        philox=None, stream=None))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        step_index: usize,
        mo: TensorRef,
        x: TensorRef,
        noise: Option<TensorRef>,
        x0: TensorRef,
        prev: TensorRef,
        batch: usize,
        mo_stride: usize,
        clip: Option<(f64, f64)>,
        philox: Option<(u64, u64)>,
        stream: Option<usize>,
    ) -> PyResult<()> {
        let st = *self.step_at(step_index)?;
        if batch == 0 || x.numel % batch != 0 {
            return Err(PyValueError::new_err(format!(
                "sample: {} elements do not split into a batch of {batch}",
                x.numel
            )));
        }
        let per_sample = x.numel / batch;
        if mo_stride < per_sample {
            return Err(PyValueError::new_err(format!(
                "model_output: {mo_stride} elements per sample, fewer than the sample's {per_sample}"
            )));
        }
        mo.expect_len_of("model_output", &[batch, mo_stride])?;
        let (noise, philox) = if st.sigma2 > 0.0 {
            match (noise, philox) {
                (Some(n), _) => {
                    n.expect_len("noise", x.numel)?;
                    n.expect_dtype("noise", DType::F32)?;
                    (Some(n), None)
                }
                (None, Some(p)) => (None, Some(p)),
                (None, None) => {
                    return Err(PyValueError::new_err(
                        "noise: this step has a positive variance and needs noise (a buffer \
                         or a Philox seed)",
                    ))
                }
            }
        } else {
            (None, None)
        };
        for (t, what) in [(x0, "x0 buffer"), (prev, "output buffer")] {
            t.expect_len(what, x.numel)?;
            t.expect_dtype(what, mo.dtype)?;
        }
        if let Some((lo, hi)) = clip {
            if matches!(
                lo.partial_cmp(&hi),
                None | Some(std::cmp::Ordering::Greater)
            ) {
                return Err(PyValueError::new_err(format!(
                    "clip: expected lo ≤ hi, got ({lo}, {hi})"
                )));
            }
        }
        let ac_t = self.alphas_cumprod[self.timesteps[step_index]];
        let (p, q) = eps_conversion(self.prediction, ac_t)?;
        let sc = PassScalars::new(&st, p, q, clip);
        let all = [Some(mo), Some(x), noise, Some(x0), Some(prev)];
        let kernel_buffers = || AnalyticStepBuffers {
            mo: mo.buf(),
            mo_stride,
            x: x.buf(),
            noise: match (noise, philox) {
                (Some(n), _) => KernelNoise::Given(n.ptr as u64),
                (None, Some((seed, offset))) => KernelNoise::Philox { seed, offset },
                (None, None) => KernelNoise::None,
            },
            x0: x0.buf(),
            prev: prev.buf(),
            batch,
            per_sample,
        };
        if all.iter().flatten().any(|t| t.device != Device::Cpu) {
            let Device::Cuda(ordinal) = x.device else {
                return Err(mixed_devices());
            };
            if all.iter().flatten().any(|t| t.device != x.device) {
                return Err(mixed_devices());
            }
            return Ok(run_cuda_analytic(
                py,
                ordinal,
                stream.unwrap_or(0),
                &kernel_buffers(),
                &sc,
            )?);
        }
        if let Some(max_blocks) = super::cuda::emulated_backend() {
            let bufs = kernel_buffers();
            return Ok(py.detach(|| analytic_step(&EmulatedLauncher { max_blocks }, &bufs, &sc))?);
        }
        py.detach(|| {
            with_elem!(mo.dtype, D, {
                with_elem!(x.dtype, S, {
                    // SAFETY: lengths and dtypes checked above; the Python layer keeps every
                    // buffer alive and contiguous for the call and allocates x0/prev fresh.
                    unsafe {
                        let noise = match (noise, philox) {
                            (Some(t), _) => Noise::Given(t.slice::<f32>()),
                            (None, Some((seed, offset))) => Noise::Philox { seed, offset },
                            (None, None) => Noise::None,
                        };
                        fused_analytic_step(
                            AnalyticIo {
                                mo: mo.slice::<D>(),
                                mo_stride,
                                x: x.slice::<S>(),
                                noise,
                                x0: x0.slice_mut::<D>(),
                                prev: prev.slice_mut::<D>(),
                                per_sample,
                            },
                            &sc,
                        )
                    }
                })
            })
        });
        Ok(())
    }
}

/// The step on a CUDA device: availability first (CudaUnavailableError, never a panic), then
/// the kernel on the caller's stream, asynchronously: no allocation, no synchronisation.
#[cfg(feature = "cuda")]
fn run_cuda_analytic(
    py: Python<'_>,
    ordinal: i32,
    stream: usize,
    bufs: &AnalyticStepBuffers,
    sc: &PassScalars,
) -> Result<(), RdiffError> {
    use crate::cuda::context::{device, StreamLauncher};
    if crate::cuda::available_cached().is_err() {
        return Err(crate::cuda::no_kernel("the Analytic-DPM step"));
    }
    py.detach(|| {
        let launcher = StreamLauncher {
            device: device(ordinal)?,
            stream,
        };
        analytic_step(&launcher, bufs, sc)
    })
}

#[cfg(not(feature = "cuda"))]
fn run_cuda_analytic(
    _py: Python<'_>,
    _ordinal: i32,
    _stream: usize,
    _bufs: &AnalyticStepBuffers,
    _sc: &PassScalars,
) -> Result<(), RdiffError> {
    Err(crate::cuda::no_kernel("the Analytic-DPM step"))
}

impl AnalyticCore {
    fn step_at(&self, step_index: usize) -> PyResult<&AnalyticStep> {
        self.steps.get(step_index).ok_or_else(|| {
            PyValueError::new_err(format!(
                "step index {step_index} is past the end of the loop ({} steps)",
                self.steps.len()
            ))
        })
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gamma_batch_sums, m)?)?;
    m.add_function(wrap_pyfunction!(optimal_trajectory_py, m)?)?;
    m.add_function(wrap_pyfunction!(trajectory_cost_py, m)?)?;
    m.add_class::<AnalyticCore>()?;
    Ok(())
}
