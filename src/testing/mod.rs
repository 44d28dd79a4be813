//! Exact test problems: data distributions whose noised marginals, scores and posterior means
//! are known in closed form, so solver error and the Analytic-DPM Γ can be measured exactly.

pub mod gaussian_mixture;

pub use gaussian_mixture::{GaussianMixture, Prediction};
