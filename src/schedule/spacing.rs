//! Timestep spacings: diffusers' and the DPM-Solver reference's.
//!
//! Three things live here:
//!
//! * [`diffusers_schedule`] / [`diffusers_schedule_from_timesteps`]: the integer timesteps and
//!   float32 sigmas that diffusers' `DPMSolverMultistepScheduler.set_timesteps` computes, for
//!   every spacing (`linspace`, `leading`, `trailing`) and sigma kind (default, Karras,
//!   exponential, beta, Lu, flow). The arithmetic follows diffusers step by step: the σ table
//!   `√((1−ᾱ)/ᾱ)` in float32, `log σ` in float32, interpolation and the sigma conversions in
//!   float64, the final sigmas rounded to float32, timesteps rounded or truncated exactly where
//!   diffusers rounds or truncates.
//! * [`reference_time_steps`]: `DPM_Solver.get_time_steps` of the reference implementation
//!   (continuous time, uniform in t, in λ or in √t).
//! * [`distinct_timesteps`]: a repair that makes integer timesteps strictly decreasing, for the
//!   `NoiseSchedule` API (diffusers can map several Karras sigmas onto one integer timestep).

use super::noise_schedule::NoiseSchedule;
use crate::error::Result;
use crate::value_err;

/// diffusers' `timestep_spacing`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

impl TimestepSpacing {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "linspace" => Ok(Self::Linspace),
            "leading" => Ok(Self::Leading),
            "trailing" => Ok(Self::Trailing),
            other => value_err!(
                "timestep_spacing: unknown spacing {other:?}; expected one of \"linspace\", \
                 \"leading\", \"trailing\""
            ),
        }
    }
}

/// How the sigmas are placed: diffusers' `use_karras_sigmas`, `use_exponential_sigmas`,
/// `use_beta_sigmas`, `use_lu_lambdas`, `use_flow_sigmas` (+ `flow_shift`), or none of them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SigmaKind {
    Default,
    Karras,
    Exponential,
    Beta,
    Lu,
    Flow { shift: f64 },
}

impl SigmaKind {
    /// `"default"`, `"karras"`, `"exponential"`, `"beta"`, `"lu"` or `"flow"` (with `flow_shift`).
    pub fn parse(name: &str, flow_shift: f64) -> Result<Self> {
        match name {
            "default" => Ok(Self::Default),
            "karras" => Ok(Self::Karras),
            "exponential" => Ok(Self::Exponential),
            "beta" => Ok(Self::Beta),
            "lu" => Ok(Self::Lu),
            "flow" => {
                if !(flow_shift.is_finite() && flow_shift > 0.0) {
                    return value_err!("flow_shift: must be a positive number, got {flow_shift}");
                }
                Ok(Self::Flow { shift: flow_shift })
            }
            other => value_err!(
                "sigmas: unknown sigma kind {other:?}; expected one of \"default\", \"karras\", \
                 \"exponential\", \"beta\", \"lu\", \"flow\""
            ),
        }
    }
}

/// diffusers' `final_sigmas_type`: the sigma appended after the last timestep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FinalSigma {
    Zero,
    SigmaMin,
}

impl FinalSigma {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "zero" => Ok(Self::Zero),
            "sigma_min" => Ok(Self::SigmaMin),
            other => value_err!(
                "final_sigmas_type: unknown value {other:?}; expected \"zero\" or \"sigma_min\""
            ),
        }
    }
}

/// The scheduler configuration that `set_timesteps` reads.
#[derive(Clone, Debug)]
pub struct SpacingOptions {
    pub spacing: TimestepSpacing,
    pub steps_offset: i64,
    pub sigma_kind: SigmaKind,
    pub final_sigma: FinalSigma,
    pub lambda_min_clipped: f64,
    /// diffusers rounds Karras/Lu timesteps only when `beta_schedule != "squaredcos_cap_v2"`
    /// (otherwise the float timesteps are truncated by the int64 cast). Exponential and beta
    /// timesteps are always truncated, whatever this says.
    pub round_timesteps: bool,
    /// The σ table and its logarithm (float32, one per training timestep) as the caller's
    /// framework computed them. diffusers takes σ from torch's float32 `** 0.5` and log σ
    /// from numpy's float32 `log`, neither correctly rounded (numpy's SIMD log differs from
    /// the correctly rounded value in ~200 of 1000 entries, by machine), and `_sigma_to_t`'s
    /// comparisons at the ends of the table follow those last bits: the first Karras or
    /// exponential timestep on a cosine schedule is 998 or 999 depending on them. `None`:
    /// rdiff's own, correctly rounded table.
    pub sigma_table: Option<(Vec<f32>, Vec<f32>)>,
    /// UniPC's `set_timesteps`, where it differs from the DPM-Solver classes'.
    pub unipc: Option<UniPcSpacing>,
}

/// Where diffusers' `UniPCMultistepScheduler.set_timesteps` differs: a `sigma_min` final σ
/// is the last σ of the list for every non-default kind; flow sigmas start from
/// `linspace(1, 1/N, n + 1)[:-1]` (or the caller's), are shifted, optionally stretched to
/// `shift_terminal`, and a first σ within 1e-6 of 1 is moved 1e-6 down; Karras sigmas may be
/// mapped to flow ones (σ/(1 + σ)) with `karras_flow`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UniPcSpacing {
    pub flow_sigmas: Option<Vec<f64>>,
    pub shift_terminal: Option<f64>,
    pub karras_flow: bool,
    /// The config's `sigma_min` / `sigma_max`, which replace the table's ends for Karras,
    /// exponential and beta sigmas.
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
}

/// The σ range of Karras, exponential and beta sigmas: the table's, or UniPC's config's.
fn sigma_range(table: &SigmaTable, opts: &SpacingOptions) -> (f64, f64) {
    let u = opts.unipc.as_ref();
    (
        u.and_then(|u| u.sigma_min)
            .unwrap_or_else(|| table.sigma_min()),
        u.and_then(|u| u.sigma_max)
            .unwrap_or_else(|| table.sigma_max()),
    )
}

impl Default for SpacingOptions {
    fn default() -> Self {
        Self {
            spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            sigma_kind: SigmaKind::Default,
            final_sigma: FinalSigma::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
            round_timesteps: true,
            sigma_table: None,
            unipc: None,
        }
    }
}

/// What `set_timesteps` leaves in `scheduler.timesteps` and `scheduler.sigmas`.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffusersSchedule {
    pub timesteps: Vec<i64>,
    /// `timesteps.len() + 1` values: the float32 numbers diffusers stores, widened to f64.
    pub sigmas: Vec<f64>,
}

/// `np.linspace(start, stop, num)` in float64, operation for operation (so the rounding of
/// every element, and hence of every timestep derived from it, is the same).
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let delta = stop - start;
    let div = num - 1;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64).collect();
    if div > 0 {
        let step = delta / div as f64;
        if step == 0.0 {
            for v in &mut y {
                *v = *v / div as f64 * delta;
            }
        } else {
            for v in &mut y {
                *v *= step;
            }
        }
    } else {
        for v in &mut y {
            *v *= delta;
        }
    }
    for v in &mut y {
        *v += start;
    }
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// `np.arange(start, stop, step)` for float64 (numpy fills `start + i*((start+step)-start)`).
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// The σ table of a discrete schedule and its logarithm, as diffusers holds them (float32).
struct SigmaTable {
    sigmas: Vec<f32>,
    log_sigmas: Vec<f32>,
}

impl SigmaTable {
    /// The caller's table when `opts` has one (checked), else [`SigmaTable::new`].
    fn of(alphas_cumprod: &[f64], opts: &SpacingOptions) -> Result<Self> {
        let Some((sigmas, log_sigmas)) = &opts.sigma_table else {
            return Ok(Self::new(alphas_cumprod));
        };
        let n = alphas_cumprod.len();
        if sigmas.len() != n || log_sigmas.len() != n {
            return value_err!(
                "sigma_table: needs {n} sigmas and {n} log sigmas (one per training timestep), \
                 got {} and {}",
                sigmas.len(),
                log_sigmas.len()
            );
        }
        let bad_sigma = sigmas.iter().any(|s| !(s.is_finite() && *s > 0.0));
        if bad_sigma || log_sigmas.iter().any(|l| !l.is_finite()) {
            return value_err!("sigma_table: every sigma must be finite and > 0, every log finite");
        }
        Ok(Self {
            sigmas: sigmas.clone(),
            log_sigmas: log_sigmas.clone(),
        })
    }

    fn new(alphas_cumprod: &[f64]) -> Self {
        let sigmas: Vec<f32> = alphas_cumprod
            .iter()
            .map(|&a| {
                let a = a as f32;
                ((1.0f32 - a) / a).sqrt()
            })
            .collect();
        let log_sigmas = sigmas.iter().map(|&s| (s as f64).ln() as f32).collect();
        Self { sigmas, log_sigmas }
    }

    fn sigma_min(&self) -> f64 {
        self.sigmas[0] as f64
    }

    fn sigma_max(&self) -> f64 {
        self.sigmas[self.sigmas.len() - 1] as f64
    }

    fn sigma_to_t(&self, sigma: f64) -> f64 {
        sigma_to_t(&self.log_sigmas, sigma)
    }

    /// `np.interp(t, arange(N), sigmas)` at an integer t: the table value, clamped at the ends.
    fn at(&self, t: i64) -> f64 {
        let i = t.clamp(0, self.sigmas.len() as i64 - 1) as usize;
        self.sigmas[i] as f64
    }
}

/// diffusers' `_sigma_to_t`: the fractional timestep of `sigma` in the log σ table
/// `log_sigmas` (ascending), interpolating log σ. The table's type is numpy's: `low − high`
/// is a float32 difference for a float32 table, the rest float64.
pub fn sigma_to_t<T>(log_sigmas: &[T], sigma: f64) -> f64
where
    T: Copy + Into<f64> + std::ops::Sub<Output = T>,
{
    let ls = log_sigmas;
    let n = ls.len();
    let log_sigma = sigma.max(1e-10).ln();
    // argmax of cumsum(log_sigma - ls >= 0): the last index where the condition holds
    // (0 when it never does), clipped to n - 2.
    let last_true = ls.iter().rposition(|&l| log_sigma - l.into() >= 0.0);
    let low_idx = last_true.unwrap_or(0).min(n.saturating_sub(2));
    let high_idx = (low_idx + 1).min(n - 1);
    let (low, high) = (ls[low_idx], ls[high_idx]);
    let w = ((low.into() - log_sigma) / (low - high).into()).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// diffusers' `_convert_to_karras`: `n` Karras σ from `sigma_max` down to `sigma_min` on
/// numpy's `linspace(0, 1, n)` ramp, ρ = `rho`.
pub fn diffusers_karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    crate::schedule::karras::karras_at(&np_linspace(0.0, 1.0, n), sigma_min, sigma_max, rho)
}

/// diffusers' `_convert_to_exponential`: `n` σ uniform in log σ from `sigma_max` down to
/// `sigma_min`.
pub fn diffusers_exponential(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    np_linspace(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// diffusers' `_convert_to_beta`: `n` σ at the Beta(0.6, 0.6) quantiles of 1 − linspace(0, 1).
pub fn diffusers_beta(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| sigma_min + beta_ppf(1.0 - r, 0.6, 0.6) * (sigma_max - sigma_min))
        .collect()
}

/// `torch.searchsorted(torch.flip(lambda_t), lambda_min_clipped)` on diffusers' float32
/// λ_t = log √ᾱ − log √(1−ᾱ): how many λ are below the clip value.
fn clipped_count(alphas_cumprod: &[f64], lambda_min_clipped: f64) -> usize {
    let v = lambda_min_clipped as f32;
    alphas_cumprod
        .iter()
        .filter(|&&a| {
            let a = a as f32;
            let lam = (a.sqrt() as f64).ln() as f32 - (((1.0f32 - a).sqrt()) as f64).ln() as f32;
            lam < v
        })
        .count()
}

fn check_alphas_cumprod(alphas_cumprod: &[f64]) -> Result<()> {
    if alphas_cumprod.len() < 2 {
        return value_err!(
            "alphas_cumprod: needs at least 2 training timesteps, got {}",
            alphas_cumprod.len()
        );
    }
    if let Some(a) = alphas_cumprod
        .iter()
        .find(|a| !(a.is_finite() && **a > 0.0 && **a <= 1.0))
    {
        return value_err!(
            "alphas_cumprod: every value must lie in (0, 1] (apply the zero-SNR fix \
             alphas_cumprod[-1] = 2**-24 first), got {a}"
        );
    }
    Ok(())
}

fn final_sigma(table: &SigmaTable, kind: FinalSigma) -> f64 {
    match kind {
        FinalSigma::Zero => 0.0,
        FinalSigma::SigmaMin => table.sigma_min(),
    }
}

/// Rounds to float32 and widens back, as diffusers' final `.astype(np.float32)` does.
fn f32_round(v: f64) -> f64 {
    v as f32 as f64
}

/// The integer timesteps of `timestep_spacing` (before any sigma conversion).
fn spaced_timesteps(
    num_train: usize,
    n: usize,
    last_timestep: i64,
    opts: &SpacingOptions,
) -> Vec<i64> {
    match opts.spacing {
        TimestepSpacing::Linspace => {
            let v = np_linspace(0.0, (last_timestep - 1) as f64, n + 1);
            v[1..]
                .iter()
                .rev()
                .map(|x| x.round_ties_even() as i64)
                .collect()
        }
        TimestepSpacing::Leading => {
            let step_ratio = last_timestep.div_euclid(n as i64 + 1);
            (1..=n as i64)
                .rev()
                .map(|i| i * step_ratio + opts.steps_offset)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let step_ratio = num_train as f64 / n as f64;
            np_arange(last_timestep as f64, 0.0, -step_ratio)
                .into_iter()
                .map(|x| x.round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

/// The float timesteps of converted sigmas, then the int64 cast diffusers applies.
fn sigmas_to_timesteps(table: &SigmaTable, sigmas: &[f64], round: bool) -> Vec<i64> {
    sigmas
        .iter()
        .map(|&s| {
            let t = table.sigma_to_t(s);
            if round {
                t.round_ties_even() as i64
            } else {
                t as i64
            }
        })
        .collect()
}

/// `DPMSolverMultistepScheduler.set_timesteps(num_inference_steps)`: timesteps and sigmas.
///
/// `alphas_cumprod` is the scheduler's array (caller already applied diffusers' zero-SNR
/// `alphas_cumprod[-1] = 2**-24` fix); its length is `num_train_timesteps`.
///
/// Repeated timesteps are kept as diffusers returns them (e.g. `linspace` with 1000 of 1000
/// steps repeats one); the steps make the zero-length interval harmless. Differences from
/// diffusers, where it silently returns a schedule no solver can use: a spacing that yields a
/// negative timestep, and a `lambda_min_clipped` that clips every timestep, are `ValueError`s.
pub fn diffusers_schedule(
    alphas_cumprod: &[f64],
    num_inference_steps: usize,
    opts: &SpacingOptions,
) -> Result<DiffusersSchedule> {
    check_alphas_cumprod(alphas_cumprod)?;
    let num_train = alphas_cumprod.len();
    let n = num_inference_steps;
    if n == 0 {
        return value_err!("num_inference_steps: must be at least 1, got 0");
    }
    if opts.lambda_min_clipped.is_nan() {
        return value_err!("lambda_min_clipped: must be a number or -inf, got nan");
    }
    let table = SigmaTable::of(alphas_cumprod, opts)?;
    let (timesteps, sigmas): (Vec<i64>, Vec<f64>) = match opts.sigma_kind {
        SigmaKind::Default => {
            let last_timestep =
                (num_train - clipped_count(alphas_cumprod, opts.lambda_min_clipped)) as i64;
            if last_timestep < 2 {
                return value_err!(
                    "lambda_min_clipped: {} clips all but {last_timestep} of the \
                     {num_train} training timesteps",
                    opts.lambda_min_clipped
                );
            }
            let ts = spaced_timesteps(num_train, n, last_timestep, opts);
            let spacing = match opts.spacing {
                TimestepSpacing::Linspace => "linspace",
                TimestepSpacing::Leading => "leading",
                TimestepSpacing::Trailing => "trailing",
            };
            // Repeated timesteps (e.g. linspace with num_inference_steps near the training
            // timesteps) are kept as diffusers has them: the steps make the zero-length
            // interval harmless (`step::dpm_multistep`, `step::dpm_singlestep`).
            if ts.is_empty() {
                return value_err!(
                    "num_inference_steps: {n} steps with timestep_spacing=\"{spacing}\" over \
                     {last_timestep} usable training timesteps give no timestep"
                );
            }
            if ts[ts.len() - 1] < 0 {
                return value_err!(
                    "num_inference_steps: {n} steps with timestep_spacing=\"{spacing}\" over \
                     {last_timestep} usable training timesteps give a negative timestep"
                );
            }
            let sig = ts.iter().map(|&t| table.at(t)).collect();
            (ts, sig)
        }
        SigmaKind::Karras => {
            let (smin, smax) = sigma_range(&table, opts);
            let sig = diffusers_karras(n, smin, smax, 7.0);
            (sigmas_to_timesteps(&table, &sig, opts.round_timesteps), sig)
        }
        SigmaKind::Lu => {
            let ls = &table.log_sigmas;
            let lambda_min = ls[0] as f64;
            let lambda_max = ls[ls.len() - 1] as f64;
            let sig: Vec<f64> = np_linspace(0.0, 1.0, n)
                .into_iter()
                .map(|r| (lambda_max + r * (lambda_min - lambda_max)).exp())
                .collect();
            (sigmas_to_timesteps(&table, &sig, opts.round_timesteps), sig)
        }
        SigmaKind::Exponential => {
            let (smin, smax) = sigma_range(&table, opts);
            let sig = diffusers_exponential(n, smin, smax);
            (sigmas_to_timesteps(&table, &sig, false), sig)
        }
        SigmaKind::Beta => {
            let (smin, smax) = sigma_range(&table, opts);
            let sig = diffusers_beta(n, smin, smax);
            (sigmas_to_timesteps(&table, &sig, false), sig)
        }
        SigmaKind::Flow { shift } if opts.unipc.is_some() => {
            let u = opts.unipc.as_ref().expect("matched");
            unipc_flow(num_train, n, shift, u)?
        }
        SigmaKind::Flow { shift } => {
            let alphas = np_linspace(1.0, 1.0 / num_train as f64, n + 1);
            // flip(shift·s / (1 + (shift−1)·s))[:-1] with s = 1 − α: drop s = 0, largest first.
            let sig: Vec<f64> = alphas[1..]
                .iter()
                .rev()
                .map(|&a| {
                    let s = 1.0 - a;
                    shift * s / (1.0 + (shift - 1.0) * s)
                })
                .collect();
            let ts = sig.iter().map(|&s| (s * num_train as f64) as i64).collect();
            (ts, sig)
        }
    };
    let (timesteps, sigmas) = match &opts.unipc {
        Some(u) if u.karras_flow && opts.sigma_kind == SigmaKind::Karras => {
            let sig: Vec<f64> = sigmas.iter().map(|s| s / (s + 1.0)).collect();
            let ts = sig.iter().map(|&s| (s * num_train as f64) as i64).collect();
            (ts, sig)
        }
        _ => (timesteps, sigmas),
    };
    let last = match (&opts.unipc, opts.final_sigma, opts.sigma_kind) {
        (Some(_), FinalSigma::SigmaMin, kind) if kind != SigmaKind::Default => {
            sigmas[sigmas.len() - 1]
        }
        _ => final_sigma(&table, opts.final_sigma),
    };
    let mut sigmas: Vec<f64> = sigmas.into_iter().map(f32_round).collect();
    sigmas.push(f32_round(last));
    Ok(DiffusersSchedule { timesteps, sigmas })
}

/// UniPC's flow sigmas and their (truncated) timesteps; see [`UniPcSpacing`].
fn unipc_flow(
    num_train: usize,
    n: usize,
    shift: f64,
    u: &UniPcSpacing,
) -> Result<(Vec<i64>, Vec<f64>)> {
    let base = match &u.flow_sigmas {
        Some(s) => {
            if s.is_empty() || s.iter().any(|v| !(v.is_finite() && *v > 0.0 && *v <= 1.0)) {
                return value_err!("sigmas: flow sigmas must lie in (0, 1], got {s:?}");
            }
            s.clone()
        }
        None => {
            let mut v = np_linspace(1.0, 1.0 / num_train as f64, n + 1);
            v.pop();
            v
        }
    };
    let mut sig: Vec<f64> = base
        .iter()
        .map(|&s| shift * s / (1.0 + (shift - 1.0) * s))
        .collect();
    if let Some(terminal) = u.shift_terminal {
        if !(terminal.is_finite() && terminal < 1.0) {
            return value_err!("shift_terminal: must be below 1, got {terminal}");
        }
        let scale = (1.0 - sig[sig.len() - 1]) / (1.0 - terminal);
        sig.iter_mut().for_each(|s| *s = 1.0 - (1.0 - *s) / scale);
    }
    if (sig[0] - 1.0).abs() < 1e-6 {
        sig[0] -= 1e-6;
    }
    let ts = sig.iter().map(|&s| (s * num_train as f64) as i64).collect();
    Ok((ts, sig))
}

/// `set_timesteps(timesteps=[...])`: the given timesteps, their table sigmas, the final sigma.
///
/// diffusers forbids custom timesteps with Karras, Lu, exponential and beta sigmas and fails
/// with a TypeError for flow sigmas; all of these are a `ValueError` here. Unlike diffusers
/// (which clamps silently) timesteps outside `[0, num_train_timesteps)` or not strictly
/// decreasing are a `ValueError` too.
pub fn diffusers_schedule_from_timesteps(
    alphas_cumprod: &[f64],
    timesteps: &[i64],
    opts: &SpacingOptions,
) -> Result<DiffusersSchedule> {
    check_alphas_cumprod(alphas_cumprod)?;
    if opts.sigma_kind != SigmaKind::Default {
        return value_err!(
            "timesteps: custom timesteps cannot be combined with {:?} sigmas",
            opts.sigma_kind
        );
    }
    if timesteps.is_empty() {
        return value_err!("timesteps: must not be empty");
    }
    if timesteps.windows(2).any(|w| w[1] >= w[0]) {
        return value_err!("timesteps: must be strictly decreasing, got {timesteps:?}");
    }
    let num_train = alphas_cumprod.len() as i64;
    if timesteps[0] >= num_train || timesteps[timesteps.len() - 1] < 0 {
        return value_err!(
            "timesteps: every timestep must lie in [0, {num_train}), got {timesteps:?}"
        );
    }
    let table = SigmaTable::of(alphas_cumprod, opts)?;
    let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| table.at(t)).collect();
    sigmas.push(f32_round(final_sigma(&table, opts.final_sigma)));
    Ok(DiffusersSchedule {
        timesteps: timesteps.to_vec(),
        sigmas,
    })
}

/// Makes integer timesteps strictly decreasing and distinct, within `[0, num_train)`.
///
/// Rule: walking from the first (largest) timestep, a timestep that is not below its
/// predecessor is nudged down to `predecessor − 1`; if that pushes the tail below 0, walking
/// back from the last one, a timestep is raised to `successor + 1` (the last one to at least 0).
/// Timesteps that keep their value keep their sigma; a moved timestep gets the table sigma
/// √((1−ᾱ_t)/ᾱ_t) at its new value (float32, as diffusers' table). The final sigma is kept.
/// Fails when there are more timesteps than training timesteps.
pub fn distinct_timesteps(
    alphas_cumprod: &[f64],
    schedule: &DiffusersSchedule,
) -> Result<DiffusersSchedule> {
    let num_train = alphas_cumprod.len() as i64;
    let n = schedule.timesteps.len();
    if n as i64 > num_train {
        return value_err!(
            "num_inference_steps: {n} distinct timesteps need at least {n} training timesteps, \
             got {num_train}"
        );
    }
    let mut ts = schedule.timesteps.clone();
    for t in ts.iter_mut() {
        *t = (*t).clamp(0, num_train - 1);
    }
    for i in 1..n {
        if ts[i] >= ts[i - 1] {
            ts[i] = ts[i - 1] - 1;
        }
    }
    if n > 0 && ts[n - 1] < 0 {
        ts[n - 1] = 0;
        for i in (0..n - 1).rev() {
            if ts[i] <= ts[i + 1] {
                ts[i] = ts[i + 1] + 1;
            }
        }
    }
    let table = SigmaTable::new(alphas_cumprod);
    let mut sigmas = schedule.sigmas.clone();
    for i in 0..n {
        if ts[i] != schedule.timesteps[i] {
            sigmas[i] = table.at(ts[i]);
        }
    }
    Ok(DiffusersSchedule {
        timesteps: ts,
        sigmas,
    })
}

// ---------------------------------------------------------------------------------------------
// The regularized incomplete beta function and its inverse (scipy.stats.beta.ppf).

/// ln Γ(x) for x > 0 (Lanczos approximation, g = 7, 9 terms; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The continued fraction of I_x(a, b) (modified Lentz), valid for x < (a+1)/(a+b+2).
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        // Even step.
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        // Odd step.
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// ln B(a, b).
fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// The regularized incomplete beta function I_x(a, b) for a, b > 0, x in [0, 1].
pub fn inc_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = a * x.ln() + b * (-x).ln_1p() - ln_beta(a, b);
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(1.0 - x, b, a) / b
    }
}

/// The quantile function of Beta(a, b): the x with I_x(a, b) = p (scipy.stats.beta.ppf).
///
/// Safeguarded Newton: the iterate stays inside a bracket that bisection shrinks whenever a
/// Newton step would leave it; converges to a few ulp.
pub fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if p.is_nan() || p <= 0.0 {
        return if p.is_nan() { f64::NAN } else { 0.0 };
    }
    if p >= 1.0 {
        return 1.0;
    }
    if a == b && p == 0.5 {
        return 0.5;
    }
    // Work in the lower tail for accuracy near 1: I_x(a,b) = 1 − I_{1−x}(b,a).
    if p > 0.5 {
        return 1.0 - beta_ppf(1.0 - p, b, a);
    }
    let lb = ln_beta(a, b);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    // Initial guess from the small-x asymptote I_x ≈ x^a / (a B(a,b)).
    let mut x = ((p.ln() + a.ln() + lb) / a).exp().clamp(1e-300, 0.5);
    for _ in 0..200 {
        let f = inc_beta(x, a, b) - p;
        if f == 0.0 {
            return x;
        }
        if f < 0.0 {
            lo = x;
        } else {
            hi = x;
        }
        let ln_pdf = (a - 1.0) * x.ln() + (b - 1.0) * (-x).ln_1p() - lb;
        let mut next = x - f / ln_pdf.exp();
        if !(next > lo && next < hi) {
            next = 0.5 * (lo + hi);
        }
        if (next - x).abs() <= 1e-16 * x.abs() || hi - lo <= 1e-16 * hi {
            return next;
        }
        x = next;
    }
    x
}

// ---------------------------------------------------------------------------------------------
// The DPM-Solver reference's time steps.

/// `skip_type` of the DPM-Solver reference's `get_time_steps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipType {
    TimeUniform,
    LogSnr,
    TimeQuadratic,
}

impl SkipType {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "time_uniform" => Ok(Self::TimeUniform),
            "logSNR" => Ok(Self::LogSnr),
            "time_quadratic" => Ok(Self::TimeQuadratic),
            other => value_err!(
                "skip_type: unknown skip type {other:?}; expected one of \"time_uniform\", \
                 \"logSNR\", \"time_quadratic\""
            ),
        }
    }
}

/// `DPM_Solver.get_time_steps(skip_type, t_T=t_start, t_0=t_end, N=n)`: n + 1 times from
/// `t_start` down to `t_end`, uniform in t, in λ (then mapped back by the inverse of λ), or in
/// √t (then squared). The two endpoints are returned exactly as given.
pub fn reference_time_steps(
    schedule: &NoiseSchedule,
    skip_type: SkipType,
    t_start: f64,
    t_end: f64,
    n: usize,
) -> Result<Vec<f64>> {
    if n == 0 {
        return value_err!("steps: must be at least 1, got 0");
    }
    let t_max = schedule.t_max();
    if !(t_start.is_finite() && t_start <= t_max) {
        return value_err!("t_start: must be a number <= t_max={t_max}, got {t_start}");
    }
    let t_lowest = match schedule {
        NoiseSchedule::Discrete { .. } => schedule.t_min(),
        NoiseSchedule::LinearVp { .. } => 0.0,
    };
    let ok_end = match schedule {
        NoiseSchedule::Discrete { .. } => t_end >= t_lowest,
        NoiseSchedule::LinearVp { .. } => t_end > 0.0,
    };
    if !(t_end.is_finite() && ok_end) {
        let bound = match schedule {
            NoiseSchedule::Discrete { .. } => format!(">= t_min={t_lowest}"),
            NoiseSchedule::LinearVp { .. } => "> 0".to_string(),
        };
        return value_err!("t_end: must be a number {bound}, got {t_end}");
    }
    if t_end >= t_start {
        return value_err!("t_end: must be smaller than t_start={t_start}, got {t_end}");
    }
    let mut out: Vec<f64> = match skip_type {
        SkipType::TimeUniform => np_linspace(t_start, t_end, n + 1),
        SkipType::LogSnr => {
            let (l_start, l_end) = (schedule.lambda(t_start), schedule.lambda(t_end));
            np_linspace(l_start, l_end, n + 1)
                .into_iter()
                .map(|l| schedule.inverse_lambda(l))
                .collect()
        }
        SkipType::TimeQuadratic => np_linspace(t_start.sqrt(), t_end.sqrt(), n + 1)
            .into_iter()
            .map(|s| s * s)
            .collect(),
    };
    out[0] = t_start;
    out[n] = t_end;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{BetaSchedule, DiscreteBetas};

    fn ac(s: BetaSchedule) -> Vec<f64> {
        DiscreteBetas::new(1000, s, 1e-4, 0.02, None, false)
            .unwrap()
            .alphas_cumprod
    }

    #[test]
    fn linspace_matches_numpy_shape() {
        assert_eq!(np_linspace(0.0, 1.0, 1), vec![0.0]);
        assert_eq!(np_linspace(0.0, 999.0, 4), vec![0.0, 333.0, 666.0, 999.0]);
        assert_eq!(np_linspace(0.0, 0.0, 3), vec![0.0, 0.0, 0.0]);
        assert_eq!(np_arange(10.0, 0.0, -2.5), vec![10.0, 7.5, 5.0, 2.5]);
    }

    #[test]
    fn linspace_spacing_is_diffusers_default() {
        let a = ac(BetaSchedule::Linear);
        let s = diffusers_schedule(&a, 10, &SpacingOptions::default()).unwrap();
        assert_eq!(
            s.timesteps,
            vec![999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
        );
        assert_eq!(s.sigmas.len(), 11);
        assert_eq!(s.sigmas[10], 0.0);
        assert!(s.sigmas.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn leading_and_trailing() {
        let a = ac(BetaSchedule::Linear);
        let mut o = SpacingOptions {
            spacing: TimestepSpacing::Leading,
            steps_offset: 1,
            ..Default::default()
        };
        let s = diffusers_schedule(&a, 4, &o).unwrap();
        assert_eq!(s.timesteps, vec![801, 601, 401, 201]);
        o.spacing = TimestepSpacing::Trailing;
        let s = diffusers_schedule(&a, 4, &o).unwrap();
        assert_eq!(s.timesteps, vec![999, 749, 499, 249]);
    }

    #[test]
    fn bad_arguments_name_themselves() {
        let a = ac(BetaSchedule::Linear);
        let o = SpacingOptions::default();
        let e = diffusers_schedule(&a, 0, &o).unwrap_err().to_string();
        assert!(e.contains("num_inference_steps"), "{e}");
        // Repeated timesteps are kept (diffusers' 1000 of 1000 repeats one); negative ones
        // (trailing with more steps than training timesteps) are refused.
        let s = diffusers_schedule(&a, 1000, &o).unwrap();
        assert_eq!(s.timesteps.windows(2).filter(|w| w[0] == w[1]).count(), 1);
        let trailing = SpacingOptions {
            spacing: TimestepSpacing::Trailing,
            ..Default::default()
        };
        let e = diffusers_schedule(&a, 3000, &trailing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("negative"), "{e}");
        let short = SpacingOptions {
            sigma_table: Some((vec![1.0; 10], vec![0.0; 10])),
            ..Default::default()
        };
        let e = diffusers_schedule(&a, 10, &short).unwrap_err().to_string();
        assert!(e.contains("sigma_table"), "{e}");
        let e = diffusers_schedule_from_timesteps(&a, &[], &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("timesteps"), "{e}");
        let e = diffusers_schedule_from_timesteps(&a, &[5, 7], &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("timesteps"), "{e}");
        assert!(TimestepSpacing::parse("uniform")
            .unwrap_err()
            .to_string()
            .contains("timestep_spacing"));
        assert!(FinalSigma::parse("one").is_err());
        assert!(SkipType::parse("logsnr").is_err());
    }

    #[test]
    fn inc_beta_known_values() {
        // I_x(1, 1) = x; I_x(2, 1) = x²; symmetric at 1/2.
        for x in [0.1, 0.37, 0.9] {
            assert!((inc_beta(x, 1.0, 1.0) - x).abs() < 1e-14);
            assert!((inc_beta(x, 2.0, 1.0) - x * x).abs() < 1e-14);
        }
        assert!((inc_beta(0.5, 0.6, 0.6) - 0.5).abs() < 1e-14);
        // I_x(1/2, 1/2) = (2/π) asin √x.
        for x in [1e-6f64, 0.01, 0.3, 0.77, 0.999] {
            let exact = 2.0 / std::f64::consts::PI * x.sqrt().asin();
            assert!((inc_beta(x, 0.5, 0.5) - exact).abs() < 1e-14, "{x}");
        }
    }

    #[test]
    fn beta_ppf_inverts() {
        for &(a, b) in &[(0.6, 0.6), (0.5, 0.5), (2.0, 3.0), (0.3, 1.7)] {
            for k in 0..=100 {
                let p = k as f64 / 100.0;
                let x = beta_ppf(p, a, b);
                assert!((0.0..=1.0).contains(&x));
                if k > 0 && k < 100 {
                    assert!((inc_beta(x, a, b) - p).abs() < 1e-13, "{a} {b} {p}");
                }
            }
        }
        // Arcsine quantile: sin²(πp/2).
        for p in [1e-9, 0.013, 0.25, 0.6, 0.999_999] {
            let exact = (std::f64::consts::FRAC_PI_2 * p).sin().powi(2);
            assert!((beta_ppf(p, 0.5, 0.5) - exact).abs() < 1e-14 * (1.0 + exact));
        }
    }

    #[test]
    fn distinct_fixes_cosine_karras() {
        let a = ac(BetaSchedule::SquaredCosCapV2);
        for n in [50, 100, 999] {
            let o = SpacingOptions {
                sigma_kind: SigmaKind::Karras,
                ..Default::default()
            };
            let s = diffusers_schedule(&a, n, &o).unwrap();
            let d = distinct_timesteps(&a, &s).unwrap();
            assert!(d.timesteps.windows(2).all(|w| w[1] < w[0]), "{n}");
            assert!(*d.timesteps.last().unwrap() >= 0 && d.timesteps[0] <= 999);
            assert!(d.sigmas.windows(2).all(|w| w[1] < w[0]), "{n}");
        }
    }

    #[test]
    fn reference_steps() {
        let s = NoiseSchedule::linear_vp(0.1, 20.0).unwrap();
        for k in [
            SkipType::TimeUniform,
            SkipType::LogSnr,
            SkipType::TimeQuadratic,
        ] {
            let t = reference_time_steps(&s, k, 1.0, 1e-3, 10).unwrap();
            assert_eq!(t.len(), 11);
            assert_eq!((t[0], t[10]), (1.0, 1e-3));
            assert!(t.windows(2).all(|w| w[1] < w[0]));
        }
        let t = reference_time_steps(&s, SkipType::LogSnr, 1.0, 1e-3, 8).unwrap();
        let l: Vec<f64> = t.iter().map(|&v| s.lambda(v)).collect();
        let h = l[1] - l[0];
        assert!(l.windows(2).all(|w| ((w[1] - w[0]) - h).abs() < 1e-9));
        assert!(reference_time_steps(&s, SkipType::TimeUniform, 0.5, 0.6, 4).is_err());
    }
}
