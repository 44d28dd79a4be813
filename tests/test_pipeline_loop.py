"""A whole sampling loop with rdiff's UNet and rdiff's schedulers against diffusers'
``DDPMPipeline`` running diffusers' UNet and schedulers on the same weights and noise."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_unet import CLASS_SCALE_SHIFT, make

import rdiff
from rdiff.cli import bundled_model_dir

DIGITS = bundled_model_dir("digits")
# CLASS_SCALE_SHIFT without the class embedding (DDPMPipeline passes no labels) and with
# ε-sized output: scale_shift ResNets, multi-head attention at two levels, 16×16.
SMALL = {**CLASS_SCALE_SHIFT, "in_channels": 3, "out_channels": 3, "num_class_embeds": None}
DIGITS_SCHEDULER = {
    k: v
    for k, v in json.loads((DIGITS / "scheduler_config.json").read_text()).items()
    if not k.startswith("_")
}

# name -> (rdiff class, diffusers class, extra config)
SCHEDULERS = {
    "dpmsolver-3m": (
        rdiff.DPMSolverMultistepScheduler,
        diffusers.DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"},
    ),
    "dpmsolver++-2m": (
        rdiff.DPMSolverMultistepScheduler,
        diffusers.DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "ddim": (rdiff.DDIMScheduler, diffusers.DDIMScheduler, {}),
    # ancestral: the noise of every step comes from the pipeline's generator on both sides
    "ddpm": (rdiff.DDPMScheduler, diffusers.DDPMScheduler, {}),
}


class Recording:
    """Wraps a diffusers scheduler and keeps every ``prev_sample`` the pipeline gets from it,
    so the loop can be compared before the pipeline's final clamp to [0, 1]."""

    def __init__(self, scheduler):
        self.inner = scheduler
        self.samples: list[torch.Tensor] = []

    def step(self, *args, **kwargs):
        out = self.inner.step(*args, **kwargs)
        self.samples.append(out.prev_sample.clone())
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


def reference(unet, scheduler, batch: int, steps: int, seed: int):
    """diffusers' DDPMPipeline, images as (B, H, W, C) float32 in [0, 1] before PIL."""
    rec = Recording(scheduler)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.scheduler = rec  # after registration, which wants a real SchedulerMixin
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        images = pipe(batch_size=batch, generator=g, num_inference_steps=steps, output_type="np")
    return images.images, rec.samples


def ours(unet, scheduler, shape: tuple, steps: int, seed: int):
    """The same loop with rdiff's pieces: the pipeline's noise (torch.randn on its generator,
    which randn_tensor draws on the CPU), its timesteps, its post-processing."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    scheduler.set_timesteps(steps)
    trajectory = []
    for t in scheduler.timesteps:
        eps = unet(x, t)
        x = scheduler.step(eps, t, x, generator=g).prev_sample
        trajectory.append(x)
    images = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return images, trajectory


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def check_loop(ref_unet, our_unet, sched_cfg, name, batch, steps, seed):
    rd_cls, df_cls, extra = SCHEDULERS[name]
    cfg = {**sched_cfg, **extra}
    want, want_traj = reference(ref_unet, df_cls.from_config(cfg), batch, steps, seed)
    size = ref_unet.config.sample_size
    shape = (batch, ref_unet.config.in_channels, size, size)
    got, got_traj = ours(our_unet, rd_cls.from_config(cfg), shape, steps, seed)
    assert got.shape == want.shape == (batch, size, size, ref_unet.config.in_channels)
    assert len(got_traj) == len(want_traj) > 0
    # the pipeline's output: absolute, on [0, 1]
    err = float(np.abs(got - want).max())
    assert err <= 1e-3, (name, err)
    # and before the clamp, so that saturated pixels hide nothing: every step of the loop
    for i, (a, b) in enumerate(zip(got_traj, want_traj, strict=True)):
        e = rel_max(a, b)
        assert e <= 1e-3, (name, i, e)
    return want, want_traj[-1]


@pytest.fixture(scope="module")
def digits_unets():
    ref = diffusers.UNet2DModel.from_pretrained(DIGITS).eval()
    return ref, rdiff.UNet2DModel.from_pretrained(DIGITS)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_digits_loop_matches_ddpm_pipeline(digits_unets, name):
    ref, our = digits_unets
    steps = 20 if name in ("ddim", "ddpm") else 10
    images, final = check_loop(ref, our, DIGITS_SCHEDULER, name, batch=4, steps=steps, seed=0)
    # A trained model: digits, i.e. the samples are not all clamped away (the comparison above
    # sees real values) and they differ between the four samples.
    inside = float(((images > 0.05) & (images < 0.95)).mean())
    assert inside > 0.02, inside
    assert float(final.std(dim=0).mean()) > 0.05


# Random weights give ε far from a denoiser's, so the samples run off to |x| ~ 10², the
# pipeline's clamp saturates them and only the unclamped trajectory check above means much.
# DPM-Solver++ with dynamic thresholding (x₀ held to [-1, 1]) keeps them in range. (DDIM with
# x₀ clipping on this random model amplifies a 2e-6 UNet difference ×1.5 per step, to 8e-4
# at 15 steps, in either direction of f32 rounding, so it is left out as too ill-conditioned.)
RANDOM_CASES = {
    "dpmsolver++-2m": {"thresholding": True, "sample_max_value": 1.0},
    "dpmsolver-3m": {},
    "ddim": {"clip_sample": False},
}


@pytest.mark.parametrize("name", list(RANDOM_CASES))
def test_random_small_unet_loop_matches_ddpm_pipeline(tmp_path, name):
    model = make(SMALL, seed=4)
    model.save_pretrained(tmp_path)
    our = rdiff.UNet2DModel.from_pretrained(tmp_path)
    cfg = {"num_train_timesteps": 1000, "beta_schedule": "linear", **RANDOM_CASES[name]}
    check_loop(model, our, cfg, name, batch=2, steps=15, seed=7)
