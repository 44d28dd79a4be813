//! k-diffusion's samplers (Karras et al. 2022 σ-parametrisation, x = x₀ + σ·n) as linear
//! combinations: every update of `sample_euler`, `sample_euler_ancestral`, `sample_heun`,
//! `sample_dpmpp_2m`, `sample_dpmpp_2m_sde` and `sample_dpmpp_3m_sde` is
//!
//! ```text
//! x_next = x·x + d[0]·denoised_i + d[1]·denoised_{i−1} + d[2]·denoised_{i−2} + noise·n
//! ```
//!
//! with the weights below (in f64, from the σ schedule), plus k-diffusion's σ schedules.
//! The two-evaluation samplers (`sample_dpm_2`, `sample_dpm_2_ancestral`,
//! `sample_dpmpp_2s_ancestral`, `sample_dpmpp_sde`) are a [`KTwoStage`].

use crate::error::Result;
use crate::value_err;

/// The weights of one k-diffusion update.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KStep {
    pub x: f64,
    pub d: [f64; 3],
    pub noise: f64,
}

/// A step with a second model evaluation at an intermediate σ:
///
/// ```text
/// x₂     = first[0]·x + first[1]·D + first_noise·n₁          (D = denoised at σ)
/// x_next = second[0]·x + second[1]·D + second[2]·x₂ + second[3]·D₂ + noise·n₂
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KTwoStage {
    pub first: [f64; 2],
    pub first_noise: f64,
    pub second: [f64; 4],
    pub noise: f64,
}

/// `sample_dpm_2` (σ̂ to σ_next through σ_mid) and `sample_dpm_2_ancestral` (σ to σ_down, then
/// `noise`·n): an Euler step to σ_mid, then x + (x₂ − D₂)/σ_mid·(target − σ̂).
pub fn dpm2(sigma_hat: f64, sigma_mid: f64, target: f64, noise: f64) -> KTwoStage {
    let e = euler(sigma_hat, sigma_mid);
    let k = (target - sigma_hat) / sigma_mid;
    KTwoStage {
        first: [e.x, e.d[0]],
        first_noise: 0.0,
        second: [1.0, 0.0, k, -k],
        noise,
    }
}

/// `sample_dpmpp_2s_ancestral` (σ_down > 0): DPM-Solver++(2S) from σ through σ_s to σ_down,
/// each stage a first-order data-prediction step (in σ, an Euler step), then `noise`·n.
pub fn dpmpp_2s(sigma: f64, sigma_s: f64, sigma_down: f64, noise: f64) -> KTwoStage {
    let (e1, e2) = (euler(sigma, sigma_s), euler(sigma, sigma_down));
    KTwoStage {
        first: [e1.x, e1.d[0]],
        first_noise: 0.0,
        second: [e2.x, 0.0, 0.0, e2.d[0]],
        noise,
    }
}

/// `sample_dpmpp_sde` (σ_next > 0): an ancestral first-order step from σ towards σ_s
/// (= σ·e^{−r·h}), then one towards σ_next with the denoised mix (1 − 1/2r)·D + 1/2r·D₂,
/// each adding s_noise·σ_up of its own noise.
pub fn dpmpp_sde(
    sigma: f64,
    sigma_s: f64,
    sigma_next: f64,
    eta: f64,
    s_noise: f64,
    r: f64,
) -> Result<KTwoStage> {
    if r.is_nan() || r <= 0.0 {
        return value_err!("r: must be positive, got {r}");
    }
    let fac = 1.0 / (2.0 * r);
    let (d1, u1) = ancestral_step(sigma, sigma_s, eta);
    let (d2, u2) = ancestral_step(sigma, sigma_next, eta);
    let (e1, e2) = (euler(sigma, d1), euler(sigma, d2));
    Ok(KTwoStage {
        first: [e1.x, e1.d[0]],
        first_noise: s_noise * u1,
        second: [e2.x, e2.d[0] * (1.0 - fac), 0.0, e2.d[0] * fac],
        noise: s_noise * u2,
    })
}

/// One step of k-diffusion's `DPMSolver` (`sample_dpm_fast`, `sample_dpm_adaptive`) in
/// t = −log σ, on ε = (x − D)/σ at t and at the intermediate times s1 = t + r1·h,
/// s2 = t + r2·h (h = t_next − t):
///
/// ```text
/// u1     = x + u1·ε                                  (orders 2, 3)
/// u2     = x + u2[0]·ε + u2[1]·ε_r1                  (order 3)
/// x_next = x + x[0]·ε + x[1]·ε_r1 + x[2]·ε_r2
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KDpmSolverStep {
    pub u1: f64,
    pub u2: [f64; 2],
    pub x: [f64; 3],
}

/// The weights of `dpm_solver_{order}_step` from t to t_next (order 2 takes `r1`; order 3
/// both).
pub fn dpm_solver_step(
    order: usize,
    t: f64,
    t_next: f64,
    r1: f64,
    r2: f64,
) -> Result<KDpmSolverStep> {
    let h = t_next - t;
    let sigma = |t: f64| (-t).exp();
    let (sn, em) = (sigma(t_next), h.exp_m1());
    let mut st = KDpmSolverStep::default();
    match order {
        1 => st.x[0] = -sn * em,
        2 => {
            st.u1 = -sigma(t + r1 * h) * (r1 * h).exp_m1();
            let k = sn / (2.0 * r1) * em;
            st.x = [-sn * em + k, -k, 0.0];
        }
        3 => {
            st.u1 = -sigma(t + r1 * h) * (r1 * h).exp_m1();
            let s2 = sigma(t + r2 * h);
            let k2 = s2 * (r2 / r1) * ((r2 * h).exp_m1() / (r2 * h) - 1.0);
            st.u2 = [-s2 * (r2 * h).exp_m1() + k2, -k2];
            let k3 = sn / r2 * (em / h - 1.0);
            st.x = [-sn * em + k3, 0.0, -k3];
        }
        o => return value_err!("order: the DPM-Solver step has orders 1, 2 and 3, got {o}"),
    }
    if h == 0.0
        || [st.u1, st.u2[0], st.u2[1], st.x[0], st.x[1], st.x[2]]
            .iter()
            .any(|v| !v.is_finite())
    {
        return value_err!("the DPM-Solver step from t={t} to t={t_next} is empty or not finite");
    }
    Ok(st)
}

/// Karras et al.'s σ(r) = (σ_max^{1/ρ} + r·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ at each r of `ramp`
/// (the formula diffusers' `_convert_to_karras` and k-diffusion share; each builds its own
/// ramp over [0, 1]).
pub fn karras_at(ramp: &[f64], sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    ramp.iter()
        .map(|r| (hi + r * (lo - hi)).powf(rho))
        .collect()
}

/// k-diffusion's Karras schedule: [`karras_at`] on the ramp i/(n − 1) (without the final 0).
pub fn sigmas_karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let ramp: Vec<f64> = (0..n)
        .map(|i| {
            if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                0.0
            }
        })
        .collect();
    karras_at(&ramp, sigma_min, sigma_max, rho)
}

/// σ uniform in log σ from σ_max down to σ_min (without the final 0).
pub fn sigmas_exponential(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    let (a, b) = (sigma_max.ln(), sigma_min.ln());
    (0..n)
        .map(|i| {
            let r = if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                0.0
            };
            (a + r * (b - a)).exp()
        })
        .collect()
}

/// `get_ancestral_step`: (σ_down, σ_up) for an ancestral step from σ_from to σ_to.
pub fn ancestral_step(sigma_from: f64, sigma_to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let up = sigma_to.min(
        eta * (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
            / (sigma_from * sigma_from))
            .sqrt(),
    );
    ((sigma_to * sigma_to - up * up).sqrt(), up)
}

/// The churn of `sample_euler`/`sample_heun`: γ = min(s_churn/n, √2 − 1) inside
/// [s_tmin, s_tmax], else 0, for a run of n steps.
pub fn churn_gamma(sigma: f64, n_steps: usize, s_churn: f64, s_tmin: f64, s_tmax: f64) -> f64 {
    if s_tmin <= sigma && sigma <= s_tmax {
        (s_churn / n_steps as f64).min(std::f64::consts::SQRT_2 - 1.0)
    } else {
        0.0
    }
}

/// An Euler step of the probability-flow ODE dx/dσ = (x − D)/σ from σ̂ to σ_next:
/// x + (x − D)/σ̂·(σ_next − σ̂) = (σ_next/σ̂)·x + (1 − σ_next/σ̂)·D.
pub fn euler(sigma_hat: f64, sigma_next: f64) -> KStep {
    let r = sigma_next / sigma_hat;
    KStep {
        x: r,
        d: [1.0 - r, 0.0, 0.0],
        noise: 0.0,
    }
}

/// `sample_euler_ancestral`: an Euler step to σ_down plus s_noise·σ_up·n when σ_next > 0.
pub fn euler_ancestral(sigma: f64, sigma_next: f64, eta: f64, s_noise: f64) -> KStep {
    let (down, up) = ancestral_step(sigma, sigma_next, eta);
    let mut st = euler(sigma, down);
    if sigma_next > 0.0 {
        st.noise = s_noise * up;
    }
    st
}

/// Heun's correction of `sample_heun` (σ_next > 0): with dt = σ_next − σ̂,
/// x + dt/2·((x − D)/σ̂ + (x₂ − D₂)/σ_next), as weights on (x, D, x₂, D₂).
pub fn heun_correction(sigma_hat: f64, sigma_next: f64) -> [f64; 4] {
    let dt = sigma_next - sigma_hat;
    let (a, b) = (0.5 * dt / sigma_hat, 0.5 * dt / sigma_next);
    [1.0 + a, -a, b, -b]
}

fn check_index(sigmas: &[f64], i: usize) -> Result<()> {
    if i + 1 >= sigmas.len() {
        return value_err!(
            "step index {i} is past the end of the schedule ({} sigmas)",
            sigmas.len()
        );
    }
    Ok(())
}

/// t = −log σ, k-diffusion's time for the DPM-Solver++ samplers.
fn t_of(sigma: f64) -> f64 {
    -sigma.ln()
}

/// `sample_dpmpp_2m`, step i (i ≥ 1 uses denoised_{i−1}; the last step to σ = 0 is first order).
pub fn dpmpp_2m(sigmas: &[f64], i: usize) -> Result<KStep> {
    check_index(sigmas, i)?;
    let (s, sn) = (sigmas[i], sigmas[i + 1]);
    let h = t_of(sn) - t_of(s);
    let x = sn / s;
    let b = -(-h).exp_m1();
    if i == 0 || sn == 0.0 {
        return Ok(KStep {
            x,
            d: [b, 0.0, 0.0],
            noise: 0.0,
        });
    }
    let h_last = t_of(s) - t_of(sigmas[i - 1]);
    let r = h_last / h;
    let k = 1.0 / (2.0 * r);
    Ok(KStep {
        x,
        d: [b * (1.0 + k), -b * k, 0.0],
        noise: 0.0,
    })
}

/// `sample_dpmpp_2m_sde`, step i; `heun` selects solver_type="heun" (else "midpoint").
pub fn dpmpp_2m_sde(sigmas: &[f64], i: usize, eta: f64, s_noise: f64, heun: bool) -> Result<KStep> {
    check_index(sigmas, i)?;
    let (s, sn) = (sigmas[i], sigmas[i + 1]);
    if sn == 0.0 {
        return Ok(KStep {
            x: 0.0,
            d: [1.0, 0.0, 0.0],
            noise: 0.0,
        });
    }
    let h = t_of(sn) - t_of(s);
    let eta_h = eta * h;
    let mut st = KStep {
        x: sn / s * (-eta_h).exp(),
        d: [-(-h - eta_h).exp_m1(), 0.0, 0.0],
        noise: 0.0,
    };
    if i > 0 {
        let h_last = t_of(s) - t_of(sigmas[i - 1]);
        let r = h_last / h;
        let e = -(-h - eta_h).exp_m1();
        let c = if heun {
            (e / (-h - eta_h) + 1.0) / r
        } else {
            0.5 * e / r
        };
        st.d[0] += c;
        st.d[1] -= c;
    }
    if eta != 0.0 {
        st.noise = sn * (-(-2.0 * eta_h).exp_m1()).sqrt() * s_noise;
    }
    Ok(st)
}

/// `sample_dpmpp_3m_sde`, step i.
pub fn dpmpp_3m_sde(sigmas: &[f64], i: usize, eta: f64, s_noise: f64) -> Result<KStep> {
    check_index(sigmas, i)?;
    let (s, sn) = (sigmas[i], sigmas[i + 1]);
    if sn == 0.0 {
        return Ok(KStep {
            x: 0.0,
            d: [1.0, 0.0, 0.0],
            noise: 0.0,
        });
    }
    let h = t_of(sn) - t_of(s);
    let h_eta = h * (eta + 1.0);
    let mut st = KStep {
        x: (-h_eta).exp(),
        d: [-(-h_eta).exp_m1(), 0.0, 0.0],
        noise: 0.0,
    };
    let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
    if i >= 2 {
        let h_1 = t_of(s) - t_of(sigmas[i - 1]);
        let h_2 = t_of(sigmas[i - 1]) - t_of(sigmas[i - 2]);
        let (r0, r1) = (h_1 / h, h_2 / h);
        // d1_0 = (D − D₁)/r0, d1_1 = (D₁ − D₂)/r1, d1 = d1_0 + (d1_0 − d1_1)·r0/(r0 + r1),
        // d2 = (d1_0 − d1_1)/(r0 + r1); x += φ₂·d1 − φ₃·d2.
        let phi_3 = phi_2 / h_eta - 0.5;
        let d10 = [1.0 / r0, -1.0 / r0, 0.0];
        let d11 = [0.0, 1.0 / r1, -1.0 / r1];
        for k in 0..3 {
            let diff = d10[k] - d11[k];
            let d1 = d10[k] + diff * r0 / (r0 + r1);
            let d2 = diff / (r0 + r1);
            st.d[k] += phi_2 * d1 - phi_3 * d2;
        }
    } else if i == 1 {
        let h_1 = t_of(s) - t_of(sigmas[i - 1]);
        let r = h_1 / h;
        st.d[0] += phi_2 / r;
        st.d[1] -= phi_2 / r;
    }
    if eta != 0.0 {
        st.noise = sn * (-(-2.0 * h * eta).exp_m1()).sqrt() * s_noise;
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_denoiser_is_integrated_exactly() {
        // With D ≡ c the ODE solution is x_next = c + (x − c)·σ_next/σ; every deterministic
        // update must reproduce it (weights sum to 1 on D for the ODE forms).
        let sig = sigmas_karras(8, 0.1, 10.0, 7.0);
        for i in 0..7 {
            let r = sig[i + 1] / sig[i];
            for st in [
                euler(sig[i], sig[i + 1]),
                dpmpp_2m(&sig, i).unwrap(),
                dpmpp_2m_sde(&sig, i, 0.0, 1.0, false).unwrap(),
                dpmpp_3m_sde(&sig, i, 0.0, 1.0).unwrap(),
            ] {
                assert!((st.x - r).abs() < 1e-12);
                assert!((st.d.iter().sum::<f64>() - (1.0 - r)).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn ancestral_noise_keeps_the_marginal_variance() {
        let (down, up) = ancestral_step(2.0, 1.0, 1.0);
        assert!((down * down + up * up - 1.0).abs() < 1e-12);
        assert_eq!(ancestral_step(2.0, 1.0, 0.0), (1.0, 0.0));
    }

    #[test]
    fn schedules_hit_their_ends() {
        let k = sigmas_karras(5, 0.03, 14.6, 7.0);
        assert!((k[0] - 14.6).abs() < 1e-12 && (k[4] - 0.03).abs() < 1e-12);
        let e = sigmas_exponential(5, 0.03, 14.6);
        assert!((e[0] - 14.6).abs() < 1e-12 && (e[4] - 0.03).abs() < 1e-12);
    }
}
