"""FD at 5 and 6 NFE on the bundled digits model for UniPC-3 and DPM-Solver++ 3M under
diffusers' timestep and final-σ options (the timestep choice matters most at few steps).

Every run samples 1,000 digits from the same seeded noise as ``scripts/quality_vs_nfe.py``
(seed 0) with rdiff's native UNet and scores them with
``rdiff.metrics.frechet_digits_distance``; writes ``docs/timesteps_at_few_nfe.json``.

    python scripts/timesteps_at_few_nfe.py
"""

from __future__ import annotations

import json
from pathlib import Path

import rdiff
from rdiff.cli import _scheduler_config, bundled_model_dir, sample_images
from rdiff.metrics import frechet_digits_distance

ROOT = Path(__file__).resolve().parents[1]
UNIPC, DPM = rdiff.UniPCMultistepScheduler, rdiff.DPMSolverMultistepScheduler
SETTINGS = {
    "UniPC-3 bh2, linspace": (UNIPC, {}),
    "UniPC-3 bh2, trailing": (UNIPC, dict(timestep_spacing="trailing")),
    "UniPC-3 bh2, Karras σ": (UNIPC, dict(use_karras_sigmas=True)),
    "UniPC-3 bh2, exponential σ": (UNIPC, dict(use_exponential_sigmas=True)),
    "UniPC-3 bh2, linspace, final σ_min": (UNIPC, dict(final_sigmas_type="sigma_min")),
    "UniPC-3 bh1, linspace, final σ_min": (
        UNIPC,
        dict(solver_type="bh1", final_sigmas_type="sigma_min"),
    ),
    "DPM-Solver++ 3M, linspace": (DPM, {}),
    "DPM-Solver++ 3M, trailing": (DPM, dict(timestep_spacing="trailing")),
    "DPM-Solver++ 3M, Karras σ": (DPM, dict(use_karras_sigmas=True)),
}


def main() -> None:
    folder = bundled_model_dir("digits")
    unet = rdiff.UNet2DModel.from_pretrained(folder)
    base = _scheduler_config(folder)
    out = {}
    for label, (cls, kw) in SETTINGS.items():
        for k in (5, 6):
            sched = cls(**base, solver_order=3, **kw)
            x, _ = sample_images(unet, sched, 1000, k, 0, 500, progress=False)
            out[f"{label}|{k}"] = fd = frechet_digits_distance(x)
            print(f"{label:36s} NFE {k}: FD {fd:.3f}", flush=True)
    path = ROOT / "docs" / "timesteps_at_few_nfe.json"
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
