"""rdiff.diffusers schedulers inside real diffusers pipelines."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import rdiff.diffusers
from rdiff.diffusers import DPMSolverMultistepScheduler


def small_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()


def run(pipe, steps=8):
    return pipe(
        batch_size=2, num_inference_steps=steps, generator=torch.manual_seed(1), output_type="np"
    ).images


def test_pipeline_gives_the_same_images_with_rdiffs_scheduler(tmp_path):
    unet = small_unet()
    theirs = diffusers.DPMSolverMultistepScheduler(solver_order=2)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=theirs)
    expected = run(pipe)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    assert isinstance(pipe.scheduler, diffusers.SchedulerMixin)
    got = run(pipe)
    # float32 rounding of the step's sums (rdiff's order, not torch's), carried through the
    # random UNet: up to 1.03e-5 with OMP_NUM_THREADS=1 (torch's convolutions then sum in
    # another order), below 1e-5 otherwise
    np.testing.assert_allclose(got, expected, atol=2e-5)

    pipe.save_pretrained(tmp_path)
    reloaded = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    assert type(reloaded.scheduler).__module__.startswith("rdiff")
    np.testing.assert_allclose(run(reloaded), expected, atol=2e-5)


def test_sde_variant_draws_noise_like_diffusers():
    unet = small_unet()
    cfg = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DPMSolverMultistepScheduler(**cfg))
    expected = run(pipe)
    pipe.scheduler = DPMSolverMultistepScheduler(**cfg)
    # Same noise draws; the random UNet amplifies float32 rounding a little over 8 steps.
    np.testing.assert_allclose(run(pipe), expected, atol=1e-4)


def test_compatibles_and_config_switching():
    s = DPMSolverMultistepScheduler(solver_order=3, use_karras_sigmas=True)
    names = {c.__name__ for c in s.compatibles}
    assert {"DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler"} <= names
    ddim = diffusers.DDIMScheduler.from_config(s.config)
    back = DPMSolverMultistepScheduler.from_config(ddim.config)
    assert back.config.solver_order == 3 and back.config.use_karras_sigmas


def test_signatures_show_the_real_parameters():
    step = inspect.signature(DPMSolverMultistepScheduler.step).parameters
    assert list(step)[:4] == ["self", "model_output", "timestep", "sample"]
    assert "variance_noise" in step and "generator" in step
    st = inspect.signature(DPMSolverMultistepScheduler.set_timesteps).parameters
    assert {"num_inference_steps", "device", "timesteps"} <= set(st)
    init = inspect.signature(DPMSolverMultistepScheduler.__init__).parameters
    assert init["solver_order"].default == 2


def test_timesteps_are_torch_tensors():
    s = DPMSolverMultistepScheduler()
    s.set_timesteps(4)
    assert isinstance(s.timesteps, torch.Tensor) and s.timesteps.dtype == torch.int64


@pytest.mark.parametrize(
    "name",
    [
        "DDPMScheduler",
        "DDIMScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
    ],
)
def test_schedule_arrays_are_diffusers_tensors(name):
    """betas, alphas, alphas_cumprod (and the DPM-Solver's sigmas, alpha_t, sigma_t,
    lambda_t) are float32 torch tensors equal to diffusers', so code written against diffusers
    runs: diffusers.training_utils.compute_snr here."""
    from diffusers.training_utils import compute_snr

    ours, theirs = getattr(rdiff.diffusers, name)(), getattr(diffusers, name)()
    names = ["betas", "alphas", "alphas_cumprod"]
    if name.startswith("DPM"):
        names += ["sigmas", "alpha_t", "sigma_t", "lambda_t"]
    for attr in names:
        a, b = getattr(ours, attr), getattr(theirs, attr)
        assert torch.is_tensor(a) and a.dtype == b.dtype == torch.float32, attr
        # diffusers forms λ = log α − log σ in float32: a cancellation near λ = 0
        atol = 1e-6 if attr == "lambda_t" else 0.0
        torch.testing.assert_close(a, b, rtol=2e-6, atol=atol, msg=attr)
    if name.startswith("DPM"):
        ours.set_timesteps(7)
        theirs.set_timesteps(7)
        torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=0, atol=0)
    ts = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(compute_snr(ours, ts), compute_snr(theirs, ts), rtol=1e-5, atol=0)
