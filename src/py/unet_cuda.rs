//! Bindings of the CUDA UNet: `_CudaUNet2D`, the graph of `_UNet2D` run through the CUDA
//! kernels, on a real device (torch CUDA tensors, the caller's stream) or, for the tests, on
//! the emulated launcher (CPU buffers; `device=-1`).

use std::collections::HashMap;
use std::path::PathBuf;

use numpy::PyArrayDyn;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::tensor::{Device, TensorRef};
use super::unet::forward_io;
use crate::cuda::unet::device::EmulatedDevice;
use crate::cuda::unet::model::CudaUNet;
use crate::error::{RdiffError, Result};
use crate::unet::model::UNet2D;

enum Target {
    Emulated(EmulatedDevice),
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<crate::cuda::context::Device>),
}

fn target(device: i32, max_blocks: u32, threads: u32) -> Result<Target> {
    if device < 0 {
        return Ok(Target::Emulated(EmulatedDevice::new(
            max_blocks, threads, false,
        )));
    }
    #[cfg(feature = "cuda")]
    {
        Ok(Target::Cuda(crate::cuda::context::device(device)?))
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(crate::cuda::no_kernel("the UNet"))
    }
}

#[pyclass(name = "_CudaUNet2D", module = "rdiff._rdiff", frozen)]
pub struct PyCudaUNet2D {
    model: CudaUNet,
    target: Target,
}

impl Drop for PyCudaUNet2D {
    fn drop(&mut self) {
        #[cfg(feature = "cuda")]
        if let Target::Cuda(d) = &self.target {
            let l = crate::cuda::context::StreamLauncher {
                device: d.clone(),
                stream: 0,
            };
            if let Ok(mut st) = self.model.state.lock() {
                st.release(&l);
            }
        }
    }
}

#[pymethods]
impl PyCudaUNet2D {
    /// Loads `config.json` and `weights_name` from `path` for CUDA device `device` (-1: the
    /// emulated launcher with at most `max_blocks` blocks per grid-stride launch and
    /// `threads` threads per block, 0 meaning 256 as on a GPU).
    #[staticmethod]
    #[pyo3(signature = (path, weights_name, device, max_blocks=8, threads=0))]
    fn from_dir(
        py: Python<'_>,
        path: PathBuf,
        weights_name: String,
        device: i32,
        max_blocks: u32,
        threads: u32,
    ) -> PyResult<Self> {
        let target = target(device, max_blocks, threads)?;
        let unet = py.detach(|| UNet2D::from_dir(&path, &weights_name))?;
        Ok(Self {
            model: CudaUNet::new(unet),
            target,
        })
    }

    /// From a config.json text and `{name: float32 ndarray}`, for `device` as in `from_dir`.
    #[staticmethod]
    #[pyo3(signature = (config_json, tensors, device, max_blocks=8, threads=0))]
    fn from_tensors(
        py: Python<'_>,
        config_json: &str,
        tensors: HashMap<String, Bound<'_, PyArrayDyn<f32>>>,
        device: i32,
        max_blocks: u32,
        threads: u32,
    ) -> PyResult<Self> {
        let target = target(device, max_blocks, threads)?;
        let mem = super::unet::memory_weights(tensors)?;
        let unet = py.detach(|| UNet2D::load(config_json, &mem))?;
        Ok(Self {
            model: CudaUNet::new(unet),
            target,
        })
    }

    #[getter]
    fn in_channels(&self) -> usize {
        self.model.unet.in_channels()
    }

    #[getter]
    fn out_channels(&self) -> usize {
        self.model.unet.out_channels()
    }

    /// The CUDA device ordinal, or -1 for the emulated launcher.
    #[getter]
    fn device(&self) -> i32 {
        match &self.target {
            Target::Emulated(_) => -1,
            #[cfg(feature = "cuda")]
            Target::Cuda(d) => d.ordinal,
        }
    }

    /// Bytes of device activation memory allocated so far.
    #[getter]
    fn arena_bytes(&self) -> usize {
        self.model.arena_bytes()
    }

    fn check(&self, shape: (usize, usize, usize, usize), timesteps: usize) -> PyResult<()> {
        let (b, c, h, w) = shape;
        Ok(self.model.unet.check(b, c, h, w, timesteps)?)
    }

    /// Runs the model on `stream` (the caller's; ignored when emulated): `sample` NCHW of
    /// `shape`, `out` NCHW with out_channels, same dtype and device.
    #[pyo3(signature = (sample, shape, timesteps, out, class_indices=None, class_values=None,
        stream=0))]
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
        stream: usize,
    ) -> PyResult<()> {
        let (b, c, h, w) = shape;
        self.model.unet.check(b, c, h, w, timesteps.len())?;
        let want = match &self.target {
            Target::Emulated(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Target::Cuda(d) => Device::Cuda(d.ordinal),
        };
        if sample.device != want || out.device != want {
            return Err(PyValueError::new_err(format!(
                "sample and output must be on {want:?}, where this model lives; got {:?} and {:?}",
                sample.device, out.device
            )));
        }
        let class = forward_io(
            sample,
            out,
            shape,
            self.model.unet.out_channels(),
            &class_indices,
            &class_values,
        )?;
        let (x, o) = (sample.buf(), out.buf());
        let model = &self.model;
        let run = || -> std::result::Result<(), RdiffError> {
            match &self.target {
                Target::Emulated(dev) => model.forward(dev, x, (b, h, w), &timesteps, class, o),
                #[cfg(feature = "cuda")]
                Target::Cuda(d) => {
                    let l = crate::cuda::context::StreamLauncher {
                        device: d.clone(),
                        stream,
                    };
                    model.forward(&l, x, (b, h, w), &timesteps, class, o)
                }
            }
        };
        let _ = stream;
        py.detach(run)?;
        Ok(())
    }
}
