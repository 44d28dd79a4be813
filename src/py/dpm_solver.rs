//! Bindings of the multistep DPM-Solver step: `_MultistepCore`, built by the Python scheduler
//! in `set_timesteps`, computes each step's coefficients and runs the fused loop. The solver
//! constants and the checked fused step are shared with `_SinglestepCore` (`dpm_singlestep`).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::tensor::{mixed_devices, Device, TensorRef};
use crate::cpu::dpm_step::{fused_step_from, StepIo};
use crate::cpu::quantile::threshold_bounds;
use crate::cuda::ops::{DpmStepBuffers, Thresholding};
use crate::error::RdiffError;
use crate::schedule::dpm_solver::{
    multistep_coefficients, Algorithm, MultistepStep, Point, PredictionType, SolverType,
    StepCoefficients,
};
use crate::with_elem;

/// The constants of a DPM-Solver core (multistep or singlestep): the solver options and the σ̃
/// schedule of `set_timesteps`.
pub(crate) struct SolverConfig {
    pub algorithm: Algorithm,
    pub solver_type: SolverType,
    pub prediction: PredictionType,
    /// (ratio, sample_max_value) when dynamic thresholding is on.
    pub thresholding: Option<(f64, f64)>,
    pub flow: bool,
    pub sigmas: Vec<f64>,
}

impl SolverConfig {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn parse(
        algorithm_type: &str,
        solver_type: &str,
        prediction_type: &str,
        thresholding: bool,
        dynamic_thresholding_ratio: f64,
        sample_max_value: f64,
        flow: bool,
        sigmas: Vec<f64>,
    ) -> PyResult<Self> {
        if sigmas.len() < 2 {
            return Err(PyValueError::new_err("sigmas: need at least two values"));
        }
        if thresholding && !(0.0..=1.0).contains(&dynamic_thresholding_ratio) {
            return Err(PyValueError::new_err(format!(
                "dynamic_thresholding_ratio: must lie in [0, 1], got {dynamic_thresholding_ratio}"
            )));
        }
        if thresholding && (sample_max_value.is_nan() || sample_max_value <= 0.0) {
            return Err(PyValueError::new_err(format!(
                "sample_max_value: must be positive, got {sample_max_value}"
            )));
        }
        Ok(Self {
            algorithm: Algorithm::parse(algorithm_type)?,
            solver_type: SolverType::parse(solver_type)?,
            prediction: PredictionType::parse(prediction_type)?,
            thresholding: thresholding.then_some((dynamic_thresholding_ratio, sample_max_value)),
            flow,
            sigmas,
        })
    }

    /// Checks that a step of `order` at `step_index` has its σ values in the schedule.
    pub(crate) fn check_step(&self, step_index: usize, order: usize) -> PyResult<()> {
        let n = self.sigmas.len();
        if step_index + 1 >= n {
            return Err(PyValueError::new_err(format!(
                "step index {step_index} is past the end of the schedule ({} steps)",
                n - 1
            )));
        }
        if order == 0 || order > 3 || order > step_index + 1 {
            return Err(PyValueError::new_err(format!(
                "order {order} is not possible at step index {step_index}"
            )));
        }
        Ok(())
    }

    pub(crate) fn point(&self, i: usize) -> Point {
        Point::from_sigma(self.sigmas[i], self.flow)
    }

    /// The checked inputs of an order-`order` update from step `step_index` to the next: the
    /// target, the current point and the two before it (clamped at the schedule's start).
    pub(crate) fn step_at(&self, step_index: usize, order: usize) -> PyResult<MultistepStep> {
        self.check_step(step_index, order)?;
        let back = |k: usize| self.point(step_index.saturating_sub(k));
        Ok(MultistepStep {
            algorithm: self.algorithm,
            solver_type: self.solver_type,
            prediction: self.prediction,
            thresholding: self.thresholding.is_some(),
            order,
            t: self.point(step_index + 1),
            s0: self.point(step_index),
            s1: back(1),
            s2: back(2),
            flow_sigma: self.sigmas[step_index],
        })
    }
}

/// The caller's buffers of one fused step. `start`, when given, is the sample the update starts
/// from (the singlestep group's start); the conversion always reads `x`.
pub(crate) struct StepBuffers {
    pub mo: TensorRef,
    pub x: TensorRef,
    pub start: Option<TensorRef>,
    pub m1: Option<TensorRef>,
    pub m2: Option<TensorRef>,
    pub noise: Option<TensorRef>,
    pub hist: TensorRef,
    pub prev: TensorRef,
    pub batch: usize,
    pub mo_stride: usize,
    /// The caller's CUDA stream (`cudaStream_t` as an integer) for CUDA tensors; 0 = default.
    pub stream: Option<usize>,
    /// CUDA with dynamic thresholding: the caller's f32 scratch tensor (≥ batch elements, on
    /// the sample's device) for the per-sample bounds. Caller-owned, so concurrent streams
    /// never share it and a CUDA-graph capture needs no allocation here.
    pub bounds: Option<TensorRef>,
}

/// Checks the buffers against the step's needs and runs the fused loop without the GIL.
pub(crate) fn run_fused_step(
    py: Python<'_>,
    cfg: &SolverConfig,
    co: &StepCoefficients,
    order: usize,
    bufs: StepBuffers,
) -> PyResult<()> {
    let StepBuffers {
        mo,
        x,
        start,
        m1,
        m2,
        noise,
        hist,
        prev,
        batch,
        mo_stride,
        stream,
        bounds,
    } = bufs;
    let stochastic = co.c != 0.0 || cfg.algorithm.stochastic();
    let v = validate_step(
        order, stochastic, mo, x, m1, m2, noise, hist, prev, batch, mo_stride,
    )?;
    if let Some(s) = start {
        s.expect_len("start sample", x.numel)?;
        s.expect_dtype("start sample", x.dtype)?;
    }
    let all = [
        Some(mo),
        Some(x),
        start,
        v.m1,
        v.m2,
        v.noise,
        Some(hist),
        Some(prev),
    ];
    if all.iter().flatten().any(|t| t.device != Device::Cpu) {
        // No driver, GPU or NVRTC: CudaUnavailableError, before anything else.
        if crate::cuda::available_cached().is_err() {
            return Err(crate::cuda::no_kernel("the DPM-Solver step").into());
        }
        let Device::Cuda(ordinal) = x.device else {
            return Err(mixed_devices());
        };
        if all.iter().flatten().any(|t| t.device != x.device) {
            return Err(mixed_devices());
        }
        let thresholding = match (cfg.thresholding, bounds) {
            (None, _) => None,
            (Some((ratio, max_value)), Some(b)) => {
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
                Some(Thresholding {
                    ratio,
                    max_value,
                    bounds: b.ptr as u64,
                })
            }
            (Some(_), None) => {
                return Err(PyValueError::new_err(
                    "bounds: dynamic thresholding on CUDA needs a float32 scratch tensor of \
                     `batch` elements on the sample's device",
                ))
            }
        };
        let bufs = cuda_buffers(mo, mo_stride, x, start, &v, hist, prev, batch)?;
        return Ok(run_cuda_step(
            py,
            ordinal,
            stream.unwrap_or(0),
            &bufs,
            co,
            thresholding,
        )?);
    }
    if let Some(max_blocks) = super::cuda::emulated_backend() {
        let bufs = cuda_buffers(mo, mo_stride, x, start, &v, hist, prev, batch)?;
        return super::cuda::run_emulated_dpm_step(py, max_blocks, &bufs, co, cfg.thresholding);
    }
    let (m1, m2, noise, per_sample) = (v.m1, v.m2, v.noise, v.per_sample);
    let thresholding = cfg.thresholding;
    let co = *co;
    py.detach(|| {
        with_elem!(mo.dtype, D, {
            with_elem!(x.dtype, S, {
                // SAFETY: lengths and dtypes checked above; the Python layer keeps every
                // buffer alive and contiguous for the call and allocates hist/prev fresh.
                unsafe {
                    let (mo_s, x_s) = (mo.slice::<D>(), x.slice::<S>());
                    let bounds = thresholding.map(|(ratio, max)| {
                        threshold_bounds(x_s, mo_s, mo_stride, per_sample, co.p, co.q, ratio, max)
                    });
                    fused_step_from(
                        StepIo {
                            mo: mo_s,
                            mo_stride,
                            x: x_s,
                            m1: m1.map(|t| t.slice::<D>()),
                            m2: m2.map(|t| t.slice::<D>()),
                            noise: noise.map(|t| t.slice::<f32>()),
                            hist: hist.slice_mut::<D>(),
                            prev: prev.slice_mut::<D>(),
                            per_sample,
                        },
                        start.map(|t| t.slice::<S>()),
                        &co,
                        bounds.as_deref(),
                    )
                }
            })
        })
    });
    Ok(())
}

/// Per-scheduler constants of the multistep solver and its σ̃ schedule.
#[pyclass(name = "_MultistepCore", module = "rdiff._rdiff", frozen)]
pub struct MultistepCore {
    cfg: SolverConfig,
}

impl MultistepCore {
    fn coefficients_at(&self, step_index: usize, order: usize) -> PyResult<StepCoefficients> {
        Ok(multistep_coefficients(
            &self.cfg.step_at(step_index, order)?,
        )?)
    }
}

#[pymethods]
impl MultistepCore {
    #[new]
    #[pyo3(signature = (algorithm_type, solver_type, prediction_type, thresholding,
        dynamic_thresholding_ratio, sample_max_value, flow, sigmas))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        algorithm_type: &str,
        solver_type: &str,
        prediction_type: &str,
        thresholding: bool,
        dynamic_thresholding_ratio: f64,
        sample_max_value: f64,
        flow: bool,
        sigmas: Vec<f64>,
    ) -> PyResult<Self> {
        Ok(Self {
            cfg: SolverConfig::parse(
                algorithm_type,
                solver_type,
                prediction_type,
                thresholding,
                dynamic_thresholding_ratio,
                sample_max_value,
                flow,
                sigmas,
            )?,
        })
    }

    /// The step's scalars (p, q, r, w, a, w0, w1, w2, c); see `schedule::dpm_solver`.
    fn coefficients(&self, step_index: usize, order: usize) -> PyResult<[f64; 9]> {
        let c = self.coefficients_at(step_index, order)?;
        Ok([c.p, c.q, c.r, c.w, c.a, c.w0, c.w1, c.w2, c.c])
    }

    /// One fused step: writes the converted model output into `hist` and the new sample into
    /// `prev`. `mo` has `batch` rows of `mo_stride` elements; the others `batch × per_sample`
    /// with per_sample = x.numel / batch. m1/m2 are the earlier history entries the order needs.
    /// `stream` and `bounds` (the thresholding scratch, see `StepBuffers`) matter for CUDA
    /// tensors only.
    #[pyo3(signature = (step_index, order, mo, x, m1, m2, noise, hist, prev, batch, mo_stride,
        stream=None, bounds=None))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        step_index: usize,
        order: usize,
        mo: TensorRef,
        x: TensorRef,
        m1: Option<TensorRef>,
        m2: Option<TensorRef>,
        noise: Option<TensorRef>,
        hist: TensorRef,
        prev: TensorRef,
        batch: usize,
        mo_stride: usize,
        stream: Option<usize>,
        bounds: Option<TensorRef>,
    ) -> PyResult<()> {
        let co = self.coefficients_at(step_index, order)?;
        run_fused_step(
            py,
            &self.cfg,
            &co,
            order,
            StepBuffers {
                mo,
                x,
                start: None,
                m1,
                m2,
                noise,
                hist,
                prev,
                batch,
                mo_stride,
                stream,
                bounds,
            },
        )
    }
}

/// A step's buffers after validation: the history entries and noise the step uses.
pub(crate) struct ValidStep {
    pub m1: Option<TensorRef>,
    pub m2: Option<TensorRef>,
    pub noise: Option<TensorRef>,
    pub per_sample: usize,
}

/// The argument checks every backend shares (lengths, dtypes, what the order needs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn validate_step(
    order: usize,
    stochastic: bool,
    mo: TensorRef,
    x: TensorRef,
    m1: Option<TensorRef>,
    m2: Option<TensorRef>,
    noise: Option<TensorRef>,
    hist: TensorRef,
    prev: TensorRef,
    batch: usize,
    mo_stride: usize,
) -> PyResult<ValidStep> {
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
    let need = |t: Option<TensorRef>, what: &str| -> PyResult<()> {
        match t {
            Some(t) => {
                t.expect_len(what, x.numel)?;
                t.expect_dtype(what, mo.dtype)
            }
            None => Err(PyValueError::new_err(format!(
                "{what}: required by an order-{order} step"
            ))),
        }
    };
    if order >= 2 {
        need(m1, "model_outputs[-2]")?;
    }
    if order >= 3 {
        need(m2, "model_outputs[-3]")?;
    }
    let noise = if stochastic {
        let n = noise
            .ok_or_else(|| PyValueError::new_err("noise: the SDE algorithm types need noise"))?;
        n.expect_len("noise", x.numel)?;
        n.expect_dtype("noise", crate::cpu::dtype::DType::F32)?;
        Some(n)
    } else {
        None
    };
    for (t, what) in [(hist, "history buffer"), (prev, "output buffer")] {
        t.expect_len(what, x.numel)?;
        t.expect_dtype(what, mo.dtype)?;
    }
    Ok(ValidStep {
        m1: if order >= 2 { m1 } else { None },
        m2: if order >= 3 { m2 } else { None },
        noise,
        per_sample,
    })
}

/// The validated step as kernel buffers (the same description for the real and the emulated
/// launcher; the addresses are device or host pointers accordingly).
#[allow(clippy::too_many_arguments)]
pub(crate) fn cuda_buffers(
    mo: TensorRef,
    mo_stride: usize,
    x: TensorRef,
    start: Option<TensorRef>,
    v: &ValidStep,
    hist: TensorRef,
    prev: TensorRef,
    batch: usize,
) -> PyResult<DpmStepBuffers> {
    Ok(DpmStepBuffers {
        mo: mo.buf(),
        mo_stride,
        x: x.buf(),
        start: start.map(TensorRef::buf),
        m1: v.m1.map(TensorRef::buf),
        m2: v.m2.map(TensorRef::buf),
        noise: v.noise.map(|n| n.ptr as u64),
        hist: hist.buf(),
        prev: prev.buf(),
        batch,
        per_sample: v.per_sample,
    })
}

/// The step on a CUDA device: availability first (CudaUnavailableError, never a panic), then
/// the kernels on the caller's stream, asynchronously.
#[cfg(feature = "cuda")]
fn run_cuda_step(
    py: Python<'_>,
    ordinal: i32,
    stream: usize,
    bufs: &DpmStepBuffers,
    co: &StepCoefficients,
    thresholding: Option<Thresholding>,
) -> Result<(), RdiffError> {
    use crate::cuda::context::{device, StreamLauncher};
    use crate::cuda::ops::dpm_step;
    py.detach(|| {
        let launcher = StreamLauncher {
            device: device(ordinal)?,
            stream,
        };
        dpm_step(&launcher, bufs, co, thresholding)
    })
}

#[cfg(not(feature = "cuda"))]
fn run_cuda_step(
    _py: Python<'_>,
    _ordinal: i32,
    _stream: usize,
    _bufs: &DpmStepBuffers,
    _co: &StepCoefficients,
    _thresholding: Option<Thresholding>,
) -> Result<(), RdiffError> {
    Err(crate::cuda::no_kernel("the DPM-Solver step"))
}
