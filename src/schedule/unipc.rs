//! UniPC (Zhao et al. 2023, arXiv 2302.04867): the B(h) predictor UniP-p and corrector UniC-p
//! of diffusers' `UniPCMultistepScheduler`, every scalar in f64, expanded into weights on the
//! sample and the converted model outputs.
//!
//! With λ = log α − log σ, h = λ_t − λ_s0, r_k = (λ_{s_k} − λ_s0)/h and D_k = (m_k − m0)/r_k,
//! in the data-prediction form (`predict_x0`, K = α_t, hh = −h; the noise form has K = σ_t,
//! hh = h and a = α_t/α_s0):
//!
//! ```text
//! predictor  x_t = (σ_t/σ_s0)·x − K·φ̂₁·m0 − K·B(h)·Σ_k ρ_k·D_k
//! corrector  x_t = (σ_t/σ_s0)·x − K·φ̂₁·m0 − K·B(h)·(Σ_k ρ_k·D_k + ρ_p·(m_t − m0))
//! ```
//!
//! φ̂₁ = e^hh − 1, B(h) = hh (bh1) or e^hh − 1 (bh2), and ρ solves R·ρ = b with R_ij = r_j^i
//! (r_p = 1) and b_i = hh·φ_{i+1}(hh)·i!/B(h): the predictor's ρ from the first p − 1 rows
//! (ρ = ½ at order 2), the corrector's from all p (ρ = ½ at order 1).
//!
//! Two cases where diffusers' float32 arithmetic gives NaN are given their limits instead:
//! a zero-length interval (a repeated σ) is the identity, and a step to σ = 0 is first
//! order (its limit: x_t = m0 in the data form, α_t·x₀ in the noise form; higher orders
//! extrapolate m in λ to λ = ∞ and have no limit). Where diffusers is finite, these are its
//! values.

use super::dpm_solver::Point;
use super::linsolve;
use crate::error::Result;
use crate::value_err;

/// The most history entries a UniPC step reads (the fused pass's term slots).
pub const MAX_ORDER: usize = crate::lincomb::MAX_TERMS;

/// diffusers' `solver_type` for UniPC: the B(h) of the update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UniPcVariant {
    /// B(h) = hh.
    Bh1,
    /// B(h) = e^hh − 1.
    Bh2,
}

impl UniPcVariant {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "bh1" => Ok(Self::Bh1),
            "bh2" => Ok(Self::Bh2),
            _ => value_err!("solver_type: unknown {s:?}; expected \"bh1\" or \"bh2\""),
        }
    }
}

/// One UniPC update's weights: `a` on the base sample, `w0` on m0 (the newest output the
/// interval starts from), `w[k-1]` on m_k (the k-th output before it), and, for the
/// corrector, `wt` on the output at the interval's end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UniPcWeights {
    pub a: f64,
    pub w0: f64,
    pub w: Vec<f64>,
    pub wt: f64,
}

/// φ_k(x) = Σ_j x^j/(j+k)! for k = 1..=n (φ_1 = (e^x − 1)/x): the series near 0, where the
/// recursion φ_{k+1} = (φ_k − 1/k!)/x cancels, else the recursion from φ_1.
fn phis(x: f64, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    if x.abs() < 0.5 {
        for k in 1..=n {
            let (mut term, mut sum) = (1.0, 0.0);
            for j in 1..=k {
                term /= j as f64; // 1/k!
            }
            for j in 0..40 {
                sum += term;
                term *= x / (j + k + 1) as f64;
                if term.abs() < 1e-18 * sum.abs() {
                    break;
                }
            }
            out.push(sum);
        }
    } else {
        let (mut phi, mut fact) = (x.exp_m1() / x, 1.0);
        for k in 1..=n {
            out.push(phi);
            phi = (phi - 1.0 / fact) / x;
            fact *= (k + 1) as f64;
        }
    }
    out
}

/// [`linsolve::solve`], with UniPC's error when the conditions are singular.
fn solve(m: Vec<Vec<f64>>, b: Vec<f64>) -> Result<Vec<f64>> {
    match linsolve::solve(m, b) {
        Some(v) => Ok(v),
        None => value_err!("UniPC: the order conditions are singular (repeated timesteps?)"),
    }
}

/// One interval of a UniPC step: from `s0` to `t`, the earlier points `prev[k-1]` = s_k.
pub struct UniPcInterval<'a> {
    pub t: Point,
    pub s0: Point,
    pub prev: &'a [Point],
    pub predict_x0: bool,
    pub variant: UniPcVariant,
}

impl UniPcInterval<'_> {
    /// The predictor (`corrector` false, order `prev.len() + 1`) or the corrector (order
    /// `prev.len() + 1`, with the weight `wt` of the output at `t`).
    pub fn weights(&self, corrector: bool) -> Result<UniPcWeights> {
        let order = self.prev.len() + 1;
        if order > MAX_ORDER {
            return value_err!("solver_order: at most {MAX_ORDER}, got {order}");
        }
        let (t, s0) = (self.t, self.s0);
        let h = t.lambda() - s0.lambda();
        if h.is_nan() {
            return value_err!("UniPC: the step's log-SNR increment is not a number");
        }
        let zero = UniPcWeights {
            w: vec![0.0; order - 1],
            ..Default::default()
        };
        if h == 0.0 {
            return Ok(UniPcWeights { a: 1.0, ..zero });
        }
        if t.sigma == 0.0 {
            if order > 1 || corrector {
                return value_err!("UniPC: a step to σ = 0 is first order");
            }
            // The limits of the first-order update: x₀ itself, or α_t·x₀ from ε.
            return Ok(if self.predict_x0 {
                UniPcWeights { w0: 1.0, ..zero }
            } else {
                UniPcWeights {
                    a: t.alpha / s0.alpha,
                    w0: -t.alpha * s0.sigma / s0.alpha,
                    ..zero
                }
            });
        }
        let (hh, k, a) = if self.predict_x0 {
            (-h, t.alpha, t.sigma / s0.sigma)
        } else {
            (h, t.sigma, t.alpha / s0.alpha)
        };
        let phi1 = hh.exp_m1();
        let bh = match self.variant {
            UniPcVariant::Bh1 => hh,
            UniPcVariant::Bh2 => phi1,
        };
        let rks: Vec<f64> = self
            .prev
            .iter()
            .map(|p| (p.lambda() - s0.lambda()) / h)
            .chain(std::iter::once(1.0))
            .collect();
        let ph = phis(hh, order + 1);
        let mut fact = 1.0;
        let b: Vec<f64> = (1..=order)
            .map(|i| {
                fact *= i as f64;
                hh * ph[i] * fact / bh
            })
            .collect();
        let vander = |n: usize| -> Vec<Vec<f64>> {
            (0..n)
                .map(|i| rks[..n].iter().map(|r| r.powi(i as i32)).collect())
                .collect()
        };
        let rhos: Vec<f64> = match (corrector, order) {
            (false, 1) => vec![],
            (false, 2) => vec![0.5],
            (false, _) => solve(vander(order - 1), b[..order - 1].to_vec())?,
            (true, 1) => vec![0.5],
            (true, _) => solve(vander(order), b)?,
        };
        // −K·B(h)·ρ_k·(m_k − m0)/r_k, expanded.
        let mut wts = UniPcWeights {
            a,
            w0: -k * phi1,
            ..zero
        };
        for (j, rho) in rhos.iter().take(order - 1).enumerate() {
            let c = k * bh * rho / rks[j];
            wts.w[j] = -c;
            wts.w0 += c;
        }
        if corrector {
            let c = k * bh * rhos[order - 1];
            wts.wt = -c;
            wts.w0 += c;
        }
        Ok(wts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(sigma_tilde: f64) -> Point {
        Point::from_sigma(sigma_tilde, false)
    }

    #[test]
    fn phis_match_the_closed_forms() {
        for x in [-3.0, -0.7, -0.3, -1e-3, 1e-4, 0.2, 0.6, 2.0] {
            let p = phis(x, 3);
            let e = f64::exp(x);
            let want = if x.abs() < 0.01 {
                // The closed forms cancel here; four series terms are exact to 1e-12.
                let x3 = x * x * x;
                [
                    1.0 + x / 2.0 + x * x / 6.0 + x3 / 24.0,
                    0.5 + x / 6.0 + x * x / 24.0 + x3 / 120.0,
                    1.0 / 6.0 + x / 24.0 + x * x / 120.0 + x3 / 720.0,
                ]
            } else {
                [
                    (e - 1.0) / x,
                    (e - 1.0 - x) / (x * x),
                    (e - 1.0 - x - x * x / 2.0) / (x * x * x),
                ]
            };
            for k in 0..3 {
                assert!((p[k] - want[k]).abs() < 1e-11 * want[k].abs(), "{x} {k}");
            }
        }
    }

    /// The update reproduces x_t exactly when m is a polynomial in λ of degree below the
    /// order: the ODE's solution for x₀(λ) = c0 + c1·λ (+ c2·λ²) has a closed form.
    #[test]
    fn exact_for_polynomial_data_predictions() {
        let (s0, t) = (pt(2.0), pt(0.8));
        let prev = [pt(3.5), pt(6.0)];
        let x0 = |l: f64| 0.3 - 0.2 * l + 0.05 * l * l;
        // x_t = (σ_t/σ_s)·x_s + σ_t ∫_{λs}^{λt} e^λ x₀(λ) dλ, integrated numerically.
        let (ls, lt) = (s0.lambda(), t.lambda());
        let n = 200_000;
        let integral: f64 = (0..n)
            .map(|i| {
                let l = ls + (lt - ls) * (i as f64 + 0.5) / n as f64;
                l.exp() * x0(l)
            })
            .sum::<f64>()
            * (lt - ls)
            / n as f64;
        let xs = 0.7;
        let want = t.sigma / s0.sigma * xs + t.sigma * integral;
        for variant in [UniPcVariant::Bh1, UniPcVariant::Bh2] {
            // corrector of order 3: m at t, s0, s1, s2 determine a quadratic exactly.
            let iv = UniPcInterval {
                t,
                s0,
                prev: &prev[..2],
                predict_x0: true,
                variant,
            };
            let w = iv.weights(true).unwrap();
            let got = w.a * xs
                + w.w0 * x0(ls)
                + w.w[0] * x0(prev[0].lambda())
                + w.w[1] * x0(prev[1].lambda())
                + w.wt * x0(lt);
            assert!((got - want).abs() < 1e-7, "{variant:?}: {got} vs {want}");
        }
    }

    #[test]
    fn limits_where_diffusers_divides_by_zero() {
        let iv = UniPcInterval {
            t: pt(1.0),
            s0: pt(1.0),
            prev: &[pt(2.0)],
            predict_x0: true,
            variant: UniPcVariant::Bh1,
        };
        assert_eq!(iv.weights(false).unwrap().a, 1.0);
        let zero = Point {
            alpha: 1.0,
            sigma: 0.0,
        };
        let iv = UniPcInterval {
            t: zero,
            s0: pt(0.1),
            prev: &[],
            predict_x0: true,
            variant: UniPcVariant::Bh1,
        };
        let w = iv.weights(false).unwrap();
        assert_eq!((w.a, w.w0), (0.0, 1.0));
    }
}
