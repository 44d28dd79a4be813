//! The Analytic-DPM step (Bao et al. 2022): every step's scalars fixed by `set_timesteps`
//! (`schedule::analytic_dpm`), each step x̂₀ from the model output (clipped to the data range),
//! the mean of the DDPM or DDIM form and σ·n, as one fused pass. The noise is a float32
//! buffer or drawn in the pass from the Philox stream.

use super::{batch_of, expect_like, mo_stride};
use crate::dtype::DType;
use crate::error::Result;
use crate::lincomb::{Clamp, Conversion, Lincomb, Noise, NoiseSource, Recompute, Sigma};
use crate::schedule::analytic_dpm::{plan, AnalyticOptions, AnalyticStep};
use crate::schedule::prediction::PredictionType;
use crate::tensor::Tensor;
use crate::value_err;

/// One loop's scalars.
#[derive(Clone, Debug)]
pub struct AnalyticDpm {
    pub alphas_cumprod: Vec<f64>,
    pub timesteps: Vec<usize>,
    pub prediction: PredictionType,
    pub steps: Vec<AnalyticStep>,
}

/// The tensors of one step.
pub struct AnalyticIo {
    pub model_output: Tensor,
    pub sample: Tensor,
    pub noise: Option<Tensor>,
    pub x0: Tensor,
    pub prev: Tensor,
}

/// Where the step's noise comes from when it has a positive variance.
pub enum NoiseFrom {
    Buffer,
    Philox { seed: u64, offset: u64 },
}

impl AnalyticDpm {
    /// `gamma`: Γ at each visited timestep; `variances`: an optional override of every σ².
    pub fn new(
        alphas_cumprod: Vec<f64>,
        timesteps: Vec<usize>,
        gamma: &[f64],
        opts: &AnalyticOptions,
        prediction: PredictionType,
        variances: Option<Vec<f64>>,
    ) -> Result<Self> {
        prediction.eps_at(0.5, "Analytic-DPM")?;
        let mut steps = plan(&alphas_cumprod, &timesteps, gamma, opts)?;
        if let Some(v) = variances {
            if v.len() != steps.len() {
                return value_err!("variances: {} values for {} steps", v.len(), steps.len());
            }
            if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
                return value_err!("variances: must be finite and ≥ 0, got {bad}");
            }
            for (st, x) in steps.iter_mut().zip(v) {
                st.sigma2 = x;
            }
        }
        Ok(Self {
            alphas_cumprod,
            timesteps,
            prediction,
            steps,
        })
    }

    pub fn step_at(&self, step_index: usize) -> Result<&AnalyticStep> {
        self.steps.get(step_index).ok_or_else(|| {
            crate::error::RdiffError::Value(format!(
                "step index {step_index} is past the end of the loop ({} steps)",
                self.steps.len()
            ))
        })
    }

    /// Step `step_index` as a fused pass: x̂₀ clipped to `clip` = (lo, hi) when given.
    pub fn step(
        &self,
        step_index: usize,
        clip: Option<(f64, f64)>,
        noise_from: NoiseFrom,
        io: AnalyticIo,
    ) -> Result<Lincomb> {
        let st = *self.step_at(step_index)?;
        let AnalyticIo {
            model_output: mo,
            sample: x,
            noise,
            x0,
            prev,
        } = io;
        batch_of(&x)?;
        let stride = mo_stride(&mo, &x, true)?;
        let d = mo.dtype;
        expect_like(&x0, "x0 buffer", &x, d)?;
        expect_like(&prev, "output buffer", &x, d)?;
        if let Some((lo, hi)) = clip {
            if lo.partial_cmp(&hi).is_none_or(|o| o.is_gt()) {
                return value_err!("clip: expected lo ≤ hi, got ({lo}, {hi})");
            }
        }
        let mut lc = Lincomb::new("the Analytic-DPM step", prev);
        if st.sigma2 > 0.0 {
            let source = match (noise, noise_from) {
                (Some(nz), _) => {
                    expect_like(&nz, "noise", &x, DType::F32)?;
                    NoiseSource::Buffer(nz)
                }
                (None, NoiseFrom::Philox { seed, offset }) => NoiseSource::Philox { seed, offset },
                (None, NoiseFrom::Buffer) => {
                    return value_err!(
                        "noise: this step has a positive variance and needs noise (a buffer \
                         or a Philox seed)"
                    )
                }
            };
            lc.noise = Some(Noise {
                source,
                sigma: Sigma::Fixed(st.sigma2.sqrt()),
            });
        }
        // ε = p·x + q·mo; x̂₀ = (x − √β̄_t·ε)/√ᾱ_t, folded into one conversion.
        let ac_t = self.alphas_cumprod[self.timesteps[step_index]];
        let (p, q) = self.prediction.eps_at(ac_t, "Analytic-DPM")?;
        let (sb, isa) = (st.sqrt_beta_bar_t, st.inv_sqrt_alpha_bar_t);
        lc.conv = Some(Conversion {
            x: x.clone(),
            mo,
            mo_stride: stride,
            p: isa * (1.0 - sb * p),
            q: -isa * sb * q,
            d: 1.0,
            clamp: match clip {
                Some((lo, hi)) => Clamp::Range { lo, hi },
                None => Clamp::None,
            },
            r: 0.0,
            w: 1.0,
            weight: st.c_x0,
            recompute: (st.c_eps != 0.0).then_some(Recompute {
                h1: p,
                h2: q,
                h3: 1.0,
                from_m: false,
                weight: st.c_eps,
            }),
        });
        lc.hist = Some(x0);
        lc.base = Some((x, st.c_x));
        Ok(lc)
    }
}
