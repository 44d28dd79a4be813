//! Singlestep DPM-Solver / DPM-Solver++ (Lu et al. 2022, arXiv 2206.00927 and 2211.01095), as
//! diffusers' `DPMSolverSinglestepScheduler` runs it: the steps are grouped by `order_list`
//! (e.g. `[1, 2, 1, 2, …]`); every step of a group starts from the sample `x` saved at the
//! group's first step, and the k-th step of a group is an order-k update that reads the k
//! converted model outputs of the group so far.
//!
//! A step at schedule index i of order k goes from the group start s_{k−1} = σ_{i−k+1} to
//! t = σ_{i+1}, with intermediate points s0 = σ_i (the current one), s1 = σ_{i−1}, s2 = σ_{i−2}.
//! It is the same linear combination as the multistep step (see `dpm_solver`):
//!
//! ```text
//! y    = p·x_cur + q·mo                  (conversion at s0, from the *current* sample)
//! y    = clamp(y, −s, s) / s             (only with dynamic thresholding)
//! m0   = r·x_cur + w·y                   (stored as the history entry)
//! prev = a·x + w0·m0 + w1·m1 + w2·m2 + c·n   (x: the sample saved at the group's start)
//! ```

use super::dpm_solver::{
    conversion, first_order_terms, second_order_weight, third_order_weights, Algorithm,
    MultistepStep, SolverType, StepCoefficients,
};
use crate::error::Result;
use crate::value_err;

/// The inputs of one singlestep update: the multistep fields, read per group — `order` is
/// the update's position within its group, and s1, s2 are the group's earlier points (the
/// group starts at s_{order−1}).
pub type SinglestepStep = MultistepStep;

/// The coefficients of one singlestep DPM-Solver update, with diffusers' formulas: `m0`, `m1`,
/// `m2` are the converted outputs at s0, s1, s2 and `x` the sample at the group's start.
pub fn singlestep_coefficients(st: &SinglestepStep) -> Result<StepCoefficients> {
    if st.algorithm == Algorithm::Deis || st.solver_type == SolverType::LogRho {
        return value_err!(
            "algorithm_type \"deis\" (solver_type \"logrho\") is multistep only \
             (DEISMultistepScheduler)"
        );
    }
    if st.algorithm == Algorithm::SdeDpmSolver {
        return value_err!(
            "algorithm_type: \"sde-dpmsolver\" has no singlestep form in diffusers; use \
             \"sde-dpmsolver++\""
        );
    }
    let (p, q, r, w) = conversion(
        st.prediction,
        st.algorithm,
        st.thresholding,
        st.s0,
        st.flow_sigma,
    )?;
    let lt = st.t.lambda();
    let l0 = st.s0.lambda();
    // The group's start point and the step's log-SNR increment from it.
    let start = match st.order {
        1 => st.s0,
        2 => st.s1,
        3 => st.s2,
        o => return value_err!("solver_order: must be 1, 2 or 3, got {o}"),
    };
    let h = lt - start.lambda();
    if h.is_nan() {
        return value_err!("the step's log-SNR increment is not a number");
    }
    if h == 0.0 && st.order == 1 {
        // A zero-length step (Karras σ_min followed by a σ_min final): the sample itself.
        return Ok(StepCoefficients {
            p,
            q,
            r,
            w,
            a: 1.0,
            ..Default::default()
        });
    }
    let (a, c, b0) = first_order_terms(st.algorithm, st.t, start, h);
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
        2 => {
            // D0 = m1, D1 = (m0 − m1)/r0 with r0 = (λ_s0 − λ_s1)/h.
            let r0 = (l0 - st.s1.lambda()) / h;
            let b1 = second_order_weight(st.algorithm, st.solver_type, st.t, h)?;
            co.w0 = b1 / r0;
            co.w1 = b0 - b1 / r0;
        }
        _ => {
            // D0 = m2, D1_1 = (m0 − m2)/r0, D1_0 = (m1 − m2)/r1 with r0, r1 the increments of
            // s0, s1 from s2 over h. Midpoint uses b1·D1_1; Heun uses b1·D1 + b2·D2 with
            // D1 = (r0·D1_0 − r1·D1_1)/(r0 − r1) and D2 = 2(D1_1 − D1_0)/(r0 − r1).
            let l2 = st.s2.lambda();
            let (r0, r1) = ((l0 - l2) / h, (st.s1.lambda() - l2) / h);
            let (b1, b2) = third_order_weights(st.algorithm, st.t, h)?;
            // e, f: the weights of D1_1 and D1_0.
            let (e, f) = match st.solver_type {
                SolverType::Midpoint => (b1, 0.0),
                SolverType::Heun => {
                    let d = r0 - r1;
                    (-b1 * r1 / d + 2.0 * b2 / d, b1 * r0 / d - 2.0 * b2 / d)
                }
                SolverType::LogRho => return value_err!("solver_type: \"logrho\" is DEIS's"),
            };
            co.w0 = e / r0;
            co.w1 = f / r1;
            co.w2 = b0 - e / r0 - f / r1;
        }
    }
    let all = [co.p, co.q, co.r, co.w, co.a, co.w0, co.w1, co.w2, co.c];
    if all.iter().any(|v| !v.is_finite()) {
        return value_err!(
            "the order-{} singlestep update from σ={} to σ={} has non-finite coefficients (a \
             final σ of 0 needs a first-order data-prediction step; repeated σ values make a \
             zero-length step)",
            st.order,
            start.sigma,
            st.t.sigma
        );
    }
    Ok(co)
}

/// diffusers' `get_order_list`: the order of each of `steps` steps for `solver_order`.
///
/// Without `lower_order_final` the list repeats `[1, 2(, 3)]` and is cut to whole groups (so it
/// is shorter than `steps` when `solver_order` does not divide it; diffusers' `set_timesteps`
/// turns `lower_order_final` on in that case). With it, the tail group is shortened and the
/// last step is first order. With a final σ of zero the last order is 1.
pub fn order_list(
    steps: usize,
    solver_order: usize,
    lower_order_final: bool,
    final_sigma_zero: bool,
) -> Result<Vec<usize>> {
    if !(1..=3).contains(&solver_order) {
        return value_err!("solver_order: must be 1, 2 or 3, got {solver_order}");
    }
    let groups = |g: &[usize], n: usize| -> Vec<usize> { g.repeat(n) };
    let mut orders = match (solver_order, lower_order_final) {
        (1, _) => vec![1; steps],
        (2, false) => groups(&[1, 2], steps / 2),
        (3, false) => groups(&[1, 2, 3], steps / 3),
        (2, true) => {
            if steps.is_multiple_of(2) {
                let mut v = groups(&[1, 2], (steps / 2).saturating_sub(1));
                v.extend([1, 1]);
                v
            } else {
                let mut v = groups(&[1, 2], steps / 2);
                v.push(1);
                v
            }
        }
        _ => match steps % 3 {
            0 => {
                let mut v = groups(&[1, 2, 3], (steps / 3).saturating_sub(1));
                v.extend([1, 2, 1]);
                v
            }
            1 => {
                let mut v = groups(&[1, 2, 3], steps / 3);
                v.push(1);
                v
            }
            _ => {
                let mut v = groups(&[1, 2, 3], steps / 3);
                v.extend([1, 2]);
                v
            }
        },
    };
    if steps == 0 {
        // diffusers' [1, 1] / [1, 2, 1] tails for zero steps have no meaning: no steps.
        orders.clear();
    }
    if final_sigma_zero {
        if let Some(last) = orders.last_mut() {
            *last = 1;
        }
    }
    Ok(orders)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::dpm_solver::{multistep_coefficients, Point, PredictionType};

    fn pt(sigma: f64) -> Point {
        Point::from_sigma(sigma, false)
    }

    fn step(alg: Algorithm, solver_type: SolverType, order: usize) -> SinglestepStep {
        SinglestepStep {
            algorithm: alg,
            solver_type,
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

    const ALGS: [Algorithm; 3] = [
        Algorithm::DpmSolverPp,
        Algorithm::DpmSolver,
        Algorithm::SdeDpmSolverPp,
    ];

    /// With a constant converted output every divided difference vanishes: every order is the
    /// first-order step from the group's start.
    #[test]
    fn constant_output_reduces_to_first_order_from_the_group_start() {
        for alg in ALGS {
            for solver in [SolverType::Midpoint, SolverType::Heun] {
                for (order, start) in [(2, pt(2.0)), (3, pt(4.0))] {
                    let c = singlestep_coefficients(&step(alg, solver, order)).unwrap();
                    let mut one = step(alg, solver, 1);
                    one.s0 = start;
                    let c1 = singlestep_coefficients(&one).unwrap();
                    assert!(
                        (c.w0 + c.w1 + c.w2 - c1.w0).abs() < 1e-12,
                        "{alg:?} {order}"
                    );
                    assert!((c.a - c1.a).abs() < 1e-15 && (c.c - c1.c).abs() < 1e-15);
                }
            }
        }
    }

    /// For a converted output linear in λ, every first divided difference is the slope and D2
    /// vanishes, so the third-order update (either solver type) equals the second-order Heun
    /// update over the same interval.
    #[test]
    fn second_and_third_order_agree_on_linear_outputs() {
        for (alg, solver) in [
            Algorithm::DpmSolverPp,
            Algorithm::DpmSolver,
            Algorithm::SdeDpmSolverPp,
        ]
        .into_iter()
        .flat_map(|a| [(a, SolverType::Heun), (a, SolverType::Midpoint)])
        {
            let st3 = step(alg, solver, 3);
            let c3 = singlestep_coefficients(&st3).unwrap();
            // Same start (s2 = σ 4) for the order-2 update: s1 ← σ 4, s0 ← σ 1.
            let mut st2 = step(alg, SolverType::Heun, 2);
            st2.s1 = pt(4.0);
            let c2 = singlestep_coefficients(&st2).unwrap();
            let l2 = pt(4.0).lambda();
            let m = |s: f64| 0.3 + 0.7 * (pt(s).lambda() - l2);
            let v3 = c3.w0 * m(1.0) + c3.w1 * m(2.0) + c3.w2 * m(4.0);
            let v2 = c2.w0 * m(1.0) + c2.w1 * m(4.0);
            assert!((v3 - v2).abs() < 1e-12, "{alg:?} {solver:?}: {v3} vs {v2}");
        }
    }

    #[test]
    fn first_order_equals_the_multistep_first_order() {
        for alg in ALGS {
            let s = singlestep_coefficients(&step(alg, SolverType::Midpoint, 1)).unwrap();
            let m = multistep_coefficients(&MultistepStep {
                algorithm: alg,
                solver_type: SolverType::Midpoint,
                prediction: PredictionType::Epsilon,
                thresholding: false,
                order: 1,
                t: pt(0.5),
                s0: pt(1.0),
                s1: pt(2.0),
                s2: pt(4.0),
                flow_sigma: 0.0,
            })
            .unwrap();
            assert_eq!(s, m);
        }
    }

    #[test]
    fn refusals() {
        let e = singlestep_coefficients(&step(Algorithm::SdeDpmSolver, SolverType::Midpoint, 1));
        assert!(e.unwrap_err().to_string().contains("sde-dpmsolver"));
        assert!(
            singlestep_coefficients(&step(Algorithm::DpmSolverPp, SolverType::Heun, 4)).is_err()
        );
        // Order 2 to a final σ = 0 has an infinite h: refused, not NaN.
        let mut st = step(Algorithm::DpmSolverPp, SolverType::Midpoint, 2);
        st.t = pt(0.0);
        assert!(singlestep_coefficients(&st).is_err());
        st.order = 1;
        let c = singlestep_coefficients(&st).unwrap();
        assert_eq!((c.a, c.w0), (0.0, 1.0));
    }

    #[test]
    fn order_lists_are_diffusers() {
        assert_eq!(order_list(7, 2, true, true).unwrap(), [1, 2, 1, 2, 1, 2, 1]);
        assert_eq!(
            order_list(8, 2, true, false).unwrap(),
            [1, 2, 1, 2, 1, 2, 1, 1]
        );
        assert_eq!(
            order_list(9, 3, false, false).unwrap(),
            [1, 2, 3, 1, 2, 3, 1, 2, 3]
        );
        assert_eq!(
            order_list(9, 3, true, false).unwrap(),
            [1, 2, 3, 1, 2, 3, 1, 2, 1]
        );
        assert_eq!(
            order_list(10, 3, true, true).unwrap(),
            [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
        );
        assert_eq!(
            order_list(11, 3, true, true).unwrap(),
            [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 1]
        );
        assert_eq!(order_list(1, 3, true, false).unwrap(), [1]);
        assert_eq!(order_list(2, 2, true, false).unwrap(), [1, 1]);
        assert_eq!(order_list(3, 3, true, false).unwrap(), [1, 2, 1]);
        assert_eq!(order_list(1000, 3, false, true).unwrap().len(), 999);
        assert_eq!(order_list(4, 1, false, false).unwrap(), [1, 1, 1, 1]);
        assert!(order_list(0, 2, true, true).unwrap().is_empty());
        assert!(order_list(5, 4, true, true).is_err());
    }
}
