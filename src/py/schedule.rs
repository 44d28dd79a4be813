//! `rdiff.NoiseSchedule`: the forward process, vectorised over numpy arrays.

use numpy::{
    AllowTypeChange, IntoPyArray, PyArray1, PyArrayDescrMethods, PyArrayLikeDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::error::RdiffError;
use pyo3::types::{PyFloat, PyInt};

use crate::schedule::spacing::{
    diffusers_schedule, distinct_timesteps, reference_time_steps, FinalSigma, SigmaKind, SkipType,
    SpacingOptions, TimestepSpacing,
};
use crate::schedule::{check_steps, BetaSchedule, DiscreteBetas, NoiseSchedule};

/// diffusers' zero-SNR fix: a terminal ᾱ of exactly 0 becomes 2⁻²⁴ so that σ stays finite.
const ZERO_SNR_ALPHA_CUMPROD: f64 = 5.960_464_477_539_063e-8;

/// A diffusion forward process q(x_t | x_0) = N(α_t x_0, σ_t² I).
///
/// Build one with `NoiseSchedule.discrete(...)` (diffusers' β schedules) or
/// `NoiseSchedule.linear_vp(...)` (the continuous VP SDE of Song et al.).
#[pyclass(name = "NoiseSchedule", module = "rdiff", frozen)]
pub struct PyNoiseSchedule {
    pub inner: NoiseSchedule,
}

/// Applies `f` elementwise to a float, an int or any real array-like named `what`; scalars
/// in, a float out. Complex, string or object input is a TypeError and NaN/±inf a ValueError
/// (a non-finite time has no α, σ or λ; the reference would return NaN silently).
fn map_f64<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    what: &str,
    f: impl Fn(f64) -> f64 + Sync,
) -> PyResult<Bound<'py, PyAny>> {
    let not_finite = |v: f64| {
        PyErr::from(RdiffError::Value(format!(
            "{what}: must be finite, got {v}"
        )))
    };
    if x.is_instance_of::<PyFloat>() || x.is_instance_of::<PyInt>() {
        let v: f64 = x.extract()?;
        if !v.is_finite() {
            return Err(not_finite(v));
        }
        return Ok(PyFloat::new(py, f(v)).into_any());
    }
    if let Ok(a) = x.cast::<PyUntypedArray>() {
        let kind = a.dtype().kind();
        if !matches!(kind, b'f' | b'i' | b'u') {
            return Err(PyErr::from(RdiffError::Type(format!(
                "{what}: expected real numbers, got an array of dtype {}",
                a.dtype()
            ))));
        }
    }
    let arr: PyArrayLikeDyn<'py, f64, AllowTypeChange> = x.extract().map_err(|_| {
        PyErr::from(RdiffError::Type(format!(
            "{what}: expected a float or an array of floats, got {}",
            x.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        )))
    })?;
    let view = arr.as_array();
    if let Some(&v) = view.iter().find(|v| !v.is_finite()) {
        return Err(not_finite(v));
    }
    let out = view.mapv(f);
    Ok(out.into_pyarray(py).into_any())
}

#[pymethods]
impl PyNoiseSchedule {
    /// A discrete schedule, computed exactly as diffusers' schedulers compute it.
    ///
    /// `betas` and `alphas_cumprod` hold the float32 values diffusers builds (linspace and
    /// cumulative product in float32), widened to float64. In continuous time, log α is
    /// interpolated piecewise-linearly on t_i = (i+1)/N as in the DPM-Solver reference.
    /// `sqrt_alphas_cumprod`: √ᾱ of the schedule before the zero-SNR rescale, as the caller's
    /// framework rounds it (None: correctly rounded float32).
    #[staticmethod]
    #[pyo3(signature = (num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
        beta_end=0.02, trained_betas=None, rescale_betas_zero_snr=false,
        sqrt_alphas_cumprod=None))]
    fn discrete(
        num_train_timesteps: i64,
        beta_schedule: &str,
        beta_start: f64,
        beta_end: f64,
        trained_betas: Option<Vec<f64>>,
        rescale_betas_zero_snr: bool,
        sqrt_alphas_cumprod: Option<Vec<f64>>,
    ) -> PyResult<Self> {
        if num_train_timesteps < 1 && trained_betas.is_none() {
            return Err(PyErr::from(RdiffError::Value(format!(
                "num_train_timesteps: must be at least 1, got {num_train_timesteps}"
            ))));
        }
        let schedule = BetaSchedule::parse(beta_schedule)?;
        let n = check_steps("num_train_timesteps", num_train_timesteps.max(0) as usize)?;
        let betas = DiscreteBetas::with_sqrt(
            n,
            schedule,
            beta_start,
            beta_end,
            trained_betas.as_deref(),
            rescale_betas_zero_snr,
            sqrt_alphas_cumprod.as_deref(),
        )?;
        Ok(Self {
            inner: NoiseSchedule::discrete(betas)?,
        })
    }

    /// The continuous linear VP schedule, β(t) = β_min + t(β_max − β_min) on t ∈ [1e-3, 1].
    #[staticmethod]
    #[pyo3(signature = (beta_min=0.1, beta_max=20.0))]
    fn linear_vp(beta_min: f64, beta_max: f64) -> PyResult<Self> {
        Ok(Self {
            inner: NoiseSchedule::linear_vp(beta_min, beta_max)?,
        })
    }

    /// `"discrete"` or `"linear_vp"`.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.inner {
            NoiseSchedule::Discrete { .. } => "discrete",
            NoiseSchedule::LinearVp { .. } => "linear_vp",
        }
    }

    /// β_i, float64 of shape (N,); None for a continuous schedule.
    #[getter]
    fn betas<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f64>>> {
        self.inner
            .discrete_betas()
            .map(|b| PyArray1::from_slice(py, &b.betas))
    }

    /// ᾱ_i = Π_{j≤i} (1 − β_j), float64 of shape (N,); None for a continuous schedule.
    #[getter]
    fn alphas_cumprod<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f64>>> {
        self.inner
            .discrete_betas()
            .map(|b| PyArray1::from_slice(py, &b.alphas_cumprod))
    }

    /// N for a discrete schedule; None for a continuous one.
    #[getter]
    fn num_train_timesteps(&self) -> Option<usize> {
        self.inner.discrete_betas().map(|b| b.len())
    }

    /// The smallest time of the continuous view: 1/N (discrete) or 1e-3 (linear VP).
    #[getter]
    fn t_min(&self) -> f64 {
        self.inner.t_min()
    }

    /// The largest time of the continuous view: 1.
    #[getter]
    fn t_max(&self) -> f64 {
        self.inner.t_max()
    }

    /// α_t for t in [t_min, t_max] (float or array; float64 out, same shape).
    fn alpha_t<'py>(&self, py: Python<'py>, t: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        map_f64(py, t, "t", |v| self.inner.alpha(v))
    }

    /// σ_t = √(1 − α_t²).
    fn sigma_t<'py>(&self, py: Python<'py>, t: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        map_f64(py, t, "t", |v| self.inner.sigma(v))
    }

    /// λ_t = log(α_t / σ_t), the half log-SNR.
    fn lambda_t<'py>(&self, py: Python<'py>, t: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        map_f64(py, t, "t", |v| self.inner.lambda(v))
    }

    /// The t with λ_t = lam (closed form for linear VP, interpolation for discrete).
    fn inverse_lambda<'py>(
        &self,
        py: Python<'py>,
        lam: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        map_f64(py, lam, "lam", |v| self.inner.inverse_lambda(v))
    }

    /// Integer timesteps and sigmas for sampling with `num_inference_steps` steps.
    ///
    /// Computed as diffusers' `DPMSolverMultistepScheduler.set_timesteps` with the same options
    /// (`timestep_spacing=spacing`, `steps_offset`, `use_karras_sigmas` / `use_exponential_sigmas`
    /// / `use_beta_sigmas` / `use_lu_lambdas` for `sigmas`, `final_sigmas_type=final_sigma`,
    /// `lambda_min_clipped`; Karras and Lu timesteps are rounded to the nearest integer,
    /// exponential and beta ones truncated, as diffusers does for non-cosine schedules), then
    /// made distinct: unlike diffusers (issue 12771: cosine + Karras maps several sigmas onto
    /// one integer timestep), the returned timesteps are strictly decreasing. Rule: keep the
    /// first occurrence, nudge each later duplicate down to one below its predecessor (raising
    /// the tail again from 0 if that runs below 0); a moved timestep gets the σ of the
    /// training table at its new value, the others keep theirs.
    ///
    /// Returns `(timesteps, sigmas)`: int64 of shape (n,) and float64 of shape (n + 1,), where
    /// σ = √((1−ᾱ)/ᾱ) (float32 values) and the last entry is the final sigma (0 or σ_min).
    /// Discrete schedules only.
    #[pyo3(signature = (num_inference_steps, spacing="linspace", steps_offset=0,
        sigmas="default", final_sigma="zero", lambda_min_clipped=f64::NEG_INFINITY))]
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn timesteps<'py>(
        &self,
        py: Python<'py>,
        num_inference_steps: i64,
        spacing: &str,
        steps_offset: i64,
        sigmas: &str,
        final_sigma: &str,
        lambda_min_clipped: f64,
    ) -> PyResult<(Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f64>>)> {
        let Some(betas) = self.inner.discrete_betas() else {
            return Err(PyErr::from(RdiffError::Value(
                "timesteps: integer timesteps need a discrete schedule; use time_steps() for a \
                 continuous one"
                    .into(),
            )));
        };
        if num_inference_steps < 1 {
            return Err(PyErr::from(RdiffError::Value(format!(
                "num_inference_steps: must be at least 1, got {num_inference_steps}"
            ))));
        }
        let sigma_kind = match sigmas {
            "flow" => {
                return Err(PyErr::from(RdiffError::Value(
                    "sigmas: expected one of \"default\", \"karras\", \"exponential\", \
                     \"beta\", \"lu\", got \"flow\""
                        .into(),
                )))
            }
            other => SigmaKind::parse(other, 1.0)?,
        };
        let opts = SpacingOptions {
            spacing: TimestepSpacing::parse(spacing)?,
            steps_offset,
            sigma_kind,
            final_sigma: FinalSigma::parse(final_sigma)?,
            lambda_min_clipped,
            round_timesteps: true,
            sigma_table: None,
            unipc: None,
        };
        let mut ac = betas.alphas_cumprod.clone();
        if let Some(last) = ac.last_mut() {
            if *last == 0.0 {
                *last = ZERO_SNR_ALPHA_CUMPROD;
            }
        }
        let out = py.detach(|| {
            let n = check_steps("num_inference_steps", num_inference_steps as usize)?;
            let s = diffusers_schedule(&ac, n, &opts)?;
            distinct_timesteps(&ac, &s)
        })?;
        Ok((out.timesteps.into_pyarray(py), out.sigmas.into_pyarray(py)))
    }

    /// The DPM-Solver reference's time steps (`DPM_Solver.get_time_steps`) in continuous time.
    ///
    /// `steps + 1` times (float64, shape (steps + 1,)) from `t_start` (default `t_max`) down to
    /// `t_end` (default `t_min`), uniform in t (`"time_uniform"`), in λ (`"logSNR"`, mapped back
    /// by `inverse_lambda`) or in √t (`"time_quadratic"`). The endpoints are exactly `t_start`
    /// and `t_end`.
    #[pyo3(signature = (steps, skip_type="time_uniform", t_start=None, t_end=None))]
    fn time_steps<'py>(
        &self,
        py: Python<'py>,
        steps: i64,
        skip_type: &str,
        t_start: Option<f64>,
        t_end: Option<f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        if steps < 1 {
            return Err(PyErr::from(RdiffError::Value(format!(
                "steps: must be at least 1, got {steps}"
            ))));
        }
        let steps = check_steps("steps", steps as usize)?;
        let skip = SkipType::parse(skip_type)?;
        let t_start = t_start.unwrap_or(self.inner.t_max());
        let t_end = t_end.unwrap_or(self.inner.t_min());
        let out = reference_time_steps(&self.inner, skip, t_start, t_end, steps)?;
        Ok(out.into_pyarray(py))
    }

    fn __repr__(&self) -> String {
        match &self.inner {
            NoiseSchedule::Discrete { betas, .. } => {
                format!(
                    "NoiseSchedule.discrete(num_train_timesteps={})",
                    betas.len()
                )
            }
            NoiseSchedule::LinearVp { beta_0, beta_1 } => {
                format!("NoiseSchedule.linear_vp(beta_min={beta_0}, beta_max={beta_1})")
            }
        }
    }
}
