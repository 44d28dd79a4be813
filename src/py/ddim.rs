//! Bindings of the DDIM and DDPM steps: `_DdimCore`, built by the Python schedulers, computes
//! each step's coefficients and runs the fused loop; `_ddim_timesteps` is diffusers' spacing.

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::tensor::{mixed_devices, Device, TensorRef};
use crate::cpu::ddim_step::{ddim_step, Clip, DdimIo};
use crate::cpu::quantile::threshold_bounds;
use crate::cuda::ddim_step::{ddim_step as ddim_kernel, DdimStepBuffers, KernelClip};
use crate::cuda::emulate::EmulatedLauncher;
use crate::error::RdiffError;
use crate::schedule::check_steps;
use crate::schedule::ddim::{
    alpha_prod_at, ddim_coefficients, ddim_timesteps as spacing, ddpm_coefficients,
    DdimCoefficients, NoiseScale, Spacing, VarianceType,
};
use crate::schedule::dpm_solver::PredictionType;
use crate::with_elem;

/// How x₀ is bounded: nothing, clip_sample's range, or dynamic thresholding (ratio, max).
#[derive(Clone, Copy, Debug)]
enum ClipMode {
    None,
    Range(f64),
    Dynamic(f64, f64),
}

/// Per-scheduler constants of the DDIM / DDPM steps.
#[pyclass(name = "_DdimCore", module = "rdiff._rdiff", frozen)]
pub struct DdimCore {
    alphas_cumprod: Vec<f64>,
    /// ᾱ before the first training step: DDIM's `final_alpha_cumprod`, DDPM's 1.
    final_alpha_cumprod: f64,
    prediction: PredictionType,
    clip: ClipMode,
    variance_type: VarianceType,
}

impl DdimCore {
    fn alpha_prev(&self, prev_timestep: i64) -> PyResult<f64> {
        if prev_timestep >= 0 {
            Ok(alpha_prod_at(&self.alphas_cumprod, prev_timestep)?)
        } else {
            Ok(self.final_alpha_cumprod)
        }
    }

    fn ddim_co(
        &self,
        timestep: i64,
        prev_timestep: i64,
        eta: f64,
        use_clipped: bool,
    ) -> PyResult<DdimCoefficients> {
        let at = alpha_prod_at(&self.alphas_cumprod, timestep)?;
        let ap = self.alpha_prev(prev_timestep)?;
        Ok(ddim_coefficients(
            self.prediction,
            at,
            ap,
            eta,
            use_clipped,
        )?)
    }

    fn ddpm_co(&self, timestep: i64, prev_timestep: i64) -> PyResult<DdimCoefficients> {
        let at = alpha_prod_at(&self.alphas_cumprod, timestep)?;
        let ap = self.alpha_prev(prev_timestep)?;
        Ok(ddpm_coefficients(
            self.prediction,
            self.variance_type,
            at,
            ap,
            timestep > 0,
        )?)
    }

    /// Checks the buffers and runs the fused loop.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        co: DdimCoefficients,
        mo: TensorRef,
        x: TensorRef,
        noise: Option<TensorRef>,
        x0: TensorRef,
        prev: TensorRef,
        batch: usize,
        mo_stride: usize,
        stream: Option<usize>,
        bounds: Option<TensorRef>,
    ) -> PyResult<()> {
        if batch == 0 || x.numel % batch != 0 {
            return Err(PyValueError::new_err(format!(
                "sample: {} elements do not split into a batch of {batch}",
                x.numel
            )));
        }
        let per_sample = x.numel / batch;
        let learned = matches!(
            co.noise,
            NoiseScale::Learned | NoiseScale::LearnedRange { .. }
        );
        let need = if learned { 2 * per_sample } else { per_sample };
        if mo_stride < need {
            return Err(PyValueError::new_err(format!(
                "model_output: {mo_stride} elements per sample, fewer than the {need} this step \
                 reads{}",
                if learned {
                    " (a learned variance needs twice the sample's channels)"
                } else {
                    ""
                }
            )));
        }
        mo.expect_len_of("model_output", &[batch, mo_stride])?;
        let noise = if co.noise != NoiseScale::None {
            let n = noise.ok_or_else(|| PyValueError::new_err("noise: this step needs noise"))?;
            n.expect_len("noise", x.numel)?;
            n.expect_dtype("noise", mo.dtype)?;
            Some(n)
        } else {
            None
        };
        for (t, what) in [(x0, "pred_original_sample buffer"), (prev, "output buffer")] {
            t.expect_len(what, x.numel)?;
            t.expect_dtype(what, mo.dtype)?;
        }
        let all = [Some(mo), Some(x), noise, Some(x0), Some(prev)];
        let kernel_buffers = || DdimStepBuffers {
            mo: mo.buf(),
            mo_stride,
            x: x.buf(),
            noise: noise.map(TensorRef::buf),
            x0: x0.buf(),
            prev: prev.buf(),
            batch,
            per_sample,
        };
        if all.iter().flatten().any(|t| t.device != Device::Cpu) {
            if crate::cuda::available_cached().is_err() {
                return Err(crate::cuda::no_kernel("the DDIM/DDPM step").into());
            }
            let Device::Cuda(ordinal) = x.device else {
                return Err(mixed_devices());
            };
            if all.iter().flatten().any(|t| t.device != x.device) {
                return Err(mixed_devices());
            }
            let clip = match self.clip {
                ClipMode::None => KernelClip::None,
                ClipMode::Range(c) => KernelClip::Range(c),
                ClipMode::Dynamic(ratio, max_value) => {
                    let b = bounds.ok_or_else(|| {
                        PyValueError::new_err(
                            "bounds: dynamic thresholding on CUDA needs a float32 scratch \
                             tensor of `batch` elements on the sample's device",
                        )
                    })?;
                    b.expect_dtype("bounds", crate::cpu::dtype::DType::F32)?;
                    if b.device != x.device {
                        return Err(mixed_devices());
                    }
                    if b.numel < batch {
                        return Err(PyValueError::new_err(format!(
                            "bounds: {} elements for a batch of {batch}",
                            b.numel
                        )));
                    }
                    KernelClip::Dynamic {
                        ratio,
                        max_value,
                        bounds: b.ptr as u64,
                    }
                }
            };
            return Ok(run_cuda_ddim(
                py,
                ordinal,
                stream.unwrap_or(0),
                &kernel_buffers(),
                &co,
                clip,
            )?);
        }
        if let Some(max_blocks) = super::cuda::emulated_backend() {
            let mut scratch = vec![0f32; batch];
            let clip = match self.clip {
                ClipMode::None => KernelClip::None,
                ClipMode::Range(c) => KernelClip::Range(c),
                ClipMode::Dynamic(ratio, max_value) => KernelClip::Dynamic {
                    ratio,
                    max_value,
                    bounds: scratch.as_mut_ptr() as u64,
                },
            };
            let bufs = kernel_buffers();
            py.detach(|| ddim_kernel(&EmulatedLauncher { max_blocks }, &bufs, &co, clip))?;
            return Ok(());
        }
        let clip = self.clip;
        py.detach(|| {
            with_elem!(mo.dtype, D, {
                with_elem!(x.dtype, S, {
                    // SAFETY: lengths and dtypes checked above; the Python layer keeps every
                    // buffer alive and contiguous for the call and allocates x0/prev fresh.
                    unsafe {
                        let (mo_s, x_s) = (mo.slice::<D>(), x.slice::<S>());
                        let bounds = match clip {
                            ClipMode::Dynamic(ratio, max) => Some(threshold_bounds(
                                x_s,
                                mo_s,
                                mo_stride,
                                per_sample,
                                co.p / co.d,
                                co.q / co.d,
                                ratio,
                                max,
                            )),
                            _ => None,
                        };
                        let c = match (clip, &bounds) {
                            (ClipMode::Range(r), _) => Clip::Range(r as f32),
                            (ClipMode::Dynamic(..), Some(b)) => Clip::Dynamic(b),
                            _ => Clip::None,
                        };
                        ddim_step(
                            DdimIo {
                                mo: mo_s,
                                mo_stride,
                                x: x_s,
                                noise: noise.map(|t| t.slice::<D>()),
                                x0: x0.slice_mut::<D>(),
                                prev: prev.slice_mut::<D>(),
                                per_sample,
                            },
                            &co,
                            c,
                        )
                    }
                })
            })
        });
        Ok(())
    }
}

/// (p, q, d, h1, h2, h3, a, w0, w_eps, std) of a step.
type CoTuple = (f64, f64, f64, f64, f64, f64, f64, f64, f64, f64);

fn co_tuple(c: &DdimCoefficients) -> CoTuple {
    let std = match c.noise {
        NoiseScale::None => 0.0,
        NoiseScale::Fixed(s) => s,
        _ => f64::NAN,
    };
    (c.p, c.q, c.d, c.h1, c.h2, c.h3, c.a, c.w0, c.w_eps, std)
}

#[pymethods]
impl DdimCore {
    #[new]
    #[pyo3(signature = (alphas_cumprod, final_alpha_cumprod, prediction_type, clip_sample,
        clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value,
        variance_type="fixed_small"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        alphas_cumprod: Vec<f64>,
        final_alpha_cumprod: f64,
        prediction_type: &str,
        clip_sample: bool,
        clip_sample_range: f64,
        thresholding: bool,
        dynamic_thresholding_ratio: f64,
        sample_max_value: f64,
        variance_type: &str,
    ) -> PyResult<Self> {
        if alphas_cumprod.is_empty() {
            return Err(PyValueError::new_err("alphas_cumprod: must not be empty"));
        }
        let prediction = match prediction_type {
            "epsilon" | "sample" | "v_prediction" => PredictionType::parse(prediction_type)?,
            other => {
                return Err(PyValueError::new_err(format!(
                    "prediction_type: unknown {other:?}; expected \"epsilon\", \"sample\" or \
                     \"v_prediction\""
                )))
            }
        };
        let clip = if thresholding {
            if !(0.0..=1.0).contains(&dynamic_thresholding_ratio) {
                return Err(PyValueError::new_err(format!(
                    "dynamic_thresholding_ratio: must lie in [0, 1], got \
                     {dynamic_thresholding_ratio}"
                )));
            }
            if sample_max_value.is_nan() || sample_max_value <= 0.0 {
                return Err(PyValueError::new_err(format!(
                    "sample_max_value: must be positive, got {sample_max_value}"
                )));
            }
            ClipMode::Dynamic(dynamic_thresholding_ratio, sample_max_value)
        } else if clip_sample {
            if clip_sample_range.is_nan() || clip_sample_range < 0.0 {
                return Err(PyValueError::new_err(format!(
                    "clip_sample_range: must be >= 0, got {clip_sample_range}"
                )));
            }
            ClipMode::Range(clip_sample_range)
        } else {
            ClipMode::None
        };
        Ok(Self {
            alphas_cumprod,
            final_alpha_cumprod,
            prediction,
            clip,
            variance_type: VarianceType::parse(variance_type)?,
        })
    }

    /// The DDIM step's scalars (p, q, d, h1, h2, h3, a, w0, w_eps, std); see `schedule::ddim`.
    #[pyo3(signature = (timestep, prev_timestep, eta=0.0, use_clipped_model_output=false))]
    fn ddim_coefficients(
        &self,
        timestep: i64,
        prev_timestep: i64,
        eta: f64,
        use_clipped_model_output: bool,
    ) -> PyResult<CoTuple> {
        Ok(co_tuple(&self.ddim_co(
            timestep,
            prev_timestep,
            eta,
            use_clipped_model_output,
        )?))
    }

    /// The DDPM step's scalars, as `ddim_coefficients` (std NaN for learned variances).
    fn ddpm_coefficients(&self, timestep: i64, prev_timestep: i64) -> PyResult<CoTuple> {
        Ok(co_tuple(&self.ddpm_co(timestep, prev_timestep)?))
    }

    /// One fused DDIM step: writes x₀ into `x0` and the new sample into `prev`. `noise` (in the
    /// model output's dtype) is required when η > 0.
    /// For CUDA tensors the kernels run on `stream`; `bounds` is the f32 scratch (≥ batch
    /// elements, same device) that dynamic thresholding needs there.
    #[pyo3(signature = (timestep, prev_timestep, eta, use_clipped_model_output, mo, x, noise,
        x0, prev, batch, mo_stride, stream=None, bounds=None))]
    #[allow(clippy::too_many_arguments)]
    fn ddim(
        &self,
        py: Python<'_>,
        timestep: i64,
        prev_timestep: i64,
        eta: f64,
        use_clipped_model_output: bool,
        mo: TensorRef,
        x: TensorRef,
        noise: Option<TensorRef>,
        x0: TensorRef,
        prev: TensorRef,
        batch: usize,
        mo_stride: usize,
        stream: Option<usize>,
        bounds: Option<TensorRef>,
    ) -> PyResult<()> {
        let co = self.ddim_co(timestep, prev_timestep, eta, use_clipped_model_output)?;
        self.run(
            py, co, mo, x, noise, x0, prev, batch, mo_stride, stream, bounds,
        )
    }

    /// One fused DDPM step; `noise` is required when timestep > 0, and the learned variance
    /// types read the variance channels after the first `x.numel / batch` of each `mo` row.
    /// `stream` and `bounds` as for `ddim`.
    #[pyo3(signature = (timestep, prev_timestep, mo, x, noise, x0, prev, batch, mo_stride,
        stream=None, bounds=None))]
    #[allow(clippy::too_many_arguments)]
    fn ddpm(
        &self,
        py: Python<'_>,
        timestep: i64,
        prev_timestep: i64,
        mo: TensorRef,
        x: TensorRef,
        noise: Option<TensorRef>,
        x0: TensorRef,
        prev: TensorRef,
        batch: usize,
        mo_stride: usize,
        stream: Option<usize>,
        bounds: Option<TensorRef>,
    ) -> PyResult<()> {
        let co = self.ddpm_co(timestep, prev_timestep)?;
        self.run(
            py, co, mo, x, noise, x0, prev, batch, mo_stride, stream, bounds,
        )
    }
}

/// The step on a CUDA device, on the caller's stream: no allocation, no synchronisation.
#[cfg(feature = "cuda")]
fn run_cuda_ddim(
    py: Python<'_>,
    ordinal: i32,
    stream: usize,
    bufs: &DdimStepBuffers,
    co: &DdimCoefficients,
    clip: KernelClip,
) -> Result<(), RdiffError> {
    use crate::cuda::context::{device, StreamLauncher};
    py.detach(|| {
        let launcher = StreamLauncher {
            device: device(ordinal)?,
            stream,
        };
        ddim_kernel(&launcher, bufs, co, clip)
    })
}

#[cfg(not(feature = "cuda"))]
fn run_cuda_ddim(
    _py: Python<'_>,
    _ordinal: i32,
    _stream: usize,
    _bufs: &DdimStepBuffers,
    _co: &DdimCoefficients,
    _clip: KernelClip,
) -> Result<(), RdiffError> {
    Err(crate::cuda::no_kernel("the DDIM/DDPM step"))
}

/// diffusers' DDIM/DDPM timesteps for `num_inference_steps` (int64, descending).
#[pyfunction]
#[pyo3(name = "_ddim_timesteps")]
pub fn ddim_timesteps<'py>(
    py: Python<'py>,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    timestep_spacing: &str,
    steps_offset: i64,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let ts = spacing(
        check_steps("num_train_timesteps", num_train_timesteps)?,
        check_steps("num_inference_steps", num_inference_steps)?,
        Spacing::parse(timestep_spacing)?,
        steps_offset,
    )?;
    Ok(PyArray1::from_vec(py, ts))
}

/// Adds this file's class and function to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DdimCore>()?;
    m.add_function(wrap_pyfunction!(ddim_timesteps, m)?)?;
    Ok(())
}
