"""rdiff's DDIMScheduler and DDPMScheduler against diffusers' own."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from conftest import GaussianEps, dummy_model, dummy_noise_deter, dummy_sample_deter

import rdiff
import rdiff.diffusers
from rdiff._rdiff import _ddim_timesteps
from rdiff.schedulers.ddim import DDIMScheduler
from rdiff.schedulers.ddpm import DDPMScheduler

# diffusers' test configuration (tests/schedulers/test_scheduler_ddim.py / _ddpm.py).
BASE = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    clip_sample=True,
)


# -- diffusers' published numbers ----------------------------------------------------------
def ddim_full_loop(**kwargs):
    s = DDIMScheduler(**{**BASE, **kwargs})
    s.set_timesteps(10)
    x = dummy_sample_deter()
    for t in s.timesteps:
        x = s.step(dummy_model(x, t), t, x, 0.0).prev_sample
    return x.abs().sum().item(), x.abs().mean().item()


@pytest.mark.parametrize(
    "kwargs, total, mean",
    [
        ({}, 172.0067, 0.223967),
        (dict(prediction_type="v_prediction"), 52.5302, 0.0684),
        # diffusers' set_alpha_to_one tests also set beta_start=0.01.
        (dict(set_alpha_to_one=True, beta_start=0.01), 149.8295, 0.1951),
        (dict(set_alpha_to_one=False, beta_start=0.01), 149.0784, 0.1941),
    ],
)
def test_ddim_published_full_loops(kwargs, total, mean):
    s, m = ddim_full_loop(**kwargs)
    assert abs(s - total) < 1e-2 and abs(m - mean) < 1e-3


def test_ddim_published_loop_with_noise():
    s = DDIMScheduler(**BASE)
    s.set_timesteps(10)
    t_start = 8
    timesteps = s.timesteps[t_start:]
    x = s.add_noise(dummy_sample_deter(), dummy_noise_deter(), timesteps[:1])
    for t in timesteps:
        x = s.step(dummy_model(x, t), t, x, 0.0).prev_sample
    assert abs(x.abs().sum().item() - 354.5418) < 1e-2
    assert abs(x.abs().mean().item() - 0.4616) < 1e-3


def ddpm_full_loop(**kwargs):
    s = DDPMScheduler(**{**BASE, "variance_type": "fixed_small", **kwargs})
    x = dummy_sample_deter()
    g = torch.manual_seed(0)
    for t in reversed(range(len(s))):
        x = s.step(dummy_model(x, t), t, x, generator=g).prev_sample
    return x.abs().sum().item(), x.abs().mean().item()


# diffusers' tests publish sums 258.9606 and 202.0296; diffusers 0.42.1 with torch 2.15 gives
# 258.9922 and 202.0375 here (the CPU normal sampler changed), which rdiff reproduces.
@pytest.mark.parametrize(
    "kwargs, total, mean",
    [({}, 258.9922, 0.3372), (dict(prediction_type="v_prediction"), 202.0375, 0.2631)],
)
def test_ddpm_published_full_loops(kwargs, total, mean):
    s, m = ddpm_full_loop(**kwargs)
    assert abs(s - total) < 1e-2 and abs(m - mean) < 1e-3


# -- timesteps -----------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_spacings_match_diffusers_for_every_n(spacing):
    d = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=1)
    for n in range(1, 1001):
        d.set_timesteps(n)
        np.testing.assert_array_equal(
            _ddim_timesteps(1000, n, spacing, 1), d.timesteps.numpy(), err_msg=f"n={n}"
        )


def test_ddpm_custom_timesteps():
    d, r = diffusers.DDPMScheduler(), DDPMScheduler()
    ts = [900, 700, 500, 300, 100, 10]
    d.set_timesteps(timesteps=ts)
    r.set_timesteps(timesteps=ts)
    np.testing.assert_array_equal(np.asarray(r.timesteps), d.timesteps.numpy())
    for t in ts:
        assert r.previous_timestep(t) == int(d.previous_timestep(t))
    with pytest.raises(ValueError, match="descending"):
        r.set_timesteps(timesteps=[10, 20])
    with pytest.raises(ValueError, match="one of"):
        r.set_timesteps(5, timesteps=ts)


# -- parity over the config matrix ---------------------------------------------------------
def _tol(x0, *arrays):
    """1e-5 relative to the largest magnitude the step forms (x₀ before clipping, the sample
    and the outputs): both implementations round in float32."""
    return 1e-5 * max(1.0, *(float(a.double().abs().max()) for a in arrays), float(x0))


def _x0_scale(d, t, x):
    """|x| / √ᾱ_t: the size of the unclipped ε → x₀ conversion."""
    ac = float(d.alphas_cumprod[int(t)])
    return float(x.abs().max()) / max(ac, 1e-12) ** 0.5


def run_ddim(
    cfg, n, eta, use_clipped=False, dtype=torch.float32, seed=0, shape=(2, 3, 8, 8), numpy=False
):
    d, r = diffusers.DDIMScheduler(**cfg), DDIMScheduler(**cfg)
    d.set_timesteps(n)
    r.set_timesteps(n)
    np.testing.assert_array_equal(np.asarray(r.timesteps), d.timesteps.numpy())
    model = GaussianEps(d.alphas_cumprod, cfg.get("prediction_type", "epsilon"))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    gd, gr = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    for t in d.timesteps:
        mo = model(x, t)
        od = d.step(mo, t, x, eta=eta, use_clipped_model_output=use_clipped, generator=gd)
        if numpy:
            noise = None
            if eta > 0:
                noise = torch.randn(shape, generator=gr, dtype=dtype).numpy()
            orr = r.step(
                mo.numpy(),
                int(t),
                x.numpy(),
                eta=eta,
                use_clipped_model_output=use_clipped,
                variance_noise=noise,
            )
            assert isinstance(orr.prev_sample, np.ndarray)
            assert orr.prev_sample.dtype == mo.numpy().dtype
            orr.prev_sample = torch.from_numpy(orr.prev_sample)
            orr.pred_original_sample = torch.from_numpy(orr.pred_original_sample)
        else:
            orr = r.step(mo, t, x, eta=eta, use_clipped_model_output=use_clipped, generator=gr)
        for a, b in (
            (od.prev_sample, orr.prev_sample),
            (od.pred_original_sample, orr.pred_original_sample),
        ):
            assert a.dtype == b.dtype and a.shape == b.shape
            if dtype == torch.float32:
                tol = _tol(_x0_scale(d, t, x), a, x)
            else:
                # diffusers rounds each intermediate to the dtype, x₀'s numerator included
                tol = (
                    4
                    * float(torch.finfo(dtype).eps)
                    * max(1.0, float(a.float().abs().max()), _x0_scale(d, t, x.float()))
                )
            both_nan = torch.isnan(a) & torch.isnan(b)
            assert torch.equal(torch.isnan(a), torch.isnan(b))
            err = (a.double() - b.double()).abs().masked_fill(both_nan, 0.0)
            worst = max(worst, float(err.max()) / tol)
        x = od.prev_sample
    return worst


DDIM_CONFIGS = list(
    itertools.product(
        ["epsilon", "v_prediction", "sample"],
        ["linspace", "leading", "trailing"],
        [False, True],  # clip_sample
        [False, True],  # thresholding
        [False, True],  # set_alpha_to_one
        [0.0, 0.5, 1.0],  # eta
        [False, True],  # use_clipped_model_output
        [1, 2, 5, 10, 50],
    )
)


def _sample(configs, k, seed):
    rnd = random.Random(seed)
    return [rnd.choice(configs) for _ in range(k)]


@pytest.mark.parametrize("conf", _sample(DDIM_CONFIGS, 120, seed=2026))
def test_ddim_matches_diffusers_over_the_config_matrix(conf):
    pred, spacing, clip, thr, one, eta, use_clipped, n = conf
    cfg = dict(
        prediction_type=pred,
        timestep_spacing=spacing,
        clip_sample=clip,
        thresholding=thr,
        sample_max_value=1.5,
        set_alpha_to_one=one,
        steps_offset=1 if spacing == "leading" else 0,
    )
    assert run_ddim(cfg, n, eta, use_clipped) <= 1.0


@pytest.mark.parametrize("n", [61, 103])
def test_ddim_trailing_quirk_final_minus_one(n):
    # diffusers' trailing spacing yields n + 1 timesteps ending in −1 for these n (numpy's
    # float arange); ᾱ_{−1} then reads the last training step, as torch indexing does.
    assert run_ddim(dict(timestep_spacing="trailing", clip_sample=False), n, 0.0) <= 1.0


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_ddim_zero_snr(pred):
    cfg = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type=pred)
    assert run_ddim(cfg, 10, 0.5) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_half_precision_within_the_dtype_rounding(dtype, eta):
    assert run_ddim(dict(clip_sample=False), 10, eta, dtype=dtype) <= 1.0


def test_ddim_numpy_in_numpy_out():
    assert run_ddim(dict(), 10, 0.5, numpy=True) <= 1.0


def run_ddpm(cfg, n, dtype=torch.float32, seed=0, shape=(2, 3, 8, 8), custom=None):
    d, r = diffusers.DDPMScheduler(**cfg), DDPMScheduler(**cfg)
    if custom is not None:
        d.set_timesteps(timesteps=custom)
        r.set_timesteps(timesteps=custom)
    elif n is not None:
        d.set_timesteps(n)
        r.set_timesteps(n)
    np.testing.assert_array_equal(np.asarray(r.timesteps), d.timesteps.numpy())
    learned = cfg.get("variance_type") in ("learned", "learned_range")
    model = GaussianEps(d.alphas_cumprod, cfg.get("prediction_type", "epsilon"))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    gd, gr = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    for t in d.timesteps:
        mo = model(x, t)
        if learned:
            # a smooth predicted variance: in [−1, 1] for learned_range, positive for learned
            v = torch.tanh(x) if cfg["variance_type"] == "learned_range" else 0.01 * (1 + x * x)
            mo = torch.cat([mo, v.to(dtype)], dim=1)
        od = d.step(mo, t, x, generator=gd)
        orr = r.step(mo, t, x, generator=gr)
        for a, b in (
            (od.prev_sample, orr.prev_sample),
            (od.pred_original_sample, orr.pred_original_sample),
        ):
            assert a.dtype == b.dtype and a.shape == b.shape
            if dtype == torch.float32:
                tol = _tol(_x0_scale(d, t, x), a, x)
            else:
                # diffusers rounds each intermediate to the dtype, x₀'s numerator included
                tol = (
                    4
                    * float(torch.finfo(dtype).eps)
                    * max(1.0, float(a.float().abs().max()), _x0_scale(d, t, x.float()))
                )
            both_nan = torch.isnan(a) & torch.isnan(b)
            assert torch.equal(torch.isnan(a), torch.isnan(b))
            err = (a.double() - b.double()).abs().masked_fill(both_nan, 0.0)
            worst = max(worst, float(err.max()) / tol)
        x = od.prev_sample
    return worst


DDPM_CONFIGS = list(
    itertools.product(
        ["epsilon", "v_prediction", "sample"],
        [
            "fixed_small",
            "fixed_small_log",
            "fixed_large",
            "learned",
            "learned_range",
        ],  # (not fixed_large_log: a ValueError, NaN samples in diffusers)
        ["linspace", "leading", "trailing"],
        [False, True],  # clip_sample
        [False, True],  # thresholding
        [1, 2, 5, 10, 50],
    )
)


@pytest.mark.parametrize("conf", _sample(DDPM_CONFIGS, 100, seed=7))
def test_ddpm_matches_diffusers_over_the_config_matrix(conf):
    pred, var, spacing, clip, thr, n = conf
    cfg = dict(
        prediction_type=pred,
        variance_type=var,
        timestep_spacing=spacing,
        clip_sample=clip,
        thresholding=thr,
        sample_max_value=1.5,
        steps_offset=1 if spacing == "leading" else 0,
    )
    assert run_ddpm(cfg, n) <= 1.0


@pytest.mark.parametrize(
    "var",
    [
        "fixed_small",
        "fixed_small_log",
        "fixed_large",
        "learned",
        "learned_range",
    ],
)
def test_ddpm_every_variance_type(var):
    assert run_ddpm(dict(variance_type=var), 20) <= 1.0


def test_ddpm_all_training_steps_without_set_timesteps():
    assert run_ddpm(dict(), None, shape=(1, 2, 4, 4)) <= 1.0


def test_ddpm_custom_timesteps_loop():
    assert run_ddpm(dict(), None, custom=[999, 800, 500, 200, 50, 3, 0]) <= 1.0


@pytest.mark.parametrize(
    "extra",
    [
        dict(rescale_betas_zero_snr=True),
        dict(beta_schedule="scaled_linear"),
        dict(beta_schedule="squaredcos_cap_v2"),
    ],
)
def test_ddpm_schedules(extra):
    assert run_ddpm(dict(timestep_spacing="trailing", **extra), 10) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ddpm_half_precision_within_the_dtype_rounding(dtype):
    assert run_ddpm(dict(clip_sample=False), 10, dtype=dtype) <= 1.0


def test_ddpm_numpy_in_numpy_out():
    r = DDPMScheduler()
    r.set_timesteps(5)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    g = np.random.default_rng(1)
    for t in r.timesteps:
        out = r.step(0.1 * x, t, x, generator=g)
        x = out.prev_sample
        assert isinstance(x, np.ndarray) and x.dtype == np.float32
        assert isinstance(out.pred_original_sample, np.ndarray)
    x64 = x.astype(np.float64)
    assert r.step(x64, 0, x64).prev_sample.dtype == np.float64


# -- the rest of the interface -------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, dcls",
    [(DDIMScheduler, diffusers.DDIMScheduler), (DDPMScheduler, diffusers.DDPMScheduler)],
)
def test_add_noise_get_velocity_and_attributes(cls, dcls):
    r, d = cls(), dcls()
    x, n = dummy_sample_deter(), dummy_noise_deter()
    ts = torch.tensor([999, 500, 10, 0])
    torch.testing.assert_close(r.add_noise(x, n, ts), d.add_noise(x, n, ts), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        r.get_velocity(x, n, ts), d.get_velocity(x, n, ts), atol=1e-6, rtol=0
    )
    assert len(r) == len(d) == 1000 and r.init_noise_sigma == 1.0 and r.order == 1
    np.testing.assert_array_equal(np.asarray(r.timesteps), d.timesteps.numpy())
    assert r.scale_model_input(x, 5) is x
    np.testing.assert_allclose(r.alphas_cumprod, d.alphas_cumprod.double().numpy(), rtol=0)


def test_ddim_final_alpha_and_tuple_output():
    r = DDIMScheduler(set_alpha_to_one=False)
    assert r.final_alpha_cumprod == pytest.approx(float(r.alphas_cumprod[0]))
    assert DDIMScheduler().final_alpha_cumprod == 1.0
    r.set_timesteps(4, device="cpu")
    assert isinstance(r.timesteps, torch.Tensor)
    x = torch.zeros(1, 1, 2, 2)
    out = r.step(x, r.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and len(out) == 2
    with pytest.raises(ValueError, match="not both"):
        r.step(
            x,
            r.timesteps[0],
            x,
            eta=1.0,
            generator=torch.Generator(),
            variance_noise=torch.zeros_like(x),
        )


def test_ddim_variance_noise_is_used():
    cfg = dict(clip_sample=False)
    d, r = diffusers.DDIMScheduler(**cfg), DDIMScheduler(**cfg)
    d.set_timesteps(5)
    r.set_timesteps(5)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    vn = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = d.timesteps[1]
    a = d.step(0.3 * x, t, x, eta=0.7, variance_noise=vn).prev_sample
    b = r.step(0.3 * x, t, x, eta=0.7, variance_noise=vn).prev_sample
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
def test_config_round_trip(cls, tmp_path):
    r = cls(prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False)
    r.save_pretrained(tmp_path)
    d = getattr(diffusers, cls.__name__).from_pretrained(tmp_path)
    assert d.config.prediction_type == "v_prediction" and not d.config.clip_sample
    r2 = cls.from_config(d.config)
    assert dict(r2.config) == dict(r.config)
    assert dict(cls.from_pretrained(tmp_path).config) == dict(r.config)
    assert set(r.config) == set(d.config) - {k for k in d.config if k.startswith("_")}


def test_bad_input():
    r = DDIMScheduler()
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="set_timesteps"):
        r.step(x, 999, x)
    r.set_timesteps(2)
    with pytest.raises(ValueError, match="shape"):
        r.step(np.zeros((1, 3, 4, 5), np.float32), r.timesteps[0], x)
    with pytest.raises(TypeError, match="dtype"):
        r.step(x.astype(np.int32), r.timesteps[0], x)
    with pytest.raises(TypeError):
        r.step([0.0], r.timesteps[0], x)
    with pytest.raises(TypeError):
        r.step(torch.zeros(1, 3, 4, 4), r.timesteps[0], x)
    with pytest.raises(ValueError, match="timestep"):
        r.step(x, 5000, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        r.set_timesteps(1001)
    with pytest.raises(ValueError, match="prediction_type"):
        DDIMScheduler(prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="timestep_spacing"):
        DDIMScheduler(timestep_spacing="uniform")
    with pytest.raises(ValueError, match="beta_schedule"):
        DDIMScheduler(beta_schedule="cubic")
    p = DDPMScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="variance"):
        p.step(x, 999, x)
    q = DDPMScheduler()
    with pytest.raises(ValueError, match="shape"):
        q.step(np.zeros((1, 6, 4, 4), np.float32), 999, x)
    with pytest.raises(TypeError, match="dtype"):
        q.step(x, 999, x.astype(np.int64))


# -- the CUDA kernels (emulated) against the CPU loop -----------------------------------------

import functools

from conftest import assert_bit_equal, loop_on_cpu_and_emulated, on_cpu_and_emulated
from test_dpm_multistep import DTYPES, EMU_CASES, _view


def _emulated_step(kind, config, kwargs, model_output, x):
    cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
    s = cls(**config)
    s.set_timesteps(10)
    out = s.step(
        model_output, s.timesteps[3], x, generator=torch.Generator().manual_seed(9), **kwargs
    )
    return out.prev_sample, out.pred_original_sample


@pytest.mark.parametrize("mdt", list(DTYPES))
@pytest.mark.parametrize("sdt", list(DTYPES))
@pytest.mark.parametrize("case", range(len(EMU_CASES)))
def test_emulated_step_equals_cpu(mdt, sdt, case):
    """DDIM (η, clipping, both ε recomputations) and DDPM (every noise scale, learned
    variances, thresholding) steps on the kernels and the CPU, each dtype pair."""
    shape, _, offset = EMU_CASES[case]
    mdtype, sdtype = DTYPES[mdt], DTYPES[sdt]
    g = torch.Generator().manual_seed(50 + case)
    x = _view(torch.randn(shape, generator=g) * 2, sdtype, offset)
    mo = _view(torch.randn(shape, generator=g) * 1.5, mdtype, offset)
    learned_shape = (shape[0], 2 * shape[1], *shape[2:])
    mo2 = _view(torch.randn(learned_shape, generator=g), mdtype, offset)
    runs = [
        ("ddim", dict(clip_sample=True), dict(eta=0.7), mo),
        ("ddim", dict(thresholding=True, sample_max_value=1.5), dict(eta=0.0), mo),
        (
            "ddim",
            dict(prediction_type="v_prediction"),
            dict(eta=1.0, use_clipped_model_output=True),
            mo,
        ),
        ("ddpm", dict(variance_type="fixed_large"), {}, mo),
        ("ddpm", dict(thresholding=True, sample_max_value=1.5), {}, mo),
        ("ddpm", dict(variance_type="learned_range"), {}, mo2),
        ("ddpm", dict(variance_type="learned", prediction_type="sample"), {}, mo2.abs()),
    ]
    for kind, config, kwargs, model_output in runs:
        step = functools.partial(_emulated_step, kind, config, kwargs, model_output, x)
        cpu, emu = on_cpu_and_emulated(step)
        assert_bit_equal(cpu, emu, f"{kind} {config} {kwargs}")


LOOPS = {
    "ddim eta=0.8 clip_sample": (
        lambda: DDIMScheduler(clip_sample=True, clip_sample_range=1.2),
        lambda: torch.Generator().manual_seed(4),
        {"eta": 0.8},
    ),
    "ddpm thresholding": (
        lambda: DDPMScheduler(thresholding=True, sample_max_value=1.3),
        lambda: torch.Generator().manual_seed(5),
        {},
    ),
}


@pytest.mark.parametrize("name", list(LOOPS))
@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_whole_loop_emulated_equals_cpu(name, dt):
    make, gen, kw = LOOPS[name]
    loop_on_cpu_and_emulated(make, DTYPES[dt], gen, **kw)


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)


def test_ddpm_unknown_variance_type_steps_as_diffusers():
    """diffusers takes any variance_type and steps with β̃ (its _get_variance falls through);
    rdiff does the same and warns, naming the known types."""
    with pytest.warns(UserWarning, match="variance_type.*'tiny'.*fixed_small"):
        ours = rdiff.diffusers.DDPMScheduler(variance_type="tiny")
    theirs = diffusers.DDPMScheduler(variance_type="tiny")
    ref = rdiff.diffusers.DDPMScheduler(variance_type="fixed_small")
    x, m = dummy_sample_deter(), dummy_model(dummy_sample_deter(), 500)
    for t in (999, 500, 1):
        a = ours.step(m, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
        b = theirs.step(m, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
        c = ref.step(m, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(a, c)
        torch.testing.assert_close(ours._get_variance(t), theirs._get_variance(t))


@pytest.mark.parametrize(
    "variance_type",
    ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned_range"],
)
@pytest.mark.parametrize("custom", [False, True])
def test_ddpm_get_variance_and_previous_timestep_as_diffusers(variance_type, custom):
    """_get_variance (every type, diffusers' return values) and previous_timestep (a tensor)
    equal diffusers' along a schedule; code in the wild (pipelines, inversion) calls both."""
    # (fixed_large_log: refused at construction, NaN samples in diffusers; _get_variance
    # still returns diffusers' log β for it)
    kind = "fixed_large" if variance_type == "fixed_large_log" else variance_type
    ours = rdiff.diffusers.DDPMScheduler(variance_type=kind)
    theirs = diffusers.DDPMScheduler(variance_type=kind)
    for s in (ours, theirs):
        if custom:
            s.set_timesteps(timesteps=[900, 700, 333, 50, 0])
        else:
            s.set_timesteps(10)
    pv = torch.linspace(-1, 1, 5)
    for t in theirs.timesteps:
        p_ours, p_theirs = ours.previous_timestep(t), theirs.previous_timestep(t)
        assert torch.is_tensor(p_ours) and p_ours.item() == p_theirs.item()
        v_ours = ours._get_variance(t, predicted_variance=pv, variance_type=variance_type)
        v_theirs = theirs._get_variance(t, predicted_variance=pv, variance_type=variance_type)
        torch.testing.assert_close(v_ours, v_theirs, rtol=2e-6, atol=1e-30, equal_nan=True)


def test_ddim_get_variance_as_diffusers():
    ours, theirs = rdiff.diffusers.DDIMScheduler(), diffusers.DDIMScheduler()
    for t, prev in ((999, 979), (500, 480), (20, 0), (0, -1)):
        v = ours._get_variance(t, prev)
        assert torch.is_tensor(v) and v.dtype == torch.float32
        torch.testing.assert_close(v, theirs._get_variance(t, prev), rtol=1e-6, atol=1e-12)
