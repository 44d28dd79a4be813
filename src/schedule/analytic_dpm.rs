//! Analytic-DPM (Bao et al., ICLR 2022, arXiv 2201.06503): the optimal reverse variance of a
//! pretrained DPM from Γ_t = E‖ε_θ(x_t, t)‖²/d, and each step's scalars in f64.
//!
//! A step goes from timestep t to s < t (ᾱ_s = 1 after the last visited timestep). With
//! β̄ = 1 − ᾱ and β_{t|s} = 1 − ᾱ_t/ᾱ_s, the fused loop evaluates
//!
//! ```text
//! ε    = p·x + q·mo                          (the model output as a noise prediction)
//! x̂₀   = (x − √β̄_t·ε)/√ᾱ_t, clipped to [a, b] when clip_x0
//! prev = c_x0·x̂₀ + c_x·x + c_eps·ε + σ·n
//! ```
//!
//! DDPM form (the reference's `reverse_ddpm_ms_eps`): c_x0 = √ᾱ_s·β_{t|s}/β̄_t,
//! c_x = √(ᾱ_t/ᾱ_s)·β̄_s/β̄_t, c_eps = 0, λ² = β̄_s/β̄_t·β_{t|s}.
//! DDIM form (`reverse_ddim_ms_eps`): c_x0 = √ᾱ_s, c_x = 0, c_eps = √(β̄_s − λ²),
//! λ² = η²·β̄_s/β̄_t·β_{t|s}.
//!
//! The variance (the paper's Theorem 1 with the covariance bound of its Theorem 2, as the
//! reference code applies it): Cov(x₀|x_t) = β̄_t/ᾱ_t·(1 − Γ_t) is clipped to [0, cov_max]
//! (cov_max = ((b − a)/2)²), and
//!
//! ```text
//! σ² = λ² + (√ᾱ_s − √((β̄_s − λ²)·ᾱ_t/β̄_t))² · clip(Cov)
//! ```
//!
//! which equals λ² + (√(ᾱ_s/ᾱ_t)·√β̄_t − √(β̄_s − λ²))²·(1 − Γ_t) when the clip is inactive.
//! For the DDPM form the squared factor is evaluated as ᾱ_s·β_{t|s}²/β̄_t² (the same number,
//! without cancellation). The last step (to ᾱ_s = 1) adds no noise, and the second-to-last
//! step's σ² is capped at `last_cap` when given (the reference's `clip_sigma_idx = 1`).

use crate::error::Result;
use crate::value_err;

/// DDPM (ancestral) or DDIM (η) reverse process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Ddpm,
    Ddim,
}

impl Form {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ddpm" => Ok(Self::Ddpm),
            "ddim" => Ok(Self::Ddim),
            _ => value_err!("form: unknown {s:?}; expected \"ddpm\" or \"ddim\""),
        }
    }
}

/// Options shared by every step of a loop.
#[derive(Clone, Copy, Debug)]
pub struct AnalyticOptions {
    pub form: Form,
    pub eta: f64,
    /// The upper bound of Cov(x₀|x_t) per dimension, ((b − a)/2)² for data in [a, b].
    pub cov_max: f64,
    /// The cap on the second-to-last step's σ² (None: no cap).
    pub last_cap: Option<f64>,
}

/// One step's scalars (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AnalyticStep {
    /// √β̄_t and 1/√ᾱ_t, for x̂₀ = (x − √β̄_t·ε)/√ᾱ_t.
    pub sqrt_beta_bar_t: f64,
    pub inv_sqrt_alpha_bar_t: f64,
    pub c_x0: f64,
    pub c_x: f64,
    pub c_eps: f64,
    /// λ² of the chosen form.
    pub lambda2: f64,
    /// The reverse variance σ² (0 at the last step).
    pub sigma2: f64,
}

/// The scalars of the step t → s with ᾱ_t = `ac_t`, ᾱ_s = `ac_s` (1 for the final step).
pub fn step_scalars(ac_t: f64, ac_s: f64, gamma_t: f64, opts: &AnalyticOptions) -> AnalyticStep {
    let bb_t = 1.0 - ac_t;
    let bb_s = 1.0 - ac_s;
    let beta_ts = 1.0 - ac_t / ac_s;
    let lambda2_ddpm = (bb_s / bb_t * beta_ts).max(0.0);
    let (lambda2, c_x0, c_x, c_eps, coef) = match opts.form {
        Form::Ddpm => (
            lambda2_ddpm,
            ac_s.sqrt() * beta_ts / bb_t,
            (ac_t / ac_s).sqrt() * bb_s / bb_t,
            0.0,
            ac_s * beta_ts * beta_ts / (bb_t * bb_t),
        ),
        Form::Ddim => {
            let l2 = opts.eta * opts.eta * lambda2_ddpm;
            let rest = (bb_s - l2).max(0.0);
            let f = ac_s.sqrt() - (rest * ac_t / bb_t).sqrt();
            (l2, ac_s.sqrt(), 0.0, rest.sqrt(), f * f)
        }
    };
    let cov = (bb_t / ac_t * (1.0 - gamma_t)).clamp(0.0, opts.cov_max);
    AnalyticStep {
        sqrt_beta_bar_t: bb_t.sqrt(),
        inv_sqrt_alpha_bar_t: 1.0 / ac_t.sqrt(),
        c_x0,
        c_x,
        c_eps,
        lambda2,
        sigma2: lambda2 + coef * cov,
    }
}

/// Every step of a loop over `timesteps` (0-based training timesteps, strictly decreasing)
/// with Γ given at each visited timestep. `alphas_cumprod` is the full ᾱ (length N).
pub fn plan(
    alphas_cumprod: &[f64],
    timesteps: &[usize],
    gamma: &[f64],
    opts: &AnalyticOptions,
) -> Result<Vec<AnalyticStep>> {
    let n = alphas_cumprod.len();
    if timesteps.is_empty() {
        return value_err!("timesteps: need at least one timestep");
    }
    if gamma.len() != timesteps.len() {
        return value_err!(
            "gamma: {} values for {} timesteps",
            gamma.len(),
            timesteps.len()
        );
    }
    if !(opts.eta.is_finite() && opts.eta >= 0.0) {
        return value_err!("eta: must be a finite number ≥ 0, got {}", opts.eta);
    }
    if opts.cov_max.is_nan() || opts.cov_max < 0.0 {
        return value_err!("data_range: the covariance bound must be ≥ 0");
    }
    for (i, &t) in timesteps.iter().enumerate() {
        if t >= n {
            return value_err!("timesteps: {t} is outside [0, {}]", n - 1);
        }
        if i > 0 && t >= timesteps[i - 1] {
            return value_err!(
                "timesteps: must be strictly decreasing, got {t} after {}",
                timesteps[i - 1]
            );
        }
        if !gamma[i].is_finite() {
            return value_err!("gamma: Γ at timestep {t} is not finite ({})", gamma[i]);
        }
        let ac = alphas_cumprod[t];
        if !(ac > 0.0 && ac < 1.0) {
            return value_err!("alphas_cumprod: ᾱ at timestep {t} must lie in (0, 1), got {ac}");
        }
    }
    let k = timesteps.len();
    let mut out = Vec::with_capacity(k);
    for i in 0..k {
        let ac_t = alphas_cumprod[timesteps[i]];
        let ac_s = if i + 1 < k {
            alphas_cumprod[timesteps[i + 1]]
        } else {
            1.0
        };
        let mut st = step_scalars(ac_t, ac_s, gamma[i], opts);
        if i + 1 == k {
            st.sigma2 = 0.0;
        } else if i + 2 == k {
            if let Some(cap) = opts.last_cap {
                st.sigma2 = st.sigma2.clamp(0.0, cap);
            }
        }
        out.push(st);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(form: Form, eta: f64) -> AnalyticOptions {
        AnalyticOptions {
            form,
            eta,
            cov_max: f64::INFINITY,
            last_cap: None,
        }
    }

    #[test]
    fn ddpm_and_ddim_eta1_agree_and_match_the_unclipped_formula() {
        let (ac_t, ac_s, g) = (0.3, 0.7, 0.8);
        let a = step_scalars(ac_t, ac_s, g, &opts(Form::Ddpm, 0.0));
        let b = step_scalars(ac_t, ac_s, g, &opts(Form::Ddim, 1.0));
        assert!((a.sigma2 - b.sigma2).abs() < 1e-14);
        assert!((a.lambda2 - b.lambda2).abs() < 1e-14);
        let (bb_t, bb_s) = (1.0 - ac_t, 1.0 - ac_s);
        let l2 = a.lambda2;
        let f: f64 = (ac_s / ac_t).sqrt() * bb_t.sqrt() - (bb_s - l2).sqrt();
        assert!((a.sigma2 - (l2 + f * f * (1.0 - g))).abs() < 1e-14);
    }

    #[test]
    fn gamma_one_gives_lambda2_and_the_last_step_is_deterministic() {
        let ac = [0.99, 0.9, 0.5, 0.1];
        let o = opts(Form::Ddpm, 0.0);
        let steps = plan(&ac, &[3, 2, 0], &[1.0, 1.0, 1.0], &o).unwrap();
        assert_eq!(steps[2].sigma2, 0.0);
        assert!((steps[0].sigma2 - steps[0].lambda2).abs() < 1e-15);
        assert!(plan(&ac, &[2, 3], &[1.0, 1.0], &o).is_err());
        assert!(plan(&ac, &[3, 2], &[f64::NAN, 1.0], &o).is_err());
    }
}
