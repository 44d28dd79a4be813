//! Weights by diffusers' names: a memory-mapped `.safetensors` file (f32, f16, bf16 or f64) or
//! tensors handed over from Python. Every lookup checks the shape; a missing or mis-shaped
//! weight is a `WeightsError` naming it.
//!
//! The model's weight matrices (convolutions, linear layers, attention projections) are kept
//! as a [`Weight`]: in the checkpoint's f16 or bf16 when it has one, widened to f32 where they
//! are used. Widening is exact, so a half-precision checkpoint gives the same results as one
//! widened at load, in half the memory. Everything else (biases, norms, embeddings' small
//! tables) is converted to f32 here, once.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::cpu::bf16::{Tiles, KBLOCK};
use crate::dtype::Elem;
use crate::error::{RdiffError, Result};

/// A weight matrix as the model keeps it: f32, or a checkpoint's f16 / bf16 values as stored,
/// or (the bf16 compute path) bf16 in the CPU's AMX tile layout, or (a device model, once
/// its matrices are uploaded) no values at all.
#[derive(Clone, Debug)]
pub enum Weight {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    Bf16Tiles(Tiles),
    /// The values live in a device copy only; `addr` (where they were) and `len` still key
    /// it (`cuda::unet::model::upload_matrices`).
    Uploaded {
        addr: usize,
        len: usize,
    },
}

impl Weight {
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F16(v) => v.len(),
            Self::Bf16(v) => v.len(),
            Self::Bf16Tiles(t) => t.rows() * t.depth(),
            Self::Uploaded { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values themselves when they are f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Self::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Where the values start: with `len`, a key for a device copy of them.
    pub fn addr(&self) -> usize {
        match self {
            Self::F32(v) => v.as_ptr() as usize,
            Self::F16(v) => v.as_ptr() as usize,
            Self::Bf16(v) => v.as_ptr() as usize,
            Self::Bf16Tiles(t) => t.addr(),
            Self::Uploaded { addr, .. } => *addr,
        }
    }

    /// Bytes held on the host.
    pub fn bytes(&self) -> usize {
        match self {
            Self::F32(v) => 4 * v.len(),
            Self::Bf16Tiles(t) => t.bytes(),
            Self::Uploaded { .. } => 0,
            _ => 2 * self.len(),
        }
    }

    /// This matrix's host values dropped, its key kept: the bytes freed.
    pub fn release_host(&mut self) -> usize {
        let freed = self.bytes();
        *self = Self::Uploaded {
            addr: self.addr(),
            len: self.len(),
        };
        freed
    }

    /// Whether the values live in a device copy only.
    pub fn is_uploaded(&self) -> bool {
        matches!(self, Self::Uploaded { .. })
    }

    /// Values `start..start + dst.len()` widened into `dst`.
    pub fn widen(&self, start: usize, dst: &mut [f32]) {
        let n = dst.len();
        match self {
            Self::F32(v) => dst.copy_from_slice(&v[start..start + n]),
            Self::F16(v) => f16::load(&v[start..start + n], dst),
            Self::Bf16(v) => bf16::load(&v[start..start + n], dst),
            Self::Bf16Tiles(t) => t.widen(start, dst),
            // Only a device model uploads its matrices, and it reads them on the device.
            Self::Uploaded { .. } => unreachable!("an uploaded matrix has no host values"),
        }
    }

    /// Values `start..start + len` as f32: the stored slice itself, or widened into `scratch`.
    pub fn f32_range<'a>(&'a self, start: usize, len: usize, scratch: &'a mut [f32]) -> &'a [f32] {
        match self {
            Self::F32(v) => &v[start..start + len],
            _ => {
                self.widen(start, &mut scratch[..len]);
                &scratch[..len]
            }
        }
    }

    /// All values as f32: borrowed when they are, else widened into a new vector.
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match self {
            Self::F32(v) => Cow::Borrowed(v),
            _ => {
                let mut out = vec![0.0; self.len()];
                self.widen(0, &mut out);
                Cow::Owned(out)
            }
        }
    }

    /// The weight of `shape` (`[m, ...]`) as an `m × k` matrix of bf16 tiles (rounded to
    /// nearest even unless it is bf16). A 3×3 convolution whose input channels fill whole
    /// depth blocks keeps its depth tap-major, the order `cpu::implicit_conv` reads.
    pub fn into_bf16_tiles(self, shape: &[usize]) -> Self {
        let rows: Vec<bf16> = match self {
            Self::Bf16Tiles(t) => return Self::Bf16Tiles(t),
            Self::Bf16(v) => v,
            other => other.rounded(),
        };
        let (m, k) = (shape[0], shape[1..].iter().product());
        Self::Bf16Tiles(match shape {
            &[_, cin, 3, 3] if cin % KBLOCK == 0 => Tiles::from_rows_tap_major(&rows, m, k, 9),
            _ => Tiles::from_rows(&rows, m, k),
        })
    }

    /// This matrix stored as a device keeps it for `dtype`'s GEMMs: f32, or a bf16 / f16
    /// model's 16 bits (rounded to nearest even once, unless the checkpoint has that type).
    pub fn stored_as(&self, dtype: ComputeDtype) -> Weight {
        match (dtype, self) {
            (ComputeDtype::Bf16, Self::Bf16(v)) => Self::Bf16(v.clone()),
            (ComputeDtype::Bf16, _) => Self::Bf16(self.rounded()),
            (ComputeDtype::F16, Self::F16(v)) => Self::F16(v.clone()),
            (ComputeDtype::F16, _) => {
                Self::F16(self.to_f32().iter().map(|&v| f16::from_f32(v)).collect())
            }
            (ComputeDtype::F32 | ComputeDtype::Tf32, _) => Self::F32(self.to_f32().into_owned()),
        }
    }

    /// The values rounded to bf16 (nearest even), in their order.
    fn rounded(&self) -> Vec<bf16> {
        self.to_f32().iter().map(|&v| bf16::from_f32(v)).collect()
    }

    /// The values in tiles, when they are.
    pub fn as_tiles(&self) -> Option<&Tiles> {
        match self {
            Self::Bf16Tiles(t) => Some(t),
            _ => None,
        }
    }

    /// All values as f32 (a copy unless they are f32).
    pub fn into_f32(self) -> Vec<f32> {
        match self {
            Self::F32(v) => v,
            other => other.to_f32().into_owned(),
        }
    }

    /// `parts` one after the other, in their common dtype (f32 when they differ).
    pub fn concat(parts: Vec<Weight>) -> Weight {
        parts
            .into_iter()
            .reduce(|a, b| match (a, b) {
                (Self::F16(mut a), Self::F16(b)) => {
                    a.extend(b);
                    Self::F16(a)
                }
                (Self::Bf16(mut a), Self::Bf16(b)) => {
                    a.extend(b);
                    Self::Bf16(a)
                }
                (Self::Bf16Tiles(a), Self::Bf16Tiles(b))
                    if a.depth() == b.depth() && a.taps() == b.taps() =>
                {
                    Self::Bf16Tiles(Tiles::concat(&[&a, &b]))
                }
                (a, b) => {
                    let mut a = a.into_f32();
                    a.extend_from_slice(&b.to_f32());
                    Self::F32(a)
                }
            })
            .unwrap_or(Self::F32(Vec::new()))
    }
}

impl From<Vec<f32>> for Weight {
    fn from(v: Vec<f32>) -> Self {
        Self::F32(v)
    }
}

/// Where weights come from.
pub trait WeightSource {
    /// The tensor's shape and its values (f16 and bf16 as stored, anything else as f32), or
    /// None when there is no such name.
    fn fetch(&self, name: &str) -> Result<Option<(Vec<usize>, Weight)>>;

    /// Every tensor name it holds.
    fn names(&self) -> Vec<String>;
}

/// Tensors already in memory: a diffusers module's state dict, borrowed from its arrays, so
/// that each value is copied once, when the loader fetches it.
#[derive(Default)]
pub struct MemoryWeights<'a> {
    pub tensors: HashMap<String, (Vec<usize>, Cow<'a, [f32]>)>,
}

impl WeightSource for MemoryWeights<'_> {
    fn fetch(&self, name: &str) -> Result<Option<(Vec<usize>, Weight)>> {
        Ok(self
            .tensors
            .get(name)
            .map(|(s, v)| (s.clone(), Weight::F32(v.to_vec()))))
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

/// A memory-mapped safetensors file, its header parsed and validated.
pub struct SafetensorsFile {
    // `view` borrows `map`; both are dropped together (view first, by field order).
    view: SafeTensors<'static>,
    _map: Box<Mmap>,
    path: String,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|e| RdiffError::Io(format!("{shown}: {e}")))?;
        if path.is_dir() {
            // (mapping a directory fails with "No such device")
            return Err(RdiffError::Io(format!(
                "{shown}: is a directory, not a safetensors file"
            )));
        }
        // SAFETY: the file is mapped read-only; like every mmap reader we rely on nobody
        // truncating it while the model loads (the data is copied out during the load).
        let map =
            unsafe { Mmap::map(&file) }.map_err(|e| RdiffError::Io(format!("{shown}: {e}")))?;
        let map = Box::new(map);
        // SAFETY: the Box keeps the mapping at a fixed address for as long as `view` lives,
        // and `view` is dropped before it (field order); 'static never escapes this struct.
        let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
        let view = SafeTensors::deserialize(bytes).map_err(|e| {
            RdiffError::Io(format!(
                "{shown}: not a valid safetensors file (truncated or corrupt?): {e}"
            ))
        })?;
        Ok(Self {
            view,
            _map: map,
            path: shown,
        })
    }
}

impl WeightSource for SafetensorsFile {
    fn fetch(&self, name: &str) -> Result<Option<(Vec<usize>, Weight)>> {
        let t = match self.view.tensor(name) {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        let data = t.data();
        let half = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
        let out = match t.dtype() {
            Dtype::F32 => Weight::F32(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Dtype::F16 => Weight::F16(
                data.chunks_exact(2)
                    .map(|b| f16::from_bits(half(b)))
                    .collect(),
            ),
            Dtype::BF16 => Weight::Bf16(
                data.chunks_exact(2)
                    .map(|b| bf16::from_bits(half(b)))
                    .collect(),
            ),
            Dtype::F64 => Weight::F32(
                data.chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                    .collect(),
            ),
            other => {
                return Err(RdiffError::Io(format!(
                    "{}: weight {name:?} has dtype {other:?}; expected F32, F16, BF16 or F64",
                    self.path
                )))
            }
        };
        self.release(data);
        Ok(Some((t.shape().to_vec(), out)))
    }

    fn names(&self) -> Vec<String> {
        self.view.names().into_iter().map(str::to_string).collect()
    }
}

impl SafetensorsFile {
    /// Drops the whole pages of `data` (a tensor just copied out) from this process's resident
    /// memory: without it, the mapped file and the copy would both count while a model
    /// loads, doubling the load's peak (they stay in the page cache; a later read refaults).
    fn release(&self, data: &[u8]) {
        #[cfg(unix)]
        {
            const PAGE: usize = 4096;
            let off = data.as_ptr() as usize - self._map.as_ptr() as usize;
            let (start, end) = (off.next_multiple_of(PAGE), (off + data.len()) / PAGE * PAGE);
            if end > start {
                // SAFETY: the range is whole pages inside the read-only file mapping; the
                // tensor's bytes were copied out above and nothing holds a reference into
                // them. Dropping pages of a file mapping does not change what a later read
                // sees (the file's contents fault back in).
                let _ = unsafe {
                    self._map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = data;
    }
}

/// A checkpoint saved in shards (`<name>.index.json` whose `weight_map` names each tensor's
/// file, as diffusers and transformers write checkpoints past their shard size).
pub struct ShardedSafetensors {
    shards: Vec<SafetensorsFile>,
    map: HashMap<String, usize>,
}

impl ShardedSafetensors {
    /// From the index file `index` (the shards sit beside it).
    pub fn open(index: &Path) -> Result<Self> {
        let shown = index.display();
        let text =
            std::fs::read_to_string(index).map_err(|e| RdiffError::Io(format!("{shown}: {e}")))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| RdiffError::Io(format!("{shown}: not a valid index: {e}")))?;
        let Some(wm) = v.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(RdiffError::Io(format!("{shown}: no \"weight_map\"")));
        };
        let dir = index.parent().unwrap_or(Path::new("."));
        let (mut shards, mut files, mut map) = (Vec::new(), HashMap::new(), HashMap::new());
        for (name, file) in wm {
            let Some(file) = file.as_str() else {
                return Err(RdiffError::Io(format!("{shown}: {name:?} maps to {file}")));
            };
            if file.contains('/') || file.contains('\\') {
                return Err(RdiffError::Io(format!(
                    "{shown}: shard {file:?} is not a file name"
                )));
            }
            let i = match files.get(file) {
                Some(&i) => i,
                None => {
                    shards.push(SafetensorsFile::open(&dir.join(file))?);
                    files.insert(file.to_string(), shards.len() - 1);
                    shards.len() - 1
                }
            };
            map.insert(name.clone(), i);
        }
        Ok(Self { shards, map })
    }
}

impl WeightSource for ShardedSafetensors {
    fn fetch(&self, name: &str) -> Result<Option<(Vec<usize>, Weight)>> {
        match self.map.get(name) {
            Some(&i) => match self.shards[i].fetch(name)? {
                Some(t) => Ok(Some(t)),
                None => Err(RdiffError::Io(format!(
                    "weight {name:?}: the index names shard {}, which does not hold it",
                    self.shards[i].path
                ))),
            },
            None => Ok(None),
        }
    }

    fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }
}

/// What a model's matrix products compute in (`compute_dtype`): f32, or bf16, f16 or tf32
/// operands summed in f32. On the CPU bf16 keeps the weight matrices as bf16 (`cpu::bf16`);
/// on a device bf16 and f16 keep them in that type and tf32 rounds f32 operands, all on the
/// tensor cores (`cuda/cublas.rs`). f16 and tf32 have no CPU kernel
/// (`UNetRunner::weight_storage` refuses them there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ComputeDtype {
    #[default]
    F32,
    Bf16,
    F16,
    /// TF32: f32's range, 10 mantissa bits (as f16), f32 storage.
    Tf32,
}

impl ComputeDtype {
    /// From the Python name ("float32", "bfloat16", "float16", "tfloat32"; a torch dtype's
    /// name without "torch.").
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "float32" => Ok(Self::F32),
            "bfloat16" => Ok(Self::Bf16),
            "float16" => Ok(Self::F16),
            "tfloat32" => Ok(Self::Tf32),
            other => Err(RdiffError::Value(format!(
                "compute_dtype: expected 'float32', 'bfloat16', 'float16' or 'tfloat32', got \
                 {other:?}"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
            Self::Tf32 => "tfloat32",
        }
    }

    /// Whether a device keeps the matrices in this type's 16 bits (bf16, f16).
    pub fn is_half(self) -> bool {
        matches!(self, Self::Bf16 | Self::F16)
    }

    /// `v` as this math's products see an operand: rounded to bf16 or f16 (to nearest even,
    /// as the tensor cores' conversion; f16 overflows to ±inf), to tf32 (10 mantissa bits, to
    /// nearest with ties away from zero, as `cvt.rna.tf32.f32`), or unchanged for f32.
    pub fn round_operand(self, v: f32) -> f32 {
        match self {
            Self::F32 => v,
            Self::Bf16 => half::bf16::from_f32(v).to_f32(),
            Self::F16 => half::f16::from_f32(v).to_f32(),
            Self::Tf32 => {
                let u = v.to_bits();
                if u & 0x7f80_0000 == 0x7f80_0000 {
                    v // inf, NaN
                } else {
                    f32::from_bits((u + 0x1000) & 0xffff_e000)
                }
            }
        }
    }

    /// The value of the 16 bits `bits` of this type, bf16 or f16 (exact); NaN for f32 and
    /// tf32, which have none.
    pub fn widen_bits(self, bits: u16) -> f32 {
        match self {
            Self::F32 | Self::Tf32 => f32::NAN,
            Self::Bf16 => half::bf16::from_bits(bits).to_f32(),
            Self::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }

    /// The suffix of the kernels that read operands stored in this type (tf32's are f32).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::F32 | Self::Tf32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }
}

/// Looks weights up with their expected shapes, counting the bytes the model keeps.
pub struct Loader<'a> {
    src: &'a dyn WeightSource,
    bytes: Cell<usize>,
    compute: ComputeDtype,
    /// The names handed out, so that the tensors the model never read can be named.
    used: RefCell<HashSet<String>>,
}

impl<'a> Loader<'a> {
    /// Weights from `src`; the matrices rounded to bf16 when `compute` is bf16.
    pub fn new(src: &'a dyn WeightSource, compute: ComputeDtype) -> Self {
        Self {
            src,
            bytes: Cell::new(0),
            compute,
            used: RefCell::default(),
        }
    }

    /// The source's tensors that nothing has read (sorted): a checkpoint holding more than its
    /// config describes (another model's weights, layers the config leaves out, an adapter's
    /// extra projections) would otherwise load without a word.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        let mut left: Vec<String> = (self.src.names().into_iter())
            .filter(|n| !used.contains(n))
            .collect();
        left.sort();
        left
    }

    /// Bytes of everything handed out so far.
    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }

    /// The tensor `name`, which must have `shape`, as f32.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.get_any(&[name], shape)
    }

    /// The first of `names` present (diffusers' current name first, then legacy ones), as f32.
    pub fn get_any(&self, names: &[&str], shape: &[usize]) -> Result<Vec<f32>> {
        let w = self.find(names, shape)?.into_f32();
        self.bytes.set(self.bytes.get() + 4 * w.len());
        Ok(w)
    }

    /// The weight matrix `name`, which must have `shape`, in the checkpoint's dtype (bf16 for
    /// the bf16 compute path).
    pub fn weight(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        self.weight_any(&[name], shape)
    }

    /// The first of `names` present, in the checkpoint's dtype (bf16 for the bf16 compute
    /// path).
    pub fn weight_any(&self, names: &[&str], shape: &[usize]) -> Result<Weight> {
        let w = self.find(names, shape)?;
        let w = match self.compute {
            ComputeDtype::Bf16 => w.into_bf16_tiles(shape),
            ComputeDtype::F32 | ComputeDtype::F16 | ComputeDtype::Tf32 => w,
        };
        self.bytes.set(self.bytes.get() + w.bytes());
        Ok(w)
    }

    /// The weight matrix of a linear layer on a few rows (one per sample: the time
    /// embedding's and the resnets' projections), in the checkpoint's dtype; under the bf16
    /// compute path rounded to bf16 rows, not tiles: those layers run in f32 on the weights
    /// widened per call, which rows make a plain conversion.
    pub fn linear_weight(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        let w = self.find(&[name], shape)?;
        let w = match (self.compute, w) {
            (ComputeDtype::Bf16, w @ Weight::Bf16(_)) => w,
            (ComputeDtype::Bf16, w) => Weight::Bf16(w.rounded()),
            (ComputeDtype::F32 | ComputeDtype::F16 | ComputeDtype::Tf32, w) => w,
        };
        self.bytes.set(self.bytes.get() + w.bytes());
        Ok(w)
    }

    /// The first of `names` present, shape checked, as stored.
    fn find(&self, names: &[&str], shape: &[usize]) -> Result<Weight> {
        for name in names {
            if let Some((got, data)) = self.src.fetch(name)? {
                // A 1×1 convolution may be stored as a matrix (and vice versa).
                let squeeze = |s: &[usize]| -> Vec<usize> {
                    let mut v = s.to_vec();
                    while v.len() > 2 && v.last() == Some(&1) {
                        v.pop();
                    }
                    v
                };
                if got != shape && squeeze(&got) != squeeze(shape) {
                    return Err(RdiffError::Io(format!(
                        "weight {name:?} has shape {got:?}, expected {shape:?}"
                    )));
                }
                self.used.borrow_mut().insert(name.to_string());
                return Ok(data);
            }
        }
        Err(RdiffError::Io(format!(
            "missing weight {:?} (expected shape {shape:?})",
            names[0]
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_not_a_weights_file() {
        let dir = std::env::temp_dir();
        let e = SafetensorsFile::open(&dir).err().unwrap().to_string();
        assert!(e.ends_with("is a directory, not a safetensors file"), "{e}");
    }
}
