"""Run by tests/test_determinism.py in a subprocess (with RAYON_NUM_THREADS set): computes every
seeded output once and saves them to the .npz named on the command line, to be compared byte
for byte with other runs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

import rdiff
from rdiff._cuda_testing import emulated_backend
from rdiff.cli import bundled_model_dir

SHAPE = (2, 4, 96, 96)  # 36,864 values per sample: more than one parallel task (1 << 15)


def model_np(x, t):
    """A fixed, nonlinear stand-in for a network (same arithmetic in every run)."""
    s = float(np.asarray(t).reshape(-1)[0]) / 1000.0
    return np.tanh(x * (0.5 + s)).astype(x.dtype) * np.asarray(0.9, x.dtype)


def model_torch(x, t):
    s = float(torch.as_tensor(t).reshape(-1)[0]) / 1000.0
    return torch.tanh(x * (0.5 + s)) * 0.9


def scheduler_loops(out: dict) -> None:
    gamma = rdiff.GammaTable.from_gamma(
        np.linspace(0.999, 0.3, 1000), rdiff.NoiseSchedule.discrete()
    )
    makers = {
        "dpm_multistep": lambda: rdiff.DPMSolverMultistepScheduler(),
        "dpm_multistep_sde": lambda: rdiff.DPMSolverMultistepScheduler(
            algorithm_type="sde-dpmsolver++"
        ),
        "dpm_multistep_thresh": lambda: rdiff.DPMSolverMultistepScheduler(
            thresholding=True, solver_order=3
        ),
        "dpm_singlestep": lambda: rdiff.DPMSolverSinglestepScheduler(),
        "ddim": lambda: rdiff.DDIMScheduler(),
        "ddpm": lambda: rdiff.DDPMScheduler(),
        "analytic": lambda: rdiff.AnalyticDPMScheduler(gamma=gamma),
    }
    for name, make in makers.items():
        for fw in ("numpy", "torch"):
            s = make()
            s.set_timesteps(8)
            if fw == "numpy":
                x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
                gen, model = np.random.default_rng(2), model_np
            else:
                x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
                gen, model = torch.Generator().manual_seed(2), model_torch
            extra = {"eta": 0.5} if name == "ddim" else {}
            for t in s.timesteps:
                x = s.step(model(x, t), t, x, generator=gen, **extra).prev_sample
            out[f"{name}/{fw}"] = np.asarray(x)


def functional_sample(out: dict) -> None:
    sched = rdiff.NoiseSchedule.discrete()
    for method, order in (("multistep", 3), ("singlestep", 3), ("adaptive", 2)):
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
        y = rdiff.sample(model_torch, x, sched, steps=12, order=order, method=method)
        out[f"sample/{method}"] = y.numpy()


def unet(out: dict) -> None:
    m = rdiff.UNet2DModel.from_pretrained(bundled_model_dir("digits"))
    x = np.random.default_rng(4).standard_normal((3, 1, 16, 16)).astype(np.float32)
    out["unet/f32"] = m(x, 500)
    # One and two samples: their 4×4 layers are 16- and 32-column products (the narrow
    # kernel, on AVX-512).
    out["unet/f32_b1"] = m(x[:1], 500)
    out["unet/f32_b2"] = m(x[:2], 500)
    out["unet/bf16"] = m(torch.from_numpy(x).bfloat16(), 20).float().numpy()


def gamma(out: dict) -> None:
    data = np.random.default_rng(5).standard_normal((12, 3, 8, 8)).astype(np.float32)
    t = rdiff.estimate_gamma(
        model_np,
        data,
        rdiff.NoiseSchedule.discrete(),
        timesteps=[0, 10, 500, 999],
        batch_size=5,
        seed=9,
        progress=False,
    )
    out["estimate_gamma"] = t.gamma


def emulated(out: dict) -> None:
    """The kernels on the emulated launcher: a thresholded multistep loop, a DDPM loop and an
    adaptive rdiff.sample run (the error-norm kernel)."""
    with emulated_backend():
        x = torch.randn((3, 4, 33, 17), generator=torch.Generator().manual_seed(6))
        for name, s in (
            ("dpm", rdiff.DPMSolverMultistepScheduler(thresholding=True, solver_order=3)),
            ("ddpm", rdiff.DDPMScheduler()),
        ):
            s.set_timesteps(6)
            y, g = x.clone(), torch.Generator().manual_seed(7)
            for t in s.timesteps:
                y = s.step(model_torch(y, t), t, y, generator=g).prev_sample
            out[f"emulated/{name}"] = y.numpy()
        y = rdiff.sample(model_torch, x, rdiff.NoiseSchedule.discrete(), method="adaptive")
        out["emulated/adaptive"] = y.numpy()


def cli(out: dict, folder: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "rdiff.cli",
        "sample",
        "--n",
        "4",
        "--steps",
        "5",
        "--quiet",
        "--out",
        f"{folder}/grid.png",
        "--save-npz",
        f"{folder}/samples.npz",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    with open(f"{folder}/grid.png", "rb") as f:
        out["cli/png"] = np.frombuffer(f.read(), np.uint8)
    with np.load(f"{folder}/samples.npz") as z:
        for k in z.files:
            out[f"cli/npz/{k}"] = z[k]


if __name__ == "__main__":
    dest, folder = sys.argv[1], sys.argv[2]
    results: dict = {}
    for part in (scheduler_loops, functional_sample, unet, gamma, emulated):
        part(results)
    cli(results, folder)
    np.savez(dest, **{k: np.ascontiguousarray(v) for k, v in results.items()})
