//! DDIM (Song et al. 2021, arXiv 2010.02502) and DDPM (Ho et al. 2020, arXiv 2006.11239)
//! ancestral steps: every per-step scalar in f64, and diffusers' DDIM/DDPM timestep spacings.
//!
//! One step reads the model output `mo` (and, for learned variances, its variance channels
//! `v`), the sample `x` and noise `n`, and computes
//!
//! ```text
//! x0   = (p·x + q·mo) / d                 (x₀ prediction)
//! x0   = clamp(x0, −c, c)                 (clip_sample)  or  clamp(x0, −s, s)/s (thresholding)
//! z    = x0 if eps_from_x0 else mo
//! eps  = (h1·x + h2·z) / h3               (only when w_eps ≠ 0)
//! prev = a·x + w0·x0 + w_eps·eps + std·n
//! ```
//!
//! with `std` a scalar, √v (`learned`) or exp(½(f·log β_t + (1−f)·log β̃_t)), f = (v+1)/2
//! (`learned_range`). Divisions (rather than reciprocals) follow diffusers' formulas, so a zero
//! ᾱ (zero-terminal-SNR schedules) behaves as it does there: ±∞ that clipping brings back.

use crate::error::Result;
use crate::schedule::prediction::PredictionType;
use crate::value_err;

/// How the noise of a step is scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NoiseScale {
    /// No noise term (DDIM with η = 0, DDPM at t = 0).
    None,
    /// A scalar standard deviation (may be NaN where diffusers' formula gives NaN).
    Fixed(f64),
    /// std = √v with v the model's variance channels (DDPM `learned`).
    Learned,
    /// std = exp(½(f·max_log + (1−f)·min_log)), f = (v+1)/2 (DDPM `learned_range`).
    LearnedRange { min_log: f64, max_log: f64 },
}

/// The scalars of one DDIM or DDPM step (see the module docs for the formula).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdimCoefficients {
    pub p: f64,
    pub q: f64,
    pub d: f64,
    pub eps_from_x0: bool,
    pub h1: f64,
    pub h2: f64,
    pub h3: f64,
    pub a: f64,
    pub w0: f64,
    pub w_eps: f64,
    pub noise: NoiseScale,
    /// What is kept as `pred_original_sample`: m = r·x + w·x₀ (DDIM, DDPM: x₀ itself; LCM:
    /// its denoised c_skip·x + c_out·x₀), weighted w0 in the update.
    pub r: f64,
    pub w: f64,
}

/// DDPM's variance types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarianceType {
    FixedSmall,
    FixedSmallLog,
    FixedLarge,
    FixedLargeLog,
    Learned,
    LearnedRange,
}

impl VarianceType {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "fixed_small" => Self::FixedSmall,
            "fixed_small_log" => Self::FixedSmallLog,
            "fixed_large" => Self::FixedLarge,
            "fixed_large_log" => Self::FixedLargeLog,
            "learned" => Self::Learned,
            "learned_range" => Self::LearnedRange,
            _ => {
                return value_err!(
                    "variance_type: unknown {s:?}; expected \"fixed_small\", \
                     \"fixed_small_log\", \"fixed_large\", \"fixed_large_log\", \"learned\" or \
                     \"learned_range\""
                )
            }
        })
    }

    pub fn learned(self) -> bool {
        matches!(self, Self::Learned | Self::LearnedRange)
    }
}

/// ᾱ_t/ᾱ_prev and 1 − ᾱ_t/ᾱ_prev rounded as diffusers forms them, in float32.
///
/// Near t = 0 the second is a cancellation: diffusers' float32 rounding of the ratio (one ulp,
/// 6e-8) becomes ~1e-3 of a β of 1e-4, which shows in the step's result well above 1e-5. The
/// ᾱ are float32 values already, so rounding these two scalars the same way (as `betas.rs`
/// reproduces diffusers' float32 schedule) makes the coefficients agree; all else stays f64.
fn current_alpha_beta(alpha_prod_t: f64, alpha_prod_prev: f64) -> (f64, f64) {
    let ratio = alpha_prod_t as f32 / alpha_prod_prev as f32;
    (ratio as f64, (1.0f32 - ratio) as f64)
}

/// ᾱ at a (possibly negative) diffusers timestep: torch indexing, so −k counts from the end
/// (diffusers' trailing spacing can yield a final timestep of −1, which then reads ᾱ_{N−1}).
pub fn alpha_prod_at(alphas_cumprod: &[f64], t: i64) -> Result<f64> {
    let n = alphas_cumprod.len() as i64;
    let i = if t < 0 { t + n } else { t };
    if !(0..n).contains(&i) {
        return value_err!("timestep: {t} is outside the training schedule [0, {n})");
    }
    Ok(alphas_cumprod[i as usize])
}

/// DDIM's β̃ = (1 − ᾱ_prev)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_prev) (diffusers' `_get_variance`), in float32
/// as diffusers forms it: at η = 1 the direction weight √(1 − ᾱ_prev − σ²) is a cancellation
/// near 0 whose sign depends on that rounding.
pub fn ddim_variance(alpha_prod_t: f64, alpha_prod_prev: f64) -> f64 {
    let (at32, ap32) = (alpha_prod_t as f32, alpha_prod_prev as f32);
    (((1.0 - ap32) / (1.0 - at32)) * (1.0 - at32 / ap32)) as f64
}

/// The DDIM step from ᾱ_t to ᾱ_prev (diffusers' `DDIMScheduler.step`).
pub fn ddim_coefficients(
    prediction: PredictionType,
    alpha_prod_t: f64,
    alpha_prod_prev: f64,
    eta: f64,
    use_clipped_model_output: bool,
) -> Result<DdimCoefficients> {
    if !(eta.is_finite() && eta >= 0.0) {
        return value_err!("eta: must be a finite number >= 0, got {eta}");
    }
    let (p, q, d) = prediction.x0_at(alpha_prod_t, "the DDIM and DDPM schedulers")?;
    let beta_t = 1.0 - alpha_prod_t;
    let (sa, sb) = (alpha_prod_t.sqrt(), beta_t.sqrt());
    // ε from the clipped x₀, or (before any clipping) from the raw output.
    let (eps_from_x0, h1, h2, h3) = if use_clipped_model_output {
        (true, 1.0, -sa, sb)
    } else {
        match prediction {
            PredictionType::Epsilon => (false, 0.0, 1.0, 1.0),
            PredictionType::Sample => (false, 1.0, -sa, sb),
            _ => (false, sb, sa, 1.0),
        }
    };
    // σ_t and the direction weight √(1 − ᾱ_prev − σ_t²) as diffusers forms them in float32:
    // at η = 1 the radicand is a cancellation near 0 whose sign (a NaN in diffusers when
    // negative) depends on that rounding.
    let ap32 = alpha_prod_prev as f32;
    let variance = ddim_variance(alpha_prod_t, alpha_prod_prev) as f32;
    let std = (eta * variance.sqrt() as f64) as f32;
    let w_eps = ((1.0 - ap32) - std * std).sqrt() as f64;
    let std = std as f64;
    Ok(DdimCoefficients {
        p,
        q,
        d,
        eps_from_x0,
        h1,
        h2,
        h3,
        a: 0.0,
        w0: alpha_prod_prev.sqrt(),
        w_eps,
        r: 0.0,
        w: 1.0,
        noise: if eta > 0.0 {
            NoiseScale::Fixed(std)
        } else {
            NoiseScale::None
        },
    })
}

/// DDPM's two variances from ᾱ_t to ᾱ_prev: β̃_t clamped at 1e-20 as diffusers does before
/// any logarithm, and β_t = 1 − ᾱ_t/ᾱ_prev (diffusers' `_get_variance` builds every
/// `variance_type` from these two).
pub fn ddpm_variances(alpha_prod_t: f64, alpha_prod_prev: f64) -> (f64, f64) {
    let (_, current_beta) = current_alpha_beta(alpha_prod_t, alpha_prod_prev);
    let small = ((1.0 - alpha_prod_prev) / (1.0 - alpha_prod_t) * current_beta).max(1e-20);
    (small, current_beta)
}

/// The DDPM posterior step from ᾱ_t to ᾱ_prev (diffusers' `DDPMScheduler.step`); `noise` says
/// whether the step adds noise (diffusers: when t > 0).
pub fn ddpm_coefficients(
    prediction: PredictionType,
    variance_type: VarianceType,
    alpha_prod_t: f64,
    alpha_prod_prev: f64,
    noise: bool,
) -> Result<DdimCoefficients> {
    let (p, q, d) = prediction.x0_at(alpha_prod_t, "the DDIM and DDPM schedulers")?;
    let (beta_t, beta_prev) = (1.0 - alpha_prod_t, 1.0 - alpha_prod_prev);
    let (current_alpha, _) = current_alpha_beta(alpha_prod_t, alpha_prod_prev);
    let (small, current_beta) = ddpm_variances(alpha_prod_t, alpha_prod_prev);
    let scale = if !noise {
        NoiseScale::None
    } else {
        match variance_type {
            VarianceType::FixedSmall => NoiseScale::Fixed(small.sqrt()),
            VarianceType::FixedSmallLog => NoiseScale::Fixed((0.5 * small.ln()).exp()),
            VarianceType::FixedLarge => NoiseScale::Fixed(current_beta.sqrt()),
            // diffusers takes √(log β_t): NaN for every β_t < 1. Kept for parity.
            VarianceType::FixedLargeLog => NoiseScale::Fixed(current_beta.ln().sqrt()),
            VarianceType::Learned => NoiseScale::Learned,
            VarianceType::LearnedRange => NoiseScale::LearnedRange {
                min_log: small.ln(),
                max_log: current_beta.ln(),
            },
        }
    };
    Ok(DdimCoefficients {
        p,
        q,
        d,
        eps_from_x0: false,
        h1: 0.0,
        h2: 0.0,
        h3: 1.0,
        a: current_alpha.sqrt() * beta_prev / beta_t,
        w0: alpha_prod_prev.sqrt() * current_beta / beta_t,
        w_eps: 0.0,
        noise: scale,
        r: 0.0,
        w: 1.0,
    })
}

/// diffusers' `TCDScheduler.step` from ᾱ_t through ᾱ_s (s = ⌊(1 − η)·prev⌋) to ᾱ_prev: the
/// noised estimate √ᾱ_s·x₀ + √(1 − ᾱ_s)·ε (linear in x and mo, kept), then
/// prev = √(ᾱ_prev/ᾱ_s)·that + √(1 − ᾱ_prev/ᾱ_s)·n when `noise` (η > 0, not the last step).
pub fn tcd_coefficients(
    prediction: PredictionType,
    alpha_prod: f64,
    alpha_prod_s: f64,
    alpha_prod_prev: f64,
    noise: bool,
) -> Result<DdimCoefficients> {
    let (p, q, d) = prediction.x0_at(alpha_prod, "TCDScheduler")?;
    let (ex, em) = prediction.eps_at(alpha_prod, "TCDScheduler")?;
    let (sa, sb) = (alpha_prod_s.sqrt(), (1.0 - alpha_prod_s).sqrt());
    let ratio = alpha_prod_prev / alpha_prod_s;
    let (w0, scale) = if noise {
        (ratio.sqrt(), NoiseScale::Fixed((1.0 - ratio).sqrt()))
    } else {
        (1.0, NoiseScale::None)
    };
    Ok(DdimCoefficients {
        p: sa * p / d + sb * ex,
        q: sa * q / d + sb * em,
        d: 1.0,
        eps_from_x0: false,
        h1: 0.0,
        h2: 0.0,
        h3: 1.0,
        a: 0.0,
        w0,
        w_eps: 0.0,
        noise: scale,
        r: 0.0,
        w: 1.0,
    })
}

/// TCD's intermediate timestep s = ⌊(1 − η)·prev⌋, the product in float32 as torch forms it.
pub fn tcd_timestep_s(prev_timestep: i64, eta: f64) -> i64 {
    ((1.0 - eta) as f32 * prev_timestep as f32).floor() as i64
}

/// The consistency model's boundary-condition scalings (c_skip, c_out) at a discrete
/// `timestep`, σ_data = 0.5, the timestep scaled by `timestep_scaling` (diffusers'
/// `LCMScheduler.get_scalings_for_boundary_condition_discrete`).
pub fn lcm_scalings(timestep: f64, timestep_scaling: f64) -> (f64, f64) {
    let s = timestep * timestep_scaling;
    let sd2 = 0.25;
    (sd2 / (s * s + sd2), s / (s * s + sd2).sqrt())
}

/// diffusers' `LCMScheduler.step` from ᾱ_t to ᾱ_prev: x₀ from the model output (clipped or
/// thresholded by the pass), denoised = c_skip·x + c_out·x₀ (kept), then
/// prev = √ᾱ_prev·denoised + √(1 − ᾱ_prev)·n, or the denoised sample itself at the `last` step.
pub fn lcm_coefficients(
    prediction: PredictionType,
    alpha_prod: f64,
    alpha_prod_prev: f64,
    timestep: f64,
    timestep_scaling: f64,
    last: bool,
) -> Result<DdimCoefficients> {
    let (p, q, d) = prediction.x0_at(alpha_prod, "LCMScheduler")?;
    let (c_skip, c_out) = lcm_scalings(timestep, timestep_scaling);
    let (w0, noise) = if last {
        (1.0, NoiseScale::None)
    } else {
        (
            alpha_prod_prev.sqrt(),
            NoiseScale::Fixed((1.0 - alpha_prod_prev).sqrt()),
        )
    };
    Ok(DdimCoefficients {
        p,
        q,
        d,
        eps_from_x0: false,
        h1: 0.0,
        h2: 0.0,
        h3: 1.0,
        a: 0.0,
        w0,
        w_eps: 0.0,
        noise,
        r: c_skip,
        w: c_out,
    })
}

/// How diffusers' DDIM/DDPM space the inference timesteps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

impl Spacing {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "linspace" => Self::Linspace,
            "leading" => Self::Leading,
            "trailing" => Self::Trailing,
            _ => {
                return value_err!(
                    "timestep_spacing: unknown {s:?}; expected \"linspace\", \"leading\" or \
                     \"trailing\""
                )
            }
        })
    }
}

/// diffusers' DDIM/DDPM `set_timesteps(num_inference_steps)`, descending, as numpy computes it.
///
/// `steps_offset` applies to the leading spacing only. The trailing spacing reproduces numpy's
/// float `arange`, which for some n (61, 103, …) yields n + 1 values, the last one −1.
pub fn ddim_timesteps(
    num_train_timesteps: usize,
    num_inference_steps: usize,
    spacing: Spacing,
    steps_offset: i64,
) -> Result<Vec<i64>> {
    let (big_n, n) = (num_train_timesteps, num_inference_steps);
    if n == 0 {
        return value_err!("num_inference_steps: must be at least 1, got 0");
    }
    if n > big_n {
        return value_err!(
            "num_inference_steps: {n} cannot be larger than num_train_timesteps: {big_n}"
        );
    }
    Ok(match spacing {
        Spacing::Linspace => {
            // np.linspace(0, N−1, n): i·step, the last value exactly N−1; then np.round.
            let stop = (big_n - 1) as f64;
            let step = if n > 1 { stop / (n - 1) as f64 } else { 0.0 };
            (0..n)
                .rev()
                .map(|i| {
                    let v = if n > 1 && i == n - 1 {
                        stop
                    } else {
                        i as f64 * step
                    };
                    v.round_ties_even() as i64
                })
                .collect()
        }
        Spacing::Leading => {
            let ratio = (big_n / n) as i64;
            (0..n as i64)
                .rev()
                .map(|i| i * ratio + steps_offset)
                .collect()
        }
        Spacing::Trailing => {
            // np.arange(N, 0, −N/n): length ceil((0 − N)/(−r)); values N + i·δ with
            // δ = (N − r) − N, as numpy's fill computes them; then np.round, minus 1.
            let start = big_n as f64;
            let r = big_n as f64 / n as f64;
            let len = ((0.0 - start) / -r).ceil().max(0.0) as usize;
            let delta = (start - r) - start;
            (0..len)
                .map(|i| {
                    let v = if i == 0 {
                        start
                    } else {
                        start + i as f64 * delta
                    };
                    v.round_ties_even() as i64 - 1
                })
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacings_match_diffusers_examples() {
        let ts = ddim_timesteps(1000, 10, Spacing::Leading, 1).unwrap();
        assert_eq!(ts, vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]);
        let ts = ddim_timesteps(1000, 10, Spacing::Linspace, 1).unwrap();
        assert_eq!(ts, vec![999, 888, 777, 666, 555, 444, 333, 222, 111, 0]);
        let ts = ddim_timesteps(1000, 10, Spacing::Trailing, 0).unwrap();
        assert_eq!(ts, vec![999, 899, 799, 699, 599, 499, 399, 299, 199, 99]);
        let ts = ddim_timesteps(1000, 998, Spacing::Trailing, 0).unwrap();
        assert_eq!(ts.len(), 999);
        assert_eq!(ts[ts.len() - 1], -1);
        assert!(ddim_timesteps(1000, 1001, Spacing::Leading, 0).is_err());
        assert!(ddim_timesteps(1000, 0, Spacing::Leading, 0).is_err());
    }

    /// η = 1 DDIM with the consecutive-step schedule is DDPM with fixed_small variance.
    #[test]
    fn ddim_eta_one_is_ddpm_posterior() {
        let (at, ap) = (0.3, 0.5);
        let c = ddim_coefficients(PredictionType::Epsilon, at, ap, 1.0, true).unwrap();
        let dd = ddpm_coefficients(
            PredictionType::Epsilon,
            VarianceType::FixedSmall,
            at,
            ap,
            true,
        )
        .unwrap();
        // prev = w0·x0 + w_eps·(x − √ᾱ_t x0)/√(1−ᾱ_t): the x and x0 weights.
        let wx = c.w_eps / c.h3;
        let wx0 = c.w0 + c.w_eps * c.h2 / c.h3;
        // (equal up to the float32 rounding of the scalars diffusers forms in float32)
        assert!((wx - dd.a).abs() < 1e-6);
        assert!((wx0 - dd.w0).abs() < 1e-6);
        match (c.noise, dd.noise) {
            (NoiseScale::Fixed(a), NoiseScale::Fixed(b)) => assert!((a - b).abs() < 1e-6),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fixed_large_log_is_nan_like_diffusers() {
        let c = ddpm_coefficients(
            PredictionType::Epsilon,
            VarianceType::FixedLargeLog,
            0.3,
            0.5,
            true,
        )
        .unwrap();
        assert!(matches!(c.noise, NoiseScale::Fixed(s) if s.is_nan()));
    }

    #[test]
    fn negative_timesteps_index_from_the_end() {
        let ac = [0.9, 0.8, 0.7];
        assert_eq!(alpha_prod_at(&ac, -1).unwrap(), 0.7);
        assert!(alpha_prod_at(&ac, 3).is_err());
        assert!(alpha_prod_at(&ac, -4).is_err());
    }
}
