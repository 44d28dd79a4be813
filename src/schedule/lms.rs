//! The linear multistep coefficients of diffusers' `LMSDiscreteScheduler` (k-diffusion's
//! `sample_lms`): the step from σ_i to σ_{i+1} of order o is
//!
//! ```text
//! x_{i+1} = x_i + Σ_j c_j·d_{i−j},   c_j = ∫_{σ_i}^{σ_{i+1}} ℓ_j(τ) dτ   (j < o)
//! ```
//!
//! ℓ_j the Lagrange basis polynomial over σ_i, σ_{i−1}, …, σ_{i−o+1} that is 1 at σ_{i−j}.
//! diffusers integrates it with `scipy.integrate.quad`; ℓ_j has degree o − 1 ≤ 3, so the
//! four-point Gauss–Legendre rule here is exact (to rounding).

use crate::error::Result;
use crate::value_err;

/// Gauss–Legendre nodes and weights on [−1, 1] (exact for degree ≤ 7).
const NODES: [f64; 4] = [
    -0.861_136_311_594_052_6,
    -0.339_981_043_584_856_3,
    0.339_981_043_584_856_3,
    0.861_136_311_594_052_6,
];
const WEIGHTS: [f64; 4] = [
    0.347_854_845_137_453_9,
    0.652_145_154_862_546_1,
    0.652_145_154_862_546_1,
    0.347_854_845_137_453_9,
];

/// The highest order: ℓ_j of degree ≤ 3 keeps the rule exact (and the fused pass has slots
/// for the sample and three earlier slopes).
pub const MAX_ORDER: usize = 4;

/// c_0 … c_{order−1} of the step from `sigmas[i]` to `sigmas[i + 1]` (c_j weighs the slope of
/// j steps back).
pub fn lms_coefficients(sigmas: &[f64], i: usize, order: usize) -> Result<Vec<f64>> {
    if order == 0 || order > MAX_ORDER {
        return value_err!("order: the LMS step runs orders 1 to {MAX_ORDER}, got {order}");
    }
    if i + 1 >= sigmas.len() {
        return value_err!(
            "step: step index {i} is past the end of the schedule ({} steps)",
            sigmas.len().saturating_sub(1)
        );
    }
    if order > i + 1 {
        return value_err!("order: step {i} has only {} earlier slopes", i);
    }
    let nodes: Vec<f64> = (0..order).map(|k| sigmas[i - k]).collect();
    for (a, &sa) in nodes.iter().enumerate() {
        if nodes[..a].contains(&sa) {
            return value_err!(
                "the LMS step: σ = {sa} appears twice among the last {order} steps (a repeated \
                 timestep); its multistep coefficients are undefined"
            );
        }
    }
    let (lo, hi) = (sigmas[i], sigmas[i + 1]);
    let (mid, half) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
    Ok((0..order)
        .map(|j| {
            let basis = |tau: f64| {
                (0..order)
                    .filter(|&k| k != j)
                    .map(|k| (tau - nodes[k]) / (nodes[j] - nodes[k]))
                    .product::<f64>()
            };
            half * NODES
                .iter()
                .zip(WEIGHTS)
                .map(|(&t, w)| w * basis(mid + half * t))
                .sum::<f64>()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_order_is_euler() {
        let c = lms_coefficients(&[3.0, 2.0, 0.0], 0, 1).unwrap();
        assert_eq!(c, vec![-1.0]);
    }

    #[test]
    fn coefficients_integrate_polynomials_exactly() {
        // Σ_j c_j·f(σ_{i−j}) = ∫ f over the step for every polynomial f of degree < order
        let s = [14.6, 9.7, 6.1, 3.3, 1.2, 0.0];
        for order in 1..=4 {
            let i = 4;
            let c = lms_coefficients(&s, i, order).unwrap();
            for deg in 0..order as i32 {
                let f = |t: f64| t.powi(deg);
                let got: f64 = (0..order).map(|j| c[j] * f(s[i - j])).sum();
                let int = |t: f64| t.powi(deg + 1) / f64::from(deg + 1);
                let want = int(s[i + 1]) - int(s[i]);
                assert!(
                    (got - want).abs() < 1e-12,
                    "order {order} deg {deg}: {got} {want}"
                );
            }
        }
    }

    #[test]
    fn refuses_what_has_no_coefficients() {
        let s = [3.0, 2.0, 2.0, 0.0];
        assert!(lms_coefficients(&s, 2, 2).is_err()); // σ repeated
        assert!(lms_coefficients(&s, 1, 3).is_err()); // not enough history
        assert!(lms_coefficients(&s, 3, 1).is_err()); // past the end
        assert!(lms_coefficients(&s, 2, 5).is_err());
    }
}
