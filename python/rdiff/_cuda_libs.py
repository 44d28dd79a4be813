"""Find NVRTC and cuBLAS in the user's environment and load them before the extension needs
them.

cudarc looks libraries up by name only (``libnvrtc.so``, ``libcublas.so.13``), which the dynamic
loader finds on the system path but not inside the ``nvidia-cuda-nvrtc`` / ``nvidia-cublas``
wheels that pip (and PyTorch) install. Loading the wheel's copy first with ``RTLD_GLOBAL`` makes
the later lookup by name succeed.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import sys

_loaded: str | None = None
_cublas: str | None = None


def _candidate_dirs() -> list[str]:
    dirs = []
    for pkg in ("nvidia.cuda_nvrtc", "nvidia.cu13", "nvidia"):
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            dirs.extend(sorted(glob.glob(os.path.join(root, "**", "lib"), recursive=True)))
    return dirs


def _preload(stem: str) -> str | None:
    """Load the newest ``<stem>.so*`` found in installed wheels; return its path, or None."""
    found = []
    for d in _candidate_dirs():
        found.extend(glob.glob(os.path.join(d, f"{stem}.so*")))
    # Prefer the newest major version (13 before 12); builtins libraries are dependencies.
    found = sorted({f for f in found if "builtins" not in os.path.basename(f)}, reverse=True)
    for path in found:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        return path
    return None


def preload_nvrtc() -> str | None:
    """Load the newest NVRTC found in installed wheels, and cuBLAS beside it where one is
    installed (the CUDA UNet's GEMMs; without it rdiff uses its own GEMM kernel); return
    NVRTC's path, or None."""
    global _loaded, _cublas
    if _loaded is not None or not sys.platform.startswith("linux"):
        return _loaded
    if os.environ.get("RDIFF_NO_NVRTC_PRELOAD"):
        return None
    _loaded = _preload("libnvrtc")
    if _preload("libcublasLt") is not None:  # (libcublas needs it loaded first)
        _cublas = _preload("libcublas")
    return _loaded
