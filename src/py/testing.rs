//! `rdiff._rdiff._GaussianMixture`: the exact Gaussian-mixture test problem. The user-facing
//! class is `rdiff.testing.GaussianMixture` (Python), which converts dtypes, shapes, torch
//! tensors and timesteps, then calls these methods with float64 arrays.

use std::borrow::Cow;

use numpy::ndarray::{Array1, Array2};
use numpy::{
    AllowTypeChange, IntoPyArray, PyArray1, PyArray2, PyArrayLike1, PyArrayLike2, PyArrayLikeDyn,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::error::RdiffError;
use crate::testing::{GaussianMixture, Prediction};

/// The Rust core of `rdiff.testing.GaussianMixture`; use that class instead.
///
/// `_GaussianMixture(means, stds, weights=None)`: means float64 (K, d); stds (K,) or (K, d);
/// weights (K,) positive, normalised here.
#[pyclass(name = "_GaussianMixture", module = "rdiff._rdiff", frozen)]
pub struct PyGaussianMixture {
    inner: GaussianMixture,
}

/// The contiguous row-major data of a float64 array (copied only if it is not contiguous).
fn flat<'a, D: numpy::ndarray::Dimension>(
    a: &'a numpy::PyReadonlyArray<'_, f64, D>,
) -> Cow<'a, [f64]> {
    match a.as_slice() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(a.as_array().iter().copied().collect()),
    }
}

impl PyGaussianMixture {
    fn check_x(&self, shape: &[usize]) -> PyResult<usize> {
        let d = self.inner.dim();
        if shape.len() != 2 || shape[1] != d {
            return Err(
                RdiffError::Value(format!("x: expected shape (n, {d}), got {shape:?}")).into(),
            );
        }
        Ok(shape[0])
    }
}

#[pymethods]
impl PyGaussianMixture {
    #[new]
    #[pyo3(signature = (means, stds, weights=None))]
    fn new(
        py: Python<'_>,
        means: PyArrayLike2<'_, f64, AllowTypeChange>,
        stds: PyArrayLikeDyn<'_, f64, AllowTypeChange>,
        weights: Option<PyArrayLike1<'_, f64, AllowTypeChange>>,
    ) -> PyResult<Self> {
        let (k, d) = (means.shape()[0], means.shape()[1]);
        let stds_shape = stds.shape().to_vec();
        let ok = match stds_shape.as_slice() {
            [a] => *a == k,
            [a, b] => *a == k && *b == d,
            _ => false,
        };
        if !ok {
            return Err(RdiffError::Value(format!(
                "stds: expected shape ({k},) or ({k}, {d}) to match means, got {stds_shape:?}"
            ))
            .into());
        }
        let m = flat(&means).into_owned();
        let s = flat(&stds).into_owned();
        let w = weights.as_ref().map(|w| flat(w).into_owned());
        let inner = py.detach(|| GaussianMixture::new(m, k, d, &s, w.as_deref()))?;
        Ok(Self { inner })
    }

    /// d.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// K.
    #[getter]
    fn n_components(&self) -> usize {
        self.inner.n_components()
    }

    /// μ, float64 (K, d).
    #[getter]
    fn means<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let (k, d) = (self.inner.n_components(), self.inner.dim());
        let a = Array2::from_shape_vec((k, d), self.inner.means().to_vec())
            .map_err(|e| RdiffError::Value(e.to_string()))?;
        Ok(a.into_pyarray(py))
    }

    /// s, float64 (K, d) (isotropic stds repeated along d).
    #[getter]
    fn stds<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let (k, d) = (self.inner.n_components(), self.inner.dim());
        let a = Array2::from_shape_vec((k, d), self.inner.stds())
            .map_err(|e| RdiffError::Value(e.to_string()))?;
        Ok(a.into_pyarray(py))
    }

    /// The normalised weights, float64 (K,).
    #[getter]
    fn weights<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_slice(py, self.inner.weights())
    }

    /// E[x_0], float64 (d,).
    fn mean<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        Array1::from_vec(self.inner.mean()).into_pyarray(py)
    }

    /// Cov[x_0], float64 (d, d).
    fn cov<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let d = self.inner.dim();
        let a = Array2::from_shape_vec((d, d), self.inner.cov())
            .map_err(|e| RdiffError::Value(e.to_string()))?;
        Ok(a.into_pyarray(py))
    }

    /// log p_t(x): x float64 (n, d), alpha and sigma float64 (n,) or (1,) → float64 (n,).
    fn log_prob<'py>(
        &self,
        py: Python<'py>,
        x: PyArrayLike2<'py, f64, AllowTypeChange>,
        alpha: PyArrayLike1<'py, f64, AllowTypeChange>,
        sigma: PyArrayLike1<'py, f64, AllowTypeChange>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        self.check_x(x.shape())?;
        let (xs, a, s) = (flat(&x), flat(&alpha), flat(&sigma));
        let out = py.detach(|| self.inner.log_prob(&xs, &a, &s))?;
        Ok(Array1::from_vec(out).into_pyarray(py))
    }

    /// The exact prediction ("epsilon", "sample" or "v_prediction"): x float64 (n, d), alpha and
    /// sigma float64 (n,) or (1,) → float64 (n, d).
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: PyArrayLike2<'py, f64, AllowTypeChange>,
        alpha: PyArrayLike1<'py, f64, AllowTypeChange>,
        sigma: PyArrayLike1<'py, f64, AllowTypeChange>,
        prediction_type: &str,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let prediction = Prediction::parse(prediction_type)?;
        let n = self.check_x(x.shape())?;
        let (xs, a, s) = (flat(&x), flat(&alpha), flat(&sigma));
        let out = py.detach(|| self.inner.predict(&xs, &a, &s, prediction))?;
        let arr = Array2::from_shape_vec((n, self.inner.dim()), out)
            .map_err(|e| RdiffError::Value(e.to_string()))?;
        Ok(arr.into_pyarray(py))
    }

    /// tr Cov[x_0 | x_t = x]: x float64 (n, d), alpha and sigma (n,) or (1,) → float64 (n,).
    fn x0_cov_trace<'py>(
        &self,
        py: Python<'py>,
        x: PyArrayLike2<'py, f64, AllowTypeChange>,
        alpha: PyArrayLike1<'py, f64, AllowTypeChange>,
        sigma: PyArrayLike1<'py, f64, AllowTypeChange>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        self.check_x(x.shape())?;
        let (xs, a, s) = (flat(&x), flat(&alpha), flat(&sigma));
        let out = py.detach(|| self.inner.x0_cov_trace(&xs, &a, &s))?;
        Ok(Array1::from_vec(out).into_pyarray(py))
    }

    fn __repr__(&self) -> String {
        format!(
            "_GaussianMixture(n_components={}, dim={})",
            self.inner.n_components(),
            self.inner.dim()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGaussianMixture>()
}
