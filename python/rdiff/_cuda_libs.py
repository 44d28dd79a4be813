"""Find NVRTC and cuBLAS in the user's environment for the extension to load when it first
needs CUDA.

cudarc looks libraries up by name only (``libnvrtc.so``, ``libcublas.so.13``), which the dynamic
loader finds on the system path but not inside the ``nvidia-cuda-nvrtc`` / ``nvidia-cublas``
wheels that pip (and PyTorch) install. A copy loaded first with ``RTLD_GLOBAL`` makes the later
lookup by name succeed. Here the wheels' copies are only found (a directory listing) and handed
to the extension (``src/cuda/libraries.rs``), which loads them the first time a CUDA path runs:
loading them at import took 0.2 s and about 190 MB of resident memory that a CPU-only run never
needs.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

from . import _rdiff


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


def _candidates(dirs: list[str], stem: str) -> list[str]:
    """``<stem>.so*`` in ``dirs``, the newest major version (13 before 12) first."""
    found = set()
    for d in dirs:
        found.update(glob.glob(os.path.join(d, f"{stem}.so*")))
    # (the builtins libraries are NVRTC's dependencies, not NVRTC)
    return sorted((f for f in found if "builtins" not in os.path.basename(f)), reverse=True)


def register() -> None:
    """Hand NVRTC, cuBLASLt and cuBLAS (which needs cuBLASLt loaded first) to the extension,
    unless ``RDIFF_NO_NVRTC_PRELOAD`` is set (then only the system's libraries are used)."""
    if not sys.platform.startswith("linux") or os.environ.get("RDIFF_NO_NVRTC_PRELOAD"):
        return
    dirs = _candidate_dirs()
    _rdiff._register_cuda_libraries(
        [_candidates(dirs, stem) for stem in ("libnvrtc", "libcublasLt", "libcublas")]
    )
