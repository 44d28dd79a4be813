//! The Euler family's step (diffusers' `EulerDiscreteScheduler`,
//! `EulerAncestralDiscreteScheduler`, `FlowMatchEulerDiscreteScheduler`): one fused pass
//! writing the new sample a·x + c·mo (+ s·n) and, where the class returns it, x₀ = p·x + q·mo
//! (coefficients in `schedule::euler`).

use super::{batch_of, expect_like, mo_stride};
use crate::dtype::DType;
use crate::error::Result;
use crate::lincomb::{Clamp, Conversion, Lincomb, Noise, NoiseSource, Sigma};
use crate::schedule::euler::{
    euler_ancestral_step, euler_step, euler_x0_form, flow_euler_step, heun_second, kdpm2_second,
    EulerCoefficients,
};
use crate::schedule::karras::churn_gamma;
use crate::schedule::prediction::PredictionType;
use crate::tensor::Tensor;
use crate::value_err;

/// Which update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EulerKind {
    Euler,
    Ancestral,
    Flow {
        stochastic: bool,
    },
    /// diffusers' `HeunDiscreteScheduler`: over its interleaved σ (σ₀, σ₁, σ₁, σ₂, σ₂, …, 0),
    /// a first stage (an Euler step, [`Euler::step`]) and a second ([`Euler::second_stage`]).
    Heun,
    /// diffusers' `KDPM2DiscreteScheduler`: Heun's interleaving, the first stage an Euler step
    /// to the log-midpoint σ (`interpol`), the second from the interval's start with the
    /// midpoint's slope.
    Kdpm2,
    /// diffusers' `KDPM2AncestralDiscreteScheduler`: the same two stages with diffusers' own
    /// indexing (the first to `interpol[i]`, the second from `sigmas[i − 1]` with the slope
    /// at `interpol[i − 1]` to `down[i − 1]`, adding `up[i − 1]`·n).
    Kdpm2Ancestral,
}

/// One loop's constants: the σ schedule (`timesteps.len() + 1` values) and the update.
#[derive(Clone, Debug)]
pub struct Euler {
    pub sigmas: Vec<f64>,
    pub prediction: PredictionType,
    pub kind: EulerKind,
    /// clip_sample: x₀ clamped to [−c, c] before the update (Heun).
    pub clip: Option<f64>,
    /// KDPM2's log-midpoint σ, interleaved as `sigmas`.
    pub interpol: Vec<f64>,
    /// KDPM2 ancestral's σ_down and σ_up, interleaved as `sigmas`.
    pub down: Vec<f64>,
    pub up: Vec<f64>,
}

/// The tensors of one step.
pub struct EulerIo {
    pub model_output: Tensor,
    pub sample: Tensor,
    /// float32 noise of the sample's shape, when the step adds noise.
    pub noise: Option<Tensor>,
    /// x₀ (`pred_original_sample`) in the model output's dtype, when wanted.
    pub x0: Option<Tensor>,
    /// The new sample, in the model output's dtype.
    pub prev: Tensor,
}

/// The tensors of Heun's second stage.
pub struct HeunIo {
    pub model_output: Tensor,
    /// x₂, the first stage's result, in the model output's dtype (it is a term of the pass).
    pub sample: Tensor,
    /// x_s and x₀⁽¹⁾: the first stage's sample and (clamped) x₀.
    pub first_sample: Tensor,
    pub first_x0: Tensor,
    pub x0: Tensor,
    pub prev: Tensor,
    /// float32 noise of the sample's shape (KDPM2 ancestral).
    pub noise: Option<Tensor>,
}

impl Euler {
    pub fn new(sigmas: Vec<f64>, prediction_type: &str, kind: EulerKind) -> Result<Self> {
        if sigmas.len() < 2 {
            return value_err!("sigmas: need at least 2 values, got {}", sigmas.len());
        }
        if sigmas.iter().any(|s| !s.is_finite() || *s < 0.0) {
            return value_err!("sigmas: must be finite and non-negative");
        }
        let prediction = PredictionType::parse(prediction_type)?;
        // Heun steps either kind of model (diffusers' `FlowMatchHeunDiscreteScheduler`)
        let flow = matches!(kind, EulerKind::Flow { .. });
        let flow_model = prediction == PredictionType::FlowPrediction;
        if (flow && !flow_model) || (flow_model && !(flow || kind == EulerKind::Heun)) {
            return value_err!(
                "prediction_type: {prediction_type:?} does not go with this scheduler"
            );
        }
        Ok(Self {
            sigmas,
            prediction,
            kind,
            clip: None,
            interpol: Vec::new(),
            down: Vec::new(),
            up: Vec::new(),
        })
    }

    /// With KDPM2's interleaved log-midpoint σ (as many as `sigmas`).
    pub fn with_interpol(mut self, interpol: Vec<f64>) -> Result<Self> {
        if interpol.len() != self.sigmas.len() || interpol.iter().any(|s| !s.is_finite()) {
            return value_err!(
                "sigmas_interpol: need {} finite values, got {}",
                self.sigmas.len(),
                interpol.len()
            );
        }
        self.interpol = interpol;
        Ok(self)
    }

    /// With KDPM2 ancestral's interleaved σ_down and σ_up (as many as `sigmas`; diffusers'
    /// padding NaN where no step reads them is given as 0).
    pub fn with_ancestral(mut self, down: Vec<f64>, up: Vec<f64>) -> Result<Self> {
        for (name, v) in [("sigmas_down", &down), ("sigmas_up", &up)] {
            if v.len() != self.sigmas.len() || v.iter().any(|s| !s.is_finite() || *s < 0.0) {
                return value_err!(
                    "{name}: need {} finite non-negative values, got {}",
                    self.sigmas.len(),
                    v.len()
                );
            }
        }
        self.down = down;
        self.up = up;
        Ok(self)
    }

    /// With diffusers' `clip_sample` (x₀ clamped to [−range, range]).
    pub fn with_clip(mut self, range: f64) -> Result<Self> {
        if range.is_nan() || range < 0.0 {
            return value_err!("clip_sample_range: must be >= 0, got {range}");
        }
        self.clip = Some(range);
        Ok(self)
    }

    fn mid(&self, i: usize) -> Result<f64> {
        match self.interpol.get(i) {
            Some(&m) => Ok(m),
            None => value_err!("sigmas_interpol: no midpoint σ at index {i}"),
        }
    }

    fn at(&self, i: usize) -> Result<(f64, f64)> {
        if i + 1 >= self.sigmas.len() {
            return value_err!(
                "step: step index {i} is past the end of the schedule ({} steps)",
                self.sigmas.len() - 1
            );
        }
        Ok((self.sigmas[i], self.sigmas[i + 1]))
    }

    /// γ of `EulerDiscreteScheduler`'s churn at step `i`: min(s_churn/N, √2 − 1) where
    /// s_tmin ≤ σ ≤ s_tmax (N = len(sigmas) − 1), else 0.
    pub fn churn(&self, i: usize, s_churn: f64, s_tmin: f64, s_tmax: f64) -> Result<f64> {
        let (sigma, _) = self.at(i)?;
        if s_churn.is_nan() || s_churn < 0.0 {
            return value_err!("s_churn: must be >= 0, got {s_churn}");
        }
        Ok(churn_gamma(
            sigma,
            self.sigmas.len() - 1,
            s_churn,
            s_tmin,
            s_tmax,
        ))
    }

    /// The weights of step `i` (γ: the churn, 0 for the other kinds).
    pub fn coefficients(&self, i: usize, gamma: f64) -> Result<EulerCoefficients> {
        let (sigma, next) = self.at(i)?;
        match self.kind {
            EulerKind::Euler | EulerKind::Heun => {
                euler_step(self.prediction, sigma, sigma * (gamma + 1.0), next)
            }
            EulerKind::Kdpm2 => {
                let mid = self.mid(i + 1)?;
                euler_step(self.prediction, sigma, sigma, mid)
            }
            EulerKind::Kdpm2Ancestral => {
                let mid = self.mid(i)?;
                euler_step(self.prediction, sigma, sigma, mid)
            }
            EulerKind::Ancestral => euler_ancestral_step(self.prediction, sigma, next),
            EulerKind::Flow { stochastic } => Ok(flow_euler_step(sigma, next, stochastic)),
        }
    }

    /// Step `i` (from the churned sample when γ > 0) as one pass.
    pub fn step(&self, i: usize, gamma: f64, io: EulerIo) -> Result<Lincomb> {
        let co = self.coefficients(i, gamma)?;
        let EulerIo {
            model_output: mo,
            sample: x,
            noise,
            x0,
            prev,
        } = io;
        batch_of(&x)?;
        let stride = mo_stride(&mo, &x, false)?;
        let d = mo.dtype;
        expect_like(&prev, "output buffer", &x, d)?;
        let mut lc = Lincomb::new("the Euler step", prev);
        // Without a clamp the update reads mo itself (exact for ε: x + dt·mo); a clamped x₀
        // is not linear in mo, so the update reads x₀ (m) instead.
        let (a, wm) = match self.clip {
            None => {
                lc.terms.push((mo.clone(), co.c));
                (co.a, 0.0)
            }
            Some(_) => {
                let (sigma, mut next) = self.at(i)?;
                match self.kind {
                    EulerKind::Kdpm2 => next = self.mid(i + 1)?,
                    EulerKind::Kdpm2Ancestral => next = self.mid(i)?,
                    _ => {}
                }
                euler_x0_form(sigma * (gamma + 1.0), next)
            }
        };
        lc.base = Some((x.clone(), a));
        if x0.is_some() || self.clip.is_some() {
            lc.conv = Some(self.conversion(&x, mo, stride, co.p, co.q, wm));
        }
        if let Some(x0) = x0 {
            expect_like(&x0, "pred_original_sample buffer", &x, d)?;
            lc.hist = Some(x0);
        }
        let noisy = self.kind == EulerKind::Ancestral
            || matches!(self.kind, EulerKind::Flow { stochastic: true });
        if noisy {
            let Some(nz) = noise else {
                return value_err!("noise: this step needs noise");
            };
            expect_like(&nz, "noise", &x, DType::F32)?;
            lc.noise = Some(Noise {
                source: NoiseSource::Buffer(nz),
                sigma: Sigma::Fixed(co.noise),
            });
        }
        Ok(lc)
    }

    /// x₀ = clamp(p·x + q·mo) (stored as m, weighted wm in the update).
    fn conversion(
        &self,
        x: &Tensor,
        mo: Tensor,
        stride: usize,
        p: f64,
        q: f64,
        wm: f64,
    ) -> Conversion {
        Conversion {
            x: x.clone(),
            mo,
            mo_stride: stride,
            p,
            q,
            d: 1.0,
            clamp: match self.clip {
                Some(c) => Clamp::Range { lo: -c, hi: c },
                None => Clamp::None,
            },
            r: 0.0,
            w: 1.0,
            weight: wm,
            recompute: None,
        }
    }

    /// The second stage of Heun or KDPM2 at step index `i` (σ = sigmas[i − 1] to
    /// σ_next = sigmas[i]; KDPM2's midpoint interpol[i]; KDPM2 ancestral's to down[i − 1]
    /// through interpol[i − 1], adding up[i − 1]·n). `gamma`: the first stage's churn (Heun
    /// of a flow model), which moved the interval's start to σ̂ = σ·(γ + 1).
    pub fn second_stage(&self, i: usize, gamma: f64, io: HeunIo) -> Result<Lincomb> {
        let two_stage = matches!(
            self.kind,
            EulerKind::Heun | EulerKind::Kdpm2 | EulerKind::Kdpm2Ancestral
        );
        if !two_stage || i == 0 || i >= self.sigmas.len() {
            return value_err!("the second stage: step index {i} has no first stage");
        }
        let (sigma, next) = (self.sigmas[i - 1], self.sigmas[i]);
        let (h, noise_sigma) = match self.kind {
            EulerKind::Kdpm2 => (
                kdpm2_second(self.prediction, sigma, self.mid(i)?, next)?,
                0.0,
            ),
            EulerKind::Kdpm2Ancestral => {
                let (Some(&down), Some(&up)) = (self.down.get(i - 1), self.up.get(i - 1)) else {
                    return value_err!("sigmas_down: no σ_down at index {}", i - 1);
                };
                (
                    kdpm2_second(self.prediction, sigma, self.mid(i - 1)?, down)?,
                    up,
                )
            }
            _ => (
                heun_second(self.prediction, sigma * (gamma + 1.0), next)?,
                0.0,
            ),
        };
        let HeunIo {
            model_output: mo,
            sample: x2,
            first_sample: xs,
            first_x0,
            x0,
            prev,
            noise,
        } = io;
        batch_of(&x2)?;
        let stride = mo_stride(&mo, &x2, false)?;
        let d = mo.dtype;
        expect_like(&x2, "sample", &x2, d)?;
        expect_like(&xs, "first-stage sample", &x2, xs.dtype)?;
        expect_like(&first_x0, "first-stage pred_original_sample", &x2, d)?;
        expect_like(&x0, "pred_original_sample buffer", &x2, d)?;
        expect_like(&prev, "output buffer", &x2, d)?;
        let mut lc = Lincomb::new("the second stage", prev);
        lc.base = Some((xs, h.a_s));
        if h.w_x01 != 0.0 {
            lc.terms.push((first_x0, h.w_x01));
        }
        lc.terms.push((x2.clone(), h.w_x2));
        lc.conv = Some(self.conversion(&x2, mo, stride, h.p, h.q, h.wm));
        lc.hist = Some(x0);
        if self.kind == EulerKind::Kdpm2Ancestral {
            let Some(nz) = noise else {
                return value_err!("noise: this step needs noise");
            };
            expect_like(&nz, "noise", &x2, DType::F32)?;
            lc.noise = Some(Noise {
                source: NoiseSource::Buffer(nz),
                sigma: Sigma::Fixed(noise_sigma),
            });
        }
        Ok(lc)
    }
}
