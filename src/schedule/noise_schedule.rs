//! The forward process seen in continuous time: α_t, σ_t, λ_t = log(α_t/σ_t) and its inverse.
//!
//! Discrete schedules follow the DPM-Solver reference (`NoiseScheduleVP('discrete')`): log α is
//! interpolated piecewise-linearly on t_i = (i+1)/N, i = 0..N-1, so t ∈ [1/N, 1]. The linear VP
//! schedule has closed forms for everything, including the inverse of λ.

use super::betas::DiscreteBetas;
use super::interp::interpolate;
use crate::error::Result;
use crate::value_err;

/// Smallest ᾱ used when a schedule reaches zero terminal SNR (diffusers uses the same 2⁻²⁴), so
/// log α stays finite in the continuous view.
const MIN_ALPHA_CUMPROD: f64 = 5.960_464_477_539_063e-8;

#[derive(Clone, Debug)]
pub enum NoiseSchedule {
    Discrete {
        betas: DiscreteBetas,
        /// t_i = (i+1)/N.
        t_array: Vec<f64>,
        /// log α at t_i = ½ log ᾱ_i (decreasing in i).
        log_alpha_array: Vec<f64>,
    },
    LinearVp {
        beta_0: f64,
        beta_1: f64,
    },
}

/// log(1 + e^x) without overflow.
fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

impl NoiseSchedule {
    pub fn discrete(betas: DiscreteBetas) -> Result<Self> {
        let n = betas.len();
        if n < 2 {
            return value_err!(
                "num_train_timesteps: a discrete schedule needs at least 2 timesteps, got {n}"
            );
        }
        let t_array = (0..n).map(|i| (i + 1) as f64 / n as f64).collect();
        let log_alpha_array = betas
            .alphas_cumprod
            .iter()
            .map(|&a| 0.5 * a.max(MIN_ALPHA_CUMPROD).ln())
            .collect();
        Ok(Self::Discrete {
            betas,
            t_array,
            log_alpha_array,
        })
    }

    pub fn linear_vp(beta_min: f64, beta_max: f64) -> Result<Self> {
        if !(beta_min.is_finite() && beta_min > 0.0) {
            return value_err!("beta_min: must be a positive number, got {beta_min}");
        }
        if !(beta_max.is_finite() && beta_max > beta_min) {
            return value_err!(
                "beta_max: must be greater than beta_min={beta_min}, got {beta_max}"
            );
        }
        Ok(Self::LinearVp {
            beta_0: beta_min,
            beta_1: beta_max,
        })
    }

    /// The end of the time interval (T = 1 for both kinds).
    pub fn t_max(&self) -> f64 {
        1.0
    }

    /// The default smallest time: 1/N for discrete schedules, 1e-3 for linear VP.
    pub fn t_min(&self) -> f64 {
        match self {
            Self::Discrete { t_array, .. } => t_array[0],
            Self::LinearVp { .. } => 1e-3,
        }
    }

    /// log α_t.
    pub fn log_alpha(&self, t: f64) -> f64 {
        match self {
            Self::Discrete {
                t_array,
                log_alpha_array,
                ..
            } => interpolate(t, t_array, log_alpha_array),
            Self::LinearVp { beta_0, beta_1 } => {
                -0.25 * t * t * (beta_1 - beta_0) - 0.5 * t * beta_0
            }
        }
    }

    pub fn alpha(&self, t: f64) -> f64 {
        self.log_alpha(t).exp()
    }

    /// σ_t = √(1 − α_t²).
    pub fn sigma(&self, t: f64) -> f64 {
        (-(2.0 * self.log_alpha(t)).exp_m1()).sqrt()
    }

    /// λ_t = log α_t − log σ_t.
    pub fn lambda(&self, t: f64) -> f64 {
        let la = self.log_alpha(t);
        la - 0.5 * (-(2.0 * la).exp_m1()).ln()
    }

    /// The t with λ_t = `lam`.
    pub fn inverse_lambda(&self, lam: f64) -> f64 {
        match self {
            Self::Discrete {
                t_array,
                log_alpha_array,
                ..
            } => {
                let log_alpha = -0.5 * softplus(-2.0 * lam);
                // log α decreases in t: interpolate on the reversed arrays.
                let xs: Vec<f64> = log_alpha_array.iter().rev().copied().collect();
                let ys: Vec<f64> = t_array.iter().rev().copied().collect();
                interpolate(log_alpha, &xs, &ys)
            }
            Self::LinearVp { beta_0, beta_1 } => {
                let tmp = 2.0 * (beta_1 - beta_0) * softplus(-2.0 * lam);
                let delta = beta_0 * beta_0 + tmp;
                tmp / (delta.sqrt() + beta_0) / (beta_1 - beta_0)
            }
        }
    }

    /// The discrete β array, where there is one.
    pub fn discrete_betas(&self) -> Option<&DiscreteBetas> {
        match self {
            Self::Discrete { betas, .. } => Some(betas),
            Self::LinearVp { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::BetaSchedule;

    fn schedules() -> Vec<NoiseSchedule> {
        let d = |s| {
            NoiseSchedule::discrete(DiscreteBetas::new(1000, s, 1e-4, 0.02, None, false).unwrap())
                .unwrap()
        };
        vec![
            d(BetaSchedule::Linear),
            d(BetaSchedule::SquaredCosCapV2),
            NoiseSchedule::linear_vp(0.1, 20.0).unwrap(),
        ]
    }

    #[test]
    fn inverse_lambda_round_trips() {
        for s in schedules() {
            let (lo, hi) = (s.lambda(s.t_max()), s.lambda(s.t_min()));
            for k in 0..=50 {
                let lam = lo + (hi - lo) * k as f64 / 50.0;
                let back = s.lambda(s.inverse_lambda(lam));
                assert!(
                    (back - lam).abs() < 1e-9 * (1.0 + lam.abs()),
                    "{lam} -> {back}"
                );
            }
        }
    }

    #[test]
    fn lambda_decreases_in_t() {
        for s in schedules() {
            let ts: Vec<f64> = (0..=200)
                .map(|k| 1e-3 + (1.0 - 1e-3) * k as f64 / 200.0)
                .collect();
            assert!(ts.windows(2).all(|w| s.lambda(w[1]) < s.lambda(w[0])));
        }
    }

    #[test]
    fn alpha_sigma_on_unit_circle() {
        for s in schedules() {
            for t in [0.01, 0.3, 0.9] {
                let (a, b) = (s.alpha(t), s.sigma(t));
                assert!((a * a + b * b - 1.0).abs() < 1e-12);
            }
        }
    }
}
