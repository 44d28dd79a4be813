//! Bindings of the native UNet: `_UNet2D`, built from a diffusers folder or from tensors, run
//! on caller-owned buffers with the GIL released for the whole forward pass.

use std::collections::HashMap;
use std::path::PathBuf;

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::tensor::{Device, TensorRef};
use crate::error::RdiffError;
use crate::unet::embeddings::ClassLabels;
use crate::unet::model::UNet2D;
use crate::unet::weights::MemoryWeights;
use crate::with_elem;

/// In-memory weights (`from_diffusers`): each array copied once into f32 storage.
pub(crate) fn memory_weights(
    tensors: HashMap<String, Bound<'_, PyArrayDyn<f32>>>,
) -> PyResult<MemoryWeights> {
    let mut mem = MemoryWeights::default();
    for (name, arr) in tensors {
        let ro = arr.readonly();
        let data = ro
            .as_slice()
            .map_err(|_| PyValueError::new_err(format!("{name}: array is not contiguous")))?
            .to_vec();
        mem.tensors.insert(name, (arr.shape().to_vec(), data));
    }
    Ok(mem)
}

#[pyclass(name = "_UNet2D", module = "rdiff._rdiff", frozen)]
pub struct PyUNet2D {
    inner: UNet2D,
}

#[pymethods]
impl PyUNet2D {
    /// Loads `config.json` and `weights_name` (a safetensors file) from `path`.
    #[staticmethod]
    fn from_dir(py: Python<'_>, path: PathBuf, weights_name: String) -> PyResult<Self> {
        let inner = py.detach(|| UNet2D::from_dir(&path, &weights_name))?;
        Ok(Self { inner })
    }

    /// Builds the model from a config.json text and `{name: float32 ndarray}`.
    #[staticmethod]
    fn from_tensors(
        py: Python<'_>,
        config_json: &str,
        tensors: HashMap<String, Bound<'_, PyArrayDyn<f32>>>,
    ) -> PyResult<Self> {
        let mem = memory_weights(tensors)?;
        let inner = py.detach(|| UNet2D::load(config_json, &mem))?;
        Ok(Self { inner })
    }

    #[getter]
    fn in_channels(&self) -> usize {
        self.inner.in_channels()
    }

    #[getter]
    fn out_channels(&self) -> usize {
        self.inner.out_channels()
    }

    /// Bytes the activation arena has allocated so far (it stops growing after a warm-up).
    #[getter]
    fn arena_bytes(&self) -> usize {
        self.inner.arena_bytes()
    }

    /// Checks shapes (raises ValueError) without running.
    fn check(&self, shape: (usize, usize, usize, usize), timesteps: usize) -> PyResult<()> {
        let (b, c, h, w) = shape;
        Ok(self.inner.check(b, c, h, w, timesteps)?)
    }

    /// Runs the model: `sample` NCHW of `shape`, `out` NCHW with out_channels, same dtype.
    #[pyo3(signature = (sample, shape, timesteps, out, class_indices=None, class_values=None))]
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        py: Python<'_>,
        sample: TensorRef,
        shape: (usize, usize, usize, usize),
        timesteps: Vec<f32>,
        out: TensorRef,
        class_indices: Option<Vec<i64>>,
        class_values: Option<Vec<f32>>,
    ) -> PyResult<()> {
        let (b, c, h, w) = shape;
        self.inner.check(b, c, h, w, timesteps.len())?;
        if sample.device != Device::Cpu || out.device != Device::Cpu {
            return Err(RdiffError::CudaUnavailable(
                "this UNet2DModel was loaded for the CPU; load it with device=\"cuda\" for CUDA tensors".into(),
            )
            .into());
        }
        let class = forward_io(
            sample,
            out,
            shape,
            self.inner.out_channels(),
            &class_indices,
            &class_values,
        )?;
        let model = &self.inner;
        py.detach(|| {
            with_elem!(sample.dtype, T, {
                // SAFETY: lengths, dtype and device checked above; the Python layer keeps both
                // buffers alive and contiguous for the call and allocates `out` fresh.
                unsafe {
                    model.forward::<T>(
                        sample.slice::<T>(),
                        (b, h, w),
                        &timesteps,
                        class,
                        out.slice_mut::<T>(),
                    )
                }
            })
        })?;
        Ok(())
    }
}

/// The checks both UNet bindings make once the devices are right: `sample` and `out` hold
/// `shape` with in and `out_channels` channels in one dtype. Returns the class labels.
pub(crate) fn forward_io<'a>(
    sample: TensorRef,
    out: TensorRef,
    (b, c, h, w): (usize, usize, usize, usize),
    out_channels: usize,
    class_indices: &'a Option<Vec<i64>>,
    class_values: &'a Option<Vec<f32>>,
) -> PyResult<ClassLabels<'a>> {
    sample.expect_len_of("sample", &[b, c, h, w])?;
    out.expect_len_of("output buffer", &[b, out_channels, h, w])?;
    if out.dtype != sample.dtype {
        return Err(PyTypeError::new_err(
            "output buffer: dtype differs from the sample's",
        ));
    }
    match (class_indices, class_values) {
        (Some(i), None) => Ok(ClassLabels::Indices(i)),
        (None, Some(v)) => Ok(ClassLabels::Values(v)),
        (None, None) => Ok(ClassLabels::None),
        _ => Err(PyValueError::new_err("class labels given twice")),
    }
}
