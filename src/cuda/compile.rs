//! NVRTC: each kernel source compiled to CUBIN for one `sm_XY` (and PTX, the fallback a newer
//! driver can JIT), with ptxas' resource report; cached by (kernel, arch) for the process.
//!
//! Compiling needs only NVRTC, no driver or GPU, so the test suite compiles every kernel for
//! every shipped architecture on machines without one.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CString};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::sys::{self, nvrtcProgram, nvrtcResult};

use super::kernels::{self, KernelSource};
use crate::error::{RdiffError, Result};

/// The architectures rdiff ships and tests: Ampere (A100, A10/30x0), Ada (L4/40x0), Hopper.
pub const SHIPPED_ARCHS: &[&str] = &["sm_80", "sm_86", "sm_89", "sm_90"];

/// ptxas' report for one entry point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub stack_bytes: u32,
    pub shared_bytes: u32,
}

/// One compiled source.
#[derive(Debug)]
pub struct Compiled {
    pub kernel: &'static str,
    pub arch: String,
    pub cubin: Vec<u8>,
    pub ptx: Vec<u8>,
    /// NVRTC's program log (ptxas' `-v` report included).
    pub log: String,
    /// Per entry point, parsed from the log.
    pub resources: HashMap<String, KernelResources>,
}

type Cache = Mutex<HashMap<(String, String), Arc<Compiled>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// `sm_XY` (or a bare `XY`) → `sm_XY`; anything else is a ValueError.
pub fn normalize_arch(arch: &str) -> Result<String> {
    let digits = arch.strip_prefix("sm_").unwrap_or(arch);
    let (num, suffix) = digits.split_at(digits.trim_end_matches(['a', 'f']).len());
    if num.len() < 2 || !num.bytes().all(|b| b.is_ascii_digit()) || suffix.len() > 1 {
        return Err(RdiffError::Value(format!(
            "arch: expected a GPU architecture such as \"sm_90\", got {arch:?}"
        )));
    }
    Ok(format!("sm_{digits}"))
}

/// NVRTC present, or why not (cudarc's loader would panic on first use otherwise).
pub fn nvrtc_present() -> Result<()> {
    super::libraries::load();
    // SAFETY: only tries to dlopen the library by name.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(RdiffError::CudaUnavailable(
            "no NVRTC library found (pip install nvidia-cuda-nvrtc, or torch)".into(),
        ))
    }
}

/// The compiled `kernel` for `arch`, from the cache or compiled now.
pub fn compile(kernel: &str, arch: &str) -> Result<Arc<Compiled>> {
    let source = kernels::source(kernel).ok_or_else(|| {
        let names: Vec<_> = kernels::SOURCES.iter().map(|s| s.name).collect();
        RdiffError::Value(format!(
            "unknown kernel {kernel:?}; expected one of {names:?}"
        ))
    })?;
    let arch = normalize_arch(arch)?;
    let key = (source.name.to_string(), arch.clone());
    if let Some(hit) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(hit.clone());
    }
    nvrtc_present()?;
    let compiled = Arc::new(compile_uncached(source, &arch)?);
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, compiled.clone());
    Ok(compiled)
}

/// Destroys the program on every path out of `compile_uncached`.
struct Program(nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: a program created by nvrtcCreateProgram and destroyed once, here.
        unsafe {
            let _ = sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

fn check(r: nvrtcResult, what: &str) -> Result<()> {
    r.result()
        .map_err(|e| RdiffError::Cuda(format!("NVRTC {what} failed: {e:?}")))
}

/// Reads one NVRTC output through its size/get pair.
unsafe fn output(
    prog: nvrtcProgram,
    size: unsafe fn(nvrtcProgram, *mut usize) -> nvrtcResult,
    get: unsafe fn(nvrtcProgram, *mut c_char) -> nvrtcResult,
    what: &str,
) -> Result<Vec<u8>> {
    let mut n = 0usize;
    // SAFETY: `prog` is a live program; `n` is valid for writes.
    check(unsafe { size(prog, &mut n) }, what)?;
    let mut buf = vec![0u8; n];
    if n > 0 {
        // SAFETY: `buf` holds the `n` bytes NVRTC said it would write.
        check(unsafe { get(prog, buf.as_mut_ptr().cast()) }, what)?;
    }
    Ok(buf)
}

fn text(mut bytes: Vec<u8>) -> String {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The NVRTC options rdiff compiles with (for tests and the report).
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".into(),
        "--ptxas-options=-v".into(),
    ]
}

fn compile_uncached(source: &'static KernelSource, arch: &str) -> Result<Compiled> {
    let nul = |s: &str| CString::new(s).expect("kernel sources contain no NUL");
    let src = nul(source.source);
    let name = nul(&format!("{}.cu", source.name));
    let header_texts: Vec<CString> = kernels::HEADERS.iter().map(|h| nul(h.1)).collect();
    let name_texts: Vec<CString> = kernels::HEADERS.iter().map(|h| nul(h.0)).collect();
    let headers: Vec<*const c_char> = header_texts.iter().map(|h| h.as_ptr()).collect();
    let header_names: Vec<*const c_char> = name_texts.iter().map(|h| h.as_ptr()).collect();
    let mut prog: nvrtcProgram = std::ptr::null_mut();
    check(
        // SAFETY: every pointer is a live NUL-terminated string that outlives the program.
        unsafe {
            sys::nvrtcCreateProgram(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                headers.len() as c_int,
                headers.as_ptr(),
                header_names.as_ptr(),
            )
        },
        "create program",
    )?;
    let prog = Program(prog);
    let opts: Vec<CString> = options(arch).iter().map(|o| nul(o)).collect();
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: the options are live C strings; the program is live.
    let status =
        unsafe { sys::nvrtcCompileProgram(prog.0, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    // SAFETY: the program is live.
    let log = text(unsafe {
        output(
            prog.0,
            sys::nvrtcGetProgramLogSize,
            sys::nvrtcGetProgramLog,
            "program log",
        )
    }?);
    if status != nvrtcResult::NVRTC_SUCCESS {
        return Err(RdiffError::Cuda(format!(
            "NVRTC could not compile {}.cu for {arch} ({status:?}):\n{log}",
            source.name
        )));
    }
    // SAFETY: the program compiled; both outputs exist for an sm_ target.
    let cubin = unsafe { output(prog.0, sys::nvrtcGetCUBINSize, sys::nvrtcGetCUBIN, "CUBIN") }?;
    // SAFETY: as above.
    let ptx = unsafe { output(prog.0, sys::nvrtcGetPTXSize, sys::nvrtcGetPTX, "PTX") }?;
    let resources = parse_ptxas_log(&log);
    Ok(Compiled {
        kernel: source.name,
        arch: arch.to_string(),
        cubin,
        ptx,
        log,
        resources,
    })
}

/// The number just before `unit` in `line` ("… 0 bytes spill stores" → 0).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let at = line.find(unit)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

/// ptxas' `-v` report, per entry point:
/// ```text
/// ptxas info    : Compiling entry function 'rdiff_gamma_f32' for 'sm_90'
/// ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 28 registers, used 1 barriers, 32 bytes smem
/// ```
pub fn parse_ptxas_log(log: &str) -> HashMap<String, KernelResources> {
    let mut out = HashMap::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.insert(name.clone(), KernelResources::default());
            current = Some(name);
            continue;
        }
        let Some(r) = current.as_ref().and_then(|n| out.get_mut(n)) else {
            continue;
        };
        if line.contains("spill stores") {
            r.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            r.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            r.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used") && line.contains("registers") {
            r.registers = number_before(line, "registers").unwrap_or(0);
            r.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'k1' for 'sm_90'\n\
            ptxas info    : Function properties for k1\n\
            ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 28 registers, used 1 barriers, 32 bytes smem\n\
            ptxas info    : Compiling entry function 'k2' for 'sm_90'\n\
            ptxas info    : Function properties for k2\n\
            ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Used 40 registers, used 0 barriers\n";
        let r = parse_ptxas_log(log);
        assert_eq!(
            r["k1"],
            KernelResources {
                registers: 28,
                spill_stores: 4,
                spill_loads: 12,
                stack_bytes: 8,
                shared_bytes: 32
            }
        );
        assert_eq!(r["k2"].registers, 40);
        assert_eq!(r["k2"].shared_bytes, 0);
    }

    #[test]
    fn archs() {
        assert_eq!(normalize_arch("90").unwrap(), "sm_90");
        assert_eq!(normalize_arch("sm_90a").unwrap(), "sm_90a");
        assert!(normalize_arch("compute_90").is_err());
        assert!(normalize_arch("sm_x").is_err());
    }

    /// Real NVRTC when present (the Python tests load the wheel's copy; here it depends on
    /// the loader path).
    #[test]
    fn every_kernel_compiles_without_spills_when_nvrtc_is_present() {
        if nvrtc_present().is_err() {
            eprintln!("NVRTC not found by name; skipped (tests/test_cuda.py covers it)");
            return;
        }
        for s in kernels::SOURCES {
            let c = compile(s.name, "sm_90").unwrap();
            assert!(!c.cubin.is_empty() && !c.ptx.is_empty());
            for e in s.entries {
                let r = &c.resources[*e];
                assert_eq!((r.spill_stores, r.spill_loads), (0, 0), "{e}");
            }
        }
    }
}
