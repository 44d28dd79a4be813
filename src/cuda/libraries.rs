//! The CUDA libraries of the user's Python environment (NVRTC, cuBLASLt and cuBLAS from the
//! `nvidia-*` wheels or PyTorch's), loaded the first time rdiff needs CUDA.
//!
//! cudarc looks libraries up by name only (`libnvrtc.so`, `libcublas.so.13`), which the
//! dynamic loader finds on the system path but not inside the wheels; one loaded first with
//! `RTLD_GLOBAL` is found by that later lookup. `python/rdiff/_cuda_libs.py` finds the
//! candidates at import (a directory listing) and registers them here; they are loaded on
//! first need, not at import: loading them takes 0.2 s and about 190 MB of resident memory,
//! which a CPU-only run never needs.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// Groups of candidate paths, in loading order (cuBLASLt before cuBLAS, which needs it); in
/// each group the first that loads wins.
static CANDIDATES: Mutex<Vec<Vec<PathBuf>>> = Mutex::new(Vec::new());

/// Records the candidates (replacing earlier ones); nothing is loaded yet.
pub fn register(groups: Vec<Vec<PathBuf>>) {
    *CANDIDATES.lock().unwrap_or_else(|e| e.into_inner()) = groups;
}

/// Loads the registered libraries, once per process; later calls return at once. Returns the
/// paths loaded.
pub fn load() -> &'static [PathBuf] {
    static LOADED: OnceLock<Vec<PathBuf>> = OnceLock::new();
    LOADED.get_or_init(|| {
        let groups = CANDIDATES.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut loaded = Vec::new();
        for group in groups {
            for path in group {
                if open_global(&path) {
                    loaded.push(path);
                    break;
                }
            }
        }
        loaded
    })
}

#[cfg(unix)]
fn open_global(path: &std::path::Path) -> bool {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading a CUDA library runs its initialisers, which (as for the ctypes load
    // this replaces) have no preconditions; the handle is leaked so that the library stays
    // loaded for the process, as cudarc expects.
    match unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            std::mem::forget(lib);
            true
        }
        Err(_) => false,
    }
}

#[cfg(not(unix))]
fn open_global(_path: &std::path::Path) -> bool {
    false
}
