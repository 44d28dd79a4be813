//! diffusers' `LMSDiscreteScheduler` step (and `rdiff.k.sample_lms`'s): one fused pass that
//! converts the model output to the slope d_i = (x − x₀)/σ (stored, for the next steps),
//! writes x₀ and steps x + c_0·d_i + Σ_j c_j·d_{i−j} (coefficients in `schedule::lms`).
//!
//! The pass's terms are the sample and the earlier slopes; its first combination is
//! x₀ = x − σ·d_i (kept in the chain's buffer) and the chained one the update, which gives the
//! sample weight 1 as a term rather than through the rounded x₀.
//!
//! A pass has [`MAX_TERMS`] term slots: the sample and three slopes. Above order 4 the slopes
//! from the third back are first summed with their weights by plain passes (four slopes, then
//! the running sum and three more), alternating between a scratch buffer and x₀'s buffer
//! (written only by the last pass) and ending in the scratch buffer, which the step reads as its
//! third slope with weight 1.

use super::{batch_of, expect_like, mo_stride};
use crate::error::Result;
use crate::lincomb::{Chain, Clamp, Conversion, Lincomb, MAX_TERMS};
use crate::schedule::euler::x0_sigma;
use crate::schedule::lms::lms_coefficients;
use crate::schedule::prediction::PredictionType;
use crate::tensor::Tensor;
use crate::value_err;

/// One loop's constants: the σ schedule (`timesteps.len() + 1` values, the last 0).
#[derive(Clone, Debug)]
pub struct Lms {
    pub sigmas: Vec<f64>,
    pub prediction: PredictionType,
}

/// The tensors of one step, all shaped like the sample, in the model output's dtype.
pub struct LmsIo {
    pub model_output: Tensor,
    pub sample: Tensor,
    /// The earlier slopes to combine, newest first (at most order − 1).
    pub history: Vec<Tensor>,
    /// Out: this step's slope d_i.
    pub derivative: Tensor,
    /// Out: x₀ (`pred_original_sample`).
    pub x0: Tensor,
    pub prev: Tensor,
    /// Scratch for orders above 4 (the folded slopes), shaped like the sample.
    pub scratch: Option<Tensor>,
}

impl Lms {
    pub fn new(sigmas: Vec<f64>, prediction_type: &str) -> Result<Self> {
        if sigmas.len() < 2 {
            return value_err!("sigmas: need at least 2 values, got {}", sigmas.len());
        }
        if sigmas.iter().any(|s| !s.is_finite() || *s < 0.0) {
            return value_err!("sigmas: must be finite and non-negative");
        }
        let prediction = PredictionType::parse(prediction_type)?;
        if prediction == PredictionType::FlowPrediction {
            return value_err!("prediction_type: \"flow_prediction\" does not go with LMS");
        }
        Ok(Self { sigmas, prediction })
    }

    /// c_0 … c_{order−1} of step `i` (diffusers' `get_lms_coefficient`).
    pub fn coefficients(&self, i: usize, order: usize) -> Result<Vec<f64>> {
        lms_coefficients(&self.sigmas, i, order)
    }

    /// Step `i` of order `order` (≤ i + 1) as passes run in order (one up to order 4); the
    /// history holds the slopes its coefficients c_1, c_2, … weigh (fewer leave the rest out,
    /// as diffusers' zip does).
    pub fn step(&self, i: usize, order: usize, io: LmsIo) -> Result<Vec<Lincomb>> {
        let c = self.coefficients(i, order)?;
        let sigma = self.sigmas[i];
        if sigma == 0.0 {
            return value_err!("the LMS step: σ is 0 at this step; the schedule has ended");
        }
        let LmsIo {
            model_output: mo,
            sample: x,
            history,
            derivative,
            x0,
            prev,
            scratch,
        } = io;
        batch_of(&x)?;
        let stride = mo_stride(&mo, &x, false)?;
        let d = mo.dtype;
        expect_like(&x, "sample", &x, d)?;
        for (k, h) in history.iter().enumerate() {
            expect_like(h, &format!("derivatives[-{}]", k + 1), &x, d)?;
        }
        expect_like(&derivative, "derivative buffer", &x, d)?;
        expect_like(&x0, "pred_original_sample buffer", &x, d)?;
        expect_like(&prev, "output buffer", &x, d)?;
        let used = history.len().min(order - 1);
        let mut slopes: Vec<(Tensor, f64)> =
            history.into_iter().zip(c[1..=used].to_vec()).collect();
        let mut passes = Vec::new();
        if used > MAX_TERMS - 1 {
            let Some(scratch) = scratch else {
                return value_err!("the LMS step: order {order} needs a scratch buffer");
            };
            expect_like(&scratch, "scratch buffer", &x, d)?;
            let mut folded = slopes.split_off(2).into_iter();
            // the first pass takes four slopes, each later one the running sum and three more
            let count = 1 + (used - 2).saturating_sub(MAX_TERMS).div_ceil(MAX_TERMS - 1);
            let mut sum: Option<Tensor> = None;
            for k in 0..count {
                let out = if (count - 1 - k) % 2 == 0 {
                    &scratch
                } else {
                    &x0
                };
                let mut lc = Lincomb::new("the LMS step's earlier slopes", out.clone());
                lc.terms.extend(sum.take().map(|t| (t, 1.0)));
                lc.terms
                    .extend(folded.by_ref().take(MAX_TERMS - lc.terms.len()));
                passes.push(lc);
                sum = Some(out.clone());
            }
            slopes.push((scratch, 1.0));
        }
        let (p, q) = x0_sigma(self.prediction, sigma, sigma);
        let mut lc = Lincomb::new("the LMS step", prev);
        // m = (x − x₀)/σ; y = x − σ·m = x₀
        lc.conv = Some(Conversion {
            x: x.clone(),
            mo,
            mo_stride: stride,
            p,
            q,
            d: 1.0,
            clamp: Clamp::None,
            r: 1.0 / sigma,
            w: -1.0 / sigma,
            weight: -sigma,
            recompute: None,
        });
        lc.base = Some((x.clone(), 1.0));
        lc.hist = Some(derivative);
        lc.terms.push((x, 0.0));
        // prev = x + c_0·m + Σ c_j·d_{i−j}
        let mut cw = vec![1.0];
        for (h, w) in slopes {
            lc.terms.push((h, 0.0));
            cw.push(w);
        }
        lc.chain = Some(Chain {
            mid: x0,
            a: 0.0,
            wm: c[0],
            c: cw,
        });
        passes.push(lc);
        Ok(passes)
    }
}
