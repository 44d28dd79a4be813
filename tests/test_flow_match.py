"""rdiff.FlowMatchEulerDiscreteScheduler against diffusers' FlowMatchEulerDiscreteScheduler,
step by step and inside a tiny Stable Diffusion 3 pipeline."""

from __future__ import annotations

import itertools
import random
import warnings

import numpy as np
import pytest

import rdiff

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from conftest import assert_bit_equal, on_cpu_and_emulated

import rdiff.diffusers as rdd

DS = diffusers.FlowMatchEulerDiscreteScheduler
RS = rdd.FlowMatchEulerDiscreteScheduler


def velocity(x, t):
    """A smooth non-linear stand-in for a flow model's velocity at timestep t (σ·N)."""
    s = float(t) / 1000.0
    xd = x.double()
    return (0.8 * xd - (1 - s) * torch.sin(2 * xd) + 0.1).to(x.dtype)


def run_pair(cfg, n, st_kw=None, dtype=torch.float32, seed=0, shape=(2, 4, 6, 6)):
    """Both stepped from diffusers' trajectory, noise from equally seeded generators; the
    largest error relative to 1e-5 of the step's conditioning (4 ulps for half dtypes)."""
    d, r = DS(**cfg), RS(**cfg)
    st_kw = dict(st_kw or {})
    n_arg = None if ("sigmas" in st_kw or "timesteps" in st_kw) else n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers warns about timesteps without sigmas
        d.set_timesteps(n_arg, **st_kw)
        if not torch.isfinite(d.sigmas).all():
            # one step from σ = 1 stretched to shift_terminal: diffusers' 0/0; rdiff says so
            assert cfg.get("shift_terminal") and float(d.sigmas[0]) != float(d.sigmas[0])
            with pytest.raises(ValueError, match="shift_terminal"):
                r.set_timesteps(n_arg, **st_kw)
            return 0.0
        r.set_timesteps(n_arg, **st_kw)
    np.testing.assert_array_equal(r.timesteps.numpy(), d.timesteps.numpy())
    np.testing.assert_array_equal(r.sigmas.numpy(), d.sigmas.numpy())
    for s in (d, r):
        s.set_begin_index(0)  # inverted or Karras timesteps can repeat
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    worst = 0.0
    for i, t in enumerate(d.timesteps):
        v = velocity(x, t)
        xd = d.step(v, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        xr = r.step(v, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        assert xr.dtype == xd.dtype and xr.shape == xd.shape
        assert torch.isfinite(xr).all()  # (a NaN would compare as no error)
        scale = max(1.0, float(x.abs().max()), float(v.abs().max()))
        tol = (4 * float(torch.finfo(dtype).eps) if dtype != torch.float32 else 1e-5) * scale
        worst = max(worst, float((xd.float() - xr.float()).abs().max()) / tol)
        x = xd
    return worst


SHIFTS = [
    dict(shift=1.0),
    dict(shift=3.0),
    dict(use_dynamic_shifting=True, time_shift_type="exponential"),
    dict(use_dynamic_shifting=True, time_shift_type="linear"),
]
KINDS = [
    {},
    dict(use_karras_sigmas=True),
    dict(use_exponential_sigmas=True),
    dict(use_beta_sigmas=True),
]
CONFIGS = list(
    itertools.product(
        range(len(SHIFTS)),
        range(len(KINDS)),
        [None, 0.1, 0.02],  # shift_terminal
        [False, True],  # invert_sigmas
        [False, True],  # stochastic_sampling
        [1, 2, 4, 8, 20, 50],
        ["n", "sigmas", "timesteps"],  # how set_timesteps is called
    )
)


def _configs(k, seed):
    out = []
    for sh, kind, term, inv, sto, n, call in random.Random(seed).sample(CONFIGS, k):
        cfg = dict(**SHIFTS[sh], **KINDS[kind], invert_sigmas=inv, stochastic_sampling=sto)
        if term is not None:
            cfg["shift_terminal"] = term
        st = {}
        if cfg.get("use_dynamic_shifting"):
            st["mu"] = 0.9 if cfg["time_shift_type"] == "exponential" else 1.7
        if call == "sigmas":  # Flux: linspace(1, 1/n, n)
            st["sigmas"] = np.linspace(1.0, 1.0 / n, n)
        elif call == "timesteps":
            st["timesteps"] = np.linspace(1000.0, 1000.0 / n, n)
        out.append((cfg, n, st))
    return out


@pytest.mark.parametrize("cfg, n, st", _configs(120, seed=31))
def test_matches_diffusers_over_the_config_matrix(cfg, n, st):
    assert run_pair(cfg, n, st) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("stochastic", [False, True])
def test_half_precision_within_the_dtype_rounding(dtype, stochastic):
    assert run_pair(dict(shift=3.0, stochastic_sampling=stochastic), 10, dtype=dtype) <= 1.0


def test_training_schedule_scale_noise_and_step_before_set_timesteps():
    d, r = DS(shift=3.0), RS(shift=3.0)
    np.testing.assert_array_equal(r.timesteps.numpy(), d.timesteps.numpy())
    np.testing.assert_array_equal(r.sigmas.numpy(), d.sigmas.numpy())
    assert (r.sigma_min, r.sigma_max) == (d.sigma_min, d.sigma_max)
    x0 = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(2))
    for s in (d, r):
        s.set_timesteps(12)
    ts = d.timesteps[[0, 4, 11]]
    torch.testing.assert_close(r.scale_noise(x0, ts, noise), d.scale_noise(x0, ts, noise))
    for s in (d, r):
        s.set_begin_index(3)
    t = d.timesteps[3:4]
    torch.testing.assert_close(r.scale_noise(x0, t, noise), d.scale_noise(x0, t, noise))
    # diffusers steps over the training schedule before any set_timesteps
    d, r = DS(), RS()
    t = d.timesteps[0]
    v = velocity(x0, t)
    torch.testing.assert_close(r.step(v, t, x0).prev_sample, d.step(v, t, x0).prev_sample)


@pytest.mark.parametrize("stochastic", [False, True])
def test_per_token_timesteps_as_diffusers(stochastic):
    """Diffusion forcing (Wan / SkyReels): each token of a (B, T, C) sample at its own
    timestep, stepping to the largest schedule σ below it."""
    cfg = dict(shift=3.0, stochastic_sampling=stochastic)
    d, r = DS(**cfg), RS(**cfg)
    for s in (d, r):
        s.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 4, generator=g).to(torch.bfloat16)
    for i in range(3):
        t = d.timesteps[i]
        # tokens spread over the schedule's timesteps (some exactly on one)
        idx = torch.randint(i, 10, (2, 6), generator=g)
        ts = d.timesteps[idx] - torch.rand(2, 6, generator=g) * (idx > 5)
        v = torch.randn(2, 6, 4, generator=g).to(torch.bfloat16)
        a = d.step(v, t, x, per_token_timesteps=ts, generator=torch.Generator().manual_seed(i))
        b = r.step(v, t, x, per_token_timesteps=ts, generator=torch.Generator().manual_seed(i))
        assert b.prev_sample.dtype == a.prev_sample.dtype == torch.float32
        torch.testing.assert_close(b.prev_sample, a.prev_sample, rtol=0, atol=0)
        x = a.prev_sample.to(torch.bfloat16)


def test_shift_and_errors():
    r = RS(shift=2.0)
    r.set_shift(4.0)
    d = DS(shift=2.0)
    d.set_shift(4.0)
    for s in (d, r):
        s.set_timesteps(7)
    assert r.shift == d.shift == 4.0
    np.testing.assert_array_equal(r.sigmas.numpy(), d.sigmas.numpy())
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="mu"):
        RS(use_dynamic_shifting=True).set_timesteps(4)
    with pytest.raises(ValueError, match="integer timesteps"):
        r.step(x, 999, x)
    with pytest.raises(ValueError, match="per_token_timesteps"):
        r.step(x, r.timesteps[0], x, per_token_timesteps=torch.ones(1, 4))
    with pytest.raises(ValueError, match="shift"):
        RS(shift=0.0)
    with pytest.raises(ValueError, match="same length"):
        RS().set_timesteps(sigmas=[1.0, 0.5], timesteps=[1000.0])
    with pytest.raises(ValueError, match="time_shift_type"):
        RS(time_shift_type="cubic")


def test_numpy_in_numpy_out():
    s = rdiff.FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(5)
    assert isinstance(s.timesteps, np.ndarray) and s.timesteps.dtype == np.float32
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
    y = x
    for i, t in enumerate(s.timesteps):
        v = 0.5 * y
        y2 = s.step(v, t, y).prev_sample
        want = y + (float(s.sigmas[i + 1]) - float(s.sigmas[i])) * v
        np.testing.assert_allclose(y2, want, rtol=1e-6, atol=1e-7)
        y = y2
    assert isinstance(y, np.ndarray) and y.dtype == np.float32


# -- a tiny Stable Diffusion 3 pipeline ---------------------------------------------------------


def _sd3_parts():
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_projection_dim=16,
        joint_attention_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.06,
        scaling_factor=1.5,
    )
    return transformer.eval(), vae.eval()


@pytest.fixture(scope="module")
def sd3_parts():
    return _sd3_parts()


def _sd3_images(parts, scheduler, img2img):
    transformer, vae = parts
    torch.manual_seed(7)  # the pipeline's step draws stochastic noise from the global RNG
    cls = (
        diffusers.StableDiffusion3Img2ImgPipeline if img2img else diffusers.StableDiffusion3Pipeline
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = cls(
            transformer=transformer,
            scheduler=scheduler,
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            text_encoder_3=None,
            tokenizer_3=None,
        )
    g = torch.Generator().manual_seed(0)
    kw = dict(
        prompt_embeds=torch.randn(1, 5, 16, generator=g),
        negative_prompt_embeds=torch.randn(1, 5, 16, generator=g),
        pooled_prompt_embeds=torch.randn(1, 8, generator=g),
        negative_pooled_prompt_embeds=torch.randn(1, 8, generator=g),
        num_inference_steps=6,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    )
    if img2img:
        kw.update(image=torch.rand(1, 3, 16, 16, generator=g) * 2 - 1, strength=0.6)
    else:
        kw.update(height=16, width=16)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(**kw).images


@pytest.mark.parametrize("img2img", [False, True], ids=["txt2img", "img2img"])
@pytest.mark.parametrize(
    "cfg", [dict(shift=3.0), dict(shift=3.0, use_karras_sigmas=True, stochastic_sampling=True)]
)
def test_sd3_pipeline_gives_the_stock_images(sd3_parts, cfg, img2img):
    ours = _sd3_images(sd3_parts, RS(**cfg), img2img)
    theirs = _sd3_images(sd3_parts, DS(**cfg), img2img)
    assert np.isfinite(ours).all() and ours.std() > 0
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# -- the CUDA kernels (emulated) against the CPU loop -----------------------------------------

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("dt", list(DTYPES))
def test_whole_loop_emulated_equals_cpu(dt, stochastic):
    def loop():
        s = RS(shift=3.0, stochastic_sampling=stochastic)
        s.set_timesteps(6)
        x = torch.randn((2, 3, 8, 9), generator=torch.Generator().manual_seed(0))
        x = x.to(DTYPES[dt])
        gen = torch.Generator().manual_seed(4)
        for t in s.timesteps:
            x = s.step(velocity(x, t), t, x, generator=gen).prev_sample
        return x

    cpu, emu = on_cpu_and_emulated(loop)
    assert torch.isfinite(cpu.float()).all()
    assert_bit_equal(cpu, emu, "the loop's final sample")


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)
