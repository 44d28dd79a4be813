//! The DDIM and DDPM steps (diffusers' `DDIMScheduler`, `DDPMScheduler`): x₀ from the model
//! output, clipped or thresholded, then the η update (DDIM) or the posterior mean and its
//! variance (DDPM), as one fused pass (coefficients in `schedule::ddim`).

use super::{batch_of, expect_like, mo_stride, thresholding, thresholding_options};
use crate::dtype::DType;
use crate::error::Result;
use crate::lincomb::{Clamp, Conversion, Lincomb, Noise, NoiseSource, Recompute, Sigma};
use crate::schedule::ddim::{
    alpha_prod_at, ddim_coefficients, ddim_variance, ddpm_coefficients, ddpm_variances,
    lcm_coefficients, tcd_coefficients, tcd_timestep_s, DdimCoefficients, NoiseScale, VarianceType,
};
use crate::schedule::prediction::PredictionType;
use crate::tensor::Tensor;
use crate::value_err;

/// How x₀ is bounded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Clip {
    None,
    /// clip_sample: clamp(x₀, −c, c).
    Range(f64),
    /// Dynamic thresholding (ratio, sample_max_value).
    Dynamic(f64, f64),
}

/// One scheduler's constants.
#[derive(Clone, Debug)]
pub struct Ddim {
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ before the first training step: DDIM's `final_alpha_cumprod`, DDPM's 1.
    pub final_alpha_cumprod: f64,
    pub prediction: PredictionType,
    pub clip: Clip,
    pub variance_type: VarianceType,
}

/// The options of [`Ddim::new`], as diffusers' configs name them.
pub struct DdimOptions<'a> {
    pub alphas_cumprod: Vec<f64>,
    pub final_alpha_cumprod: f64,
    pub prediction_type: &'a str,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub variance_type: &'a str,
}

/// The tensors of one DDIM / DDPM step.
pub struct DdimIo {
    pub model_output: Tensor,
    pub sample: Tensor,
    /// float32 noise of the sample's shape, when the step adds noise.
    pub noise: Option<Tensor>,
    /// Outputs in the model output's dtype: x₀ (`pred_original_sample`) and the new sample.
    pub x0: Tensor,
    pub prev: Tensor,
    pub bounds: Option<Tensor>,
}

impl Ddim {
    pub fn new(o: DdimOptions<'_>) -> Result<Self> {
        if o.alphas_cumprod.is_empty() {
            return value_err!("alphas_cumprod: must not be empty");
        }
        let prediction = PredictionType::parse(o.prediction_type)?;
        if prediction == PredictionType::FlowPrediction {
            return value_err!(
                "prediction_type: unknown \"flow_prediction\"; expected \"epsilon\", \"sample\" \
                 or \"v_prediction\""
            );
        }
        let clip = match thresholding_options(
            o.thresholding,
            o.dynamic_thresholding_ratio,
            o.sample_max_value,
        )? {
            Some((ratio, max)) => Clip::Dynamic(ratio, max),
            None if o.clip_sample => {
                let c = o.clip_sample_range;
                if c.is_nan() || c < 0.0 {
                    return value_err!("clip_sample_range: must be >= 0, got {c}");
                }
                Clip::Range(c)
            }
            None => Clip::None,
        };
        Ok(Self {
            alphas_cumprod: o.alphas_cumprod,
            final_alpha_cumprod: o.final_alpha_cumprod,
            prediction,
            clip,
            variance_type: VarianceType::parse(o.variance_type)?,
        })
    }

    fn alphas(&self, timestep: i64, prev_timestep: i64) -> Result<(f64, f64)> {
        let at = alpha_prod_at(&self.alphas_cumprod, timestep)?;
        let ap = if prev_timestep >= 0 {
            alpha_prod_at(&self.alphas_cumprod, prev_timestep)?
        } else {
            self.final_alpha_cumprod
        };
        Ok((at, ap))
    }

    /// DDIM's β̃ from `timestep` to `prev_timestep` (diffusers' `_get_variance`).
    pub fn variance(&self, timestep: i64, prev_timestep: i64) -> Result<f64> {
        let (at, ap) = self.alphas(timestep, prev_timestep)?;
        Ok(ddim_variance(at, ap))
    }

    /// DDPM's (β̃_t clamped, β_t) from `timestep` to `prev_timestep`.
    pub fn ddpm_variances(&self, timestep: i64, prev_timestep: i64) -> Result<(f64, f64)> {
        let (at, ap) = self.alphas(timestep, prev_timestep)?;
        Ok(ddpm_variances(at, ap))
    }

    /// The DDIM step's scalars.
    pub fn ddim_coefficients(
        &self,
        timestep: i64,
        prev_timestep: i64,
        eta: f64,
        use_clipped_model_output: bool,
    ) -> Result<DdimCoefficients> {
        let (at, ap) = self.alphas(timestep, prev_timestep)?;
        ddim_coefficients(self.prediction, at, ap, eta, use_clipped_model_output)
    }

    /// The DDPM step's scalars (noise when `timestep > 0`).
    pub fn ddpm_coefficients(&self, timestep: i64, prev_timestep: i64) -> Result<DdimCoefficients> {
        let (at, ap) = self.alphas(timestep, prev_timestep)?;
        ddpm_coefficients(self.prediction, self.variance_type, at, ap, timestep > 0)
    }

    /// The LCM step's scalars (`last`: the loop's last step, which adds no noise).
    pub fn lcm_coefficients(
        &self,
        timestep: i64,
        prev_timestep: i64,
        timestep_scaling: f64,
        last: bool,
    ) -> Result<DdimCoefficients> {
        let (at, ap) = self.alphas(timestep, prev_timestep)?;
        lcm_coefficients(
            self.prediction,
            at,
            ap,
            timestep as f64,
            timestep_scaling,
            last,
        )
    }

    /// The TCD step's scalars: from `timestep` to `prev_timestep` (0 after the last) with
    /// stochasticity `eta` ∈ [0, 1]; `last`: the loop's last step (no noise).
    pub fn tcd_coefficients(
        &self,
        timestep: i64,
        prev_timestep: i64,
        eta: f64,
        last: bool,
    ) -> Result<DdimCoefficients> {
        if !(0.0..=1.0).contains(&eta) {
            return value_err!("eta: must lie in [0, 1], got {eta}");
        }
        if self.clip != Clip::None {
            return value_err!("the TCD step: this core clips x₀; TCD never does");
        }
        let at = alpha_prod_at(&self.alphas_cumprod, timestep)?;
        let a_s = alpha_prod_at(&self.alphas_cumprod, tcd_timestep_s(prev_timestep, eta))?;
        let (_, ap) = self.alphas(timestep, prev_timestep)?;
        tcd_coefficients(self.prediction, at, a_s, ap, eta > 0.0 && !last)
    }

    /// A step with `co` as a fused pass.
    pub fn pass(&self, co: &DdimCoefficients, io: DdimIo) -> Result<Lincomb> {
        let DdimIo {
            model_output: mo,
            sample: x,
            noise,
            x0,
            prev,
            bounds,
        } = io;
        batch_of(&x)?;
        let learned = matches!(
            co.noise,
            NoiseScale::Learned | NoiseScale::LearnedRange { .. }
        );
        // A learned-variance model outputs its variance as extra channels at every step,
        // the last (no noise) included.
        let stride = mo_stride(&mo, &x, self.variance_type.learned())?;
        if learned && stride != 2 * x.numel / x.batch() {
            let mut want = x.shape.clone();
            want[1] *= 2;
            return value_err!(
                "model_output: a learned variance_type needs the predicted variance as extra \
                 channels, shape {want:?}; got {:?}",
                mo.shape
            );
        }
        let d = mo.dtype;
        expect_like(&x0, "pred_original_sample buffer", &x, d)?;
        expect_like(&prev, "output buffer", &x, d)?;
        let sigma = match co.noise {
            NoiseScale::None => None,
            NoiseScale::Fixed(s) => Some(Sigma::Fixed(s)),
            NoiseScale::Learned => Some(Sigma::Learned),
            NoiseScale::LearnedRange { min_log, max_log } => {
                Some(Sigma::LearnedRange { min_log, max_log })
            }
        };
        let mut lc = Lincomb::new("the DDIM/DDPM step", prev);
        if let Some(sigma) = sigma {
            let Some(nz) = noise else {
                return value_err!("noise: this step needs noise");
            };
            expect_like(&nz, "noise", &x, DType::F32)?;
            lc.noise = Some(Noise {
                source: NoiseSource::Buffer(nz),
                sigma,
            });
        }
        let clamp = match self.clip {
            Clip::None => Clamp::None,
            Clip::Range(c) => Clamp::Range { lo: -c, hi: c },
            Clip::Dynamic(ratio, max) => thresholding(Some((ratio, max)), bounds)?,
        };
        lc.conv = Some(Conversion {
            x: x.clone(),
            mo,
            mo_stride: stride,
            p: co.p,
            q: co.q,
            d: co.d,
            clamp,
            r: co.r,
            w: co.w,
            weight: co.w0,
            recompute: (co.w_eps != 0.0).then_some(Recompute {
                h1: co.h1,
                h2: co.h2,
                h3: co.h3,
                from_m: co.eps_from_x0,
                weight: co.w_eps,
            }),
        });
        lc.hist = Some(x0);
        lc.base = Some((x, co.a));
        Ok(lc)
    }
}
