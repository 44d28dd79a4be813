//! Every conversion of a caller's tensor into a [`Tensor`], in one place: numpy arrays through
//! numpy's C array interface, torch tensors (and anything else with `__dlpack__`) through a
//! DLPack capsule, and other objects through `__cuda_array_interface__` or
//! `__array_interface__`. The checks of `Tensor::new` (contiguity, null, alignment, overflow)
//! apply to all; unsupported dtypes are a TypeError, data rdiff cannot read a ValueError.

use std::ffi::{c_void, CStr};

use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::error::RdiffError;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::dtype::DType;
use crate::tensor::{Device, Tensor};

/// A tensor argument: `Tensor` with the argument's name in its error messages.
pub fn tensor(ob: &Bound<'_, PyAny>, what: &str) -> PyResult<Tensor> {
    if let Ok(arr) = ob.cast::<PyUntypedArray>() {
        return numpy_array(arr, what);
    }
    if let Some(torch) = torch(ob.py()) {
        if ob.is_instance(torch.tensor.bind(ob.py()))? {
            // (the exchange API is for the type it came from: subclasses take the capsule)
            let exact = ob.get_type().is(torch.tensor.bind(ob.py()));
            if let Some(from_py) = torch.dltensor_from_py.filter(|_| exact) {
                return torch_fast(from_py, ob, what);
            }
            return match torch.to_dlpack.bind(ob.py()).call1((ob,)) {
                Ok(capsule) => dlpack(&capsule, what, ob),
                Err(e) => Err(torch_unreadable(ob, what, e)),
            };
        }
    }
    if ob.hasattr("__dlpack__")? {
        return dlpack(&ob.call_method0("__dlpack__")?, what, ob);
    }
    for (name, device) in [
        ("__cuda_array_interface__", Some(0)),
        ("__array_interface__", None),
    ] {
        if let Ok(iface) = ob.getattr(name) {
            return array_interface(&iface.cast_into::<PyDict>()?, what, device);
        }
    }
    Err(PyErr::from(RdiffError::Type(format!(
        "{what}: expected a numpy array or a torch tensor, got {}",
        ob.get_type().name()?
    ))))
}

/// An optional tensor argument.
pub fn tensor_opt(ob: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Tensor>> {
    match ob {
        Some(o) if !o.is_none() => Ok(Some(tensor(o, what)?)),
        _ => Ok(None),
    }
}

fn unsupported(what: &str, dtype: &str) -> PyErr {
    PyErr::from(RdiffError::Type(format!(
        "{what}: unsupported dtype {dtype}; expected float32, float16, bfloat16 or float64"
    )))
}

/// The caller's own name for an object's dtype (`torch.int32`, `int32`), for messages.
fn dtype_name(ob: &Bound<'_, PyAny>, fallback: &str) -> String {
    ob.getattr("dtype")
        .and_then(|d| d.str())
        .map(|s| s.to_string())
        .unwrap_or_else(|_| fallback.to_string())
}

fn check(r: crate::error::Result<Tensor>) -> PyResult<Tensor> {
    r.map_err(PyErr::from)
}

fn numpy_array(arr: &Bound<'_, PyUntypedArray>, what: &str) -> PyResult<Tensor> {
    let descr = arr.dtype();
    let dtype = match (descr.kind(), descr.itemsize()) {
        (b'f', 2) => DType::F16,
        (b'f', 4) => DType::F32,
        (b'f', 8) => DType::F64,
        _ => return Err(unsupported(what, &descr.str()?.to_string())),
    };
    if descr.is_native_byteorder() == Some(false) {
        return Err(PyErr::from(RdiffError::Type(format!(
            "{what}: a non-native byte order ({}); convert with .astype(native dtype)",
            descr.str()?
        ))));
    }
    let strides = element_strides(arr.strides().iter().map(|&s| s as i64), dtype);
    // SAFETY: reading the data pointer field of a live ndarray object.
    let ptr = unsafe { (*arr.as_array_ptr()).fields.data } as u64;
    check(Tensor::new(
        what,
        ptr,
        dtype,
        Device::Cpu,
        arr.shape().to_vec(),
        Some(&strides),
    ))
}

/// Byte strides in elements; a stride that is not a whole number of elements becomes
/// `i64::MIN`, which no contiguous layout has (so `Tensor::new` refuses it).
fn element_strides(bytes: impl Iterator<Item = i64>, dtype: DType) -> Vec<i64> {
    let size = dtype.size() as i64;
    bytes
        .map(|b| if b % size == 0 { b / size } else { i64::MIN })
        .collect()
}

/// What rdiff reads torch tensors with, once the caller has imported torch (rdiff never imports
/// it): `torch.Tensor`, `torch.utils.dlpack.to_dlpack` (the C function, without the Python
/// checks of `Tensor.__dlpack__`), and where torch has it (recent releases, DLPack 1.3's
/// exchange API), the C function that fills a borrowed `DLTensor` with no capsule, allocation
/// or deleter: a step converts four or five tensors, and the capsule costs about 0.5 µs each.
struct Torch {
    tensor: Py<PyType>,
    to_dlpack: Py<PyAny>,
    dltensor_from_py: Option<DLTensorFromPy>,
}

type DLTensorFromPy = unsafe extern "C" fn(*mut c_void, *mut DLTensor) -> i32;

fn torch(py: Python<'_>) -> Option<&'static Torch> {
    static TORCH: PyOnceLock<Torch> = PyOnceLock::new();
    if let Some(t) = TORCH.get(py) {
        return Some(t);
    }
    let modules = py.import("sys").ok()?.getattr("modules").ok()?;
    let torch = modules.get_item("torch").ok()?;
    let tensor = torch.getattr("Tensor").ok()?.cast_into::<PyType>().ok()?;
    let to_dlpack = py
        .import("torch.utils.dlpack")
        .ok()?
        .getattr("to_dlpack")
        .ok()?;
    let dltensor_from_py = exchange_api(&tensor);
    let _ = TORCH.set(
        py,
        Torch {
            tensor: tensor.unbind(),
            to_dlpack: to_dlpack.unbind(),
            dltensor_from_py,
        },
    );
    TORCH.get(py)
}

// DLPack 1.3's exchange API (dlpack.h): a capsule "dlpack_exchange_api" on the tensor type.
#[repr(C)]
struct DLPackExchangeAPI {
    major: u32,
    minor: u32,
    prev_api: *const c_void,
    managed_tensor_allocator: *const c_void,
    managed_tensor_from_py_object_no_sync: *const c_void,
    managed_tensor_to_py_object_no_sync: *const c_void,
    dltensor_from_py_object_no_sync: Option<DLTensorFromPy>,
    current_work_stream: *const c_void,
}

/// `dltensor_from_py_object_no_sync` of `tensor_type.__dlpack_c_exchange_api__`, if the type
/// has a 1.x (x ≥ 3) exchange API that provides it.
fn exchange_api(tensor_type: &Bound<'_, PyType>) -> Option<DLTensorFromPy> {
    const NAME: &CStr = c"dlpack_exchange_api";
    let capsule = tensor_type.getattr("__dlpack_c_exchange_api__").ok()?;
    // SAFETY: PyCapsule_GetPointer checks the name (null, with an exception set, otherwise);
    // the producer keeps the API struct alive for the process (a static in torch).
    let api = unsafe { pyo3::ffi::PyCapsule_GetPointer(capsule.as_ptr(), NAME.as_ptr()) };
    if api.is_null() {
        let _ = PyErr::take(tensor_type.py());
        return None;
    }
    // SAFETY: see above; the version fields come first in every 1.x layout.
    let api = unsafe { &*(api as *const DLPackExchangeAPI) };
    if api.major != 1 || api.minor < 3 {
        return None;
    }
    api.dltensor_from_py_object_no_sync
}

/// A torch tensor through the exchange API: torch fills a `DLTensor` whose shape and strides
/// are the tensor's own (valid while `ob` lives: this call), read at once.
fn torch_fast(from_py: DLTensorFromPy, ob: &Bound<'_, PyAny>, what: &str) -> PyResult<Tensor> {
    let mut t = DLTensor {
        data: std::ptr::null_mut(),
        device: DLDevice {
            device_type: 0,
            device_id: 0,
        },
        ndim: 0,
        dtype: DLDataType {
            code: 0,
            bits: 0,
            lanes: 0,
        },
        shape: std::ptr::null(),
        strides: std::ptr::null(),
        byte_offset: 0,
    };
    // SAFETY: `from_py` has DLPack's DLPackDLTensorFromPyObjectNoSync signature; `ob` is a
    // torch.Tensor (the type the API came from), the GIL is held and `t` is writable.
    if unsafe { from_py(ob.as_ptr().cast(), &mut t) } != 0 {
        let e = PyErr::take(ob.py())
            .unwrap_or_else(|| PyErr::from(RdiffError::Value("DLPack export failed".into())));
        return Err(torch_unreadable(ob, what, e));
    }
    dltensor(&t, what, ob)
}

/// The error for a torch tensor DLPack cannot export: its device says why (meta and fake
/// tensors hold no data).
fn torch_unreadable(ob: &Bound<'_, PyAny>, what: &str, e: PyErr) -> PyErr {
    let device = ob
        .getattr("device")
        .and_then(|d| d.getattr("type"))
        .and_then(|t| t.extract::<String>())
        .unwrap_or_else(|_| "unknown".into());
    PyErr::from(RdiffError::Value(format!(
        "{what}: a tensor on the {device} device that rdiff cannot read ({}); rdiff runs on \
         cpu and cuda tensors",
        e.value(ob.py())
    )))
}

// DLPack's C ABI (dlpack.h, v0.8 and later; the unversioned capsule "dltensor").
#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *const i64,
    strides: *const i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

const KDL_CPU: i32 = 1;
const KDL_CUDA: i32 = 2;
const KDL_CUDA_HOST: i32 = 3;
const KDL_CUDA_MANAGED: i32 = 13;
const KDL_FLOAT: u8 = 2;
const KDL_BFLOAT: u8 = 4;

/// Reads a DLPack capsule. The capsule keeps the producer's buffer alive until it is dropped
/// at the end of this function (its destructor calls the deleter, as the capsule is never
/// consumed); the caller's tensor object keeps it alive for the rest of the call.
fn dlpack(capsule: &Bound<'_, PyAny>, what: &str, ob: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    const NAME: &CStr = c"dltensor";
    // SAFETY: PyCapsule_GetPointer checks the object is a capsule named "dltensor" (else it
    // returns null with an exception set); the pointer is then a DLManagedTensor the producer
    // keeps valid while the capsule lives.
    let managed = unsafe { pyo3::ffi::PyCapsule_GetPointer(capsule.as_ptr(), NAME.as_ptr()) };
    if managed.is_null() {
        return Err(PyErr::fetch(capsule.py()));
    }
    // SAFETY: see above.
    dltensor(
        unsafe { &(*(managed as *const DLManagedTensor)).dl_tensor },
        what,
        ob,
    )
}

/// A `DLTensor` (whose shape and strides are valid for this call) as a `Tensor`.
fn dltensor(t: &DLTensor, what: &str, ob: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let dtype = match (t.dtype.code, t.dtype.bits, t.dtype.lanes) {
        (KDL_FLOAT, 16, 1) => DType::F16,
        (KDL_FLOAT, 32, 1) => DType::F32,
        (KDL_FLOAT, 64, 1) => DType::F64,
        (KDL_BFLOAT, 16, 1) => DType::BF16,
        (code, bits, lanes) => {
            let name = match code {
                0 => format!("int{bits}"),
                1 => format!("uint{bits}"),
                6 => "bool".into(),
                5 => format!("complex{bits}"),
                _ => format!("DLPack code {code}, {bits} bits"),
            };
            let name = if lanes == 1 {
                name
            } else {
                format!("{name}x{lanes}")
            };
            return Err(unsupported(what, &dtype_name(ob, &name)));
        }
    };
    let device = match t.device.device_type {
        KDL_CPU | KDL_CUDA_HOST => Device::Cpu,
        KDL_CUDA | KDL_CUDA_MANAGED => Device::Cuda(t.device.device_id),
        other => {
            return Err(PyErr::from(RdiffError::Value(format!(
                "{what}: a tensor on DLPack device type {other}; rdiff runs on cpu and cuda \
                 tensors"
            ))))
        }
    };
    let ndim = usize::try_from(t.ndim).unwrap_or(0);
    // SAFETY: shape and (when not null) strides point at ndim values (DLPack's contract).
    let (shape, strides) = unsafe {
        let shape: Vec<usize> = if ndim == 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(t.shape, ndim)
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
                .collect()
        };
        let strides = if t.strides.is_null() || ndim == 0 {
            None
        } else {
            Some(std::slice::from_raw_parts(t.strides, ndim).to_vec())
        };
        (shape, strides)
    };
    let ptr = (t.data as u64).wrapping_add(t.byte_offset);
    check(Tensor::new(
        what,
        ptr,
        dtype,
        device,
        shape,
        strides.as_deref(),
    ))
}

/// `__array_interface__` (host memory) or `__cuda_array_interface__` (device memory; the
/// interface does not name the device, so `cuda_device`: device 0, the only one most such
/// producers use).
fn array_interface(
    iface: &Bound<'_, PyDict>,
    what: &str,
    cuda_device: Option<i32>,
) -> PyResult<Tensor> {
    let get = |key: &str| -> PyResult<Bound<'_, PyAny>> {
        iface.get_item(key)?.ok_or_else(|| {
            PyErr::from(RdiffError::Value(format!(
                "{what}: the array interface has no {key:?}"
            )))
        })
    };
    let typestr: String = get("typestr")?.extract()?;
    let dtype = match typestr.as_str() {
        "<f2" | "=f2" => DType::F16,
        "<f4" | "=f4" => DType::F32,
        "<f8" | "=f8" => DType::F64,
        other => return Err(unsupported(what, other)),
    };
    let shape: Vec<usize> = get("shape")?.extract()?;
    let data = get("data")?;
    let ptr: u64 = match data.cast::<PyTuple>() {
        Ok(t) => t.get_item(0)?.extract()?,
        Err(_) => {
            return Err(PyErr::from(RdiffError::Value(format!(
                "{what}: the array interface's data must be a (pointer, read_only) tuple"
            ))))
        }
    };
    let strides = match iface.get_item("strides")? {
        Some(s) if !s.is_none() => {
            let bytes: Vec<i64> = s.extract()?;
            Some(element_strides(bytes.into_iter(), dtype))
        }
        _ => None,
    };
    let device = match cuda_device {
        Some(d) => Device::Cuda(d),
        None => Device::Cpu,
    };
    check(Tensor::new(
        what,
        ptr,
        dtype,
        device,
        shape,
        strides.as_deref(),
    ))
}
