"""rdiff's schedulers inside diffusers' Stable Diffusion pipelines (tiny random models, CPU).

A pipeline rewrites its scheduler's config in its constructor (``clip_sample=False`` for a
default DDIM/DDPM config, ``steps_offset=1``), and diffusers' schedulers read ``self.config``
at use; so must rdiff's. Every way a user puts a scheduler into a pipeline is checked: the
constructor argument, ``from_pretrained(..., scheduler=...)`` and ``from_config``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # diffusers' SD pipelines import it

import rdiff.diffusers

CLASSES = [
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "DEISMultistepScheduler",
    "LCMScheduler",
    "TCDScheduler",
]
# Configs as a user writes them; DDIM/DDPM's defaults have clip_sample=True, which the
# pipelines switch off, and steps_offset=0, which they set to 1.
CONFIGS = {
    "DDIMScheduler": {},
    "DDPMScheduler": {},
    "DPMSolverMultistepScheduler": {"beta_schedule": "scaled_linear"},
    "DPMSolverSinglestepScheduler": {"beta_schedule": "scaled_linear"},
    "UniPCMultistepScheduler": {"beta_schedule": "scaled_linear"},
    "EulerDiscreteScheduler": {"beta_schedule": "scaled_linear", "use_karras_sigmas": True},
    "EulerAncestralDiscreteScheduler": {"beta_schedule": "scaled_linear"},
    "HeunDiscreteScheduler": {"beta_schedule": "scaled_linear", "use_karras_sigmas": True},
    "KDPM2DiscreteScheduler": {"beta_schedule": "scaled_linear"},
    "KDPM2AncestralDiscreteScheduler": {"beta_schedule": "scaled_linear"},
    "LMSDiscreteScheduler": {"beta_schedule": "scaled_linear", "use_karras_sigmas": True},
    "DEISMultistepScheduler": {"beta_schedule": "scaled_linear", "solver_order": 3},
    "LCMScheduler": {},
    "TCDScheduler": {},
}


def _models():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    return unet.eval(), vae.eval()


@pytest.fixture(scope="module")
def models():
    return _models()


def _pipe(cls, models, scheduler):
    unet, vae = models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def _images(pipe, img2img: bool) -> np.ndarray:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 5, 16, generator=g)
    kw = dict(
        prompt_embeds=emb[:1],
        negative_prompt_embeds=emb[1:],
        num_inference_steps=6,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    )
    if img2img:
        image = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
        kw.update(image=image, strength=0.7)
    else:
        kw.update(height=16, width=16)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(**kw).images


@pytest.mark.parametrize("img2img", [False, True], ids=["txt2img", "img2img"])
@pytest.mark.parametrize("name", CLASSES)
def test_constructor_argument(models, name, img2img):
    """The pipeline's constructor rewrites the config; rdiff honours the rewrite."""
    cls = diffusers.StableDiffusionImg2ImgPipeline if img2img else diffusers.StableDiffusionPipeline
    theirs = _pipe(cls, models, getattr(diffusers, name)(**CONFIGS[name]))
    ours = _pipe(cls, models, getattr(rdiff.diffusers, name)(**CONFIGS[name]))
    assert dict(ours.scheduler.config) == {
        k: v for k, v in theirs.scheduler.config.items() if k in ours.scheduler.config
    }
    np.testing.assert_allclose(_images(ours, img2img), _images(theirs, img2img), atol=1e-4)


@pytest.mark.parametrize("name", CLASSES)
def test_from_pretrained_and_from_config(models, name, tmp_path):
    """A saved pipeline reloaded with ``scheduler=`` an rdiff instance, and a scheduler
    switched in with ``from_config``, give diffusers' images."""
    theirs = _pipe(
        diffusers.StableDiffusionPipeline, models, getattr(diffusers, name)(**CONFIGS[name])
    )
    expected = _images(theirs, False)
    theirs.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = diffusers.StableDiffusionPipeline.from_pretrained(
            tmp_path,
            scheduler=getattr(rdiff.diffusers, name)(**CONFIGS[name]),
            text_encoder=None,
            tokenizer=None,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
    np.testing.assert_allclose(_images(loaded, False), expected, atol=1e-4)
    # from_config after the pipeline's rewrite: diffusers restores the rewritten entries
    # listed in the config's `_use_default_values` to the class defaults, for its own
    # classes too, so the reference is diffusers' class switched in the same way.
    pipe = _pipe(diffusers.StableDiffusionPipeline, models, theirs.scheduler)
    images = {}
    for lib in (diffusers, rdiff.diffusers):
        pipe.scheduler = getattr(lib, name).from_config(theirs.scheduler.config)
        images[lib] = _images(pipe, False)
    np.testing.assert_allclose(images[rdiff.diffusers], images[diffusers], atol=1e-4)


def test_config_rewritten_mid_loop_is_honoured():
    """register_to_config between steps (diffusers reads the config at each step): the next
    step uses it, with the step counter and the history kept."""
    cfg = dict(solver_order=2)
    ours = rdiff.diffusers.DPMSolverMultistepScheduler(**cfg)
    theirs = diffusers.DPMSolverMultistepScheduler(**cfg)
    x = y = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for s in (ours, theirs):
        s.set_timesteps(10)
    for i, t in enumerate(theirs.timesteps):
        if i == 4:
            for s in (ours, theirs):
                s.register_to_config(thresholding=True, sample_max_value=0.5)
        x = ours.step(torch.tanh(x) * 0.5, t, x).prev_sample
        y = theirs.step(torch.tanh(y) * 0.5, t, y).prev_sample
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_config_rewritten_mid_loop_with_custom_timesteps():
    """The same with DDPM's custom timesteps: the rebuild repeats set_timesteps(timesteps=...)."""
    ours = rdiff.diffusers.DDPMScheduler()
    theirs = diffusers.DDPMScheduler()
    ts = [900, 700, 500, 300, 100, 0]
    for s in (ours, theirs):
        s.set_timesteps(timesteps=ts)
    x = y = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(ts):
        if i == 2:
            for s in (ours, theirs):
                s.register_to_config(clip_sample=False)
        g1, g2 = torch.Generator().manual_seed(i), torch.Generator().manual_seed(i)
        x = ours.step(torch.tanh(x) * 3, t, x, generator=g1).prev_sample
        y = theirs.step(torch.tanh(y) * 3, t, y, generator=g2).prev_sample
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    assert ours.timesteps.tolist() == ts


@pytest.mark.parametrize("img2img", [False, True], ids=["txt2img", "img2img"])
def test_dpm_solver_v3_in_pipelines(models, img2img):
    """DPM-Solver-v3 drives the pipeline's loop: fractional timesteps into diffusers' UNet,
    set_timesteps(device=...), classifier-free guidance; the same run twice gives the same
    image; img2img starts the multistep warm-up at the pipeline's begin index."""
    sched_cfg = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    schedule = rdiff.NoiseSchedule.discrete(1000, "scaled_linear", 0.00085, 0.012)
    rng = np.random.default_rng(0)
    ll = 0.9 + 0.1 * rng.random((61, 4, 8, 8))
    table = rdiff.EMSTable.from_statistics(ll, 0.1 * (ll - 0.95), 0.02 * ll, schedule)
    cls = diffusers.StableDiffusionImg2ImgPipeline if img2img else diffusers.StableDiffusionPipeline
    pipe = _pipe(cls, models, rdiff.diffusers.DPMSolverV3Scheduler(ems=table, **sched_cfg))
    a = _images(pipe, img2img=img2img)
    b = _images(pipe, img2img=img2img)
    assert np.isfinite(a).all() and np.array_equal(a, b)
    ts = pipe.scheduler.timesteps
    assert ts.dtype == torch.float64 and float(ts[0]) == 999.0 and len(ts) == 6
    if img2img:
        assert pipe.scheduler.begin_index == 2 and pipe.scheduler.step_index == 6
    assert any(float(t) != round(float(t)) for t in ts)  # fractional, as the authors'
