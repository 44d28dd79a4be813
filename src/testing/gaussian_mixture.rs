//! A Gaussian mixture with diagonal covariances, p_0 = Σ_k w_k N(μ_k, diag(s_k²)).
//!
//! Under the forward process x_t = α x_0 + σ ε the marginal is again a mixture,
//! p_t = Σ_k w_k N(α μ_k, diag(v_k)) with v_k = α² s_k² + σ², so everything a sampler needs is
//! exact:
//!
//! - the responsibilities r_k(x) = w_k N(x; α μ_k, v_k) / p_t(x) (log-sum-exp, stable),
//! - the optimal noise prediction ε*(x) = −σ ∇ log p_t(x) = σ Σ_k r_k (x − α μ_k) / v_k,
//! - the posterior mean E[x_0 | x_t = x] = Σ_k r_k (σ² μ_k + α s_k² x) / v_k, computed directly
//!   (not as (x − σ ε*)/α, which loses every digit as α → 0),
//! - the v-prediction α ε* − σ x̂_0,
//! - the posterior covariance trace tr Cov[x_0 | x_t = x] =
//!   Σ_k r_k (Σ_j s_kj² σ² / v_kj + ‖m_k − x̂_0‖²), m_k the component posterior means.
//!
//! All arithmetic is f64; rows (samples) are processed in parallel with rayon.

use rayon::prelude::*;

use crate::error::Result;
use crate::value_err;

const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// Which exact prediction [`GaussianMixture::predict`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// ε*(x) = −σ ∇ log p_t(x).
    Epsilon,
    /// x̂_0(x) = E[x_0 | x_t = x].
    Sample,
    /// v*(x) = α ε*(x) − σ x̂_0(x).
    VPrediction,
}

impl Prediction {
    /// Parses diffusers' `prediction_type` names.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "epsilon" => Ok(Self::Epsilon),
            "sample" => Ok(Self::Sample),
            "v_prediction" => Ok(Self::VPrediction),
            _ => value_err!(
                "prediction_type: expected 'epsilon', 'sample' or 'v_prediction', got {name:?}"
            ),
        }
    }
}

#[derive(Clone, Debug)]
pub struct GaussianMixture {
    dim: usize,
    n_components: usize,
    /// μ, row-major (K, d).
    means: Vec<f64>,
    /// s², row-major (K, d).
    vars: Vec<f64>,
    /// Normalised weights (K,).
    weights: Vec<f64>,
    log_weights: Vec<f64>,
    /// The smallest s² of all components and dimensions.
    min_var: f64,
}

/// `v[i]` for a per-sample slice, `v[0]` for a broadcast scalar.
#[inline]
fn at(v: &[f64], i: usize) -> f64 {
    if v.len() == 1 {
        v[0]
    } else {
        v[i]
    }
}

impl GaussianMixture {
    /// A mixture of `n_components` Gaussians in `dim` dimensions.
    ///
    /// `means` is row-major (K, d); `stds` holds either K values (isotropic components) or
    /// K·d values (diagonal, row-major); `weights` (K values, positive) are normalised to sum
    /// to one, and default to uniform.
    pub fn new(
        means: Vec<f64>,
        n_components: usize,
        dim: usize,
        stds: &[f64],
        weights: Option<&[f64]>,
    ) -> Result<Self> {
        if n_components == 0 {
            return value_err!("means: need at least one component, got shape (0, {dim})");
        }
        if dim == 0 {
            return value_err!("means: need at least one dimension, got shape ({n_components}, 0)");
        }
        if means.len() != n_components * dim {
            return value_err!(
                "means: expected {} values for shape ({n_components}, {dim}), got {}",
                n_components * dim,
                means.len()
            );
        }
        if let Some(i) = means.iter().position(|m| !m.is_finite()) {
            return value_err!("means: must be finite, got {} at flat index {i}", means[i]);
        }
        let vars: Vec<f64> = if stds.len() == n_components {
            stds.iter()
                .flat_map(|&s| std::iter::repeat_n(s * s, dim))
                .collect()
        } else if stds.len() == n_components * dim {
            stds.iter().map(|&s| s * s).collect()
        } else {
            return value_err!(
                "stds: expected shape ({n_components},) or ({n_components}, {dim}) to match \
                 means, got {} values",
                stds.len()
            );
        };
        if let Some(i) = stds.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return value_err!(
                "stds: must be positive and finite, got {} at flat index {i}",
                stds[i]
            );
        }
        let min_var = vars.iter().copied().fold(f64::INFINITY, f64::min);
        if min_var.is_nan() || min_var <= 0.0 {
            return value_err!("stds: too small, s² underflows to zero");
        }
        let weights = match weights {
            None => vec![1.0 / n_components as f64; n_components],
            Some(w) => {
                if w.len() != n_components {
                    return value_err!(
                        "weights: expected {n_components} values to match means, got {}",
                        w.len()
                    );
                }
                if let Some(i) = w.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
                    return value_err!(
                        "weights: must be positive and finite, got {} at index {i}",
                        w[i]
                    );
                }
                let total: f64 = w.iter().sum();
                if !total.is_finite() {
                    return value_err!("weights: the sum overflows");
                }
                w.iter().map(|v| v / total).collect()
            }
        };
        let log_weights = weights.iter().map(|w| w.ln()).collect();
        Ok(Self {
            dim,
            n_components,
            means,
            vars,
            weights,
            log_weights,
            min_var,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn n_components(&self) -> usize {
        self.n_components
    }

    /// μ, row-major (K, d).
    pub fn means(&self) -> &[f64] {
        &self.means
    }

    /// s, row-major (K, d) (isotropic components repeated along d).
    pub fn stds(&self) -> Vec<f64> {
        self.vars.iter().map(|v| v.sqrt()).collect()
    }

    /// The normalised weights (K,).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// E[x_0] = Σ_k w_k μ_k, shape (d,).
    pub fn mean(&self) -> Vec<f64> {
        let d = self.dim;
        let mut m = vec![0.0; d];
        for (k, w) in self.weights.iter().enumerate() {
            for (mj, mu) in m.iter_mut().zip(&self.means[k * d..(k + 1) * d]) {
                *mj += w * mu;
            }
        }
        m
    }

    /// Cov[x_0] = Σ_k w_k (diag(s_k²) + (μ_k − m)(μ_k − m)ᵀ), row-major (d, d).
    pub fn cov(&self) -> Vec<f64> {
        let d = self.dim;
        let m = self.mean();
        let mut c = vec![0.0; d * d];
        for (k, w) in self.weights.iter().enumerate() {
            let mu = &self.means[k * d..(k + 1) * d];
            let var = &self.vars[k * d..(k + 1) * d];
            for i in 0..d {
                let di = mu[i] - m[i];
                c[i * d + i] += w * var[i];
                for j in 0..d {
                    c[i * d + j] += w * di * (mu[j] - m[j]);
                }
            }
        }
        c
    }

    /// Validates x (n·d values) against per-sample (or broadcast, length 1) α and σ; returns n.
    fn check(&self, x: &[f64], alpha: &[f64], sigma: &[f64]) -> Result<usize> {
        let d = self.dim;
        if !x.len().is_multiple_of(d) {
            return value_err!(
                "x: expected a multiple of dim={d} values (shape (n, {d})), got {}",
                x.len()
            );
        }
        let n = x.len() / d;
        for (name, v) in [("alpha", alpha), ("sigma", sigma)] {
            if v.len() != 1 && v.len() != n {
                return value_err!(
                    "{name}: expected a scalar or one value per sample ({n}), got {} values",
                    v.len()
                );
            }
            if let Some(i) = v.iter().position(|a| !(a.is_finite() && *a >= 0.0)) {
                return value_err!(
                    "{name}: must be non-negative and finite, got {} at index {i}",
                    v[i]
                );
            }
        }
        for i in 0..alpha.len().max(sigma.len()) {
            let (a, s) = (at(alpha, i), at(sigma, i));
            let total = a * a * self.min_var + s * s;
            if total.is_nan() || total <= 0.0 {
                return value_err!(
                    "alpha, sigma: α² s² + σ² must be positive, got alpha={a}, sigma={s} at \
                     index {i}"
                );
            }
        }
        if let Some(i) = x.par_iter().position_any(|v| !v.is_finite()) {
            return value_err!(
                "x: must be finite, got {} at sample {}, element {}",
                x[i],
                i / d,
                i % d
            );
        }
        Ok(n)
    }

    /// Writes the responsibilities r_k(x) into `r` (K values) and returns log p_t(x).
    fn responsibilities(&self, x: &[f64], a: f64, s: f64, r: &mut [f64]) -> f64 {
        let d = self.dim;
        let s2 = s * s;
        let a2 = a * a;
        let mut max = f64::NEG_INFINITY;
        for (k, rk) in r.iter_mut().enumerate() {
            let mu = &self.means[k * d..(k + 1) * d];
            let var = &self.vars[k * d..(k + 1) * d];
            let mut q = 0.0;
            let mut logdet = 0.0;
            for j in 0..d {
                let v = a2 * var[j] + s2;
                let diff = x[j] - a * mu[j];
                q += diff * diff / v;
                logdet += v.ln();
            }
            let l = self.log_weights[k] - 0.5 * (q + logdet + d as f64 * LN_2PI);
            *rk = l;
            max = max.max(l);
        }
        let mut total = 0.0;
        for rk in r.iter_mut() {
            *rk = (*rk - max).exp();
            total += *rk;
        }
        for rk in r.iter_mut() {
            *rk /= total;
        }
        max + total.ln()
    }

    /// log p_t(x) for each of the n rows of x (row-major (n, d)); α = 1, σ = 0 is the data
    /// density p_0.
    pub fn log_prob(&self, x: &[f64], alpha: &[f64], sigma: &[f64]) -> Result<Vec<f64>> {
        let n = self.check(x, alpha, sigma)?;
        let mut out = vec![0.0; n];
        out.par_iter_mut()
            .zip(x.par_chunks(self.dim))
            .enumerate()
            .for_each_init(
                || vec![0.0; self.n_components],
                |r, (i, (o, xr))| *o = self.responsibilities(xr, at(alpha, i), at(sigma, i), r),
            );
        Ok(out)
    }

    /// The exact ε*, x̂_0 or v* for each row of x (row-major (n, d)); same layout out.
    pub fn predict(
        &self,
        x: &[f64],
        alpha: &[f64],
        sigma: &[f64],
        prediction: Prediction,
    ) -> Result<Vec<f64>> {
        self.check(x, alpha, sigma)?;
        let d = self.dim;
        let mut out = vec![0.0; x.len()];
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .enumerate()
            .for_each_init(
                || vec![0.0; self.n_components],
                |r, (i, (o, xr))| {
                    let (a, s) = (at(alpha, i), at(sigma, i));
                    self.responsibilities(xr, a, s, r);
                    self.predict_row(xr, a, s, r, prediction, o);
                },
            );
        Ok(out)
    }

    fn predict_row(
        &self,
        x: &[f64],
        a: f64,
        s: f64,
        r: &[f64],
        prediction: Prediction,
        out: &mut [f64],
    ) {
        let d = self.dim;
        let (a2, s2) = (a * a, s * s);
        for (j, o) in out.iter_mut().enumerate() {
            // Σ_k r_k (x − α μ_k)/v_k  and  Σ_k r_k (σ² μ_k + α s_k² x)/v_k.
            let mut e = 0.0;
            let mut m = 0.0;
            for (k, rk) in r.iter().enumerate() {
                let mu = self.means[k * d + j];
                let var = self.vars[k * d + j];
                let v = a2 * var + s2;
                match prediction {
                    Prediction::Epsilon => e += rk * (x[j] - a * mu) / v,
                    Prediction::Sample => m += rk * (s2 * mu + a * var * x[j]) / v,
                    Prediction::VPrediction => {
                        e += rk * (x[j] - a * mu) / v;
                        m += rk * (s2 * mu + a * var * x[j]) / v;
                    }
                }
            }
            *o = match prediction {
                Prediction::Epsilon => s * e,
                Prediction::Sample => m,
                Prediction::VPrediction => a * s * e - s * m,
            };
        }
    }

    /// tr Cov[x_0 | x_t = x] for each row of x (row-major (n, d)).
    pub fn x0_cov_trace(&self, x: &[f64], alpha: &[f64], sigma: &[f64]) -> Result<Vec<f64>> {
        let n = self.check(x, alpha, sigma)?;
        let d = self.dim;
        let mut out = vec![0.0; n];
        out.par_iter_mut()
            .zip(x.par_chunks(d))
            .enumerate()
            .for_each_init(
                || (vec![0.0; self.n_components], vec![0.0; d]),
                |(r, xhat), (i, (o, xr))| {
                    let (a, s) = (at(alpha, i), at(sigma, i));
                    self.responsibilities(xr, a, s, r);
                    self.predict_row(xr, a, s, r, Prediction::Sample, xhat);
                    let (a2, s2) = (a * a, s * s);
                    let mut tr = 0.0;
                    for (k, rk) in r.iter().enumerate() {
                        let mut t = 0.0;
                        for j in 0..d {
                            let mu = self.means[k * d + j];
                            let var = self.vars[k * d + j];
                            let v = a2 * var + s2;
                            let mk = (s2 * mu + a * var * xr[j]) / v;
                            let dm = mk - xhat[j];
                            t += var * s2 / v + dm * dm;
                        }
                        tr += rk * t;
                    }
                    *o = tr;
                },
            );
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    fn mixture() -> GaussianMixture {
        GaussianMixture::new(
            vec![-1.0, 0.5, 2.0, -0.3, 0.0, 1.5],
            3,
            2,
            &[0.5, 0.3, 1.0, 0.7, 0.2, 0.4],
            Some(&[1.0, 2.0, 1.0]),
        )
        .unwrap()
    }

    #[test]
    fn single_gaussian_closed_form() {
        let (mu, sd) = (0.7, 1.3);
        let g = GaussianMixture::new(vec![mu; 3], 1, 3, &[sd], None).unwrap();
        let x = [0.1, -2.0, 3.0, 0.5, 0.5, 0.5];
        let (a, s) = (0.6, 0.8);
        let v = a * a * sd * sd + s * s;
        let eps = g.predict(&x, &[a], &[s], Prediction::Epsilon).unwrap();
        let x0 = g.predict(&x, &[a], &[s], Prediction::Sample).unwrap();
        let vp = g.predict(&x, &[a], &[s], Prediction::VPrediction).unwrap();
        for j in 0..6 {
            assert!(close(eps[j], s * (x[j] - a * mu) / v, 1e-14));
            assert!(close(x0[j], (x[j] - s * eps[j]) / a, 1e-13));
            assert!(close(vp[j], a * eps[j] - s * x0[j], 1e-13));
        }
        let tr = g.x0_cov_trace(&x, &[a], &[s]).unwrap();
        assert!(close(tr[0], 3.0 * sd * sd * s * s / v, 1e-13));
        let lp = g.log_prob(&x[..3], &[1.0], &[0.0]).unwrap();
        let q: f64 = x[..3].iter().map(|xi| (xi - mu) * (xi - mu)).sum::<f64>() / (sd * sd);
        let expected = -0.5 * (q + 3.0 * (sd * sd).ln() + 3.0 * LN_2PI);
        assert!(close(lp[0], expected, 1e-14));
    }

    #[test]
    fn eps_is_minus_sigma_times_score() {
        let g = mixture();
        let x = [0.3, -0.2];
        let (a, s) = (0.9, 0.45);
        let eps = g.predict(&x, &[a], &[s], Prediction::Epsilon).unwrap();
        let h = 1e-5;
        for j in 0..2 {
            let (mut xp, mut xm) = (x, x);
            xp[j] += h;
            xm[j] -= h;
            let lp = g.log_prob(&xp, &[a], &[s]).unwrap()[0];
            let lm = g.log_prob(&xm, &[a], &[s]).unwrap()[0];
            let grad = (lp - lm) / (2.0 * h);
            assert!(
                close(eps[j], -s * grad, 1e-7),
                "{} vs {}",
                eps[j],
                -s * grad
            );
        }
    }

    #[test]
    fn alpha_zero_gives_the_data_mean() {
        let g = mixture();
        let x0 = g
            .predict(&[5.0, -7.0], &[0.0], &[1.0], Prediction::Sample)
            .unwrap();
        let m = g.mean();
        assert!(close(x0[0], m[0], 1e-14) && close(x0[1], m[1], 1e-14));
        let eps = g
            .predict(&[5.0, -7.0], &[0.0], &[1.0], Prediction::Epsilon)
            .unwrap();
        assert_eq!(eps, vec![5.0, -7.0]);
    }

    #[test]
    fn sigma_zero_is_the_identity_denoiser() {
        let g = mixture();
        let x = [0.25, 1.75, -3.0, 2.0];
        let x0 = g.predict(&x, &[1.0], &[0.0], Prediction::Sample).unwrap();
        for j in 0..4 {
            assert!(close(x0[j], x[j], 1e-15));
        }
    }

    #[test]
    fn per_sample_alpha_sigma() {
        let g = mixture();
        let x = [0.3, -0.2, 1.0, 2.0];
        let both = g
            .predict(&x, &[0.9, 0.2], &[0.3, 0.98], Prediction::Epsilon)
            .unwrap();
        let first = g
            .predict(&x[..2], &[0.9], &[0.3], Prediction::Epsilon)
            .unwrap();
        let second = g
            .predict(&x[2..], &[0.2], &[0.98], Prediction::Epsilon)
            .unwrap();
        assert_eq!(&both[..2], &first[..]);
        assert_eq!(&both[2..], &second[..]);
    }

    #[test]
    fn moments() {
        let g = mixture();
        let m = g.mean();
        // weights 1/4, 1/2, 1/4
        assert!(close(m[0], -0.25 + 0.5 * 2.0, 1e-15));
        let c = g.cov();
        assert!(close(c[1], c[2], 0.0));
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(GaussianMixture::new(vec![0.0; 4], 2, 2, &[1.0, -1.0], None).is_err());
        assert!(GaussianMixture::new(vec![0.0; 4], 2, 2, &[1.0, 1.0, 1.0], None).is_err());
        assert!(GaussianMixture::new(vec![0.0; 4], 2, 2, &[1.0, 1.0], Some(&[1.0, 0.0])).is_err());
        assert!(GaussianMixture::new(vec![0.0; 3], 2, 2, &[1.0, 1.0], None).is_err());
        assert!(GaussianMixture::new(vec![], 0, 2, &[], None).is_err());
        let g = mixture();
        assert!(g
            .predict(&[0.0; 3], &[1.0], &[0.1], Prediction::Epsilon)
            .is_err());
        assert!(g
            .predict(&[0.0; 2], &[0.0], &[0.0], Prediction::Epsilon)
            .is_err());
        assert!(g
            .predict(&[0.0; 2], &[-1.0], &[0.5], Prediction::Epsilon)
            .is_err());
        assert!(g
            .predict(&[0.0; 4], &[1.0; 3], &[0.5], Prediction::Epsilon)
            .is_err());
        assert!(g
            .predict(&[f64::NAN, 0.0], &[1.0], &[0.5], Prediction::Epsilon)
            .is_err());
        assert!(Prediction::parse("eps").is_err());
        assert_eq!(
            g.predict(&[], &[1.0], &[0.5], Prediction::Epsilon)
                .unwrap()
                .len(),
            0
        );
    }
}
