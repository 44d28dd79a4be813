//! Analytic-DPM's optimal trajectory: which K of the N training timesteps to visit.
//!
//! The reference code (`_dp_seg`, `_get_fn_m` and `_solve_fn_dp` in Analytic-DPM's
//! `core/inference/utils.py`) works in 1-based timesteps 1..N and minimises, over
//! 1 = n₁ < n₂ < … < n_K = N, the sum of the per-pair costs of consecutive visited timesteps
//!
//! ```text
//! F(s, t) = log(1 − (1 − ᾱ_t/ᾱ_s) · Γ_t/β̄_t)        1 ≤ s < t ≤ N
//! ```
//!
//! (the part of the KL term L_{s|t} of the ELBO that depends on the trajectory, with the
//! analytic variance in its DDPM form; the final step 1 → 0 is common to all trajectories).
//! That is the form implemented here, in f64 with `ln_1p`. Timesteps from the first one whose
//! estimated Γ exceeds 1 onwards are poorly estimated (Γ ≤ 1 in theory); as in the reference's
//! `_split`, the last 2·(N − n_bad + 1) timesteps are split off, given K₂ of the K points
//! spaced uniformly (rounded half to even, as Python's `round`), and the dynamic program runs
//! on the rest. Where the reference would fail (Γ > 1 already in the first half, so that the
//! split-off part would exceed N), we split off all but timestep 1.
//!
//! The dynamic program fills the K × N tables of costs and back-pointers column by column, so
//! each pair cost is computed once into an O(N) buffer: O(N²) logarithms and O(K·N²) additions.

use crate::error::Result;
use crate::value_err;

/// The cost F(s, t) of visiting t then s (1-based timesteps; `ac[i]` is ᾱ of 1-based i + 1).
#[inline]
fn pair_cost(ac: &[f64], score: &[f64], s: usize, t: usize) -> f64 {
    let skip_beta = 1.0 - ac[t - 1] / ac[s - 1];
    (-(skip_beta * score[t - 1])).ln_1p()
}

/// The reference's `_split`: (K₁, N₁, K₂) for Γ (1-based values in `gamma[0..N]`).
fn split(gamma: &[f64], k: usize) -> (usize, usize, usize) {
    let n = gamma.len();
    let first_bad = gamma.iter().position(|&g| g > 1.0).map_or(n + 1, |i| i + 1);
    // The reference asserts num_bad ≤ N; we keep at least timestep 1 for the DP instead.
    let num_bad = (2 * (n + 1 - first_bad)).min(n - 1);
    let bad_ratio = num_bad as f64 / n as f64;
    let n1 = n - num_bad;
    let mut k1 = ((1.0 - 0.8 * bad_ratio) * k as f64).ceil() as usize;
    k1 = k1.min(k);
    let mut k2 = k - k1;
    if k1 > n1 {
        k1 = n1;
        k2 = k - k1;
    }
    if k2 > num_bad {
        k2 = num_bad;
        k1 = k - k2;
    }
    if num_bad > 0 && k2 == 0 {
        k2 = 1;
        k1 = k - k2;
    }
    (k1, n1, k2)
}

/// The minimum-cost path 1 = n₁ < … < n_K = N over F on 1-based timesteps 1..=n (the
/// reference's `_solve_fn_dp`), with its cost. Ties go to the smallest predecessor.
fn solve_dp(ac: &[f64], score: &[f64], n: usize, k: usize) -> (Vec<usize>, f64) {
    if k == n {
        let path: Vec<usize> = (1..=n).collect();
        let cost = path
            .windows(2)
            .map(|w| pair_cost(ac, score, w[0], w[1]))
            .sum();
        return (path, cost);
    }
    if k == 1 {
        return (vec![1], 0.0);
    }
    // cost[j][t]: the cheapest path 1 → t visiting j points; back[j][t] its predecessor of t.
    // Columns are filled for t = 2, 3, …, n: column t needs only columns s < t, so each pair
    // cost F(s, t) is computed once (into an O(N) buffer) and reused by every j.
    let mut cost = vec![vec![f64::INFINITY; n + 1]; k + 1];
    let mut back = vec![vec![0u32; n + 1]; k + 1];
    let mut column = vec![0f64; n + 1];
    for t in 2..=n {
        for (s, f) in column.iter_mut().enumerate().take(t).skip(1) {
            *f = pair_cost(ac, score, s, t);
        }
        cost[2][t] = column[1];
        back[2][t] = 1;
        for j in 3..=k.min(t) {
            let (prev_rows, cur_rows) = cost.split_at_mut(j);
            let prev = &prev_rows[j - 1];
            let mut best = (f64::INFINITY, 0u32);
            for s in (j - 1)..t {
                let c = prev[s] + column[s];
                if c < best.0 {
                    best = (c, s as u32);
                }
            }
            cur_rows[0][t] = best.0;
            back[j][t] = best.1;
        }
    }
    let total = cost[k][n];
    let mut path = vec![n];
    let mut t = n;
    for j in (3..=k).rev() {
        t = back[j][t] as usize;
        path.push(t);
    }
    path.push(1);
    path.reverse();
    (path, total)
}

/// The optimal trajectory of `num_steps` timesteps for Γ over all N timesteps (`gamma[i]` at
/// diffusers' 0-based timestep i) and the schedule's ᾱ: 0-based timesteps, descending, always
/// holding N − 1 and 0.
pub fn optimal_trajectory(
    gamma: &[f64],
    alphas_cumprod: &[f64],
    num_steps: usize,
) -> Result<Vec<usize>> {
    let n = alphas_cumprod.len();
    if gamma.len() != n {
        return value_err!(
            "gamma: {} values for a schedule of {n} timesteps; Γ is needed at every timestep",
            gamma.len()
        );
    }
    if let Some(i) = gamma.iter().position(|g| !g.is_finite()) {
        return value_err!("gamma: Γ at timestep {i} is not finite ({})", gamma[i]);
    }
    if let Some(i) = gamma.iter().position(|&g| g < 0.0) {
        return value_err!("gamma: Γ at timestep {i} is negative ({})", gamma[i]);
    }
    if let Some(i) = alphas_cumprod.iter().position(|&a| !(a > 0.0 && a < 1.0)) {
        return value_err!(
            "alphas_cumprod: ᾱ at timestep {i} must lie in (0, 1), got {}",
            alphas_cumprod[i]
        );
    }
    if num_steps > n {
        return value_err!("num_steps: {num_steps} is more than the schedule's {n} timesteps");
    }
    if num_steps < 2 && n > 1 {
        return value_err!(
            "num_steps: need at least 2 to visit both the first and the last timestep, got {num_steps}"
        );
    }
    if n == 1 {
        return Ok(vec![0]);
    }
    let score: Vec<f64> = gamma
        .iter()
        .zip(alphas_cumprod)
        .map(|(g, a)| g / (1.0 - a))
        .collect();
    let (k1, n1, k2) = split(gamma, num_steps);
    let mut steps = if k1 > 0 && n1 > 0 {
        solve_dp(alphas_cumprod, &score, n1, k1).0
    } else {
        Vec::new()
    };
    if k2 > 0 {
        let frac = (n - n1) as f64 / k2 as f64;
        let mut tail: Vec<usize> = (0..k2)
            .map(|j| (n as f64 - frac * j as f64).round_ties_even() as usize)
            .collect();
        tail.reverse();
        steps.extend(tail);
    }
    // 1-based ascending → 0-based descending.
    let mut out: Vec<usize> = steps.iter().map(|s| s - 1).collect();
    out.reverse();
    if out.len() != num_steps
        || out.first() != Some(&(n - 1))
        || out.last() != Some(&0)
        || out.windows(2).any(|w| w[0] <= w[1])
    {
        return value_err!(
            "optimal_trajectory: could not place {num_steps} steps around the {} timesteps \
             split off because Γ exceeds 1 there; use fewer steps or a better Γ estimate",
            n - n1
        );
    }
    Ok(out)
}

/// The total cost Σ F(s, t) of a trajectory (0-based timesteps, descending), with the same F.
pub fn trajectory_cost(gamma: &[f64], alphas_cumprod: &[f64], timesteps: &[usize]) -> f64 {
    let score: Vec<f64> = gamma
        .iter()
        .zip(alphas_cumprod)
        .map(|(g, a)| g / (1.0 - a))
        .collect();
    timesteps
        .windows(2)
        .map(|w| pair_cost(alphas_cumprod, &score, w[1] + 1, w[0] + 1))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear_ac(n: usize) -> Vec<f64> {
        let mut ac = Vec::with_capacity(n);
        let mut p = 1.0;
        for i in 0..n {
            let b = 0.01 + 0.3 * i as f64 / (n - 1) as f64;
            p *= 1.0 - b;
            ac.push(p);
        }
        ac
    }

    #[test]
    fn brute_force_agrees() {
        let n = 12;
        let ac = linear_ac(n);
        let gamma: Vec<f64> = ac.iter().map(|a| (1.0 - a) / (a * 0.3 + 1.0 - a)).collect();
        for k in 2..=n {
            let best = optimal_trajectory(&gamma, &ac, k).unwrap();
            let c = trajectory_cost(&gamma, &ac, &best);
            // all subsets of the interior of size k - 2
            let mut min = f64::INFINITY;
            for mask in 0u32..(1 << (n - 2)) {
                if mask.count_ones() as usize != k - 2 {
                    continue;
                }
                let mut ts = vec![n - 1];
                for i in (1..n - 1).rev() {
                    if mask & (1 << (i - 1)) != 0 {
                        ts.push(i);
                    }
                }
                ts.push(0);
                min = min.min(trajectory_cost(&gamma, &ac, &ts));
            }
            assert!(
                (c - min).abs() <= 1e-12 * min.abs().max(1.0),
                "k={k}: {c} vs {min}"
            );
        }
    }

    #[test]
    fn bad_gamma_is_split_off() {
        let n = 100;
        let ac = linear_ac(n);
        let mut gamma: Vec<f64> = ac.iter().map(|a| (1.0 - a) / (a * 0.3 + 1.0 - a)).collect();
        for g in gamma.iter_mut().skip(95) {
            *g = 1.01;
        }
        let ts = optimal_trajectory(&gamma, &ac, 10).unwrap();
        assert_eq!(ts.len(), 10);
        assert_eq!(ts[0], n - 1);
        assert_eq!(*ts.last().unwrap(), 0);
    }
}
