//! Bindings of the functional samplers (`rdiff.sample`, `rdiff.k`): the per-step scalars of
//! `schedule::reference` and `schedule::karras`, and the fused linear-combination pass of
//! `cpu::lincomb` over caller-owned buffers (GIL released).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::schedule::PyNoiseSchedule;
use super::tensor::{Device, TensorRef};
use crate::cpu::dtype::{DType, Elem};
use crate::cpu::lincomb::{adaptive_error, lincomb, reference_bounds, Acc, Buf, Convert};
use crate::schedule::karras;
use crate::schedule::reference::{
    adaptive_next_h, multistep_orders, singlestep_schedule, Method, RefAlgorithm, RefSolverType,
    ReferenceSolver,
};
use crate::schedule::spacing::SkipType;
use crate::schedule::{check_steps, NoiseSchedule};
use crate::with_elem;

/// Registers this file's classes and functions on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReferenceCore>()?;
    m.add_function(wrap_pyfunction!(check_method, m)?)?;
    m.add_function(wrap_pyfunction!(multistep_orders_py, m)?)?;
    m.add_function(wrap_pyfunction!(singlestep_schedule_py, m)?)?;
    m.add_function(wrap_pyfunction!(adaptive_next_h_py, m)?)?;
    m.add_function(wrap_pyfunction!(lincomb_py, m)?)?;
    m.add_function(wrap_pyfunction!(adaptive_error_py, m)?)?;
    m.add_function(wrap_pyfunction!(k_sigmas, m)?)?;
    m.add_function(wrap_pyfunction!(k_step, m)?)?;
    m.add_function(wrap_pyfunction!(k_heun_correction, m)?)?;
    m.add_function(wrap_pyfunction!(k_churn_gamma, m)?)?;
    Ok(())
}

/// The reference solver's scalars over one schedule, algorithm and solver type.
#[pyclass(name = "_ReferenceCore", module = "rdiff._rdiff", frozen)]
pub struct ReferenceCore {
    schedule: NoiseSchedule,
    algorithm: RefAlgorithm,
    solver_type: RefSolverType,
}

impl ReferenceCore {
    fn solver(&self) -> ReferenceSolver<'_> {
        ReferenceSolver {
            schedule: &self.schedule,
            algorithm: self.algorithm,
            solver_type: self.solver_type,
        }
    }
}

#[pymethods]
impl ReferenceCore {
    #[new]
    fn new(
        schedule: &Bound<'_, PyNoiseSchedule>,
        algorithm: &str,
        solver_type: &str,
    ) -> PyResult<Self> {
        Ok(Self {
            schedule: schedule.get().inner.clone(),
            algorithm: RefAlgorithm::parse(algorithm)?,
            solver_type: RefSolverType::parse(solver_type)?,
        })
    }

    /// (p, q) with x₀ = p·x + q·ε at time t.
    fn data_prediction(&self, t: f64) -> (f64, f64) {
        self.solver().data_prediction(t)
    }

    /// (c_x, [c_0, c_1, …]) of the order-`order` multistep update from t_prev[-1] to t;
    /// c_0 weighs the newest model value.
    fn multistep(&self, t_prev: Vec<f64>, t: f64, order: usize) -> PyResult<(f64, Vec<f64>)> {
        let c = self.solver().multistep(&t_prev, t, order)?;
        Ok((c.x, c.m))
    }

    /// (times, stages) of a singlestep DPM-Solver-`order` step from s to t: the intermediate
    /// evaluation times and, per stage, (c_x, [c_s, c_s1, …]).
    #[pyo3(signature = (s, t, order, r1=None, r2=None))]
    #[allow(clippy::type_complexity)]
    fn singlestep(
        &self,
        s: f64,
        t: f64,
        order: usize,
        r1: Option<f64>,
        r2: Option<f64>,
    ) -> PyResult<(Vec<f64>, Vec<(f64, Vec<f64>)>)> {
        let p = self.solver().singlestep(s, t, order, r1, r2)?;
        Ok((p.times, p.stages.into_iter().map(|c| (c.x, c.m)).collect()))
    }
}

/// ValueError unless `method` is one of the reference's sampling methods.
#[pyfunction(name = "_check_method")]
fn check_method(method: &str) -> PyResult<()> {
    Method::parse(method)?;
    Ok(())
}

/// The order of each multistep update (warm-up, lower-order-final below 10 steps).
#[pyfunction(name = "_multistep_orders")]
fn multistep_orders_py(
    steps: usize,
    order: usize,
    lower_order_final: bool,
) -> PyResult<Vec<usize>> {
    Ok(multistep_orders(
        check_steps("steps", steps)?,
        order,
        lower_order_final,
    )?)
}

/// (outer times, orders, [(r1, r2)]) of the "singlestep" or "singlestep_fixed" method.
#[pyfunction(name = "_singlestep_schedule")]
#[allow(clippy::type_complexity)]
fn singlestep_schedule_py(
    schedule: &Bound<'_, PyNoiseSchedule>,
    steps: usize,
    order: usize,
    skip_type: &str,
    t_start: f64,
    t_end: f64,
    fixed: bool,
) -> PyResult<(Vec<f64>, Vec<usize>, Vec<(Option<f64>, Option<f64>)>)> {
    let skip = SkipType::parse(skip_type)?;
    let steps = check_steps("steps", steps)?;
    let s = singlestep_schedule(
        &schedule.get().inner,
        steps,
        order,
        skip,
        t_start,
        t_end,
        fixed,
    )?;
    Ok((s.times, s.orders, s.ratios))
}

/// The adaptive solver's next λ step: min(θ·h·err^(−1/order), remaining).
#[pyfunction(name = "_adaptive_next_h")]
fn adaptive_next_h_py(h: f64, err: f64, order: usize, theta: f64, remaining: f64) -> f64 {
    adaptive_next_h(h, err, order, theta, remaining)
}

fn check_cpu(ts: &[TensorRef]) -> PyResult<()> {
    if ts.iter().any(|t| t.device != Device::Cpu) {
        return Err(crate::cuda::no_kernel("the sampler updates").into());
    }
    Ok(())
}

fn overlaps(a: &TensorRef, b: &TensorRef) -> bool {
    let (sa, sb) = (a.numel * a.dtype.size(), b.numel * b.dtype.size());
    sa > 0 && sb > 0 && a.ptr < b.ptr + sb && b.ptr < a.ptr + sa
}

type ConvArgs = (TensorRef, TensorRef, f64, f64, f64);

/// One fused pass: `out = Σ c_i·terms_i + w·m` with, when `conv = (x, mo, p, q, w)` is given,
/// m = p·x + q·mo, clamped and rescaled per sample by the reference's dynamic thresholding
/// when `threshold = (ratio, max_val)` is given, and stored into `hist` when given. All
/// tensors share out's dtype and element count (which splits into `batch` samples); `out`
/// and `hist` must not overlap any input.
#[pyfunction(name = "_lincomb")]
#[pyo3(signature = (out, terms, batch, conv=None, hist=None, threshold=None))]
fn lincomb_py(
    py: Python<'_>,
    out: TensorRef,
    terms: Vec<(f64, TensorRef)>,
    batch: usize,
    conv: Option<ConvArgs>,
    hist: Option<TensorRef>,
    threshold: Option<(f64, f64)>,
) -> PyResult<()> {
    let n = out.numel;
    if batch == 0 || n % batch != 0 {
        return Err(PyValueError::new_err(format!(
            "sample: {n} elements do not split into a batch of {batch}"
        )));
    }
    if conv.is_none() && (hist.is_some() || threshold.is_some()) {
        return Err(PyValueError::new_err(
            "hist and threshold need a model-output conversion",
        ));
    }
    if let Some((ratio, max_val)) = threshold {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(PyValueError::new_err(format!(
                "dynamic_thresholding_ratio: must lie in [0, 1], got {ratio}"
            )));
        }
        if max_val.is_nan() {
            return Err(PyValueError::new_err(
                "thresholding_max_val: must be a number",
            ));
        }
    }
    let mut inputs: Vec<TensorRef> = terms.iter().map(|(_, t)| *t).collect();
    if let Some((x, mo, ..)) = conv {
        inputs.push(x);
        inputs.push(mo);
    }
    let outputs: Vec<TensorRef> = std::iter::once(out).chain(hist).collect();
    for t in inputs.iter().chain(&outputs) {
        t.expect_len("buffer", n)?;
        t.expect_dtype("buffer", out.dtype)?;
    }
    check_cpu(&inputs)?;
    check_cpu(&outputs)?;
    for o in &outputs {
        if inputs.iter().any(|i| overlaps(o, i)) {
            return Err(PyValueError::new_err(
                "an output buffer overlaps an input buffer",
            ));
        }
    }
    if let Some(h) = hist {
        if overlaps(&out, &h) {
            return Err(PyValueError::new_err("out and hist overlap"));
        }
    }
    let per_sample = n / batch;
    if n == 0 {
        return Ok(());
    }
    py.detach(|| match out.dtype {
        DType::F64 => run::<f64, f64>(&terms, conv, hist, threshold, out, per_sample),
        other => with_elem!(other, D, {
            run::<f32, D>(&terms, conv, hist, threshold, out, per_sample)
        }),
    });
    Ok(())
}

fn run<A: Acc, T: Buf<A> + Elem>(
    terms: &[(f64, TensorRef)],
    conv: Option<ConvArgs>,
    hist: Option<TensorRef>,
    threshold: Option<(f64, f64)>,
    out: TensorRef,
    per_sample: usize,
) {
    // SAFETY: lengths, dtypes and devices were checked by the caller; the Python layer keeps
    // every buffer alive and contiguous for the call, and the outputs overlap no input.
    unsafe {
        let ts: Vec<(f64, &[T])> = terms.iter().map(|(c, t)| (*c, t.slice::<T>())).collect();
        let cv = conv.map(|(x, mo, p, q, w)| (x.slice::<T>(), mo.slice::<T>(), p, q, w));
        let bounds = match (cv, threshold) {
            (Some((x, mo, p, q, _)), Some((ratio, max_val))) => Some(reference_bounds::<A, T>(
                x, mo, p, q, per_sample, ratio, max_val,
            )),
            _ => None,
        };
        let convert = cv.map(|(x, mo, p, q, weight)| Convert {
            x,
            mo,
            p,
            q,
            weight,
            bounds: bounds.as_deref(),
        });
        lincomb::<A, T>(
            &ts,
            convert.as_ref(),
            hist.map(|h| h.slice_mut::<T>()),
            out.slice_mut::<T>(),
            per_sample,
        );
    }
}

/// The adaptive solver's error norm E (max over samples of the scaled RMS difference).
#[pyfunction(name = "_adaptive_error")]
fn adaptive_error_py(
    py: Python<'_>,
    hi: TensorRef,
    lo: TensorRef,
    prev: TensorRef,
    atol: f64,
    rtol: f64,
    batch: usize,
) -> PyResult<f64> {
    let n = hi.numel;
    if batch == 0 || n % batch != 0 {
        return Err(PyValueError::new_err(format!(
            "sample: {n} elements do not split into a batch of {batch}"
        )));
    }
    for t in [lo, prev] {
        t.expect_len("buffer", n)?;
        t.expect_dtype("buffer", hi.dtype)?;
    }
    check_cpu(&[hi, lo, prev])?;
    let ps = n / batch;
    // SAFETY: as in `run`; nothing is written.
    let e = py.detach(|| unsafe {
        match hi.dtype {
            DType::F64 => {
                adaptive_error::<f64, f64>(hi.slice(), lo.slice(), prev.slice(), atol, rtol, ps)
            }
            other => with_elem!(other, D, {
                adaptive_error::<f32, D>(hi.slice(), lo.slice(), prev.slice(), atol, rtol, ps)
            }),
        }
    });
    Ok(e)
}

/// k-diffusion's σ schedules ("karras" or "exponential"), without the final 0.
#[pyfunction(name = "_k_sigmas")]
#[pyo3(signature = (kind, n, sigma_min, sigma_max, rho=7.0))]
fn k_sigmas(kind: &str, n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> PyResult<Vec<f64>> {
    if !(sigma_min > 0.0 && sigma_max > 0.0 && sigma_min.is_finite() && sigma_max.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "sigma_min, sigma_max: must be positive numbers, got {sigma_min}, {sigma_max}"
        )));
    }
    let n = check_steps("n", n)?;
    match kind {
        "karras" => Ok(karras::sigmas_karras(n, sigma_min, sigma_max, rho)),
        "exponential" => Ok(karras::sigmas_exponential(n, sigma_min, sigma_max)),
        _ => Err(PyValueError::new_err(format!(
            "kind: unknown {kind:?}; expected \"karras\" or \"exponential\""
        ))),
    }
}

/// (c_x, [c_D, c_D1, c_D2], c_noise) of step i of a k-diffusion sampler: "euler" (from
/// `sigma_hat`, default σ_i), "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde" (solver_type
/// "midpoint" or "heun"), "dpmpp_3m_sde".
#[pyfunction(name = "_k_step")]
#[pyo3(signature = (kind, sigmas, i, eta=1.0, s_noise=1.0, solver_type="midpoint", sigma_hat=None))]
#[allow(clippy::too_many_arguments)]
fn k_step(
    kind: &str,
    sigmas: Vec<f64>,
    i: usize,
    eta: f64,
    s_noise: f64,
    solver_type: &str,
    sigma_hat: Option<f64>,
) -> PyResult<(f64, [f64; 3], f64)> {
    if i + 1 >= sigmas.len() {
        return Err(PyValueError::new_err(format!(
            "step index {i} is past the end of the schedule ({} sigmas)",
            sigmas.len()
        )));
    }
    let st = match kind {
        "euler" => karras::euler(sigma_hat.unwrap_or(sigmas[i]), sigmas[i + 1]),
        "euler_ancestral" => karras::euler_ancestral(sigmas[i], sigmas[i + 1], eta, s_noise),
        "dpmpp_2m" => karras::dpmpp_2m(&sigmas, i)?,
        "dpmpp_2m_sde" => {
            let heun = match solver_type {
                "heun" => true,
                "midpoint" => false,
                _ => {
                    return Err(PyValueError::new_err(
                        "solver_type must be 'heun' or 'midpoint'",
                    ))
                }
            };
            karras::dpmpp_2m_sde(&sigmas, i, eta, s_noise, heun)?
        }
        "dpmpp_3m_sde" => karras::dpmpp_3m_sde(&sigmas, i, eta, s_noise)?,
        _ => {
            return Err(PyTypeError::new_err(format!(
                "unknown k-diffusion step {kind:?}"
            )))
        }
    };
    Ok((st.x, st.d, st.noise))
}

/// Heun's correction weights on (x, D, x₂, D₂) from σ̂ to σ_next > 0.
#[pyfunction(name = "_k_heun_correction")]
fn k_heun_correction(sigma_hat: f64, sigma_next: f64) -> [f64; 4] {
    karras::heun_correction(sigma_hat, sigma_next)
}

/// The churn γ of `sample_euler` / `sample_heun` at σ for a run of `n_steps` steps.
#[pyfunction(name = "_k_churn_gamma")]
fn k_churn_gamma(sigma: f64, n_steps: usize, s_churn: f64, s_tmin: f64, s_tmax: f64) -> f64 {
    karras::churn_gamma(sigma, n_steps, s_churn, s_tmin, s_tmax)
}
