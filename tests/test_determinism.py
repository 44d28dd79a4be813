"""The same seed gives bit-identical results across runs and across thread counts.

Each run is a fresh subprocess (``tests/_determinism_worker.py``) with ``RAYON_NUM_THREADS`` 1
or 2 (and torch held to one thread, so only rdiff's threading varies); it saves every output
(scheduler loops on numpy and torch inputs, ``rdiff.sample``, the UNet forward, Γ estimation,
the emulated CUDA kernels, the ``rdiff sample`` PNG and npz) and the runs are compared byte for
byte.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("_determinism_worker.py")


def _run(tmp: Path, threads: int, tag: str) -> dict[str, np.ndarray]:
    folder = tmp / tag
    folder.mkdir()
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(folder / "out.npz"), str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(folder / "out.npz") as z:
        return {k: z[k] for k in z.files}


def test_bit_identical_across_runs_and_thread_counts(tmp_path):
    one = _run(tmp_path, 1, "t1")
    two = _run(tmp_path, 2, "t2")
    again = _run(tmp_path, 2, "t2b")
    assert len(one) >= 25 and one.keys() == two.keys() == again.keys()
    for k, v in one.items():
        assert v.dtype.kind != "f" or np.isfinite(v).all(), f"{k}: non-finite output"
    differ = {
        name: [k for k in one if a[k].tobytes() != b[k].tobytes()]
        for name, a, b in (("2 threads vs 1", two, one), ("second run, 2 threads", again, two))
    }
    assert differ == {"2 threads vs 1": [], "second run, 2 threads": []}
