//! Multistep DPM-Solver / DPM-Solver++ (Lu et al. 2022, arXiv 2206.00927 and 2211.01095):
//! every per-step scalar, in f64, reduced to one linear combination the fused loops evaluate.
//!
//! A step reads the model output `mo`, the sample `x`, up to two earlier converted outputs
//! `m1`, `m2` and (SDE forms) noise `n`, and computes
//!
//! ```text
//! y    = p·x + q·mo                      (x₀ or ε prediction from the raw model output)
//! y    = clamp(y, −s, s) / s             (only with dynamic thresholding; s per sample)
//! m0   = r·x + w·y                       (the converted output; stored as the history entry)
//! prev = a·x + w0·m0 + w1·m1 + w2·m2 + c·n
//! ```
//!
//! which is diffusers' `convert_model_output` followed by its order-1/2/3 update, with the
//! divided differences D1, D2 expanded into weights on m0, m1, m2.

use crate::error::Result;
use crate::schedule::deis::deis_weights;
pub use crate::schedule::prediction::PredictionType;
use crate::value_err;

/// DPM-Solver (noise prediction) or DPM-Solver++ (data prediction), ODE or SDE; or DEIS
/// (Zhang & Chen 2022, diffusers' `DEISMultistepScheduler`): the noise-prediction solver whose
/// higher orders integrate a Lagrange polynomial in log ρ, ρ = σ/α (`schedule::deis`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    DpmSolver,
    DpmSolverPp,
    SdeDpmSolver,
    SdeDpmSolverPp,
    Deis,
}

impl Algorithm {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "dpmsolver" => Self::DpmSolver,
            "dpmsolver++" => Self::DpmSolverPp,
            "sde-dpmsolver" => Self::SdeDpmSolver,
            "sde-dpmsolver++" => Self::SdeDpmSolverPp,
            "deis" => Self::Deis,
            _ => {
                return value_err!(
                    "algorithm_type: unknown {s:?}; expected \"dpmsolver++\", \"dpmsolver\", \
                     \"sde-dpmsolver++\", \"sde-dpmsolver\" or \"deis\""
                )
            }
        })
    }

    /// Whether the solver integrates the data prediction x₀ (the "++" forms).
    pub fn data_prediction(self) -> bool {
        matches!(self, Self::DpmSolverPp | Self::SdeDpmSolverPp)
    }

    pub fn stochastic(self) -> bool {
        matches!(self, Self::SdeDpmSolver | Self::SdeDpmSolverPp)
    }
}

/// How the second-order correction is formed (DEIS: its log-ρ polynomial, the only one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SolverType {
    Midpoint,
    Heun,
    LogRho,
}

impl SolverType {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "midpoint" => Ok(Self::Midpoint),
            "heun" => Ok(Self::Heun),
            "logrho" => Ok(Self::LogRho),
            _ => value_err!(
                "solver_type: unknown {s:?}; expected \"midpoint\", \"heun\" or \"logrho\""
            ),
        }
    }
}

/// The point (α, σ) of the forward process at one step, and its λ = log α − log σ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub alpha: f64,
    pub sigma: f64,
}

impl Point {
    /// From diffusers' σ̃ = √((1−ᾱ)/ᾱ) (or, for flow matching, the flow σ).
    pub fn from_sigma(sigma_tilde: f64, flow: bool) -> Self {
        if flow {
            Self {
                alpha: 1.0 - sigma_tilde,
                sigma: sigma_tilde,
            }
        } else {
            let alpha = 1.0 / (sigma_tilde * sigma_tilde + 1.0).sqrt();
            Self {
                alpha,
                sigma: sigma_tilde * alpha,
            }
        }
    }

    pub fn lambda(&self) -> f64 {
        self.alpha.ln() - self.sigma.ln()
    }
}

/// The scalars of one fused step (see the module docs for the formula).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepCoefficients {
    pub p: f64,
    pub q: f64,
    pub r: f64,
    pub w: f64,
    pub a: f64,
    pub w0: f64,
    pub w1: f64,
    pub w2: f64,
    pub c: f64,
}

/// Model-output conversion at point `s`: (p, q) of y = p·x + q·mo and (r, w) of m0 = r·x + w·y.
///
/// With thresholding the clamp acts on the x₀ prediction, so the noise-prediction solver first
/// forms x₀ and converts back to ε afterwards, as diffusers does.
pub(crate) fn conversion(
    prediction: PredictionType,
    algorithm: Algorithm,
    thresholding: bool,
    s: Point,
    flow_sigma: f64,
) -> Result<(f64, f64, f64, f64)> {
    let Point { alpha, sigma } = s;
    let to_x0 = match prediction {
        PredictionType::Epsilon => (1.0 / alpha, -sigma / alpha),
        PredictionType::Sample => (0.0, 1.0),
        PredictionType::VPrediction => (alpha, -sigma),
        PredictionType::FlowPrediction => (1.0, -flow_sigma),
    };
    if algorithm.data_prediction() {
        return Ok((to_x0.0, to_x0.1, 0.0, 1.0));
    }
    // DEIS converts a flow model's output through x₀, as diffusers' does
    let deis_flow = algorithm == Algorithm::Deis && prediction == PredictionType::FlowPrediction;
    if thresholding || deis_flow {
        if prediction == PredictionType::FlowPrediction && !deis_flow {
            return value_err!(
                "prediction_type: \"flow_prediction\" is only supported with the dpmsolver++ \
                 algorithm types"
            );
        }
        // ε = (x − α·x₀)/σ after clamping x₀.
        return Ok((to_x0.0, to_x0.1, 1.0 / sigma, -alpha / sigma));
    }
    let to_eps = match prediction {
        PredictionType::Epsilon => (0.0, 1.0),
        PredictionType::Sample => (1.0 / sigma, -alpha / sigma),
        PredictionType::VPrediction => (sigma, alpha),
        PredictionType::FlowPrediction => {
            return value_err!(
                "prediction_type: \"flow_prediction\" is only supported with the dpmsolver++ \
                 algorithm types"
            )
        }
    };
    Ok((to_eps.0, to_eps.1, 0.0, 1.0))
}

/// The first-order part of a step from `s` to `t` over the log-SNR increment `h`: the weight `a`
/// of the sample, the noise scale `c` (SDE forms) and the weight `b0` of the zeroth Taylor term.
pub(crate) fn first_order_terms(
    algorithm: Algorithm,
    t: Point,
    s: Point,
    h: f64,
) -> (f64, f64, f64) {
    let (at, st) = (t.alpha, t.sigma);
    let em1 = (-h).exp_m1(); // e^{−h} − 1
    let ep1 = h.exp_m1(); // e^{h} − 1
    let e2m1 = -(-2.0 * h).exp_m1(); // 1 − e^{−2h}
    use Algorithm::*;
    let (a, c) = match algorithm {
        DpmSolverPp => (st / s.sigma, 0.0),
        DpmSolver | Deis => (at / s.alpha, 0.0),
        SdeDpmSolverPp => (st / s.sigma * (-h).exp(), st * e2m1.max(0.0).sqrt()),
        SdeDpmSolver => (at / s.alpha, st * (2.0 * h).exp_m1().max(0.0).sqrt()),
    };
    let b0 = match algorithm {
        DpmSolverPp => -at * em1,
        DpmSolver | Deis => -st * ep1,
        SdeDpmSolverPp => at * e2m1,
        SdeDpmSolver => -2.0 * st * ep1,
    };
    (a, c, b0)
}

/// The weight of the first divided difference D1 in a second-order update to `t` over `h`.
pub(crate) fn second_order_weight(
    algorithm: Algorithm,
    solver_type: SolverType,
    t: Point,
    h: f64,
) -> Result<f64> {
    let (at, st) = (t.alpha, t.sigma);
    let em1 = (-h).exp_m1();
    let ep1 = h.exp_m1();
    let e2m1 = -(-2.0 * h).exp_m1();
    use Algorithm::*;
    Ok(match (algorithm, solver_type) {
        (DpmSolverPp, SolverType::Midpoint) => -0.5 * at * em1,
        (DpmSolverPp, SolverType::Heun) => at * (em1 / h + 1.0),
        (DpmSolver, SolverType::Midpoint) => -0.5 * st * ep1,
        (DpmSolver, SolverType::Heun) => -st * (ep1 / h - 1.0),
        (SdeDpmSolverPp, SolverType::Midpoint) => 0.5 * at * e2m1,
        (SdeDpmSolverPp, SolverType::Heun) => at * (e2m1 / (-2.0 * h) + 1.0),
        (SdeDpmSolver, SolverType::Midpoint) => -st * ep1,
        (SdeDpmSolver, SolverType::Heun) => -2.0 * st * (ep1 / h - 1.0),
        (Deis, _) | (_, SolverType::LogRho) => return deis_only(),
    })
}

/// DEIS's higher orders are `schedule::deis`'s multistep weights, with the log-ρ solver type.
fn deis_only<T>() -> Result<T> {
    value_err!(
        "algorithm_type \"deis\" and solver_type \"logrho\" go together, in the multistep \
         scheduler only (DEISMultistepScheduler)"
    )
}

/// The weights (b1, b2) of D1 and D2 in a third-order update to `t` over `h`.
pub(crate) fn third_order_weights(algorithm: Algorithm, t: Point, h: f64) -> Result<(f64, f64)> {
    let (at, st) = (t.alpha, t.sigma);
    let em1 = (-h).exp_m1();
    let ep1 = h.exp_m1();
    let e2m1 = -(-2.0 * h).exp_m1();
    use Algorithm::*;
    Ok(match algorithm {
        DpmSolverPp => (at * (em1 / h + 1.0), -at * ((em1 + h) / (h * h) - 0.5)),
        DpmSolver => (-st * (ep1 / h - 1.0), -st * ((ep1 - h) / (h * h) - 0.5)),
        SdeDpmSolverPp => (
            at * (e2m1 / (-2.0 * h) + 1.0),
            at * ((e2m1 - 2.0 * h) / (4.0 * h * h) - 0.5),
        ),
        SdeDpmSolver => {
            return value_err!(
                "solver_order: 3 is not available with algorithm_type \
                 \"sde-dpmsolver\" (diffusers has no third-order update for it)"
            )
        }
        Deis => return deis_only(),
    })
}

/// The inputs of one multistep update.
#[derive(Clone, Copy, Debug)]
pub struct MultistepStep {
    pub algorithm: Algorithm,
    pub solver_type: SolverType,
    pub prediction: PredictionType,
    pub thresholding: bool,
    /// The order actually used at this step (1, 2 or 3), after warm-up and lower-order-final.
    pub order: usize,
    /// The target point t and the current and earlier points s0, s1, s2 (s1, s2 unused below
    /// orders 2 and 3).
    pub t: Point,
    pub s0: Point,
    pub s1: Point,
    pub s2: Point,
    /// The flow σ at s0 (only for flow prediction).
    pub flow_sigma: f64,
}

/// The coefficients of one multistep DPM-Solver step, as diffusers' formulas give them.
pub fn multistep_coefficients(st: &MultistepStep) -> Result<StepCoefficients> {
    let (p, q, r, w) = conversion(
        st.prediction,
        st.algorithm,
        st.thresholding,
        st.s0,
        st.flow_sigma,
    )?;
    let lt = st.t.lambda();
    let l0 = st.s0.lambda();
    let h = lt - l0;
    // h = +∞ at a final σ = 0: the first-order data-prediction step is then exactly x₀.
    if h.is_nan() {
        return value_err!("the step's log-SNR increment is not a number");
    }
    if h == 0.0 {
        // A zero-length step (repeated σ, e.g. Karras σ_min followed by a σ_min final): the
        // solution is the sample itself; the divided differences would divide 0 by 0.
        return Ok(StepCoefficients {
            p,
            q,
            r,
            w,
            a: 1.0,
            ..Default::default()
        });
    }
    let (a, c, b0) = first_order_terms(st.algorithm, st.t, st.s0, h);
    let mut co = StepCoefficients {
        p,
        q,
        r,
        w,
        a,
        c,
        ..Default::default()
    };
    match st.order {
        1 => co.w0 = b0,
        2 | 3 if st.algorithm == Algorithm::Deis => {
            let rho = |p: Point| p.sigma / p.alpha;
            let pts = [rho(st.s0), rho(st.s1), rho(st.s2)];
            let w = deis_weights(st.t.alpha, rho(st.t), &pts[..st.order])?;
            co.w0 = w[0];
            co.w1 = w[1];
            co.w2 = w.get(2).copied().unwrap_or(0.0);
        }
        2 => {
            let h0 = l0 - st.s1.lambda();
            let r0 = h0 / h;
            let b1 = second_order_weight(st.algorithm, st.solver_type, st.t, h)?;
            // D1 = (m0 − m1)/r0.
            co.w0 = b0 + b1 / r0;
            co.w1 = -b1 / r0;
        }
        3 => {
            let l1 = st.s1.lambda();
            let (h0, h1) = (l0 - l1, l1 - st.s2.lambda());
            let (r0, r1) = (h0 / h, h1 / h);
            let (b1, b2) = third_order_weights(st.algorithm, st.t, h)?;
            // D1_0 = (m0−m1)/r0, D1_1 = (m1−m2)/r1, D1 = D1_0 + k(D1_0 − D1_1),
            // D2 = (D1_0 − D1_1)/(r0 + r1), k = r0/(r0 + r1).
            let k = r0 / (r0 + r1);
            let e = b1 * (1.0 + k) + b2 / (r0 + r1); // weight of D1_0
            let f = -b1 * k - b2 / (r0 + r1); // weight of D1_1
            co.w0 = b0 + e / r0;
            co.w1 = -e / r0 + f / r1;
            co.w2 = -f / r1;
        }
        o => return value_err!("solver_order: must be 1, 2 or 3, got {o}"),
    }
    let all = [co.p, co.q, co.r, co.w, co.a, co.w0, co.w1, co.w2, co.c];
    if all.iter().any(|v| !v.is_finite()) {
        return value_err!(
            "the order-{} step from σ={} to σ={} has non-finite coefficients (a final σ of 0 \
             needs a first-order data-prediction step)",
            st.order,
            st.s0.sigma,
            st.t.sigma
        );
    }
    Ok(co)
}

/// The order of multistep step `step_index` of `steps` (diffusers' rule): `lower_order_nums`
/// earlier outputs are in the history; the last step (and, below 15 steps with
/// `lower_order_final`, the last two) drop to lower orders, as does a final σ of 0.
pub fn multistep_order(
    step_index: usize,
    steps: usize,
    solver_order: usize,
    lower_order_nums: usize,
    rule: MultistepRule,
) -> usize {
    let last = step_index + 1 == steps;
    let lower_final = last
        && (rule.euler_at_final || (rule.lower_order_final && steps < 15) || rule.final_sigma_zero);
    let lower_second = step_index + 2 == steps && rule.lower_order_final && steps < 15;
    if solver_order == 1 || lower_order_nums < 1 || lower_final {
        1
    } else if solver_order == 2 || lower_order_nums < 2 || lower_second {
        2
    } else {
        3
    }
}

/// The configuration flags of [`multistep_order`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MultistepRule {
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub final_sigma_zero: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(sigma: f64) -> Point {
        Point::from_sigma(sigma, false)
    }

    fn step(alg: Algorithm, order: usize) -> MultistepStep {
        MultistepStep {
            algorithm: alg,
            solver_type: SolverType::Midpoint,
            prediction: PredictionType::Epsilon,
            thresholding: false,
            order,
            t: pt(0.5),
            s0: pt(1.0),
            s1: pt(2.0),
            s2: pt(4.0),
            flow_sigma: 0.0,
        }
    }

    /// A constant model output m makes every divided difference vanish, so all orders agree;
    /// and an exact ODE solution for constant x₀ follows: x_t = σ_t/σ_s x_s + α_t(1−σ_t/σ_s·α_s/α_t)x₀.
    #[test]
    fn orders_agree_when_the_model_output_is_constant() {
        for alg in [Algorithm::DpmSolverPp, Algorithm::DpmSolver] {
            let c1 = multistep_coefficients(&step(alg, 1)).unwrap();
            for order in [2, 3] {
                let c = multistep_coefficients(&step(alg, order)).unwrap();
                assert!((c.w0 + c.w1 + c.w2 - c1.w0).abs() < 1e-12);
                assert_eq!(c.a, c1.a);
            }
        }
    }

    #[test]
    fn dpmsolver_pp_first_order_is_ddim() {
        let st = step(Algorithm::DpmSolverPp, 1);
        let c = multistep_coefficients(&st).unwrap();
        // DDIM (η = 0) in x₀ form: x_t = α_t x₀ + σ_t ε, ε = (x_s − α_s x₀)/σ_s.
        let (t, s) = (st.t, st.s0);
        assert!((c.a - t.sigma / s.sigma).abs() < 1e-14);
        assert!((c.w0 - (t.alpha - t.sigma / s.sigma * s.alpha)).abs() < 1e-14);
    }

    #[test]
    fn sde_dpmsolver_third_order_is_refused() {
        assert!(multistep_coefficients(&step(Algorithm::SdeDpmSolver, 3)).is_err());
    }
}
