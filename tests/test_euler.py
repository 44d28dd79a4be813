"""rdiff.EulerDiscreteScheduler, rdiff.EulerAncestralDiscreteScheduler,
rdiff.HeunDiscreteScheduler, rdiff.KDPM2DiscreteScheduler,
rdiff.KDPM2AncestralDiscreteScheduler and rdiff.LMSDiscreteScheduler against diffusers'."""

from __future__ import annotations

import inspect
import itertools
import random

import numpy as np
import pytest

import rdiff

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from conftest import (
    GaussianEps,
    assert_bit_equal,
    dummy_model,
    dummy_sample_deter,
    on_cpu_and_emulated,
)

import rdiff.diffusers as rdd

PAIRS = {
    "euler": (diffusers.EulerDiscreteScheduler, rdd.EulerDiscreteScheduler),
    "ancestral": (diffusers.EulerAncestralDiscreteScheduler, rdd.EulerAncestralDiscreteScheduler),
    "heun": (diffusers.HeunDiscreteScheduler, rdd.HeunDiscreteScheduler),
    "kdpm2": (diffusers.KDPM2DiscreteScheduler, rdd.KDPM2DiscreteScheduler),
    "kdpm2_a": (diffusers.KDPM2AncestralDiscreteScheduler, rdd.KDPM2AncestralDiscreteScheduler),
    "lms": (diffusers.LMSDiscreteScheduler, rdd.LMSDiscreteScheduler),
}
TWO_STAGE = ("heun", "kdpm2", "kdpm2_a")
pytestmark = [
    pytest.mark.filterwarnings("ignore:scale_model_input"),
    # diffusers' KDPM2 runs numpy on torch tensors: numpy 2 warns on every σ
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def _tolerance(x, mo, sigma, out, dtype, heun=0.0):
    """1e-5 of the step's conditioning (the sample, the model output times σ, which the step
    and x₀ add, the result, and for Heun's second stage the sum it forms, `heun`); for half
    dtypes 4 ulps of it (both round the float32 result once)."""
    scale = max(
        1.0,
        float(x.abs().max()),
        float(mo.abs().max()) * max(1.0, sigma),
        float(out.abs().max()),
        heun,
    )
    if dtype != torch.float32:
        return 4 * float(torch.finfo(dtype).eps) * scale
    return 1e-5 * scale


def run_pair(kind, cfg, n, dtype=torch.float32, seed=0, shape=(2, 3, 8, 8), churn=None):
    """Both schedulers stepped from the same inputs (diffusers' trajectory) at every step,
    noise from equally seeded generators; the largest error relative to the tolerance."""
    D, R = PAIRS[kind]
    d, r = D(**cfg), R(**cfg)
    for s in (d, r):
        s.set_timesteps(n)
    # equal but where σ differs by an ulp (rdiff's float64 ᾱ, diffusers' float32) or torch's
    # float32 log does (continuous timesteps)
    exact = cfg.get("timestep_type") != "continuous" and not any(
        cfg.get(f) for f in SIGMA_FLAGS.values()
    )
    # (KDPM2's midpoint timesteps: numpy's float32 log and torch's differ in the last bit)
    if exact and cfg.get("beta_schedule") != "squaredcos_cap_v2" and kind not in TWO_STAGE[1:]:
        np.testing.assert_array_equal(r.timesteps.numpy(), d.timesteps.numpy())
    finite = np.isfinite(d.timesteps.numpy())
    if not finite.all():
        # diffusers' float32 σ_down is NaN where σ_up² rounds above σ_next² (σ ≈ 2·10⁴);
        # rdiff's is finite there (k-diffusion's value)
        assert kind == "kdpm2_a" and np.isfinite(r.timesteps.numpy()).all()
    np.testing.assert_allclose(
        r.timesteps.numpy()[finite], d.timesteps.numpy()[finite], rtol=1e-6, atol=1e-4
    )
    np.testing.assert_allclose(r.sigmas.numpy(), d.sigmas.numpy(), rtol=1e-6)
    assert float(r.init_noise_sigma) == pytest.approx(float(d.init_noise_sigma), rel=1e-6)
    eps = GaussianEps(d.alphas_cumprod, cfg.get("prediction_type", "epsilon"))
    last = len(d.alphas_cumprod) - 1
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * float(d.init_noise_sigma)).to(dtype)
    kw = {} if churn is None else dict(churn)
    takes_gen = "generator" in inspect.signature(d.step).parameters
    worst = 0.0
    for i, t in enumerate(d.timesteps):
        xin_d, xin_r = d.scale_model_input(x, t), r.scale_model_input(x, t)
        # σ may differ by an ulp where rdiff's ᾱ (float64) and diffusers' (float32) do
        torch.testing.assert_close(xin_r, xin_d, rtol=2e-6, atol=0)
        ti = min(max(round(float(t)), 0), last)  # continuous timesteps are log σ
        mo = eps(xin_d, ti)
        try:
            if takes_gen:
                kw["generator"] = torch.Generator().manual_seed(i)
            second = kind in TWO_STAGE and not d.state_in_first_order
            if second:
                # the second stage's sum, its terms' size before rounding: Heun's
                # x_s + dt/2·(d₁ + (x₂ − x₀)/σ_next), KDPM2's x_s + dt·(x_mid − x₀)/σ_mid
                # (the ancestral one's to σ_down through its own midpoint)
                sig, sn = float(d.sigmas[i - 1]), float(d.sigmas[i])
                if kind == "heun":
                    slopes = float(d.prev_derivative.abs().max()) + 2 * float(x.abs().max()) / sn
                    heun = float(d.sample.abs().max()) + abs(sn - sig) / 2 * slopes
                elif kind == "kdpm2_a":
                    sn, mid = float(d.sigmas_down[i - 1]), float(d.sigmas_interpol[i - 1])
                else:
                    mid = float(d.sigmas_interpol[i])
                if kind != "heun":
                    heun = (
                        float(d.sample.abs().max()) + abs(sn - sig) * 2 * float(x.abs().max()) / mid
                    )
            od = d.step(mo, t, x, **kw)
        except IndexError:
            # a timestep repeated in the schedule (many beta/Karras steps): both find its
            # second occurrence, as diffusers' index_for_timestep does, and run past the end;
            # rdiff says so
            with pytest.raises(ValueError, match=r"steps are done|past the end"):
                r.step(mo, t, x, **kw)
            break
        if takes_gen:
            kw["generator"] = torch.Generator().manual_seed(i)
        if r.step_index is not None and r.step_index >= len(r.timesteps):
            # a repeated first timestep (KDPM2, Karras sigmas on a cosine schedule) starts
            # both at its second occurrence, so the loop runs past the schedule; diffusers
            # reads its arrays' padding there, rdiff says so
            with pytest.raises(ValueError, match="steps are done"):
                r.step(mo, t, x, **kw)
            break
        orr = r.step(mo, t, x, **kw)
        if not torch.isfinite(od.prev_sample).all():
            # diffusers' ancestral σ_down = √(σ_to² − σ_up²) in float32 goes NaN when σ_up²
            # rounds above σ_to² (σ_from ≈ 2·10⁴: cosine and zero-SNR schedules); rdiff's
            # float64 coefficients (k-diffusion's min(σ_up, σ_to)) stay finite
            assert kind in ("ancestral", "kdpm2_a") and float(d.sigmas.max()) > 1e3
            assert torch.isfinite(orr.prev_sample).all()
            break
        assert orr.prev_sample.dtype == od.prev_sample.dtype
        for out in (orr.prev_sample, orr.pred_original_sample):  # (NaN would compare as 0)
            assert torch.isfinite(out).all()
        assert orr.prev_sample.shape == od.prev_sample.shape
        tol = _tolerance(
            x, mo, float(d.sigmas[i]), od.prev_sample.float(), dtype, heun if second else 0.0
        )
        for a, b in (
            (od.prev_sample, orr.prev_sample),
            (od.pred_original_sample, orr.pred_original_sample),
        ):
            worst = max(worst, float((a.float() - b.float()).abs().max()) / tol)
        x = od.prev_sample
    return worst


SPACINGS = ["linspace", "leading", "trailing", "karras", "exponential", "beta"]
SIGMA_FLAGS = {
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
    "beta": "use_beta_sigmas",
}
BETAS = [
    {},
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
]
EULER_CONFIGS = list(
    itertools.product(
        ["epsilon", "v_prediction", "sample"],
        SPACINGS,
        ["linear", "log_linear"],
        ["zero", "sigma_min"],
        ["discrete", "continuous"],
        range(len(BETAS)),
        [False, True],  # rescale_betas_zero_snr
        [1, 2, 3, 5, 10, 25, 50, 999],
        [None, dict(s_churn=0.8), dict(s_churn=2.0, s_tmin=0.5, s_tmax=5.0)],
    )
)


def _euler_configs(k, seed):
    out = []
    for pred, sp, interp, final, tt, b, zsnr, n, churn in random.Random(seed).sample(
        EULER_CONFIGS, k
    ):
        cfg = dict(
            prediction_type=pred,
            interpolation_type=interp,
            final_sigmas_type=final,
            timestep_type=tt,
            rescale_betas_zero_snr=zsnr,
            **BETAS[b],
        )
        if sp in SIGMA_FLAGS:
            cfg[SIGMA_FLAGS[sp]] = True
        else:
            cfg["timestep_spacing"] = sp
            cfg["steps_offset"] = 1 if sp == "leading" else 0
        out.append((cfg, n, churn))
    return out


@pytest.mark.parametrize("cfg, n, churn", _euler_configs(130, seed=17))
def test_euler_matches_diffusers_over_the_config_matrix(cfg, n, churn):
    assert run_pair("euler", cfg, n, churn=churn) <= 1.0


ANCESTRAL_CONFIGS = list(
    itertools.product(
        ["epsilon", "v_prediction"],
        ["linspace", "leading", "trailing"],
        range(len(BETAS)),
        [False, True],
        [1, 2, 3, 4, 7, 10, 20, 50, 100, 999],
        [0, 1, 2],  # seed
    )
)


@pytest.mark.parametrize(
    "pred, sp, b, zsnr, n, seed", random.Random(5).sample(ANCESTRAL_CONFIGS, 110)
)
def test_ancestral_matches_diffusers_over_the_config_matrix(pred, sp, b, zsnr, n, seed):
    cfg = dict(
        prediction_type=pred,
        timestep_spacing=sp,
        steps_offset=1 if sp == "leading" else 0,
        rescale_betas_zero_snr=zsnr,
        **BETAS[b],
    )
    assert run_pair("ancestral", cfg, n, seed=seed) <= 1.0


HEUN_CONFIGS = list(
    itertools.product(
        ["epsilon", "v_prediction", "sample"],
        SPACINGS,
        [*range(len(BETAS)), "exp"],
        [None, 1.0, 2.5],  # clip_sample_range (None: no clip_sample)
        [1, 2, 3, 5, 10, 25, 100],
    )
)


@pytest.mark.parametrize("pred, sp, b, clip, n", random.Random(11).sample(HEUN_CONFIGS, 110))
def test_heun_matches_diffusers_over_the_config_matrix(pred, sp, b, clip, n):
    cfg = dict(prediction_type=pred, **(dict(beta_schedule="exp") if b == "exp" else BETAS[b]))
    if clip is not None:
        cfg.update(clip_sample=True, clip_sample_range=clip)
    if sp in SIGMA_FLAGS:
        cfg[SIGMA_FLAGS[sp]] = True
    else:
        cfg["timestep_spacing"] = sp
        cfg["steps_offset"] = 1 if sp == "leading" else 0
    assert run_pair("heun", cfg, n) <= 1.0


KDPM2_CONFIGS = list(
    itertools.product(
        ["epsilon", "v_prediction"],
        SPACINGS,
        range(len(BETAS)),  # (diffusers' KDPM2 has no "exp" β schedule; rdiff's has)
        [1, 2, 3, 5, 10, 25, 100],
        [0, 1],  # seed
    )
)


@pytest.mark.parametrize("pred, sp, b, n, seed", random.Random(13).sample(KDPM2_CONFIGS, 110))
def test_kdpm2_matches_diffusers_over_the_config_matrix(pred, sp, b, n, seed):
    cfg = dict(prediction_type=pred, **BETAS[b])
    if sp in SIGMA_FLAGS:
        cfg[SIGMA_FLAGS[sp]] = True
    else:
        cfg["timestep_spacing"] = sp
        cfg["steps_offset"] = 1 if sp == "leading" else 0
    assert run_pair("kdpm2", cfg, n, seed=seed) <= 1.0


@pytest.mark.parametrize("pred, sp, b, n, seed", random.Random(17).sample(KDPM2_CONFIGS, 110))
def test_kdpm2_ancestral_matches_diffusers_over_the_config_matrix(pred, sp, b, n, seed):
    cfg = dict(prediction_type=pred, **BETAS[b])
    if sp in SIGMA_FLAGS:
        cfg[SIGMA_FLAGS[sp]] = True
    else:
        cfg["timestep_spacing"] = sp
        cfg["steps_offset"] = 1 if sp == "leading" else 0
    assert run_pair("kdpm2_a", cfg, n, seed=seed) <= 1.0


LMS_CONFIGS = list(
    itertools.product(
        ["epsilon", "v_prediction", "sample"],
        SPACINGS,
        range(len(BETAS)),
        [1, 2, 3, 5, 10, 25],
        [4, 3, 2, 1, 5, 6, 8],  # step's order (above 4: the earlier slopes summed first)
    )
)


@pytest.mark.parametrize("pred, sp, b, n, order", random.Random(19).sample(LMS_CONFIGS, 140))
def test_lms_matches_diffusers_over_the_config_matrix(pred, sp, b, n, order):
    cfg = dict(prediction_type=pred, **BETAS[b])
    if sp in SIGMA_FLAGS:
        cfg[SIGMA_FLAGS[sp]] = True
    else:
        cfg["timestep_spacing"] = sp
        cfg["steps_offset"] = 1 if sp == "leading" else 0
    assert run_pair("lms", cfg, n, churn=dict(order=order)) <= 1.0


@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_the_dtype_rounding(kind, dtype):
    cfg = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert run_pair(kind, cfg, 12, dtype=dtype) <= 1.0


def full_loop(scheduler, steps=10, **kw):
    scheduler.set_timesteps(steps)
    sample = dummy_sample_deter() * scheduler.init_noise_sigma
    if "generator" in inspect.signature(scheduler.step).parameters:
        kw["generator"] = torch.Generator().manual_seed(0)
    for t in scheduler.timesteps:
        xin = scheduler.scale_model_input(sample, t)
        out = scheduler.step(dummy_model(xin, t), t, sample, **kw)
        sample = out.prev_sample
    return sample


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        # diffusers' published figures for these loops are checked by its own tests
        # (tests/diffusers_suite/test_scheduler_euler*.py); here the whole trajectory, noise
        # included, against diffusers' in the same run
        ("euler", {}),
        ("euler", dict(prediction_type="v_prediction", use_karras_sigmas=True)),
        ("euler", dict(use_exponential_sigmas=True, final_sigmas_type="sigma_min")),
        ("ancestral", {}),
        ("ancestral", dict(prediction_type="v_prediction", timestep_spacing="trailing")),
        ("heun", {}),
        ("heun", dict(prediction_type="v_prediction", use_karras_sigmas=True, clip_sample=True)),
        ("kdpm2", {}),
        ("kdpm2", dict(prediction_type="v_prediction", use_karras_sigmas=True)),
        ("kdpm2_a", {}),
        ("kdpm2_a", dict(prediction_type="v_prediction", use_exponential_sigmas=True)),
        ("lms", {}),
        ("lms", dict(prediction_type="v_prediction", use_karras_sigmas=True)),
    ],
)
def test_full_loops_follow_diffusers(cls, kwargs):
    cfg = dict(num_train_timesteps=1100, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    sample = full_loop(PAIRS[cls][1](**{**cfg, **kwargs}), s_churn=0.5) if cls == "euler" else None
    if sample is not None:
        peer = full_loop(PAIRS[cls][0](**{**cfg, **kwargs}), s_churn=0.5)
        torch.testing.assert_close(sample, peer, rtol=1e-4, atol=1e-5)
    sample = full_loop(PAIRS[cls][1](**{**cfg, **kwargs}))
    peer = full_loop(PAIRS[cls][0](**{**cfg, **kwargs}))
    torch.testing.assert_close(sample, peer, rtol=1e-4, atol=1e-5)


def test_custom_timesteps_and_sigmas():
    d, r = diffusers.EulerDiscreteScheduler(), rdd.EulerDiscreteScheduler()
    for s in (d, r):
        s.set_timesteps(timesteps=[999, 800.5, 500, 10])
    np.testing.assert_array_equal(r.timesteps.numpy(), d.timesteps.numpy())
    np.testing.assert_allclose(r.sigmas.numpy(), d.sigmas.numpy(), rtol=1e-6)
    sig = [14.6, 5.0, 1.3, 0.2, 0.0]
    for s in (d, r):
        s.set_timesteps(sigmas=sig)
    np.testing.assert_allclose(r.timesteps.numpy(), d.timesteps.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(r.sigmas.numpy(), d.sigmas.numpy())
    assert r.num_inference_steps == d.num_inference_steps == 4


def test_add_noise_and_img2img_begin_index():
    d, r = diffusers.EulerDiscreteScheduler(), rdd.EulerDiscreteScheduler()
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    n = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for s in (d, r):
        s.set_timesteps(20)
    ts = d.timesteps[[0, 5, 19]]
    torch.testing.assert_close(r.add_noise(x0, n, ts), d.add_noise(x0, n, ts), rtol=0, atol=0)
    for s in (d, r):
        s.set_begin_index(6)
    t = d.timesteps[6:7]
    torch.testing.assert_close(r.add_noise(x0, n, t), d.add_noise(x0, n, t), rtol=0, atol=0)
    mo = torch.randn_like(x0)
    xd = d.step(mo, d.timesteps[6], x0).prev_sample
    xr = r.step(mo, r.timesteps[6], x0).prev_sample
    torch.testing.assert_close(xr, xd, rtol=1e-6, atol=1e-6)
    assert r.step_index == d.step_index == 7


def test_numpy_in_numpy_out_and_float64():
    s = rdiff.EulerDiscreteScheduler()
    s.set_timesteps(6)
    assert isinstance(s.timesteps, np.ndarray) and s.timesteps.dtype == np.float32
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    for dt in (np.float32, np.float64):
        s.set_timesteps(6)
        y = x.astype(dt) * float(s.init_noise_sigma)
        for t in s.timesteps:
            xin = s.scale_model_input(y, t)
            out = s.step(0.3 * xin, t, y)
            y = out.prev_sample
            assert isinstance(y, np.ndarray) and y.dtype == dt
        assert np.isfinite(y).all()
    # the float64 loop follows the closed form: x_{i+1} = x_i + (σ_{i+1} − σ_i)·mo
    s.set_timesteps(3)
    y = x.copy()
    t = s.timesteps[0]
    mo = np.ones_like(y)
    s.scale_model_input(y, t)
    got = s.step(mo, t, y).prev_sample
    np.testing.assert_allclose(got, y + (float(s.sigmas[1]) - float(s.sigmas[0])) * mo, rtol=1e-15)


def test_integer_timesteps_and_order_errors():
    s = rdd.EulerDiscreteScheduler()
    s.set_timesteps(4)
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="integer timesteps"):
        s.step(x, 3, x)
    with pytest.raises(ValueError, match="integer timesteps"):
        s.step(x, torch.tensor(3), x)
    a = rdd.EulerAncestralDiscreteScheduler(prediction_type="sample")
    a.set_timesteps(4)
    with pytest.raises(NotImplementedError, match="sample"):
        a.step(x, a.timesteps[0], x)
    with pytest.raises(ValueError, match="only one"):
        rdd.EulerDiscreteScheduler(use_karras_sigmas=True, use_beta_sigmas=True)
    with pytest.raises(ValueError, match="karras"):
        rdd.EulerDiscreteScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[900, 10])
    with pytest.raises(ValueError, match="exactly one"):
        rdd.EulerDiscreteScheduler().set_timesteps(3, sigmas=[1.0, 0.0])
    with pytest.raises(ValueError, match="interpolation_type"):
        rdd.EulerDiscreteScheduler(interpolation_type="cubic")
    s.set_timesteps(2)
    for t in s.timesteps:
        s.step(x, t, x)
    with pytest.raises(ValueError, match="steps are done"):
        s.step(x, s.timesteps[-1], x)


def test_config_round_trip_and_switching(tmp_path):
    r = rdd.EulerDiscreteScheduler(use_karras_sigmas=True, prediction_type="v_prediction")
    r.save_config(tmp_path)
    d = diffusers.EulerDiscreteScheduler.from_pretrained(tmp_path)
    assert d.config.use_karras_sigmas and d.config.prediction_type == "v_prediction"
    ddim = diffusers.DDIMScheduler(timestep_spacing="trailing", prediction_type="v_prediction")
    back = rdd.EulerDiscreteScheduler.from_config(ddim.config)
    peer = diffusers.EulerDiscreteScheduler.from_config(ddim.config)
    assert dict(back.config) == dict(peer.config)
    anc = rdd.EulerAncestralDiscreteScheduler.from_config(r.config)
    assert anc.config.prediction_type == "v_prediction"
    assert "EulerDiscreteScheduler" in anc.compatibles.__class__.__name__ or any(
        c.__name__ == "EulerDiscreteScheduler" for c in anc.compatibles
    )


# -- the CUDA kernels (emulated) against the CPU loop -----------------------------------------

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("dt", list(DTYPES))
def test_whole_loop_emulated_equals_cpu(kind, dt):
    def loop():
        s = PAIRS[kind][1](prediction_type="v_prediction")
        s.set_timesteps(7)
        model = GaussianEps(s.alphas_cumprod, "v_prediction")
        x = torch.randn((2, 3, 8, 9), generator=torch.Generator().manual_seed(0))
        x = (x * s.init_noise_sigma).to(DTYPES[dt])
        kw = {"s_churn": 1.0} if kind == "euler" else {}
        if kind not in ("heun", "kdpm2", "lms"):
            kw["generator"] = torch.Generator().manual_seed(3)
        x0s = []
        for t in s.timesteps:
            xin = s.scale_model_input(x, t)
            out = s.step(model(xin, int(t)), t, x, **kw)
            x = out.prev_sample
            x0s.append(out.pred_original_sample)
        return torch.stack([x, *x0s])

    cpu, emu = on_cpu_and_emulated(loop)
    assert torch.isfinite(cpu.float()).all()
    assert_bit_equal(cpu, emu, "the loop's samples and x0 predictions")


# -- bad input (tests/bad_input_cases.py; run again in subprocesses by test_bad_input.py) ------

from bad_input_cases import bad_input_test

test_bad_input_case = bad_input_test(__name__)


@pytest.mark.parametrize("kind", TWO_STAGE)
def test_config_rewritten_between_two_stages(kind):
    """A pipeline may replace the config mid-loop (rdiff then rebuilds from it): between an
    interval's two stages the first stage's state must survive the rebuild."""

    def run(rewrite):
        s = PAIRS[kind][1]()
        s.set_timesteps(4)
        x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
        kw = {"generator": torch.Generator().manual_seed(1)} if kind == "kdpm2_a" else {}
        for i, t in enumerate(s.timesteps):
            if rewrite and i == 1:
                s._internal_dict = type(s.config)({**s.config})
            x = s.step(0.1 * s.scale_model_input(x, t), t, x, **kw).prev_sample
        return x

    assert torch.equal(run(False), run(True))


@pytest.mark.parametrize("kind", TWO_STAGE)
def test_an_integer_sample_in_the_second_stage_is_refused(kind):
    s = PAIRS[kind][1]()
    s.set_timesteps(4)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    kw = {"generator": torch.Generator().manual_seed(1)} if kind == "kdpm2_a" else {}
    x = s.step(0.1 * x, s.timesteps[0], x, **kw).prev_sample
    with pytest.raises(TypeError, match=r"sample.*dtype"):
        s.step(0.1 * x, s.timesteps[1], x.to(torch.int32), **kw)


@pytest.mark.parametrize("kind", ["kdpm2", "kdpm2_a"])
def test_midpoint_schedules_warn_nothing(kind):
    """log 0 at the schedule's end is expected (its padding); numpy must not say so."""
    import warnings

    for cls in (PAIRS[kind][1], getattr(rdiff, PAIRS[kind][1].__name__)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cls().set_timesteps(20)
