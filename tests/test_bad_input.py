"""The bad-input battery: every public entry point fed wrong input.

The table of cases lives in ``bad_input_cases.py``: each case names the exception and a regex
its message must match, or (for input diffusers accepts) checks the result against diffusers
or against the clean input. Each case runs in process in the test module of its feature
(``bad_input_cases.OWNERS``: ``test_dpm_multistep.py::test_bad_input_case[...]`` and so on);
here every case runs again in batched subprocesses, where an abort or a segfault fails the case
that was running instead of the whole suite, and every case is checked to have one owner.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import bad_input_cases as bic

_NBATCHES = 2


def test_every_case_runs_in_exactly_one_feature_module():
    orphans = [c.id for c in bic.CASES if len(bic.owner(c)) != 1]
    assert not orphans, orphans
    assert sum(len(bic.cases_for(m)) for m in bic.OWNERS) == len(bic.CASES)
    # Each owner runs its cases (the module defines the test).
    here = Path(__file__).parent
    for m in bic.OWNERS:
        assert "test_bad_input_case = bad_input_test(__name__)" in (here / f"{m}.py").read_text()


def test_battery_covers_every_entry_point():
    ids = " ".join(c.id for c in bic.CASES)
    for area in (
        "rdiff.multistep",
        "rdd.analytic",
        "schedule.",
        "sample.",
        "gamma.",
        "estimate_gamma.",
        "optimal_trajectory.",
        "unet.",
        "testing.",
        "k.",
        "metrics.",
        "cli.",
    ):
        assert area in ids, area
    assert len(bic.CASES) >= 400


def _run_batch(batch: int, skip: int) -> tuple[list[str], list[str], str | None, str]:
    """Runs the batch from its skip-th case: (passed ids, failure lines, the id of the case
    that killed the interpreter or None, stderr)."""
    script = Path(__file__).with_name("bad_input_cases.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(batch), str(_NBATCHES), str(skip)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, RAYON_NUM_THREADS="1"),
    )
    started, passed, failed = None, [], []
    for line in proc.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "START":
            started = rest
        elif word == "PASS":
            passed.append(rest)
            started = None
        elif word == "FAIL":
            failed.append(rest)
            started = None
    if proc.returncode == 0 and "DONE" in proc.stdout:
        return passed, failed, None, proc.stderr
    return passed, failed, started or "<the prelude>", proc.stderr


@pytest.mark.parametrize("batch", range(_NBATCHES))
def test_cases_in_subprocess(batch):
    """Every case of the batch in one interpreter; after a crash, the rest in a new one."""
    ids = [c.id for c in bic.CASES[batch::_NBATCHES]]
    passed, failed, crashed = [], [], []
    while len(passed) + len(failed) + len(crashed) < len(ids):
        p, f, crash, stderr = _run_batch(batch, len(passed) + len(failed) + len(crashed))
        passed += p
        failed += f
        if crash is not None:
            crashed.append(f"{crash} killed the interpreter:\n{stderr[-2000:]}")
            if crash == "<the prelude>":
                break
    assert not crashed, "\n".join(crashed)
    assert not failed, "\n".join(failed)
    assert passed == ids
