//! The UniPC step (diffusers' `UniPCMultistepScheduler`): the corrector of the interval just
//! taken and the predictor of the next share one model output, so a step is one fused pass:
//! the conversion of the output (→ the history), the corrected sample (→ `corrected`, the
//! next corrector's base) and the predictor from it (→ `prev`). Coefficients:
//! `schedule::unipc`.

use super::{batch_of, expect_like, mo_stride, thresholding, thresholding_options};
use crate::error::Result;
use crate::lincomb::{Chain, Conversion, Lincomb};
use crate::schedule::dpm_solver::{conversion, Algorithm, Point};
use crate::schedule::prediction::PredictionType;
use crate::schedule::unipc::{UniPcInterval, UniPcVariant, UniPcWeights, MAX_ORDER};
use crate::tensor::Tensor;
use crate::value_err;

/// The options of [`UniPc::new`], as the scheduler's config names them.
pub struct UniPcOptions<'a> {
    pub solver_type: &'a str,
    pub prediction_type: &'a str,
    pub predict_x0: bool,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub flow: bool,
    pub solver_order: usize,
    pub lower_order_final: bool,
    pub sigmas: Vec<f64>,
}

/// One loop's constants.
#[derive(Clone, Debug)]
pub struct UniPc {
    pub variant: UniPcVariant,
    pub prediction: PredictionType,
    pub predict_x0: bool,
    /// (ratio, sample_max_value): diffusers thresholds x₀ only in the data-prediction form.
    pub thresholding: Option<(f64, f64)>,
    pub flow: bool,
    pub solver_order: usize,
    pub lower_order_final: bool,
    /// diffusers' σ̃ of every step, n + 1 values.
    pub sigmas: Vec<f64>,
}

/// The tensors of one step. `history`: the converted outputs of the steps before, newest
/// first (diffusers' `model_outputs[-1]`, `[-2]`, …) as far as there are any; `last_sample`:
/// the corrector's base (diffusers' `last_sample`), None when the corrector is off.
pub struct UniPcIo {
    pub model_output: Tensor,
    pub sample: Tensor,
    pub last_sample: Option<Tensor>,
    pub history: Vec<Option<Tensor>>,
    /// Outputs: the converted output (model output's dtype), the corrected sample (sample
    /// dtype; needed when both corrector and predictor run) and the step's result (model
    /// output's dtype: the predictor's sample, or the corrected one when `predict` is off).
    pub hist: Tensor,
    pub corrected: Option<Tensor>,
    pub prev: Tensor,
    pub bounds: Option<Tensor>,
}

/// What a step ran: the corrector's and the predictor's orders (0: not run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniPcOrders {
    pub corrector: usize,
    pub predictor: usize,
}

impl UniPc {
    pub fn new(o: UniPcOptions<'_>) -> Result<Self> {
        if !(1..=MAX_ORDER).contains(&o.solver_order) {
            return value_err!(
                "solver_order: rdiff's UniPC takes orders 1 to {MAX_ORDER}, got {}",
                o.solver_order
            );
        }
        if o.sigmas.len() < 2 {
            return value_err!("sigmas: need at least two values");
        }
        if o.sigmas.iter().any(|s| !s.is_finite() || *s < 0.0) {
            return value_err!("sigmas: must be finite and non-negative");
        }
        let prediction = PredictionType::parse(o.prediction_type)?;
        if prediction == PredictionType::FlowPrediction && !o.predict_x0 {
            return value_err!("prediction_type: \"flow_prediction\" needs predict_x0=True");
        }
        let thresholding = thresholding_options(
            o.thresholding && o.predict_x0,
            o.dynamic_thresholding_ratio,
            o.sample_max_value,
        )?;
        Ok(Self {
            variant: UniPcVariant::parse(o.solver_type)?,
            prediction,
            predict_x0: o.predict_x0,
            thresholding,
            flow: o.flow,
            solver_order: o.solver_order,
            lower_order_final: o.lower_order_final,
            sigmas: o.sigmas,
        })
    }

    /// The number of steps of the loop.
    pub fn steps(&self) -> usize {
        self.sigmas.len() - 1
    }

    fn point(&self, i: usize) -> Point {
        Point::from_sigma(self.sigmas[i], self.flow)
    }

    /// diffusers' predictor order at `step_index` with `lower_order_nums` outputs before it.
    pub fn order(&self, step_index: usize, lower_order_nums: usize) -> usize {
        let order = if self.lower_order_final {
            self.solver_order
                .min(self.steps().saturating_sub(step_index))
        } else {
            self.solver_order
        };
        order.min(lower_order_nums + 1).max(1)
    }

    /// `order` lowered where the update would divide by a zero length: a step to σ = 0 or of
    /// zero length (then first order), a repeated point in the history (then only the points
    /// after it). Where diffusers' result is finite it is unchanged.
    pub fn nonzero_order(&self, step_index: usize, order: usize) -> usize {
        let (s, t) = (step_index, step_index + 1);
        if self.sigmas[t] == 0.0 || self.sigmas[t] == self.sigmas[s] {
            return 1;
        }
        (1..order)
            .find(|&k| self.sigmas[s - k] == self.sigmas[s - k + 1])
            .unwrap_or(order)
    }

    fn check(&self, step_index: usize, order: usize) -> Result<()> {
        if step_index + 1 >= self.sigmas.len() {
            return value_err!(
                "step index {step_index} is past the end of the schedule ({} steps)",
                self.steps()
            );
        }
        if order == 0 || order > step_index + 1 || order > self.solver_order {
            return value_err!("order {order} is not possible at step index {step_index}");
        }
        Ok(())
    }

    /// The weights of the order-`order` update over the interval from `s` to `s + 1`
    /// (the predictor of step `s`; with `corrector`, the corrector of step `s + 1`).
    pub fn weights(&self, s: usize, order: usize, corrector: bool) -> Result<UniPcWeights> {
        self.check(s, order)?;
        let prev: Vec<Point> = (1..order).map(|k| self.point(s - k)).collect();
        UniPcInterval {
            t: self.point(s + 1),
            s0: self.point(s),
            prev: &prev,
            predict_x0: self.predict_x0,
            variant: self.variant,
        }
        .weights(corrector)
    }

    /// (p, q, r, w): the conversion of the model output at step `s` (see `schedule::dpm_solver`).
    pub fn conversion(&self, s: usize) -> Result<(f64, f64, f64, f64)> {
        let algorithm = if self.predict_x0 {
            Algorithm::DpmSolverPp
        } else {
            Algorithm::DpmSolver
        };
        conversion(
            self.prediction,
            algorithm,
            false,
            self.point(s),
            self.sigmas[s],
        )
    }

    /// Step `step_index` as one fused pass. `corrector_order`: the previous step's predictor
    /// order when the corrector runs; `predict`: whether the predictor runs (off when another
    /// scheduler predicts, diffusers' `solver_p`).
    pub fn step(
        &self,
        step_index: usize,
        lower_order_nums: usize,
        corrector_order: Option<usize>,
        predict: bool,
        io: UniPcIo,
    ) -> Result<(Lincomb, UniPcOrders)> {
        let UniPcIo {
            model_output: mo,
            sample: x,
            last_sample,
            history,
            hist,
            corrected,
            prev,
            bounds,
        } = io;
        batch_of(&x)?;
        let stride = mo_stride(&mo, &x, false)?;
        let d = mo.dtype;
        expect_like(&hist, "history buffer", &x, d)?;
        expect_like(&prev, "output buffer", &x, d)?;
        let pp = if predict {
            let order = self.order(step_index, lower_order_nums);
            self.check(step_index, order)?;
            self.nonzero_order(step_index, order)
        } else {
            0
        };
        let corr = match corrector_order {
            Some(order) if step_index > 0 => {
                let Some(last) = last_sample else {
                    return value_err!("last_sample: the corrector needs the previous sample");
                };
                expect_like(&last, "last_sample", &x, x.dtype)?;
                Some((last, self.weights(step_index - 1, order, true)?, order))
            }
            Some(_) => return value_err!("the corrector has no interval at step index 0"),
            None => None,
        };
        let pred = if predict {
            Some(self.weights(step_index, pp, false)?)
        } else {
            None
        };
        // History entries the pass reads: the corrector's m_{k-1} … m_{k-p}, the
        // predictor's m_{k-1} … m_{k-pp+1}.
        let need = corr.as_ref().map_or(0, |c| c.2).max(pp.saturating_sub(1));
        let mut ms = Vec::with_capacity(need);
        for k in 0..need {
            let what = format!("model_outputs[-{}]", k + 2);
            let Some(Some(m)) = history.get(k) else {
                return value_err!("{what}: required by this step's order");
            };
            if m.shape != x.shape || m.dtype != d {
                return value_err!(
                    "{what}: the history entry does not match this step's shape and dtype; call \
                     set_timesteps to start a new loop"
                );
            }
            ms.push(m.clone());
        }
        // The predictor's weight on history entry k (its m_{k+1} is entry k).
        let pw = |p: &UniPcWeights, k: usize| p.w.get(k).copied().unwrap_or(0.0);
        let (p, q, r, w) = self.conversion(step_index)?;
        let mut lc = Lincomb::new("the UniPC step", prev);
        let conv = |weight: f64| -> Result<Conversion> {
            Ok(Conversion {
                x: x.clone(),
                mo: mo.clone(),
                mo_stride: stride,
                p,
                q,
                d: 1.0,
                clamp: thresholding(self.thresholding, bounds.clone())?,
                r,
                w,
                weight,
                recompute: None,
            })
        };
        match (corr, pred) {
            (Some((last, c, _)), pred) => {
                // The corrector's m0 is history entry 0; its m_k entry k.
                lc.conv = Some(conv(c.wt)?);
                lc.base = Some((last, c.a));
                for (k, m) in ms.iter().enumerate() {
                    let wc = if k == 0 {
                        c.w0
                    } else {
                        c.w.get(k - 1).copied().unwrap_or(0.0)
                    };
                    lc.terms.push((m.clone(), wc));
                }
                if let Some(pr) = pred {
                    let Some(mid) = corrected else {
                        return value_err!(
                            "corrected: the corrector and predictor need a buffer for the \
                             corrected sample"
                        );
                    };
                    expect_like(&mid, "corrected sample", &x, x.dtype)?;
                    lc.chain = Some(Chain {
                        mid,
                        a: pr.a,
                        wm: pr.w0,
                        c: (0..ms.len()).map(|k| pw(&pr, k)).collect(),
                    });
                }
            }
            (None, Some(pr)) => {
                lc.conv = Some(conv(pr.w0)?);
                lc.base = Some((x.clone(), pr.a));
                for (k, m) in ms.iter().enumerate() {
                    lc.terms.push((m.clone(), pw(&pr, k)));
                }
            }
            (None, None) => {
                // Only the conversion (another scheduler predicts): the sample passes through.
                lc.conv = Some(conv(0.0)?);
                lc.base = Some((x.clone(), 1.0));
            }
        }
        lc.hist = Some(hist);
        let orders = UniPcOrders {
            corrector: corrector_order.unwrap_or(0),
            predictor: pp,
        };
        Ok((lc, orders))
    }
}
