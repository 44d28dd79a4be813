//! `_UNet2D`: the native UNet (a `UNet2DModel` or a `UNet2DConditionModel`, by the config's
//! `_class_name`), built from a diffusers folder or from tensors for the device chosen at load
//! (the CPU, a CUDA device, or the emulated launcher for tests), run on the caller's buffers
//! with the GIL released for the whole forward pass.

use std::collections::HashMap;
use std::path::PathBuf;

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::tensor::tensor;
use crate::error::RdiffError;
use crate::target::Target;
use crate::tensor::Tensor;
use crate::unet::control::Controls;
use crate::unet::embeddings::{ClassLabels, Conditioning, Timesteps};
use crate::unet::model::UNet2D;
use crate::unet::runner::UNetRunner;
use crate::unet::weights::{ComputeDtype, MemoryWeights};

/// Where to run: None → the CPU; -1 → the emulated launcher (`max_blocks` per grid-stride
/// launch, `threads` per block); n ≥ 0 → CUDA device n.
fn target(device: Option<i32>, max_blocks: u32) -> Target {
    match device {
        None => Target::Cpu,
        Some(d) if d < 0 => Target::Emulated {
            max_blocks: max_blocks.max(1),
        },
        Some(ordinal) => Target::Cuda { ordinal, stream: 0 },
    }
}

#[pyclass(name = "_UNet2D", module = "rdiff._rdiff", frozen)]
pub struct PyUNet2D {
    inner: UNetRunner,
}

#[pymethods]
impl PyUNet2D {
    /// Loads `config.json` and `weights_name` (a safetensors file) from `path` for `device`.
    #[staticmethod]
    #[pyo3(signature = (path, weights_name, device=None, max_blocks=8, threads=0,
        compute_dtype="float32"))]
    fn from_dir(
        py: Python<'_>,
        path: PathBuf,
        weights_name: String,
        device: Option<i32>,
        max_blocks: u32,
        threads: u32,
        compute_dtype: &str,
    ) -> PyResult<Self> {
        let (compute, at) = (
            ComputeDtype::parse(compute_dtype)?,
            target(device, max_blocks),
        );
        let storage = UNetRunner::weight_storage(compute, at)?;
        let unet = py.detach(|| UNet2D::from_dir_as(&path, &weights_name, storage))?;
        Ok(Self {
            inner: UNetRunner::new(unet, at, threads, compute)?,
        })
    }

    /// From a config.json text and `{name: float32 ndarray}`, for `device` as in `from_dir`.
    #[staticmethod]
    #[pyo3(signature = (config_json, tensors, device=None, max_blocks=8, threads=0,
        compute_dtype="float32"))]
    fn from_tensors(
        py: Python<'_>,
        config_json: &str,
        tensors: HashMap<String, Bound<'_, PyArrayDyn<f32>>>,
        device: Option<i32>,
        max_blocks: u32,
        threads: u32,
        compute_dtype: &str,
    ) -> PyResult<Self> {
        let (compute, at) = (
            ComputeDtype::parse(compute_dtype)?,
            target(device, max_blocks),
        );
        // Borrowed, not copied: the loader copies each array once, with the GIL released.
        let arrays: Vec<_> = tensors
            .into_iter()
            .map(|(name, arr)| Ok((name, arr.try_readonly()?)))
            .collect::<PyResult<_>>()?;
        let mut mem = MemoryWeights::default();
        for (name, ro) in &arrays {
            let data = ro
                .as_slice()
                .map_err(|_| RdiffError::Value(format!("{name}: array is not contiguous")))?;
            mem.tensors
                .insert(name.clone(), (ro.shape().to_vec(), data.into()));
        }
        let storage = UNetRunner::weight_storage(compute, at)?;
        let unet = py.detach(|| UNet2D::load_as(config_json, &mem, storage))?;
        Ok(Self {
            inner: UNetRunner::new(unet, at, threads, compute)?,
        })
    }

    #[getter]
    fn in_channels(&self) -> usize {
        self.inner.unet.in_channels()
    }

    #[getter]
    fn out_channels(&self) -> usize {
        self.inner.unet.out_channels()
    }

    /// The width of `encoder_hidden_states` (a UNet2DConditionModel), else None.
    #[getter]
    fn cross_attention_dim(&self) -> Option<usize> {
        self.inner.unet.cross_dim()
    }

    /// The CUDA device ordinal, -1 for the emulated launcher, None for the CPU.
    #[getter]
    fn device(&self) -> Option<i32> {
        self.inner.ordinal()
    }

    /// Bytes the activation arena has allocated so far (it stops growing after a warm-up).
    #[getter]
    fn arena_bytes(&self) -> usize {
        self.inner.arena_bytes()
    }

    /// What the matrix products compute in: "float32" or "bfloat16".
    #[getter]
    fn compute_dtype(&self) -> &'static str {
        self.inner.unet.compute.name()
    }

    /// Bytes of weights the model holds on the host (a half-precision checkpoint's matrices in
    /// its dtype). A device model's matrices leave the host once uploaded, at load: it keeps
    /// the biases' and norms' vectors and the host-side embeddings' matrices.
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.inner.unet.weight_bytes
    }

    /// The names of the weights' tensors the model does not read (sorted).
    #[getter]
    fn unused_weights(&self) -> Vec<String> {
        self.inner.unet.unused_weights.clone()
    }

    /// Checks shapes (raises ValueError) without running.
    fn check(&self, shape: (usize, usize, usize, usize), timesteps: usize) -> PyResult<()> {
        let (b, c, h, w) = shape;
        Ok(self.inner.unet.check(b, c, h, w, timesteps)?)
    }

    /// Runs the model: `sample` NCHW, `out` NCHW with out_channels, same dtype, on the
    /// model's device; `timesteps` a list of floats or a float32 tensor on the model's device
    /// (one value per sample, or one for all); `context` (`encoder_hidden_states`,
    /// `[b][tokens][width]`) on the device too;
    /// `text_embeds`, `time_ids`, `timestep_cond`: the added conditioning as host f32 rows;
    /// `stream`: the caller's CUDA stream; `down_residuals` and `mid_residual`: a
    /// ControlNet's residuals (both or neither), `adapter_residuals` a T2I-Adapter's (NCHW,
    /// on the model's device).
    #[pyo3(signature = (sample, timesteps, out, class_indices=None, class_values=None,
        stream=0, context=None, text_embeds=None, time_ids=None, timestep_cond=None,
        down_residuals=None, mid_residual=None, adapter_residuals=None))]
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        py: Python<'_>,
        sample: &Bound<'_, PyAny>,
        timesteps: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        class_indices: Option<Vec<i64>>,
        class_values: Option<Vec<f32>>,
        stream: usize,
        context: Option<&Bound<'_, PyAny>>,
        text_embeds: Option<Vec<f32>>,
        time_ids: Option<Vec<f32>>,
        timestep_cond: Option<Vec<f32>>,
        down_residuals: Option<Vec<Bound<'_, PyAny>>>,
        mid_residual: Option<&Bound<'_, PyAny>>,
        adapter_residuals: Option<Vec<Bound<'_, PyAny>>>,
    ) -> PyResult<()> {
        let (x, o) = (tensor(sample, "sample")?, tensor(out, "output buffer")?);
        // A list (the Python layer's host values) or a tensor (a tensor is no sequence to
        // PyO3, so it is never read element by element here).
        let (host_ts, dev_ts) = match timesteps.extract::<Vec<f32>>() {
            Ok(v) => (v, None),
            Err(_) => (Vec::new(), Some(tensor(timesteps, "timestep")?)),
        };
        let ts = match &dev_ts {
            Some(t) => Timesteps::Device(t),
            None => Timesteps::Host(&host_ts),
        };
        let ctx = match context {
            Some(c) => Some(tensor(c, "encoder_hidden_states")?),
            None => None,
        };
        let class = match (&class_indices, &class_values) {
            (Some(i), None) => ClassLabels::Indices(i),
            (None, Some(v)) => ClassLabels::Values(v),
            (None, None) => ClassLabels::None,
            _ => return Err(RdiffError::Value("class labels given twice".into()).into()),
        };
        let cond = Conditioning {
            class,
            text_embeds: text_embeds.as_deref(),
            time_ids: time_ids.as_deref(),
            timestep_cond: timestep_cond.as_deref(),
        };
        let list = |ts: &[Bound<'_, PyAny>], what: &str| -> PyResult<Vec<Tensor>> {
            ts.iter()
                .enumerate()
                .map(|(i, t)| tensor(t, &format!("{what}[{i}]")))
                .collect()
        };
        let controlnet = match (down_residuals, mid_residual) {
            (None, None) => None,
            (Some(down), Some(mid)) => Some((
                list(&down, "down_block_additional_residuals")?,
                tensor(mid, "mid_block_additional_residual")?,
            )),
            _ => {
                return Err(RdiffError::Value(
                    "ControlNet residuals: give both the down and the mid block's".into(),
                )
                .into())
            }
        };
        let adapter = match adapter_residuals {
            Some(a) => list(&a, "down_intrablock_additional_residuals")?,
            None => Vec::new(),
        };
        let controls = (controlnet.is_some() || !adapter.is_empty()).then_some(Controls {
            controlnet,
            adapter,
        });
        let model = &self.inner;
        py.detach(|| model.forward(&x, &o, ts, &cond, ctx.as_ref(), controls.as_ref(), stream))?;
        Ok(())
    }

    /// Whether the time embedding can read a call's timesteps on the model's device (a
    /// sinusoidal or Fourier projection with no `timestep_cond`): then a CUDA call need not
    /// read them on the host.
    #[getter]
    fn timesteps_on_device(&self) -> bool {
        self.inner.timesteps_on_device()
    }

    /// `(allocations, host-to-device copies)` this model has made on its device since load, or
    /// None on the CPU. A warm call with device timesteps and no host-side conditioning adds
    /// neither (it can be captured in a CUDA graph).
    #[getter]
    fn device_traffic(&self) -> Option<(usize, usize)> {
        self.inner.traffic().map(|t| (t.allocations, t.uploads))
    }

    /// Bytes of the weights' copies on the model's device (None on the CPU): the matrices,
    /// uploaded at load, and the vectors, by the first call. A ``compute_dtype="bfloat16"``
    /// or ``"float16"`` model keeps its matrices there in that type, half a float32 model's.
    #[getter]
    fn device_weight_bytes(&self) -> Option<usize> {
        self.inner.device_weight_bytes()
    }
}

/// One multi-head attention by the path a device model's call takes (private: the tests and
/// `scripts/gpu_check.py` hold the fused kernels to torch's): `q` and `out`
/// `[heads·dh][b·tq]`, `k` and `v` `[heads·dh][b·tk]`, float32, contiguous; CPU tensors run
/// on the emulated launcher, CUDA tensors on their device (`stream`: the caller's).
#[pyfunction(name = "_unet_attention")]
#[pyo3(signature = (q, k, v, out, b, heads, compute_dtype, stream=0))]
#[allow(clippy::too_many_arguments)]
pub fn unet_attention(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    b: usize,
    heads: usize,
    compute_dtype: &str,
    stream: usize,
) -> PyResult<()> {
    use crate::cuda::unet::device::EmulatedDevice;
    use crate::cuda::unet::model::attention;
    use crate::tensor::Device;
    let compute = ComputeDtype::parse(compute_dtype)?;
    let (q, k, v) = (tensor(q, "q")?, tensor(k, "k")?, tensor(v, "v")?);
    let out = tensor(out, "out")?;
    if [&k, &v, &out].iter().any(|t| t.device != q.device) {
        return Err(
            RdiffError::Value("attention: q, k, v and out must share a device".into()).into(),
        );
    }
    let run = |dev: &dyn crate::cuda::unet::device::UnetDevice| {
        attention(dev, &q, &k, &v, &out, b, heads, compute)
    };
    Ok(py.detach(|| match q.device {
        Device::Cpu => run(&EmulatedDevice::new(8, 0, false)),
        Device::Cuda(ordinal) => crate::target::with_cuda_device(ordinal, stream, run),
    })?)
}
