//! The linear multistep coefficients of diffusers' `LMSDiscreteScheduler` (k-diffusion's
//! `sample_lms`): the step from σ_i to σ_{i+1} of order o is
//!
//! ```text
//! x_{i+1} = x_i + Σ_j c_j·d_{i−j},   c_j = ∫_{σ_i}^{σ_{i+1}} ℓ_j(τ) dτ   (j < o)
//! ```
//!
//! ℓ_j the Lagrange basis polynomial over σ_i, σ_{i−1}, …, σ_{i−o+1} that is 1 at σ_{i−j}.
//! diffusers integrates it with `scipy.integrate.quad`; ℓ_j has degree o − 1, so the
//! ⌈o/2⌉-point Gauss–Legendre rule here is exact (to rounding).

use crate::error::Result;
use crate::value_err;

/// The m-point Gauss–Legendre rule on [−1, 1] (exact for degree ≤ 2m − 1): its nodes, the
/// roots of the Legendre polynomial P_m, by Newton's method from Tricomi's estimates, and their
/// weights 2 / ((1 − z²)·P_m′(z)²).
fn gauss_legendre(m: usize) -> Vec<(f64, f64)> {
    // P_m(z) and P_m′(z) by the three-term recurrence.
    let legendre = |z: f64| {
        let (mut p, mut q) = (1.0, 0.0); // P_j, P_{j−1}
        for j in 1..=m {
            let jf = j as f64;
            (p, q) = (((2.0 * jf - 1.0) * z * p - (jf - 1.0) * q) / jf, p);
        }
        (p, m as f64 * (z * p - q) / (z * z - 1.0))
    };
    (1..=m)
        .map(|i| {
            let mut z = (std::f64::consts::PI * (i as f64 - 0.25) / (m as f64 + 0.5)).cos();
            for _ in 0..100 {
                let (p, dp) = legendre(z);
                let step = p / dp;
                z -= step;
                if step.abs() < 1e-15 {
                    break;
                }
            }
            let dp = legendre(z).1;
            (z, 2.0 / ((1.0 - z * z) * dp * dp))
        })
        .collect()
}

/// c_0 … c_{order−1} of the step from `sigmas[i]` to `sigmas[i + 1]` (c_j weighs the slope of
/// j steps back).
pub fn lms_coefficients(sigmas: &[f64], i: usize, order: usize) -> Result<Vec<f64>> {
    if order == 0 {
        return value_err!("order: must be at least 1, got 0");
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
    let rule = gauss_legendre(order.div_ceil(2));
    Ok((0..order)
        .map(|j| {
            let basis = |tau: f64| {
                (0..order)
                    .filter(|&k| k != j)
                    .map(|k| (tau - nodes[k]) / (nodes[j] - nodes[k]))
                    .product::<f64>()
            };
            half * rule
                .iter()
                .map(|&(t, w)| w * basis(mid + half * t))
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
        let s = [29.0, 21.5, 14.6, 9.7, 6.1, 3.3, 1.2, 0.0];
        for order in 1..=7 {
            let i = 6;
            let c = lms_coefficients(&s, i, order).unwrap();
            for deg in 0..order as i32 {
                let f = |t: f64| t.powi(deg);
                let got: f64 = (0..order).map(|j| c[j] * f(s[i - j])).sum();
                let int = |t: f64| t.powi(deg + 1) / f64::from(deg + 1);
                let want = int(s[i + 1]) - int(s[i]);
                // (relative to the terms: high degrees cancel large values)
                let scale: f64 = (0..order).map(|j| (c[j] * f(s[i - j])).abs()).sum();
                assert!(
                    (got - want).abs() < 1e-12 * scale.max(1.0),
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
        assert!(lms_coefficients(&s, 2, 0).is_err());
    }

    #[test]
    fn gauss_legendre_rules_are_the_published_ones_and_exact() {
        // Abramowitz & Stegun, table 25.4: the 4-point rule
        let four = gauss_legendre(4);
        let want = [(0.861_136_311_594_052_6, 0.347_854_845_137_453_9)];
        assert!((four[0].0 - want[0].0).abs() < 1e-15 && (four[0].1 - want[0].1).abs() < 1e-15);
        assert!((four[1].0 - 0.339_981_043_584_856_3).abs() < 1e-15);
        for m in 1..=12 {
            let rule = gauss_legendre(m);
            for deg in 0..2 * m as i32 {
                let got: f64 = rule.iter().map(|&(z, w)| w * z.powi(deg)).sum();
                let want = if deg % 2 == 0 {
                    2.0 / f64::from(deg + 1)
                } else {
                    0.0
                };
                assert!((got - want).abs() < 1e-13, "m {m} deg {deg}: {got} {want}");
            }
        }
    }
}
