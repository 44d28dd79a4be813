//! Bindings of the functional samplers' scalars (`rdiff.sample`, `rdiff.k`): the per-step
//! coefficients of `schedule::reference` and `schedule::karras`. Their fused pass is
//! `py::lincomb`.

use pyo3::prelude::*;

use crate::error::RdiffError;

use super::schedule::PyNoiseSchedule;
use crate::schedule::karras;
use crate::schedule::reference::{
    adaptive_next_h, multistep_orders, singlestep_schedule, Method, RefAlgorithm, RefSolverType,
    ReferenceSolver,
};
use crate::schedule::spacing::SkipType;
use crate::schedule::{check_steps, NoiseSchedule};

/// Registers this file's classes and functions on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReferenceCore>()?;
    m.add_function(wrap_pyfunction!(check_method, m)?)?;
    m.add_function(wrap_pyfunction!(multistep_orders_py, m)?)?;
    m.add_function(wrap_pyfunction!(singlestep_schedule_py, m)?)?;
    m.add_function(wrap_pyfunction!(adaptive_next_h_py, m)?)?;
    m.add_function(wrap_pyfunction!(k_sigmas, m)?)?;
    m.add_function(wrap_pyfunction!(k_step, m)?)?;
    m.add_function(wrap_pyfunction!(k_heun_correction, m)?)?;
    m.add_function(wrap_pyfunction!(k_churn_gamma, m)?)?;
    m.add_function(wrap_pyfunction!(k_two_stage, m)?)?;
    m.add_function(wrap_pyfunction!(k_dpm_solver_step, m)?)?;
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

/// k-diffusion's σ schedules ("karras" or "exponential"), without the final 0.
#[pyfunction(name = "_k_sigmas")]
#[pyo3(signature = (kind, n, sigma_min, sigma_max, rho=7.0))]
fn k_sigmas(kind: &str, n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> PyResult<Vec<f64>> {
    if !(sigma_min > 0.0 && sigma_max > 0.0 && sigma_min.is_finite() && sigma_max.is_finite()) {
        return Err(PyErr::from(RdiffError::Value(format!(
            "sigma_min, sigma_max: must be positive numbers, got {sigma_min}, {sigma_max}"
        ))));
    }
    let n = check_steps("n", n)?;
    match kind {
        "karras" => Ok(karras::sigmas_karras(n, sigma_min, sigma_max, rho)),
        "exponential" => Ok(karras::sigmas_exponential(n, sigma_min, sigma_max)),
        _ => Err(PyErr::from(RdiffError::Value(format!(
            "kind: unknown {kind:?}; expected \"karras\" or \"exponential\""
        )))),
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
        return Err(PyErr::from(RdiffError::Value(format!(
            "step index {i} is past the end of the schedule ({} sigmas)",
            sigmas.len()
        ))));
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
                    return Err(PyErr::from(RdiffError::Value(
                        "solver_type must be 'heun' or 'midpoint'".into(),
                    )))
                }
            };
            karras::dpmpp_2m_sde(&sigmas, i, eta, s_noise, heun)?
        }
        "dpmpp_3m_sde" => karras::dpmpp_3m_sde(&sigmas, i, eta, s_noise)?,
        _ => {
            return Err(PyErr::from(RdiffError::Type(format!(
                "unknown k-diffusion step {kind:?}"
            ))))
        }
    };
    Ok((st.x, st.d, st.noise))
}

/// Heun's correction weights on (x, D, x₂, D₂) from σ̂ to σ_next > 0.
#[pyfunction(name = "_k_heun_correction")]
fn k_heun_correction(sigma_hat: f64, sigma_next: f64) -> [f64; 4] {
    karras::heun_correction(sigma_hat, sigma_next)
}

/// (first, first_noise, second, noise) of a two-evaluation k-diffusion step (see
/// `schedule::karras::KTwoStage`): "dpm_2" (σ̂ = `sigma`, `sigma_mid`, `sigma_to` = σ_next,
/// `noise` the s_noise·σ_up to add), "dpmpp_2s" (`sigma_mid` = σ_s, `sigma_to` = σ_down),
/// "dpmpp_sde" (`sigma_mid` = σ_s, `sigma_to` = σ_next; `eta`, `s_noise`, `r`).
#[pyfunction(name = "_k_two_stage")]
#[pyo3(signature = (kind, sigma, sigma_mid, sigma_to, noise=0.0, eta=1.0, s_noise=1.0, r=0.5))]
#[allow(clippy::too_many_arguments)]
fn k_two_stage(
    kind: &str,
    sigma: f64,
    sigma_mid: f64,
    sigma_to: f64,
    noise: f64,
    eta: f64,
    s_noise: f64,
    r: f64,
) -> PyResult<([f64; 2], f64, [f64; 4], f64)> {
    if sigma <= 0.0 || sigma_mid <= 0.0 || !sigma.is_finite() || !sigma_mid.is_finite() {
        return Err(PyErr::from(RdiffError::Value(format!(
            "sigmas: a two-stage step needs positive finite σ, got {sigma} and {sigma_mid}"
        ))));
    }
    let st = match kind {
        "dpm_2" => karras::dpm2(sigma, sigma_mid, sigma_to, noise),
        "dpmpp_2s" => karras::dpmpp_2s(sigma, sigma_mid, sigma_to, noise),
        "dpmpp_sde" => karras::dpmpp_sde(sigma, sigma_mid, sigma_to, eta, s_noise, r)?,
        _ => {
            return Err(PyErr::from(RdiffError::Value(format!(
                "kind: unknown two-stage step {kind:?}"
            ))))
        }
    };
    Ok((st.first, st.first_noise, st.second, st.noise))
}

/// (u1, u2, x) of one k-diffusion `DPMSolver` step of `order` from t to t_next (see
/// `schedule::karras::KDpmSolverStep`).
#[pyfunction(name = "_k_dpm_solver_step")]
#[pyo3(signature = (order, t, t_next, r1=0.5, r2=2.0 / 3.0))]
fn k_dpm_solver_step(
    order: usize,
    t: f64,
    t_next: f64,
    r1: f64,
    r2: f64,
) -> PyResult<(f64, [f64; 2], [f64; 3])> {
    let st = karras::dpm_solver_step(order, t, t_next, r1, r2)?;
    Ok((st.u1, st.u2, st.x))
}

/// The churn γ of `sample_euler` / `sample_heun` at σ for a run of `n_steps` steps.
#[pyfunction(name = "_k_churn_gamma")]
fn k_churn_gamma(sigma: f64, n_steps: usize, s_churn: f64, s_tmin: f64, s_tmax: f64) -> f64 {
    karras::churn_gamma(sigma, n_steps, s_churn, s_tmin, s_tmax)
}
