"""Writes tests/fixtures/analytic_dpm_choice_steps.json: the Analytic-DPM authors' timestep
choices, computed by their own functions, for rdiff's tests to compare against.

    python scripts/analytic_dpm_fixture.py /path/to/baofff/Analytic-DPM

The two functions (`_choice_steps_linear`, `_choice_steps_quad_ddim` of
`cifar_imagenet_codes/core/inference/utils.py`) are read from the authors' checkout and run
as they are (their module imports training code, so only the functions are loaded); the
fixture holds their outputs, shifted to rdiff's 0-based timesteps, and where they came from.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

SOURCE = "cifar_imagenet_codes/core/inference/utils.py"
FUNCTIONS = ("_choice_steps_linear", "_choice_steps_quad_ddim")
N = 1000
EXAMPLES = (2, 5, 10, 25, 50, 100, 333)


def load(repo: Path) -> dict:
    text = (repo / SOURCE).read_text()
    tree = ast.parse(text)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in FUNCTIONS]
    module = ast.Module(body=defs, type_ignores=[])
    namespace = {"np": np, "math": math}
    exec(compile(module, SOURCE, "exec"), namespace)
    return {name: namespace[name] for name in FUNCTIONS}


def digest(steps: list[int]) -> str:
    return hashlib.sha256(np.asarray(steps, dtype="<i8").tobytes()).hexdigest()[:16]


def main() -> None:
    repo = Path(sys.argv[1])
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    fns = load(repo)
    out = {
        "provenance": {
            "repository": "https://github.com/baofff/Analytic-DPM",
            "commit": commit,
            "file": SOURCE,
            "functions": list(FUNCTIONS),
            "generated_by": "scripts/analytic_dpm_fixture.py",
            "note": "the authors' 1-based steps minus 1 (rdiff's timesteps), ascending; "
            "the first 16 hex digits of the sha256 of the little-endian int64 array",
        },
        "N": N,
    }
    for name, key in (("_choice_steps_linear", "linear"), ("_choice_steps_quad_ddim", "quad_ddim")):
        steps = {k: [int(s) - 1 for s in fns[name](N, k)] for k in range(2, N + 1)}
        out[key] = {
            "sha256": {str(k): digest(v) for k, v in steps.items()},
            "strictly_increasing": [
                k for k, v in steps.items() if all(a < b for a, b in itertools.pairwise(v))
            ],
            "examples": {str(k): steps[k] for k in EXAMPLES},
        }
    path = Path(__file__).resolve().parent.parent / "tests/fixtures/analytic_dpm_choice_steps.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes) from {commit}")


if __name__ == "__main__":
    main()
