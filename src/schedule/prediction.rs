//! What a network predicts, and the conversions of its output every step family shares.

use crate::error::Result;
use crate::value_err;

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    Sample,
    VPrediction,
    FlowPrediction,
}

impl PredictionType {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "epsilon" => Self::Epsilon,
            "sample" => Self::Sample,
            "v_prediction" => Self::VPrediction,
            "flow_prediction" => Self::FlowPrediction,
            _ => {
                return value_err!(
                    "prediction_type: unknown {s:?}; expected \"epsilon\", \"sample\", \
                     \"v_prediction\" or \"flow_prediction\""
                )
            }
        })
    }

    /// (p, q, d) with x₀ = (p·x + q·mo)/d at ᾱ_t = `alpha_prod` (diffusers' DDIM/DDPM form,
    /// divisions kept so that ᾱ = 0 behaves as there). `who` names the caller for the error
    /// on flow prediction, which has no ᾱ form.
    pub fn x0_at(self, alpha_prod: f64, who: &str) -> Result<(f64, f64, f64)> {
        let (sa, sb) = (alpha_prod.sqrt(), (1.0 - alpha_prod).sqrt());
        Ok(match self {
            Self::Epsilon => (1.0, -sb, sa),
            Self::Sample => (0.0, 1.0, 1.0),
            Self::VPrediction => (sa, -sb, 1.0),
            Self::FlowPrediction => return flow_unsupported(who),
        })
    }

    /// (p, q) with ε = p·x + q·mo at ᾱ_t = `alpha_prod`.
    pub fn eps_at(self, alpha_prod: f64, who: &str) -> Result<(f64, f64)> {
        let (a, s) = (alpha_prod.sqrt(), (1.0 - alpha_prod).sqrt());
        Ok(match self {
            Self::Epsilon => (0.0, 1.0),
            Self::Sample => (1.0 / s, -a / s),
            Self::VPrediction => (s, a),
            Self::FlowPrediction => return flow_unsupported(who),
        })
    }
}

fn flow_unsupported<T>(who: &str) -> Result<T> {
    value_err!(
        "prediction_type: must be \"epsilon\", \"sample\" or \"v_prediction\" for {who} \
         (\"flow_prediction\" has no ᾱ form)"
    )
}
