//! The `set_timesteps` of diffusers' σ-parametrised schedulers: `EulerDiscreteScheduler`
//! (and `EulerAncestralDiscreteScheduler`, its linear-interpolation, zero-final subset) over a
//! discrete ᾱ table, and `FlowMatchEulerDiscreteScheduler` over the flow time σ ∈ (0, 1].
//!
//! Their timesteps are fractional (float32), not rounded to training steps: linspace
//! timesteps fall between table entries and σ is interpolated (numpy's `interp`). The
//! arithmetic follows diffusers' types: numpy float64 where diffusers computes in float64,
//! float32 (each operation rounded) where it computes in float32, so the stored values are
//! the float32 numbers diffusers stores.

use crate::error::Result;
use crate::schedule::betas::linspace_f32;
use crate::schedule::spacing::{
    diffusers_beta, diffusers_exponential, diffusers_karras, np_arange, np_linspace, sigma_to_t,
    FinalSigma, SigmaKind, TimestepSpacing,
};
use crate::value_err;

/// `interpolation_type`: how σ is placed between the timesteps' table entries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Interpolation {
    /// σ interpolated linearly at each (fractional) timestep.
    Linear,
    /// σ uniform in log σ over the whole table, whatever the timesteps.
    LogLinear,
}

impl Interpolation {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "linear" => Ok(Self::Linear),
            "log_linear" => Ok(Self::LogLinear),
            other => value_err!(
                "interpolation_type: unknown {other:?}; expected \"linear\" or \"log_linear\""
            ),
        }
    }
}

/// What `set_timesteps` leaves in `timesteps` and `sigmas` (`timesteps.len() + 1` values,
/// or as many as the caller's sigmas).
#[derive(Clone, Debug, PartialEq)]
pub struct SigmaSchedule {
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
}

/// `EulerDiscreteScheduler`'s configuration that `set_timesteps` reads.
#[derive(Clone, Debug)]
pub struct EulerSpacing {
    pub spacing: TimestepSpacing,
    pub steps_offset: i64,
    pub interpolation: Interpolation,
    /// Default, Karras, Exponential or Beta.
    pub sigma_kind: SigmaKind,
    /// The config's `sigma_min` / `sigma_max` (Karras, exponential, beta).
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub final_sigma: FinalSigma,
    /// `timestep_type="continuous"` with v-prediction: timesteps are 0.25·log σ.
    pub continuous: bool,
}

/// numpy's `interp(x, arange(len(fp)), fp)` for a float32 table: f64 arithmetic, the ends
/// clamped.
fn np_interp_index(x: f64, fp: &[f32]) -> f64 {
    let n = fp.len();
    if x.is_nan() {
        return x;
    }
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= (n - 1) as f64 {
        return fp[n - 1] as f64;
    }
    let j = x.floor() as usize;
    let (lo, hi) = (fp[j] as f64, fp[j + 1] as f64);
    let slope = hi - lo;
    slope * (x - j as f64) + lo
}

/// Karras, exponential or beta sigmas between `lo` and `hi` (diffusers' `_convert_to_*`),
/// or None for the default kind.
fn converted(kind: SigmaKind, n: usize, lo: f64, hi: f64) -> Result<Option<Vec<f64>>> {
    Ok(match kind {
        SigmaKind::Default => None,
        SigmaKind::Karras => Some(diffusers_karras(n, lo, hi, 7.0)),
        SigmaKind::Exponential => Some(diffusers_exponential(n, lo, hi)),
        SigmaKind::Beta => Some(diffusers_beta(n, lo, hi)),
        other => {
            return value_err!("sigmas: {other:?} sigmas are not available for this scheduler")
        }
    })
}

fn f32s(v: impl IntoIterator<Item = f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
}

/// The timesteps of `timestep_spacing` for `n` steps over `num_train` (float32, descending).
fn spaced(num_train: usize, n: usize, opts: &EulerSpacing) -> Result<Vec<f32>> {
    let ts: Vec<f32> = match opts.spacing {
        TimestepSpacing::Linspace => f32s(np_linspace(0.0, (num_train - 1) as f64, n))
            .into_iter()
            .rev()
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (num_train / n) as f64;
            let off = opts.steps_offset as f32;
            (0..n)
                .rev()
                .map(|i| (i as f64 * ratio).round_ties_even() as f32 + off)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = num_train as f64 / n as f64;
            np_arange(num_train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| t.round_ties_even() as f32 - 1.0)
                .collect()
        }
    };
    Ok(ts)
}

/// `EulerDiscreteScheduler.set_timesteps(num_inference_steps)` or with custom `timesteps`
/// (then `n` is their count), over diffusers' float32 σ table and its float32 logarithm.
pub fn euler_schedule(
    table: &[f32],
    log_table: &[f32],
    n: usize,
    timesteps: Option<&[f32]>,
    opts: &EulerSpacing,
) -> Result<SigmaSchedule> {
    let num_train = table.len();
    if num_train < 2 || log_table.len() != num_train {
        return value_err!("the σ table: needs at least 2 entries and its logarithm");
    }
    if n == 0 {
        return value_err!("num_inference_steps: must be at least 1, got 0");
    }
    let mut ts = match timesteps {
        Some(t) => t.to_vec(),
        None => spaced(num_train, n, opts)?,
    };
    if ts.iter().any(|t| !t.is_finite()) {
        return value_err!("timesteps: must be finite");
    }
    let mut sigmas: Vec<f64> = match opts.interpolation {
        Interpolation::Linear => ts
            .iter()
            .map(|&t| np_interp_index(t as f64, table))
            .collect(),
        Interpolation::LogLinear => {
            let (lo, hi) = (table[num_train - 1].ln(), table[0].ln());
            linspace_f32(lo, hi, n + 1)
                .into_iter()
                .map(|v| v.exp() as f64)
                .collect()
        }
    };
    let (lo, hi) = (sigmas[sigmas.len() - 1], sigmas[0]);
    let (lo, hi) = (opts.sigma_min.unwrap_or(lo), opts.sigma_max.unwrap_or(hi));
    if let Some(conv) = converted(opts.sigma_kind, n, lo, hi)? {
        ts = conv
            .iter()
            .map(|&s| sigma_to_t(log_table, s) as f32)
            .collect();
        sigmas = conv;
    }
    let last = match opts.final_sigma {
        FinalSigma::Zero => 0.0,
        FinalSigma::SigmaMin => table[0] as f64,
    };
    sigmas.push(last);
    let sigmas = f32s(sigmas);
    if opts.continuous {
        ts = continuous_timesteps(&sigmas[..sigmas.len() - 1]);
    }
    Ok(SigmaSchedule {
        timesteps: ts,
        sigmas,
    })
}

/// `set_timesteps(sigmas=...)`: the caller's σ (float32, kept as given, the last one
/// included) and their fractional timesteps.
pub fn euler_schedule_from_sigmas(
    log_table: &[f32],
    sigmas: &[f64],
    continuous: bool,
) -> Result<SigmaSchedule> {
    if sigmas.len() < 2 {
        return value_err!("sigmas: need at least 2 values (a step and the final σ)");
    }
    if sigmas.iter().any(|s| !s.is_finite() || *s < 0.0) {
        return value_err!("sigmas: must be finite and non-negative");
    }
    let sigmas = f32s(sigmas.iter().copied());
    let body = &sigmas[..sigmas.len() - 1];
    let timesteps = if continuous {
        continuous_timesteps(body)
    } else {
        body.iter()
            .map(|&s| sigma_to_t(log_table, s as f64) as f32)
            .collect()
    };
    Ok(SigmaSchedule { timesteps, sigmas })
}

/// `timestep_type="continuous"` (v-prediction): t = 0.25·log σ in float32.
fn continuous_timesteps(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|s| 0.25f32 * s.ln()).collect()
}

/// `FlowMatchEulerDiscreteScheduler`'s time shift.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FlowShift {
    /// σ' = s·σ/(1 + (s − 1)·σ).
    Static(f64),
    /// `use_dynamic_shifting`: e^μ/(e^μ + (1/σ − 1)) (exponential) or μ/(μ + (1/σ − 1))
    /// (linear).
    Exponential(f64),
    Linear(f64),
}

/// The configuration of [`flow_match_schedule`].
#[derive(Clone, Debug)]
pub struct FlowSpacing {
    pub num_train: usize,
    pub shift: FlowShift,
    pub shift_terminal: Option<f64>,
    /// Default, Karras, Exponential or Beta.
    pub sigma_kind: SigmaKind,
    pub invert: bool,
    /// `sigma_min` / `sigma_max` of the training schedule (set at construction).
    pub sigma_min: f64,
    pub sigma_max: f64,
}

/// Float32 or float64 arithmetic, as numpy runs it on the array's type.
#[derive(Clone, Copy)]
struct Arith(bool);

impl Arith {
    fn r(self, v: f64) -> f64 {
        if self.0 {
            v as f32 as f64
        } else {
            v
        }
    }
}

fn shifted(shift: FlowShift, s: f64, ar: Arith) -> f64 {
    let r = |v| ar.r(v);
    match shift {
        // The Python scalars are rounded to the array's type as they meet it: k and k − 1.
        FlowShift::Static(k) => r(r(r(k) * s) / r(1.0 + r(r(k - 1.0) * s))),
        FlowShift::Exponential(mu) => {
            let e = r(mu.exp());
            r(e / r(e + r(r(1.0 / s) - 1.0)))
        }
        FlowShift::Linear(mu) => {
            let m = r(mu);
            r(m / r(m + r(r(1.0 / s) - 1.0)))
        }
    }
}

/// The training schedule's σ (float32, descending, `num_train` values) of a flow-match
/// scheduler: σ = t/N for t = N..1, statically shifted unless the shift is dynamic.
pub fn flow_match_training_sigmas(num_train: usize, shift: Option<f64>) -> Vec<f32> {
    let ts = f32s(np_linspace(1.0, num_train as f64, num_train));
    let n = num_train as f32;
    ts.into_iter()
        .rev()
        .map(|t| {
            let s = t / n;
            match shift {
                Some(k) => shifted(FlowShift::Static(k), s as f64, Arith(true)) as f32,
                None => s,
            }
        })
        .collect()
}

/// `FlowMatchEulerDiscreteScheduler.set_timesteps`: `n` steps from the training σ range, or
/// the caller's `sigmas` and/or `timesteps` (float32, as many as steps). Returns the float32
/// timesteps and the σ with the final 0 (or 1 when inverted) appended.
pub fn flow_match_schedule(
    n: usize,
    sigmas: Option<&[f64]>,
    timesteps: Option<&[f64]>,
    opts: &FlowSpacing,
) -> Result<SigmaSchedule> {
    let big_n = opts.num_train as f64;
    let given_ts: Option<Vec<f64>> =
        timesteps.map(|t| t.iter().map(|&v| v as f32 as f64).collect());
    // numpy computes on the caller's σ in float32, on the spaced ones in float64.
    let (base, ar) = match sigmas {
        Some(s) => (
            s.iter().map(|&v| v as f32 as f64).collect::<Vec<_>>(),
            Arith(true),
        ),
        None => {
            let t = match &given_ts {
                Some(t) => t.clone(),
                None => np_linspace(opts.sigma_max * big_n, opts.sigma_min * big_n, n),
            };
            let f32_ts = given_ts.is_some();
            let ar = Arith(f32_ts);
            (t.iter().map(|&v| ar.r(v / big_n)).collect(), ar)
        }
    };
    if base.is_empty() {
        return value_err!("num_inference_steps: must be at least 1, got 0");
    }
    if base.iter().any(|s| !s.is_finite()) {
        return value_err!("sigmas: must be finite");
    }
    let mut sig: Vec<f64> = base.iter().map(|&s| shifted(opts.shift, s, ar)).collect();
    if let Some(term) = opts.shift_terminal {
        let last = ar.r(1.0 - sig[sig.len() - 1]);
        if last == 0.0 {
            // diffusers divides 0 by 0 here and steps with NaN
            return value_err!(
                "shift_terminal: the schedule's last σ is 1 (a single step from σ = 1), so it \
                 cannot be stretched to end at shift_terminal={term}"
            );
        }
        let scale = ar.r(last / ar.r(1.0 - term));
        sig = sig
            .iter()
            .map(|&s| ar.r(1.0 - ar.r(ar.r(1.0 - s) / scale)))
            .collect();
    }
    let count = sig.len();
    if let Some(conv) = converted(opts.sigma_kind, count, sig[count - 1], sig[0])? {
        sig = conv;
    }
    let mut sig32 = f32s(sig);
    let mut ts: Vec<f32> = match &given_ts {
        Some(t) => f32s(t.iter().copied()),
        None => sig32.iter().map(|s| s * opts.num_train as f32).collect(),
    };
    if opts.invert {
        sig32 = sig32.iter().map(|s| 1.0 - s).collect();
        ts = sig32.iter().map(|s| s * opts.num_train as f32).collect();
        sig32.push(1.0);
    } else {
        sig32.push(0.0);
    }
    Ok(SigmaSchedule {
        timesteps: ts,
        sigmas: sig32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_matches_numpy_on_integers_and_between() {
        let fp = [1.0f32, 3.0, 7.0];
        assert_eq!(np_interp_index(0.0, &fp), 1.0);
        assert_eq!(np_interp_index(1.5, &fp), 5.0);
        assert_eq!(np_interp_index(2.0, &fp), 7.0);
        assert_eq!(np_interp_index(9.0, &fp), 7.0);
    }

    #[test]
    fn flow_static_shift_is_monotone() {
        let s = flow_match_training_sigmas(1000, Some(3.0));
        assert_eq!(s[0], 1.0);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }
}
