"""Shared fixtures: diffusers' own deterministic dummy sample and model, and realistic models."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def dummy_sample_deter() -> torch.Tensor:
    """diffusers' `dummy_sample_deter` (tests/schedulers/test_schedulers.py): (4, 3, 8, 8)."""
    b, c, h, w = 4, 3, 8, 8
    n = b * c * h * w
    s = torch.arange(n).flip(-1).reshape(c, h, w, b) / n
    return s.permute(3, 0, 1, 2)


def dummy_noise_deter() -> torch.Tensor:
    """diffusers' `dummy_noise_deter`: the same ramp, not flipped."""
    b, c, h, w = 4, 3, 8, 8
    n = b * c * h * w
    s = torch.arange(n).reshape(c, h, w, b) / n
    return s.permute(3, 0, 1, 2)


def dummy_model(sample, t):
    """diffusers' dummy model: sample · t / (t + 1)."""
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1, *(1,) * (sample.ndim - 1)).to(sample.device, dtype=sample.dtype)
    return sample * t / (t + 1)


class GaussianEps:
    """A non-linear stand-in for a trained network: the exact ε of N(0, 0.5²) data plus a
    smooth non-linear term, evaluated in float64 from diffusers' ᾱ."""

    def __init__(self, alphas_cumprod, prediction_type: str = "epsilon"):
        self.ac = torch.as_tensor(np.asarray(alphas_cumprod), dtype=torch.float64)
        self.prediction_type = prediction_type

    def __call__(self, x, t):
        ac = self.ac[int(t)]
        a, s = ac.sqrt(), (1 - ac).sqrt()
        xd = x.double()
        eps = s * xd / (a * a * 0.25 + s * s) + 0.05 * torch.sin(3 * xd)
        if self.prediction_type == "epsilon":
            out = eps
        else:
            x0 = (xd - s * eps) / a
            out = x0 if self.prediction_type == "sample" else a * eps - s * x0
        return out.to(x.dtype)


@pytest.fixture
def gaussian_eps():
    return GaussianEps


# -- the emulated CUDA target ------------------------------------------------------------------


def on_cpu_and_emulated(fn, max_blocks: int = 2):
    """``fn()`` run on the CPU loops, then again with every fused pass on the CUDA kernels
    (the emulated launcher, at most ``max_blocks`` blocks so grid-stride loops go round).
    Asserts the second run launched kernels; returns both results."""
    from rdiff._cuda_testing import emulated_backend, launches

    cpu = fn()
    before = launches()
    with emulated_backend(max_blocks):
        emu = fn()
    assert launches() > before, "the emulated run launched no kernel"
    return cpu, emu


def assert_bit_equal(a, b, what: str = "") -> None:
    """Tensors (or tuples/lists of them) equal bit for bit, NaNs included."""
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bit_equal(x, y, f"{what}[{k}]")
        return
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    if a.dtype in (torch.float16, torch.bfloat16):
        a, b = a.view(torch.int16), b.view(torch.int16)
    elif a.dtype == torch.float32:
        a, b = a.view(torch.int32), b.view(torch.int32)
    elif a.dtype == torch.float64:
        a, b = a.view(torch.int64), b.view(torch.int64)
    assert torch.equal(a, b), f"{what}: {(a != b).sum().item()} elements differ"


@pytest.fixture(scope="session")
def bad_input_ns():
    """The bad-input table's prelude (tests/bad_input_cases.py), built once per session."""
    import bad_input_cases

    return bad_input_cases.prelude_namespace()


def _toy_model(x: torch.Tensor, t: int) -> torch.Tensor:
    """A smooth deterministic stand-in for a network: ε̂(x, t)."""
    return torch.tanh(0.7 * x + 0.001 * t) * 0.9 + 0.05 * torch.sin(3 * x)


def run_loop(make, dtype, generator, steps=12, **step_kwargs):
    """A whole sampling loop of scheduler ``make()`` on the toy model: the final sample."""
    s = make()
    s.set_timesteps(steps)
    x = torch.randn((2, 3, 8, 9), generator=torch.Generator().manual_seed(0)).to(dtype)
    gen = generator()
    for t in s.timesteps:
        eps = _toy_model(x.float(), int(t)).to(dtype)
        x = s.step(eps, t, x, generator=gen, **step_kwargs).prev_sample
    return x


def loop_on_cpu_and_emulated(make, dtype, generator, **step_kwargs) -> None:
    """A whole loop on the CPU and on the emulated kernels: finite, and equal bit for bit
    (every step is)."""
    cpu, emu = on_cpu_and_emulated(lambda: run_loop(make, dtype, generator, **step_kwargs))
    assert torch.isfinite(cpu.float()).all()
    assert_bit_equal(cpu, emu, "the loop's final sample")


def check_repeated_timesteps(ours, theirs, num_inference_steps: int) -> None:
    """``ours`` and ``theirs`` (diffusers) given a schedule with a repeated timestep (a
    zero-length interval): the same timesteps, the same samples while diffusers' stay finite
    (its higher orders divide by the zero length), and finite samples to the end."""
    ours.set_timesteps(num_inference_steps)
    theirs.set_timesteps(num_inference_steps)
    ts = theirs.timesteps.numpy()
    np.testing.assert_array_equal(np.asarray(ours.timesteps), ts)
    assert len(ts) == num_inference_steps and np.any(np.diff(ts) == 0), "no repeated timestep"
    x = y = dummy_sample_deter()
    for t in ts:
        x = ours.step(_toy_model(x, int(t)), int(t), x).prev_sample
        if torch.isfinite(y).all():
            y = theirs.step(_toy_model(y, int(t)), int(t), y).prev_sample
            if torch.isfinite(y).all():
                torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)  # 1000 f32 steps
    assert torch.isfinite(x).all()
