//! The DPM-Solver reference sampler (`DPM_Solver.sample` in LuChengTHU/dpm-solver) in scalars.
//!
//! Every update of the reference is a linear combination of the current sample `x` and model
//! values `m_k` (the noise prediction ε for "dpmsolver", the data prediction x₀ for
//! "dpmsolver++"):
//!
//! ```text
//! x_out = c_x·x + Σ_k c_k·m_k
//! ```
//!
//! This module gives those weights in f64: the multistep updates (through
//! `dpm_solver::multistep_coefficients`, whose formulas are the reference's multistep ones),
//! the singlestep DPM-Solver-1/2/3 updates with their intermediate times
//! s₁ = λ⁻¹(λ_s + r₁h), s₂ = λ⁻¹(λ_s + r₂h), the per-step orders and outer time steps of the
//! "singlestep" and "singlestep_fixed" methods, the multistep orders (warm-up and
//! lower-order-final) and the adaptive step-size rule.

use super::dpm_solver::{
    multistep_coefficients, Algorithm, MultistepStep, Point, PredictionType, SolverType,
};
use super::spacing::{reference_time_steps, SkipType};
use super::NoiseSchedule;
use crate::error::Result;
use crate::value_err;

/// The reference's `algorithm_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefAlgorithm {
    /// Noise prediction: the model values are ε.
    DpmSolver,
    /// Data prediction: the model values are x₀ = (x − σ_t ε)/α_t (after correction).
    DpmSolverPp,
}

impl RefAlgorithm {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "dpmsolver" => Ok(Self::DpmSolver),
            "dpmsolver++" => Ok(Self::DpmSolverPp),
            _ => value_err!("algorithm: unknown {s:?}; expected \"dpmsolver++\" or \"dpmsolver\""),
        }
    }
}

/// The reference's `solver_type`: "dpmsolver" (diffusers' "midpoint") or "taylor" ("heun").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefSolverType {
    DpmSolver,
    Taylor,
}

impl RefSolverType {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "dpmsolver" => Ok(Self::DpmSolver),
            "taylor" => Ok(Self::Taylor),
            _ => value_err!("solver_type: unknown {s:?}; expected \"dpmsolver\" or \"taylor\""),
        }
    }
}

/// The reference's sampling methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Multistep,
    Singlestep,
    SinglestepFixed,
    Adaptive,
}

impl Method {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "multistep" => Self::Multistep,
            "singlestep" => Self::Singlestep,
            "singlestep_fixed" => Self::SinglestepFixed,
            "adaptive" => Self::Adaptive,
            _ => {
                return value_err!(
                    "method: unknown {s:?}; expected \"multistep\", \"singlestep\", \
                     \"singlestep_fixed\" or \"adaptive\""
                )
            }
        })
    }
}

/// `x_out = x·x_in + Σ_k m[k]·model_k`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Combination {
    pub x: f64,
    pub m: Vec<f64>,
}

/// One singlestep DPM-Solver-k step from s to t: the model is evaluated at s and at the
/// intermediate `times` (s₁, s₂); stage j < k−1 gives the sample at `times[j]`, the last
/// stage the sample at t. Stage j combines x (at s) and the model values m_s, m_s1, ….
#[derive(Clone, Debug, PartialEq)]
pub struct SinglestepPlan {
    pub times: Vec<f64>,
    pub stages: Vec<Combination>,
}

/// The outer time steps of a singlestep run, each step's order and its (r₁, r₂).
#[derive(Clone, Debug, PartialEq)]
pub struct SinglestepSchedule {
    pub times: Vec<f64>,
    pub orders: Vec<usize>,
    pub ratios: Vec<(Option<f64>, Option<f64>)>,
}

/// The reference solver's per-step scalars over one noise schedule.
pub struct ReferenceSolver<'a> {
    pub schedule: &'a NoiseSchedule,
    pub algorithm: RefAlgorithm,
    pub solver_type: RefSolverType,
}

fn check_order(order: usize) -> Result<()> {
    if !(1..=3).contains(&order) {
        return value_err!("order: must be 1, 2 or 3, got {order}");
    }
    Ok(())
}

impl ReferenceSolver<'_> {
    fn point(&self, t: f64) -> Point {
        Point {
            alpha: self.schedule.alpha(t),
            sigma: self.schedule.sigma(t),
        }
    }

    /// (p, q) of the data prediction x₀ = p·x + q·ε at time t: (1/α_t, −σ_t/α_t).
    pub fn data_prediction(&self, t: f64) -> (f64, f64) {
        let (a, s) = (self.schedule.alpha(t), self.schedule.sigma(t));
        (1.0 / a, -s / a)
    }

    /// The multistep update of order `order` from `t_prev.last()` to t using the last `order`
    /// entries of `t_prev` (oldest first). The weights `m` are ordered newest first:
    /// m[0] weighs the model value at `t_prev.last()`, m[1] the one before, ….
    pub fn multistep(&self, t_prev: &[f64], t: f64, order: usize) -> Result<Combination> {
        check_order(order)?;
        if t_prev.len() < order {
            return value_err!(
                "an order-{order} multistep update needs {order} earlier times, got {}",
                t_prev.len()
            );
        }
        let n = t_prev.len();
        let back = |k: usize| self.point(t_prev[n - 1 - k.min(order - 1)]);
        let st = MultistepStep {
            algorithm: match self.algorithm {
                RefAlgorithm::DpmSolver => Algorithm::DpmSolver,
                RefAlgorithm::DpmSolverPp => Algorithm::DpmSolverPp,
            },
            solver_type: match self.solver_type {
                RefSolverType::DpmSolver => SolverType::Midpoint,
                RefSolverType::Taylor => SolverType::Heun,
            },
            prediction: PredictionType::Epsilon,
            thresholding: false,
            order,
            t: self.point(t),
            s0: back(0),
            s1: back(1),
            s2: back(2),
            flow_sigma: 0.0,
        };
        let co = multistep_coefficients(&st)?;
        Ok(Combination {
            x: co.a,
            m: [co.w0, co.w1, co.w2][..order].to_vec(),
        })
    }

    /// The singlestep DPM-Solver-`order` step from s to t (r₁ default ½ for order 2, r₁ = ⅓,
    /// r₂ = ⅔ for order 3), as the reference's `singlestep_dpm_solver_*_update`.
    pub fn singlestep(
        &self,
        s: f64,
        t: f64,
        order: usize,
        r1: Option<f64>,
        r2: Option<f64>,
    ) -> Result<SinglestepPlan> {
        check_order(order)?;
        let sch = self.schedule;
        let (ls, lt) = (sch.lambda(s), sch.lambda(t));
        let h = lt - ls;
        if !(h.is_finite() && h != 0.0) {
            return value_err!("the step from t={s} to t={t} has log-SNR increment {h}");
        }
        let r1 = r1.unwrap_or(if order == 2 { 0.5 } else { 1.0 / 3.0 });
        let r2 = r2.unwrap_or(2.0 / 3.0);
        if order >= 2 && !(r1 > 0.0 && r1 < 1.0 + 1e-12) {
            return value_err!("r1: must lie in (0, 1], got {r1}");
        }
        if order == 3 && !(r2 > r1 && r2 < 1.0 + 1e-12) {
            return value_err!("r2: must lie in (r1, 1] = ({r1}, 1], got {r2}");
        }
        let (al_s, sg_s) = (sch.alpha(s), sch.sigma(s));
        let (al_t, sg_t) = (sch.alpha(t), sch.sigma(t));
        let mut times = Vec::new();
        if order >= 2 {
            times.push(sch.inverse_lambda(ls + r1 * h));
        }
        if order == 3 {
            times.push(sch.inverse_lambda(ls + r2 * h));
        }
        let pp = self.algorithm == RefAlgorithm::DpmSolverPp;
        let taylor = self.solver_type == RefSolverType::Taylor;
        // The exact linear part x_u = lin(u)·x_s and the scale of the first-order term: for
        // DPM-Solver++ lin = σ_u/σ_s, term −α_u·expm1(−k h); for DPM-Solver lin = α_u/α_s,
        // term −σ_u·expm1(k h) (k = r₁, r₂ or 1).
        let lin = |a: f64, sg: f64| if pp { sg / sg_s } else { a / al_s };
        let scale = |a: f64, sg: f64| if pp { a } else { sg };
        let em = |k: f64| {
            if pp {
                (-k * h).exp_m1()
            } else {
                (k * h).exp_m1()
            }
        };
        // φ₂-type factor expm1(∓kh)/(kh) ± 1, with the signs of the reference.
        let phi2 = |k: f64| {
            if pp {
                em(k) / (k * h) + 1.0
            } else {
                em(k) / (k * h) - 1.0
            }
        };
        // sign of the higher-order terms: + for DPM-Solver++, − for DPM-Solver.
        let sgn = if pp { 1.0 } else { -1.0 };
        let stage1 = |u: f64| -> Combination {
            let (a, sg) = (sch.alpha(u), sch.sigma(u));
            Combination {
                x: lin(a, sg),
                m: vec![-scale(a, sg) * em(r1)],
            }
        };
        let mut stages = Vec::new();
        let phi1 = em(1.0);
        let st = scale(al_t, sg_t);
        let xt = lin(al_t, sg_t);
        match order {
            1 => stages.push(Combination {
                x: xt,
                m: vec![-st * phi1],
            }),
            2 => {
                stages.push(stage1(times[0]));
                // x_t = lin·x − st·φ₁·m_s + c·(m_s1 − m_s)
                let c = if taylor {
                    sgn * (1.0 / r1) * st * phi2(1.0)
                } else {
                    -(0.5 / r1) * st * phi1
                };
                stages.push(Combination {
                    x: xt,
                    m: vec![-st * phi1 - c, c],
                });
            }
            3 => {
                stages.push(stage1(times[0]));
                let s2 = times[1];
                let (a2, sg2) = (sch.alpha(s2), sch.sigma(s2));
                // x_s2 = lin·x − sc2·expm1(∓r₂h)·m_s ± (r₂/r₁)·sc2·φ₂₂·(m_s1 − m_s)
                let c2 = sgn * (r2 / r1) * scale(a2, sg2) * phi2(r2);
                stages.push(Combination {
                    x: lin(a2, sg2),
                    m: vec![-scale(a2, sg2) * em(r2) - c2, c2, 0.0],
                });
                let p2 = phi2(1.0);
                if taylor {
                    // D1_0 = (m_s1 − m_s)/r₁, D1_1 = (m_s2 − m_s)/r₂,
                    // D1 = (r₂ D1_0 − r₁ D1_1)/(r₂ − r₁), D2 = 2 (D1_1 − D1_0)/(r₂ − r₁),
                    // x_t = lin·x − st·φ₁·m_s ± st·φ₂·D1 − st·φ₃·D2 (φ₃ = φ₂/h − ½).
                    let p3 = p2 / h - 0.5;
                    let d10 = [-1.0 / r1, 1.0 / r1, 0.0];
                    let d11 = [-1.0 / r2, 0.0, 1.0 / r2];
                    let mut m = vec![-st * phi1, 0.0, 0.0];
                    for k in 0..3 {
                        let d1 = (r2 * d10[k] - r1 * d11[k]) / (r2 - r1);
                        let d2 = 2.0 * (d11[k] - d10[k]) / (r2 - r1);
                        m[k] += sgn * st * p2 * d1 - st * p3 * d2;
                    }
                    stages.push(Combination { x: xt, m });
                } else {
                    // x_t = lin·x − st·φ₁·m_s ± (1/r₂)·st·φ₂·(m_s2 − m_s)
                    let c = sgn * (1.0 / r2) * st * p2;
                    stages.push(Combination {
                        x: xt,
                        m: vec![-st * phi1 - c, 0.0, c],
                    });
                }
            }
            _ => unreachable!(),
        }
        let finite = stages
            .iter()
            .all(|c| c.x.is_finite() && c.m.iter().all(|v| v.is_finite()))
            && times.iter().all(|v| v.is_finite());
        if !finite {
            return value_err!(
                "the order-{order} singlestep update from t={s} to t={t} has non-finite \
                 coefficients"
            );
        }
        Ok(SinglestepPlan { times, stages })
    }
}

/// The order of each multistep update (steps 1..=steps): a warm-up of orders 1, 2, … and,
/// with `lower_order_final` and fewer than 10 steps (the reference's threshold; diffusers
/// uses 15), decreasing orders at the end.
pub fn multistep_orders(steps: usize, order: usize, lower_order_final: bool) -> Result<Vec<usize>> {
    check_order(order)?;
    if steps < order {
        return value_err!(
            "steps: the multistep method of order {order} needs at least {order} steps, got \
             {steps}"
        );
    }
    Ok((1..=steps)
        .map(|step| {
            if step < order {
                step
            } else if lower_order_final && steps < 10 {
                order.min(steps + 1 - step)
            } else {
                order
            }
        })
        .collect())
}

/// The reference's `get_orders_and_timesteps_for_singlestep_solver` ("singlestep") or the
/// fixed-order schedule ("singlestep_fixed": ⌊steps/order⌋ steps of order `order`), with each
/// step's (r₁, r₂) from its inner time steps.
pub fn singlestep_schedule(
    schedule: &NoiseSchedule,
    steps: usize,
    order: usize,
    skip: SkipType,
    t_start: f64,
    t_end: f64,
    fixed: bool,
) -> Result<SinglestepSchedule> {
    check_order(order)?;
    if steps == 0 {
        return value_err!("steps: must be at least 1, got 0");
    }
    let (orders, times) = if fixed {
        if steps < order {
            return value_err!(
                "steps: the singlestep_fixed method of order {order} needs at least {order} \
                 steps, got {steps}"
            );
        }
        let k = steps / order;
        (
            vec![order; k],
            reference_time_steps(schedule, skip, t_start, t_end, k)?,
        )
    } else {
        let (k, orders) = match order {
            3 => {
                let k = steps / 3 + 1;
                let mut o = vec![
                    3;
                    k.saturating_sub(match steps % 3 {
                        0 => 2,
                        _ => 1,
                    })
                ];
                match steps % 3 {
                    0 => o.extend([2, 1]),
                    1 => o.push(1),
                    _ => o.push(2),
                }
                (k, o)
            }
            2 => {
                if steps.is_multiple_of(2) {
                    (steps / 2, vec![2; steps / 2])
                } else {
                    let k = steps / 2 + 1;
                    let mut o = vec![2; k - 1];
                    o.push(1);
                    (k, o)
                }
            }
            _ => (steps, vec![1; steps]),
        };
        let times = if skip == SkipType::LogSnr {
            reference_time_steps(schedule, skip, t_start, t_end, k)?
        } else {
            let all = reference_time_steps(schedule, skip, t_start, t_end, steps)?;
            let mut idx = 0;
            let mut out = vec![all[0]];
            for &o in &orders {
                idx += o;
                out.push(all[idx]);
            }
            out
        };
        (orders, times)
    };
    let mut ratios = Vec::with_capacity(orders.len());
    for (i, &o) in orders.iter().enumerate() {
        let inner = reference_time_steps(schedule, skip, times[i], times[i + 1], o)?;
        let lam: Vec<f64> = inner.iter().map(|&u| schedule.lambda(u)).collect();
        let h = lam[o] - lam[0];
        let r1 = (o > 1).then(|| (lam[1] - lam[0]) / h);
        let r2 = (o > 2).then(|| (lam[2] - lam[0]) / h);
        ratios.push((r1, r2));
    }
    Ok(SinglestepSchedule {
        times,
        orders,
        ratios,
    })
}

/// The reference's step-size rule after a trial with error norm `err`:
/// h ← min(θ·h·err^(−1/order), λ₀ − λ_s).
pub fn adaptive_next_h(h: f64, err: f64, order: usize, theta: f64, remaining: f64) -> f64 {
    let grown = theta * h * err.powf(-1.0 / order as f64);
    grown.min(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp() -> NoiseSchedule {
        NoiseSchedule::linear_vp(0.1, 20.0).unwrap()
    }

    /// With a constant model value, every order reduces to the exact first-order update.
    #[test]
    fn singlestep_orders_agree_on_constant_model_values() {
        let sch = vp();
        for alg in [RefAlgorithm::DpmSolver, RefAlgorithm::DpmSolverPp] {
            for ty in [RefSolverType::DpmSolver, RefSolverType::Taylor] {
                let s = ReferenceSolver {
                    schedule: &sch,
                    algorithm: alg,
                    solver_type: ty,
                };
                let one = s.singlestep(0.8, 0.5, 1, None, None).unwrap();
                let w1: f64 = one.stages[0].m.iter().sum();
                for order in [2, 3] {
                    let p = s.singlestep(0.8, 0.5, order, None, None).unwrap();
                    let last = p.stages.last().unwrap();
                    assert!((last.x - one.stages[0].x).abs() < 1e-14);
                    assert!((last.m.iter().sum::<f64>() - w1).abs() < 1e-12);
                    // Each intermediate stage is the exact first-order step to its time.
                    for (j, &u) in p.times.iter().enumerate() {
                        let o = s.singlestep(0.8, u, 1, None, None).unwrap();
                        let sum: f64 = p.stages[j].m.iter().sum();
                        assert!((sum - o.stages[0].m[0]).abs() < 1e-8);
                    }
                }
            }
        }
    }

    #[test]
    fn intermediate_times_split_lambda() {
        let sch = vp();
        let s = ReferenceSolver {
            schedule: &sch,
            algorithm: RefAlgorithm::DpmSolverPp,
            solver_type: RefSolverType::DpmSolver,
        };
        let p = s.singlestep(0.9, 0.3, 3, None, None).unwrap();
        let (ls, lt) = (sch.lambda(0.9), sch.lambda(0.3));
        assert!((sch.lambda(p.times[0]) - (ls + (lt - ls) / 3.0)).abs() < 1e-9);
        assert!((sch.lambda(p.times[1]) - (ls + 2.0 * (lt - ls) / 3.0)).abs() < 1e-9);
    }

    #[test]
    fn singlestep_orders_follow_the_reference() {
        let sch = vp();
        let o = |steps, order| {
            singlestep_schedule(&sch, steps, order, SkipType::TimeUniform, 1.0, 1e-3, false)
                .unwrap()
                .orders
        };
        assert_eq!(o(6, 3), vec![3, 2, 1]);
        assert_eq!(o(7, 3), vec![3, 3, 1]);
        assert_eq!(o(8, 3), vec![3, 3, 2]);
        assert_eq!(o(5, 2), vec![2, 2, 1]);
        assert_eq!(o(4, 1), vec![1; 4]);
        let s = singlestep_schedule(&sch, 7, 3, SkipType::LogSnr, 1.0, 1e-3, false).unwrap();
        assert_eq!(s.times.len(), 4);
        let (r1, r2) = s.ratios[0];
        assert!((r1.unwrap() - 1.0 / 3.0).abs() < 1e-9 && (r2.unwrap() - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn multistep_orders_warm_up_and_lower_at_the_end() {
        assert_eq!(multistep_orders(5, 3, true).unwrap(), vec![1, 2, 3, 2, 1]);
        assert_eq!(multistep_orders(10, 3, true).unwrap()[9], 3);
        assert_eq!(multistep_orders(5, 3, false).unwrap(), vec![1, 2, 3, 3, 3]);
        assert!(multistep_orders(2, 3, true).is_err());
    }
}
