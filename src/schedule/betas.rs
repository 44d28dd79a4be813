//! Discrete β schedules, computed exactly as diffusers computes them.
//!
//! diffusers builds its β and ᾱ arrays in float32 with torch; to be a drop-in replacement rdiff
//! reproduces that float32 arithmetic step by step (linspace, sequential cumprod), so the arrays
//! agree bit for bit, and only then widens them to f64 for everything downstream.

use crate::error::Result;
use crate::value_err;

/// The named β schedules of diffusers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredCosCapV2,
    /// GeoDiff's sigmoid schedule (diffusers' DDPM only).
    Sigmoid,
    /// The Laplace noise schedule (diffusers' DDPM only).
    Laplace,
    /// `betas_for_alpha_bar` with ᾱ(t) = e^{−12t} (diffusers' Heun and KDPM2 classes).
    Exp,
}

impl BetaSchedule {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "linear" => Ok(Self::Linear),
            "scaled_linear" => Ok(Self::ScaledLinear),
            "squaredcos_cap_v2" => Ok(Self::SquaredCosCapV2),
            "sigmoid" => Ok(Self::Sigmoid),
            "laplace" => Ok(Self::Laplace),
            "exp" => Ok(Self::Exp),
            other => value_err!(
                "beta_schedule: unknown schedule {other:?}; expected one of \"linear\", \
                 \"scaled_linear\", \"squaredcos_cap_v2\", \"sigmoid\", \"laplace\", \"exp\""
            ),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::ScaledLinear => "scaled_linear",
            Self::SquaredCosCapV2 => "squaredcos_cap_v2",
            Self::Sigmoid => "sigmoid",
            Self::Laplace => "laplace",
            Self::Exp => "exp",
        }
    }
}

/// A discrete schedule: β_i and ᾱ_i = Π_{j≤i}(1 − β_j), i = 0..N-1.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscreteBetas {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU: the step is computed in f32,
/// the first half counts up from `start` and the second half down from `end`, each value one
/// fused multiply-add (torch's vectorised kernel uses FMA; matching it makes the arrays equal
/// bit for bit, which matters because zero-SNR rescaling amplifies one-ulp differences).
pub(crate) fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine transform (computed in f64, stored in f32).
fn squaredcos_cap_v2(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' sigmoid schedule: sigmoid(linspace(−6, 6, N))·(β_end − β_start) + β_start on
/// torch's float32 grid, the sigmoid taken in f64 and rounded (torch's own float32 sigmoid is
/// within an ulp of it), the affine map in f32.
fn sigmoid(n: usize, beta_start: f64, beta_end: f64) -> Vec<f32> {
    let (scale, shift) = ((beta_end - beta_start) as f32, beta_start as f32);
    linspace_f32(-6.0, 6.0, n)
        .into_iter()
        .map(|x| {
            let s = (1.0 / (1.0 + (-(x as f64)).exp())) as f32;
            s * scale + shift
        })
        .collect()
}

/// diffusers' Laplace schedule: β_i = min(1 − ᾱ((i+1)/N)/ᾱ(i/N), 0.999) with
/// ᾱ(t) = √(snr/(1 + snr)), snr = exp(λ), λ = −½·sign(½ − t)·ln(1 − 2|½ − t| + 10⁻⁶).
fn laplace(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        let lmb = -0.5 * (0.5 - t).signum() * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
        let snr = lmb.exp();
        (snr / (1.0 + snr)).sqrt()
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar(n, alpha_transform_type="exp")`: ᾱ(t) = e^{−12t}.
fn exp_alpha_bar(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| (t * -12.0).exp();
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Cumulative product of (1 − β) as `torch.cumprod` computes it for float32 on the CPU: the
/// factors are float32, the running product is accumulated in f64 and each output rounded.
fn cumprod_one_minus(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= (1.0 - b) as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023), in float32 like diffusers.
/// `sqrt`: √ᾱ of `betas` as the caller's framework rounds it (None: correctly rounded).
fn rescale_zero_terminal_snr(betas: &[f32], sqrt: Option<&[f32]>) -> Vec<f32> {
    let sqrt: Vec<f32> = match sqrt {
        Some(s) => s.to_vec(),
        None => cumprod_one_minus(betas).iter().map(|a| a.sqrt()).collect(),
    };
    let (a0, at) = (sqrt[0], sqrt[sqrt.len() - 1]);
    let scale = a0 / (a0 - at);
    let bar: Vec<f32> = sqrt
        .iter()
        .map(|s| {
            let v = (s - at) * scale;
            v * v
        })
        .collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

impl DiscreteBetas {
    /// The β schedule diffusers' schedulers build from their constructor arguments.
    pub fn new(
        num_train_timesteps: usize,
        schedule: BetaSchedule,
        beta_start: f64,
        beta_end: f64,
        trained_betas: Option<&[f64]>,
        rescale_betas_zero_snr: bool,
    ) -> Result<Self> {
        Self::with_sqrt(
            num_train_timesteps,
            schedule,
            beta_start,
            beta_end,
            trained_betas,
            rescale_betas_zero_snr,
            None,
        )
    }

    /// As `new`, the zero-SNR rescale reading `sqrt` for √ᾱ of the schedule before it: the
    /// caller's framework's float32 square roots. diffusers rescales with torch's `sqrt`,
    /// which is not correctly rounded on every CPU (AVX2 builds differ in the last bit), and
    /// β₀ = 1 − ᾱ₀' cancels: one ulp of √ᾱ₀ moves β₀, and so σ_min, by 10⁻³ relative.
    pub fn with_sqrt(
        num_train_timesteps: usize,
        schedule: BetaSchedule,
        beta_start: f64,
        beta_end: f64,
        trained_betas: Option<&[f64]>,
        rescale_betas_zero_snr: bool,
        sqrt: Option<&[f64]>,
    ) -> Result<Self> {
        let betas32: Vec<f32> = match trained_betas {
            Some(tb) => {
                if tb.is_empty() {
                    return value_err!("trained_betas: must not be empty");
                }
                if let Some(b) = tb
                    .iter()
                    .find(|b| !(b.is_finite() && **b > 0.0 && **b < 1.0))
                {
                    return value_err!("trained_betas: every beta must lie in (0, 1), got {b}");
                }
                tb.iter().map(|&b| b as f32).collect()
            }
            None => {
                if num_train_timesteps == 0 {
                    return value_err!("num_train_timesteps: must be at least 1, got 0");
                }
                if !matches!(
                    schedule,
                    BetaSchedule::SquaredCosCapV2 | BetaSchedule::Laplace
                ) {
                    if !(beta_start.is_finite() && beta_start > 0.0 && beta_start < 1.0) {
                        return value_err!("beta_start: must lie in (0, 1), got {beta_start}");
                    }
                    if !(beta_end.is_finite() && beta_end > 0.0 && beta_end < 1.0) {
                        return value_err!("beta_end: must lie in (0, 1), got {beta_end}");
                    }
                    if beta_end < beta_start {
                        return value_err!(
                            "beta_end: must be >= beta_start, got beta_start={beta_start}, \
                             beta_end={beta_end}"
                        );
                    }
                }
                match schedule {
                    BetaSchedule::Linear => {
                        linspace_f32(beta_start as f32, beta_end as f32, num_train_timesteps)
                    }
                    BetaSchedule::ScaledLinear => linspace_f32(
                        beta_start.sqrt() as f32,
                        beta_end.sqrt() as f32,
                        num_train_timesteps,
                    )
                    .into_iter()
                    .map(|b| b * b)
                    .collect(),
                    BetaSchedule::SquaredCosCapV2 => squaredcos_cap_v2(num_train_timesteps),
                    BetaSchedule::Sigmoid => sigmoid(num_train_timesteps, beta_start, beta_end),
                    BetaSchedule::Laplace => laplace(num_train_timesteps),
                    BetaSchedule::Exp => exp_alpha_bar(num_train_timesteps),
                }
            }
        };
        let betas32 = if rescale_betas_zero_snr {
            if betas32.len() < 2 {
                return value_err!("rescale_betas_zero_snr: needs at least 2 training timesteps");
            }
            let sqrt: Option<Vec<f32>> = sqrt.map(|v| v.iter().map(|&x| x as f32).collect());
            if let Some(v) = &sqrt {
                if v.len() != betas32.len() || v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                    return value_err!(
                        "sqrt_alphas_cumprod: expected {} positive finite values",
                        betas32.len()
                    );
                }
            }
            rescale_zero_terminal_snr(&betas32, sqrt.as_deref())
        } else {
            betas32
        };
        let ac = cumprod_one_minus(&betas32);
        Ok(Self {
            betas: betas32.iter().map(|&b| b as f64).collect(),
            alphas_cumprod: ac.iter().map(|&a| a as f64).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_hits_both_ends() {
        let v = linspace_f32(1e-4, 0.02, 1000);
        assert_eq!(v[0], 1e-4);
        assert_eq!(v[999], 0.02);
        assert!(v.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn cumprod_is_decreasing_and_positive() {
        let s = DiscreteBetas::new(1000, BetaSchedule::Linear, 1e-4, 0.02, None, false).unwrap();
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
        assert!(s.alphas_cumprod[999] > 0.0 && s.alphas_cumprod[999] < 1e-4);
    }

    #[test]
    fn zero_snr_ends_at_zero() {
        let s = DiscreteBetas::new(1000, BetaSchedule::ScaledLinear, 0.00085, 0.012, None, true)
            .unwrap();
        assert_eq!(*s.alphas_cumprod.last().unwrap(), 0.0);
    }

    #[test]
    fn zero_snr_reads_the_given_square_roots() {
        let (s, lin) = (BetaSchedule::ScaledLinear, (0.00085, 0.012));
        let raw = DiscreteBetas::new(1000, s, lin.0, lin.1, None, false).unwrap();
        let mut sqrt: Vec<f64> = raw
            .alphas_cumprod
            .iter()
            .map(|&a| (a as f32).sqrt() as f64)
            .collect();
        let own = DiscreteBetas::new(1000, s, lin.0, lin.1, None, true).unwrap();
        let same = DiscreteBetas::with_sqrt(1000, s, lin.0, lin.1, None, true, Some(&sqrt));
        assert_eq!(same.unwrap().betas, own.betas);
        // one ulp more in √ᾱ₀ (what torch's AVX2 sqrt can give) moves β₀, as in diffusers
        sqrt[0] = f32::from_bits((sqrt[0] as f32).to_bits() + 1) as f64;
        let moved = DiscreteBetas::with_sqrt(1000, s, lin.0, lin.1, None, true, Some(&sqrt));
        assert_ne!(moved.unwrap().betas[0], own.betas[0]);
        let short = DiscreteBetas::with_sqrt(1000, s, lin.0, lin.1, None, true, Some(&sqrt[1..]));
        assert!(short
            .unwrap_err()
            .to_string()
            .contains("sqrt_alphas_cumprod"));
    }

    #[test]
    fn bad_arguments_name_themselves() {
        let e = DiscreteBetas::new(10, BetaSchedule::Linear, 0.02, 1e-4, None, false).unwrap_err();
        assert!(e.to_string().contains("beta_end"));
        let e = DiscreteBetas::new(0, BetaSchedule::Linear, 1e-4, 0.02, None, false).unwrap_err();
        assert!(e.to_string().contains("num_train_timesteps"));
        assert!(BetaSchedule::parse("cosine").is_err());
    }
}
