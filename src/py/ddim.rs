//! `_Ddim`: the core of `rdiff.DDIMScheduler`, `rdiff.DDPMScheduler`, `rdiff.LCMScheduler` and
//! `rdiff.TCDScheduler`;
//! `_ddim_timesteps`, their spacing of the inference timesteps.

use numpy::PyArray1;
use pyo3::prelude::*;

use super::run;
use super::tensor::{tensor, tensor_opt};
use crate::schedule::check_steps;
use crate::schedule::ddim::{ddim_timesteps as spacing, DdimCoefficients, NoiseScale, Spacing};
use crate::step::ddim::{Ddim, DdimIo, DdimOptions};

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

/// Per-scheduler constants of the DDIM / DDPM steps.
#[pyclass(name = "_Ddim", module = "rdiff._rdiff", frozen)]
pub struct PyDdim {
    inner: Ddim,
}

#[allow(clippy::too_many_arguments)]
fn io(
    model_output: &Bound<'_, PyAny>,
    sample: &Bound<'_, PyAny>,
    x0: &Bound<'_, PyAny>,
    prev: &Bound<'_, PyAny>,
    noise: Option<&Bound<'_, PyAny>>,
    bounds: Option<&Bound<'_, PyAny>>,
) -> PyResult<DdimIo> {
    Ok(DdimIo {
        model_output: tensor(model_output, "model_output")?,
        sample: tensor(sample, "sample")?,
        noise: tensor_opt(noise, "noise")?,
        x0: tensor(x0, "pred_original_sample buffer")?,
        prev: tensor(prev, "output buffer")?,
        bounds: tensor_opt(bounds, "bounds")?,
    })
}

impl PyDdim {
    /// The step with scalars `co` on `io`, run where its tensors are.
    fn run_pass(
        &self,
        py: Python<'_>,
        co: &DdimCoefficients,
        io: DdimIo,
        stream: usize,
    ) -> PyResult<()> {
        let lc = self.inner.pass(co, io)?;
        run(py, &lc, lc.tensors(), stream)
    }
}

#[pymethods]
impl PyDdim {
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
        Ok(Self {
            inner: Ddim::new(DdimOptions {
                alphas_cumprod,
                final_alpha_cumprod,
                prediction_type,
                clip_sample,
                clip_sample_range,
                thresholding,
                dynamic_thresholding_ratio,
                sample_max_value,
                variance_type,
            })?,
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
        let co =
            self.inner
                .ddim_coefficients(timestep, prev_timestep, eta, use_clipped_model_output)?;
        Ok(co_tuple(&co))
    }

    /// DDIM's β̃ from `timestep` to `prev_timestep` (diffusers' `_get_variance`).
    fn variance(&self, timestep: i64, prev_timestep: i64) -> PyResult<f64> {
        Ok(self.inner.variance(timestep, prev_timestep)?)
    }

    /// DDPM's (β̃_t clamped at 1e-20, β_t) from `timestep` to `prev_timestep`.
    fn ddpm_variances(&self, timestep: i64, prev_timestep: i64) -> PyResult<(f64, f64)> {
        Ok(self.inner.ddpm_variances(timestep, prev_timestep)?)
    }

    /// The DDPM step's scalars, as `ddim_coefficients` (std NaN for learned variances).
    fn ddpm_coefficients(&self, timestep: i64, prev_timestep: i64) -> PyResult<CoTuple> {
        Ok(co_tuple(
            &self.inner.ddpm_coefficients(timestep, prev_timestep)?,
        ))
    }

    /// One fused DDIM step: x₀ into `x0`, the new sample into `prev` (shaped like `sample`, in
    /// the model output's dtype). `noise` (float32) is required when η > 0; `bounds` is the
    /// thresholding scratch; `stream` the caller's CUDA stream for CUDA tensors.
    #[pyo3(signature = (timestep, prev_timestep, eta, use_clipped_model_output, *,
        model_output, sample, x0, prev, noise=None, bounds=None, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn ddim(
        &self,
        py: Python<'_>,
        timestep: i64,
        prev_timestep: i64,
        eta: f64,
        use_clipped_model_output: bool,
        model_output: &Bound<'_, PyAny>,
        sample: &Bound<'_, PyAny>,
        x0: &Bound<'_, PyAny>,
        prev: &Bound<'_, PyAny>,
        noise: Option<&Bound<'_, PyAny>>,
        bounds: Option<&Bound<'_, PyAny>>,
        stream: usize,
    ) -> PyResult<()> {
        let co =
            self.inner
                .ddim_coefficients(timestep, prev_timestep, eta, use_clipped_model_output)?;
        self.run_pass(
            py,
            &co,
            io(model_output, sample, x0, prev, noise, bounds)?,
            stream,
        )
    }

    /// The LCM step's scalars, as `ddim_coefficients` (p, q, d: x₀; the kept denoised sample
    /// c_skip·x + c_out·x₀ is not in the tuple: see `lcm_scalings`).
    fn lcm_coefficients(
        &self,
        timestep: i64,
        prev_timestep: i64,
        timestep_scaling: f64,
        last: bool,
    ) -> PyResult<CoTuple> {
        Ok(co_tuple(&self.inner.lcm_coefficients(
            timestep,
            prev_timestep,
            timestep_scaling,
            last,
        )?))
    }

    /// One fused LCM step: the denoised sample into `x0`, the new sample into `prev`; `noise`
    /// (float32) is required unless `last`.
    #[pyo3(signature = (timestep, prev_timestep, timestep_scaling, last, *, model_output,
        sample, x0, prev, noise=None, bounds=None, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn lcm(
        &self,
        py: Python<'_>,
        timestep: i64,
        prev_timestep: i64,
        timestep_scaling: f64,
        last: bool,
        model_output: &Bound<'_, PyAny>,
        sample: &Bound<'_, PyAny>,
        x0: &Bound<'_, PyAny>,
        prev: &Bound<'_, PyAny>,
        noise: Option<&Bound<'_, PyAny>>,
        bounds: Option<&Bound<'_, PyAny>>,
        stream: usize,
    ) -> PyResult<()> {
        let co = self
            .inner
            .lcm_coefficients(timestep, prev_timestep, timestep_scaling, last)?;
        self.run_pass(
            py,
            &co,
            io(model_output, sample, x0, prev, noise, bounds)?,
            stream,
        )
    }

    /// The TCD step's scalars, as `ddim_coefficients` (p, q: the kept noised estimate).
    fn tcd_coefficients(
        &self,
        timestep: i64,
        prev_timestep: i64,
        eta: f64,
        last: bool,
    ) -> PyResult<CoTuple> {
        Ok(co_tuple(&self.inner.tcd_coefficients(
            timestep,
            prev_timestep,
            eta,
            last,
        )?))
    }

    /// One fused TCD step: the noised estimate into `x0`, the new sample into `prev`; `noise`
    /// (float32) is required when η > 0 and not `last`.
    #[pyo3(signature = (timestep, prev_timestep, eta, last, *, model_output, sample, x0, prev,
        noise=None, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn tcd(
        &self,
        py: Python<'_>,
        timestep: i64,
        prev_timestep: i64,
        eta: f64,
        last: bool,
        model_output: &Bound<'_, PyAny>,
        sample: &Bound<'_, PyAny>,
        x0: &Bound<'_, PyAny>,
        prev: &Bound<'_, PyAny>,
        noise: Option<&Bound<'_, PyAny>>,
        stream: usize,
    ) -> PyResult<()> {
        let co = self
            .inner
            .tcd_coefficients(timestep, prev_timestep, eta, last)?;
        self.run_pass(
            py,
            &co,
            io(model_output, sample, x0, prev, noise, None)?,
            stream,
        )
    }

    /// One fused DDPM step; `noise` (float32) is required when timestep > 0, and the learned
    /// variance types read the model output's second half of channels.
    #[pyo3(signature = (timestep, prev_timestep, *, model_output, sample, x0, prev,
        noise=None, bounds=None, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn ddpm(
        &self,
        py: Python<'_>,
        timestep: i64,
        prev_timestep: i64,
        model_output: &Bound<'_, PyAny>,
        sample: &Bound<'_, PyAny>,
        x0: &Bound<'_, PyAny>,
        prev: &Bound<'_, PyAny>,
        noise: Option<&Bound<'_, PyAny>>,
        bounds: Option<&Bound<'_, PyAny>>,
        stream: usize,
    ) -> PyResult<()> {
        let co = self.inner.ddpm_coefficients(timestep, prev_timestep)?;
        self.run_pass(
            py,
            &co,
            io(model_output, sample, x0, prev, noise, bounds)?,
            stream,
        )
    }
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
