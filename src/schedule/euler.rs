//! The Euler family of diffusers' σ-parametrised schedulers (`EulerDiscreteScheduler`,
//! `EulerAncestralDiscreteScheduler`, `FlowMatchEulerDiscreteScheduler`) as linear
//! combinations of the sample x, the model output mo and the noise n:
//!
//! ```text
//! x₀   = p·x + q·mo                      pred_original_sample
//! prev = a·x + c·mo + s·n                the new sample
//! ```
//!
//! An Euler step from σ̂ to σ_next follows dx/dσ = (x − x₀)/σ̂, so with x₀ = p·x + q·mo,
//! prev = x + (σ_next − σ̂)/σ̂·((1 − p)·x − q·mo): for ε-prediction (p = 1, q = −σ̂) exactly
//! x + (σ_next − σ̂)·mo, the form diffusers' arithmetic reduces to.

use crate::error::Result;
use crate::schedule::karras::ancestral_step;
use crate::schedule::prediction::PredictionType;
use crate::value_err;

/// The weights of one step (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EulerCoefficients {
    pub p: f64,
    pub q: f64,
    pub a: f64,
    pub c: f64,
    pub noise: f64,
}

/// (p, q) with x₀ = p·x + q·mo at σ (`sigma`, and σ̂ = `sigma_hat` after churn), as diffusers'
/// Euler schedulers convert: ε: x − σ̂·mo; sample: mo; v: x/(σ² + 1) − σ/√(σ² + 1)·mo (at the
/// σ before churn, as diffusers has it); flow (velocity): x − σ·mo.
pub fn x0_sigma(prediction: PredictionType, sigma: f64, sigma_hat: f64) -> (f64, f64) {
    match prediction {
        PredictionType::Epsilon => (1.0, -sigma_hat),
        PredictionType::Sample => (0.0, 1.0),
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            (1.0 / s2, -sigma / s2.sqrt())
        }
        PredictionType::FlowPrediction => (1.0, -sigma),
    }
}

/// `EulerDiscreteScheduler.step` from σ (churned to σ̂ = σ·(γ + 1) by the caller's noise) to
/// σ_next.
pub fn euler_step(
    prediction: PredictionType,
    sigma: f64,
    sigma_hat: f64,
    sigma_next: f64,
) -> Result<EulerCoefficients> {
    if sigma_hat == 0.0 {
        return value_err!("the Euler step: σ is 0 at this step; the schedule has ended");
    }
    let (p, q) = x0_sigma(prediction, sigma, sigma_hat);
    let dt = sigma_next - sigma_hat;
    let (a, c) = match prediction {
        // diffusers' x + ((x − x₀)/σ̂)·dt is x + mo·dt exactly in real arithmetic.
        PredictionType::Epsilon => (1.0, dt),
        _ => (1.0 + dt * (1.0 - p) / sigma_hat, -dt * q / sigma_hat),
    };
    Ok(EulerCoefficients {
        p,
        q,
        a,
        c,
        noise: 0.0,
    })
}

/// `EulerAncestralDiscreteScheduler.step` from σ to σ_next: an Euler step to σ_down plus
/// σ_up·n (η = 1; diffusers adds the noise at every step, the last one's σ_up being 0).
pub fn euler_ancestral_step(
    prediction: PredictionType,
    sigma: f64,
    sigma_next: f64,
) -> Result<EulerCoefficients> {
    if prediction == PredictionType::Sample {
        return value_err!(
            "prediction_type: \"sample\" is not supported by the Euler ancestral step \
             (diffusers raises NotImplementedError); use \"epsilon\" or \"v_prediction\""
        );
    }
    let (down, up) = ancestral_step(sigma, sigma_next, 1.0);
    let mut co = euler_step(prediction, sigma, sigma, down)?;
    co.noise = up;
    Ok(co)
}

/// `FlowMatchEulerDiscreteScheduler.step` from σ to σ_next for a velocity-predicting model:
/// x + (σ_next − σ)·v, or with `stochastic_sampling` (1 − σ_next)·x₀ + σ_next·n.
pub fn flow_euler_step(sigma: f64, sigma_next: f64, stochastic: bool) -> EulerCoefficients {
    let (p, q) = (1.0, -sigma);
    if stochastic {
        let keep = 1.0 - sigma_next;
        EulerCoefficients {
            p,
            q,
            a: keep,
            c: keep * q,
            noise: sigma_next,
        }
    } else {
        EulerCoefficients {
            p,
            q,
            a: 1.0,
            c: sigma_next - sigma,
            noise: 0.0,
        }
    }
}

/// The x₀-form weights of an Euler step: prev = a·x + wm·x₀ (for a clamped x₀, which is not
/// linear in mo): a = 1 + dt/σ̂, wm = −dt/σ̂.
pub fn euler_x0_form(sigma_hat: f64, sigma_next: f64) -> (f64, f64) {
    let r = (sigma_next - sigma_hat) / sigma_hat;
    (1.0 + r, -r)
}

/// The second stage of diffusers' `HeunDiscreteScheduler.step` from σ to σ_next: with the
/// first stage's sample x_s and (clamped) x₀⁽¹⁾ and the stage's sample x₂ = x_s + dt·d₁ and
/// x₀⁽²⁾ = p·x₂ + q·mo (at σ_next), prev = x_s + dt/2·(d₁ + d₂), d₁ = (x_s − x₀⁽¹⁾)/σ,
/// d₂ = (x₂ − x₀⁽²⁾)/σ_next:
///
/// ```text
/// prev = a_s·x_s + w_x01·x₀⁽¹⁾ + w_x2·x₂ + wm·x₀⁽²⁾
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HeunSecond {
    pub p: f64,
    pub q: f64,
    pub a_s: f64,
    pub w_x01: f64,
    pub w_x2: f64,
    pub wm: f64,
}

pub fn heun_second(prediction: PredictionType, sigma: f64, sigma_next: f64) -> Result<HeunSecond> {
    if sigma == 0.0 || sigma_next == 0.0 {
        return value_err!("the Heun correction: σ is 0 (the last step has no second stage)");
    }
    let (p, q) = x0_sigma(prediction, sigma_next, sigma_next);
    let half = 0.5 * (sigma_next - sigma);
    Ok(HeunSecond {
        p,
        q,
        a_s: 1.0 + half / sigma,
        w_x01: -half / sigma,
        w_x2: half / sigma_next,
        wm: -half / sigma_next,
    })
}

/// The second stage of diffusers' `KDPM2DiscreteScheduler.step` (DPM-Solver-2 in σ): with the
/// slope at the log-midpoint σ_mid, d = (x_mid − x₀)/σ_mid, x₀ = p·x_mid + q·mo at σ_mid,
/// prev = x_s + (σ_next − σ)·d, in [`HeunSecond`]'s form (no first-stage x₀).
pub fn kdpm2_second(
    prediction: PredictionType,
    sigma: f64,
    sigma_mid: f64,
    sigma_next: f64,
) -> Result<HeunSecond> {
    if sigma_mid == 0.0 {
        return value_err!("the KDPM2 correction: the midpoint σ is 0 (the last step is Euler)");
    }
    let (p, q) = x0_sigma(prediction, sigma_mid, sigma_mid);
    let k = (sigma_next - sigma) / sigma_mid;
    Ok(HeunSecond {
        p,
        q,
        a_s: 1.0,
        w_x01: 0.0,
        w_x2: k,
        wm: -k,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies the weights to scalar values and compares with diffusers' formulas.
    fn apply(co: EulerCoefficients, x: f64, mo: f64, n: f64) -> (f64, f64) {
        (co.p * x + co.q * mo, co.a * x + co.c * mo + co.noise * n)
    }

    #[test]
    fn euler_matches_diffusers_formulas() {
        let (x, mo) = (1.7, -0.3);
        for (pred, sigma, hat, next) in [
            (PredictionType::Epsilon, 2.0, 2.4, 1.1),
            (PredictionType::Sample, 2.0, 2.4, 1.1),
            (PredictionType::VPrediction, 2.0, 2.4, 0.0),
        ] {
            let co = euler_step(pred, sigma, hat, next).unwrap();
            let x0 = match pred {
                PredictionType::Epsilon => x - hat * mo,
                PredictionType::Sample => mo,
                _ => mo * (-sigma / (sigma * sigma + 1.0f64).sqrt()) + x / (sigma * sigma + 1.0),
            };
            let want = x + (x - x0) / hat * (next - hat);
            let (got_x0, got) = apply(co, x, mo, 0.0);
            assert!((got_x0 - x0).abs() < 1e-14, "{pred:?}");
            assert!((got - want).abs() < 1e-14, "{pred:?}: {got} vs {want}");
        }
    }

    #[test]
    fn ancestral_adds_sigma_up_noise() {
        let (s, sn) = (3.0, 1.5);
        let co = euler_ancestral_step(PredictionType::Epsilon, s, sn).unwrap();
        let up = (sn * sn * (s * s - sn * sn) / (s * s)).sqrt();
        let down = (sn * sn - up * up).sqrt();
        assert!((co.noise - up).abs() < 1e-15);
        assert!((co.c - (down - s)).abs() < 1e-15);
        assert!(euler_ancestral_step(PredictionType::Sample, s, sn).is_err());
    }

    #[test]
    fn heun_second_is_the_trapezoid() {
        let (s, sn) = (3.0, 1.2);
        let (xs, mo1, mo2) = (2.0, 0.7, -0.4);
        let x01 = xs - s * mo1; // ε-prediction
        let d1 = (xs - x01) / s;
        let x2 = xs + (sn - s) * d1;
        let x02 = x2 - sn * mo2;
        let d2 = (x2 - x02) / sn;
        let want = xs + (sn - s) * 0.5 * (d1 + d2);
        let h = heun_second(PredictionType::Epsilon, s, sn).unwrap();
        let got = h.a_s * xs + h.w_x01 * x01 + h.w_x2 * x2 + h.wm * (h.p * x2 + h.q * mo2);
        assert!((got - want).abs() < 1e-14, "{got} vs {want}");
        assert!(heun_second(PredictionType::Epsilon, s, 0.0).is_err());
    }

    #[test]
    fn flow_steps() {
        let (x, v, n) = (0.4, 1.2, -0.7);
        let co = flow_euler_step(0.8, 0.5, false);
        assert!((apply(co, x, v, n).1 - (x + (0.5 - 0.8) * v)).abs() < 1e-15);
        let co = flow_euler_step(0.8, 0.5, true);
        let x0 = x - 0.8 * v;
        assert!((apply(co, x, v, n).1 - (0.5 * x0 + 0.5 * n)).abs() < 1e-15);
    }
}
