//! DEIS's multistep weights (Zhang & Chen 2022, "Fast Sampling of Diffusion Models with
//! Exponential Integrator"; diffusers' `DEISMultistepScheduler`, solver type `logrho`).
//!
//! In ρ = σ/α the probability-flow ODE is dx̄/dρ = ε with x̄ = x/α. DEIS integrates ε over
//! [ρ_s0, ρ_t] as the Lagrange polynomial in log ρ through the last k points:
//!
//! ```text
//! x_t = α_t·(x/α_s0 + Σ_j c_j·ε_j),   c_j = ∫_{ρ_s0}^{ρ_t} ℓ_j(log τ) dτ
//! ```
//!
//! with the closed forms diffusers writes out (its `ind_fn`), evaluated here in f64.

use crate::error::Result;
use crate::value_err;

/// F with F(ρ_t) − F(ρ_s0) = ∫ (log τ − log c)/(log b − log c) dτ (basis at b over {b, c}).
fn second(t: f64, b: f64, c: f64) -> f64 {
    let (lt, lb, lc) = (t.ln(), b.ln(), c.ln());
    t * (lt - lc - 1.0) / (lb - lc)
}

/// The same for the quadratic basis at b over {b, c, d}.
fn third(t: f64, b: f64, c: f64, d: f64) -> f64 {
    let (lt, lb, lc, ld) = (t.ln(), b.ln(), c.ln(), d.ln());
    let num = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    num / ((lb - lc) * (lb - ld))
}

/// The weights (α_t·c_j) of the converted outputs ε_0, ε_1(, ε_2) at ρ = `r` (s0 first) in
/// the order-2 or order-3 step to ρ_t = `rt`; the sample's weight is α_t/α_s0, as the first
/// order's.
pub fn deis_weights(alpha_t: f64, rt: f64, r: &[f64]) -> Result<Vec<f64>> {
    if rt.is_nan() || rt <= 0.0 || r.iter().any(|v| v.is_nan() || *v <= 0.0) {
        return value_err!(
            "the DEIS step: ρ = σ/α must be positive at every point (a final σ of 0 needs a \
             first-order step)"
        );
    }
    let c = match r[..] {
        [r0, r1] => vec![
            second(rt, r0, r1) - second(r0, r0, r1),
            second(rt, r1, r0) - second(r0, r1, r0),
        ],
        [r0, r1, r2] => vec![
            third(rt, r0, r1, r2) - third(r0, r0, r1, r2),
            third(rt, r1, r2, r0) - third(r0, r1, r2, r0),
            third(rt, r2, r0, r1) - third(r0, r2, r0, r1),
        ],
        _ => return value_err!("the DEIS step: order {} is not 2 or 3", r.len()),
    };
    Ok(c.into_iter().map(|cj| alpha_t * cj).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Σ_j c_j·f(log ρ_j) = ∫ f(log τ) dτ over [ρ_s0, ρ_t] for polynomials f of degree < k.
    #[test]
    fn weights_integrate_log_polynomials() {
        let (alpha_t, rt, pts) = (0.6, 0.8, [1.5, 2.7, 5.0]);
        for k in [2usize, 3] {
            let w = deis_weights(alpha_t, rt, &pts[..k]).unwrap();
            for deg in 0..k as i32 {
                let got: f64 = (0..k).map(|j| w[j] / alpha_t * pts[j].ln().powi(deg)).sum();
                // ∫ (log τ)^deg dτ by a fine midpoint rule
                let (a, b) = (1.5f64, 0.8f64);
                let n = 200_000;
                let dx = (b - a) / n as f64;
                let want: f64 = (0..n)
                    .map(|i| (a + (i as f64 + 0.5) * dx).ln().powi(deg) * dx)
                    .sum();
                assert!(
                    (got - want).abs() < 1e-8,
                    "k {k} deg {deg}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn refuses_a_zero_rho() {
        assert!(deis_weights(1.0, 0.0, &[1.0, 2.0]).is_err());
    }
}
