"""The CUDA backend without a GPU: every kernel compiles with the real NVRTC for the shipped
architectures (no local-memory spills), the same kernel sources compiled for the host and run
by the emulated launcher agree with the CPU path, and CUDA tensors without a driver raise
``rdiff.CudaUnavailableError``."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rdiff
from rdiff import _cuda_libs, _rdiff
from rdiff._cuda_testing import emulated_backend
from rdiff._tensor import describe

ARCHS = ["sm_80", "sm_86", "sm_89", "sm_90"]
# Every kernel source and how its entry points are named (prefix → source).
KERNELS = [
    "dpm_step",
    "threshold",
    "add_noise",
    "gamma",
    "analytic_step",
    "ddim_step",
    "gemm",
    "unet_conv",
    "unet_ops",
]
ENTRY_PREFIXES = {
    "rdiff_dpm_step_": "dpm_step",
    "rdiff_dpm_threshold_": "threshold",
    "rdiff_add_noise_": "add_noise",
    "rdiff_gamma_": "gamma",
    "rdiff_analytic_step_": "analytic_step",
    "rdiff_ddim_step_": "ddim_step",
    "rdiff_gemm_": "gemm",
    "rdiff_unet_im2col_": "unet_conv",
    "rdiff_unet_conv_init_": "unet_conv",
    "rdiff_unet_nchw_": "unet_conv",
    "rdiff_unet_": "unet_ops",
}
# 256-thread blocks: at most 64 registers keeps 4 blocks (full occupancy) per SM. The GEMM's
# 4×4 register tile takes more (2 blocks per SM), the usual trade of occupancy for reuse.
MAX_REGISTERS = {"rdiff_gemm_f32": 128}
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# Tolerances: float32 to a few ULP, half types within one rounding of their own.
TOL = {
    torch.float32: dict(rtol=4e-7, atol=4e-7),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=8e-3, atol=8e-3),
}

needs_nvrtc = pytest.mark.skipif(
    _cuda_libs.preload_nvrtc() is None, reason="no NVRTC wheel in this environment"
)


def test_kernel_list_matches_the_host_build():
    assert sorted(_rdiff._cuda_kernels()) == sorted(KERNELS)
    entries = _rdiff._emulated_kernels()
    assert len(entries) == 4 * 9 + 2 * 3 + 1 + 8 + 6
    assert {_entry_source(e) for e in entries} == set(KERNELS)
    assert all(e.startswith("rdiff_") for e in entries)


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_compiles_with_nvrtc_without_spills(kernel, arch):
    out = _rdiff._cuda_compile(kernel, arch)
    assert out["arch"] == arch
    assert out["cubin"][:4] == b"\x7fELF"
    assert b".entry rdiff_" in out["ptx"]
    assert "--ptxas-options=-v" in out["options"]
    res = out["resources"]
    want = {e for e in _rdiff._emulated_kernels() if _entry_source(e) == kernel}
    assert set(res) == want, out["log"]
    for entry, r in res.items():
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, (entry, out["log"])
        assert r["stack_bytes"] == 0, (entry, out["log"])
        assert 0 < r["registers"] <= MAX_REGISTERS.get(entry, 64), (entry, r)
    # Cached: the same object's bytes come back.
    assert _rdiff._cuda_compile(kernel, arch)["cubin"] == out["cubin"]


def _entry_source(entry: str) -> str:
    for prefix, name in ENTRY_PREFIXES.items():
        if entry.startswith(prefix):
            return name
    raise AssertionError(f"entry point {entry} has no source in ENTRY_PREFIXES")


@needs_nvrtc
def test_compile_errors_are_value_errors():
    with pytest.raises(ValueError, match="unknown kernel"):
        _rdiff._cuda_compile("nope", "sm_90")
    with pytest.raises(ValueError, match="arch"):
        _rdiff._cuda_compile("gamma", "compute_90")


# --- the emulated launcher against the CPU path --------------------------------------------


def _buffer(values: torch.Tensor, dtype, offset: int) -> torch.Tensor:
    """values in dtype, as a contiguous view `offset` elements into a larger buffer."""
    base = torch.empty(values.numel() + offset + 3, dtype=dtype)
    view = base[offset : offset + values.numel()].view(values.shape)
    view.copy_(values.to(dtype))
    return view


def _core(algorithm="dpmsolver++", thresholding=False, prediction="epsilon"):
    sigmas = list(np.geomspace(14.6, 0.03, 12))
    return _rdiff._MultistepCore(
        algorithm, "midpoint", prediction, thresholding, 0.9, 1.5, False, sigmas
    )


CASES = [
    # (shape, extra model-output channels, offset in elements)
    ((1, 1, 1, 1), 0, 0),
    ((2, 3, 7, 11), 0, 1),  # per-sample 231: not a multiple of the vector width
    ((2, 4, 16, 16), 0, 0),  # 1024: whole vectors, more than one block per sample
    ((3, 4, 9, 13), 4, 0),  # learned variance: model output rows longer than the sample
    ((2, 4, 16, 17), 0, 3),  # misaligned views: the scalar path
]


@pytest.mark.parametrize("mdt", list(DTYPES))
@pytest.mark.parametrize("sdt", list(DTYPES))
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_emulated_step_matches_cpu(mdt, sdt, order, case):
    shape, extra, offset = CASES[case]
    mdtype, sdtype = DTYPES[mdt], DTYPES[sdt]
    g = torch.Generator().manual_seed(1000 * order + case)
    b, c = shape[0], shape[1]
    mo_shape = (b, c + extra, *shape[2:])
    for algorithm, thresholding in (
        ("dpmsolver++", False),
        ("sde-dpmsolver++", True),
        ("dpmsolver", case % 2 == 0),
    ):
        core = _core(algorithm, thresholding)
        step_index = 5
        co = core.coefficients(step_index, order)
        mo = _buffer(torch.randn(mo_shape, generator=g) * 1.5, mdtype, offset)
        x = _buffer(torch.randn(shape, generator=g) * 2, sdtype, offset)
        m1 = _buffer(torch.randn(shape, generator=g), mdtype, offset)
        m2 = _buffer(torch.randn(shape, generator=g), mdtype, offset)
        noise = (
            _buffer(torch.randn(shape, generator=g), torch.float32, offset)
            if algorithm.startswith("sde")
            else None
        )
        outs = {}
        for path in ("cpu", "emulated"):
            hist = _buffer(torch.zeros(shape), mdtype, offset)
            prev = _buffer(torch.zeros(shape), mdtype, offset)
            args = (
                describe(mo),
                describe(x),
                describe(m1) if order >= 2 else None,
                describe(m2) if order >= 3 else None,
                None if noise is None else describe(noise),
                describe(hist),
                describe(prev),
                b,
                math.prod(mo_shape[1:]),
            )
            if path == "cpu":
                core.step(step_index, order, *args)
            else:
                _rdiff._emulated_dpm_step(
                    order, co, *args, thresholding=(0.9, 1.5) if thresholding else None
                )
            outs[path] = (hist.float().clone(), prev.float().clone())
        for k, what in enumerate(("hist", "prev")):
            torch.testing.assert_close(
                outs["emulated"][k],
                outs["cpu"][k],
                **TOL[mdtype],
                msg=lambda m, what=what, alg=algorithm: f"{what} {alg}: {m}",
            )


@pytest.mark.parametrize("mdt", list(DTYPES))
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.995, 1.0])
def test_emulated_threshold_is_torch_quantile(mdt, ratio):
    g = torch.Generator().manual_seed(7)
    b, n = 3, 5 * 7 * 11
    x = torch.randn(b, n, generator=g) * 3
    mo = torch.randn(b, n + 2, generator=g).to(DTYPES[mdt])
    p, q = 1.25, -0.5
    got = _rdiff._emulated_threshold(describe(mo), describe(x), b, n + 2, p, q, ratio, 2.5)
    x0 = (p * x + q * mo[:, :n].float()).abs()
    want = torch.quantile(x0, ratio, dim=1).clamp(min=1.0, max=2.5)
    torch.testing.assert_close(torch.tensor(got), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("offset", [0, 1])
def test_emulated_add_noise(dt, offset):
    dtype = DTYPES[dt]
    g = torch.Generator().manual_seed(3)
    shape = (3, 4, 9, 7)
    x0 = _buffer(torch.randn(shape, generator=g), dtype, offset)
    eps = _buffer(torch.randn(shape, generator=g), dtype, offset)
    out = _buffer(torch.zeros(shape), dtype, offset)
    alpha, sigma = [0.9, 0.5, 0.1], [0.43, 0.86, 0.99]
    _rdiff._emulated_add_noise(describe(x0), describe(eps), alpha, sigma, describe(out))
    a = torch.tensor(alpha).view(-1, 1, 1, 1)
    s = torch.tensor(sigma).view(-1, 1, 1, 1)
    want = (a * x0.float() + s * eps.float()).to(dtype)
    torch.testing.assert_close(out, want, **TOL[dtype])


@pytest.mark.parametrize("dt", list(DTYPES))
def test_emulated_gamma(dt):
    g = torch.Generator().manual_seed(5)
    eps = torch.randn(4, 3 * 33 * 17, generator=g).to(DTYPES[dt])
    got = np.array(_rdiff._emulated_gamma(describe(eps), 4))
    want = (eps.double() ** 2).mean(dim=1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_emulated_rejects_cuda_buffers_and_bad_dtypes():
    x = torch.zeros(8)
    fake = (x.data_ptr(), 8, "float32", "cuda", 0)
    with pytest.raises(ValueError, match="CPU buffers"):
        _rdiff._emulated_gamma(fake, 1)
    with pytest.raises(TypeError, match="float64"):
        _rdiff._emulated_gamma(describe(torch.zeros(8, dtype=torch.float64)), 1)


# --- no driver here: errors, not panics ----------------------------------------------------

no_cuda = pytest.mark.skipif(
    rdiff.backends()["cuda"]["available"], reason="a CUDA driver and GPU are present"
)


@no_cuda
def test_backends_reports_why_cuda_is_off():
    cuda = rdiff.backends()["cuda"]
    assert cuda["available"] is False
    assert isinstance(cuda["reason"], str) and cuda["reason"]


@no_cuda
def test_cuda_tensor_raises_unavailable():
    core = _core()
    x = torch.zeros(2, 4, 8, 8)
    bufs = [torch.zeros_like(x) for _ in range(4)]

    def cuda(t):
        ptr, numel, dtype, _, _ = describe(t)
        return (ptr, numel, dtype, "cuda", 0)

    with pytest.raises(rdiff.CudaUnavailableError, match="CUDA"):
        core.step(
            3,
            2,
            cuda(bufs[0]),
            cuda(x),
            cuda(bufs[1]),
            None,
            None,
            cuda(bufs[2]),
            cuda(bufs[3]),
            2,
            4 * 64,
            0,
        )
    # A scheduler given a (simulated) CUDA tensor takes the same route.
    assert issubclass(rdiff.CudaUnavailableError, rdiff.RdiffError)


# --- the Analytic-DPM step kernel and the Philox noise ---------------------------------------


def _analytic_core(form="ddpm", prediction="epsilon"):
    betas = np.linspace(1e-4, 0.02, 1000)
    ac = np.cumprod(1.0 - betas)
    ts = list(range(999, -1, -111))
    gamma = [0.9 - 0.3 * t / 1000 for t in ts]
    eta = 0.5 if form == "ddim" else 0.0
    return _rdiff._AnalyticCore([float(a) for a in ac], ts, gamma, form, eta, 1.0, None, prediction)


@pytest.mark.parametrize("mdt", list(DTYPES))
@pytest.mark.parametrize("sdt", list(DTYPES))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_emulated_analytic_step_matches_cpu(mdt, sdt, case):
    shape, extra, offset = CASES[case]
    mdtype, sdtype = DTYPES[mdt], DTYPES[sdt]
    g = torch.Generator().manual_seed(77 + case)
    b, c = shape[0], shape[1]
    mo_shape = (b, c + extra, *shape[2:])
    for form, prediction, noise_kind, clip in (
        ("ddpm", "epsilon", "buffer", (-1.0, 1.0)),
        ("ddim", "v_prediction", "philox", None),
        ("ddpm", "sample", "philox", (-1.0, 1.0)),
    ):
        core = _analytic_core(form, prediction)
        # The last step (σ = 0, no noise) and a noisy middle one.
        for step_index in (3, 9):
            mo = _buffer(torch.randn(mo_shape, generator=g), mdtype, offset)
            x = _buffer(torch.randn(shape, generator=g) * 1.5, sdtype, offset)
            noise = _buffer(torch.randn(shape, generator=g), torch.float32, offset)
            outs = {}
            for path in ("cpu", "emulated"):
                x0 = _buffer(torch.zeros(shape), mdtype, offset)
                prev = _buffer(torch.zeros(shape), mdtype, offset)
                args = (
                    step_index,
                    describe(mo),
                    describe(x),
                    describe(noise) if noise_kind == "buffer" else None,
                    describe(x0),
                    describe(prev),
                    b,
                    math.prod(mo_shape[1:]),
                    clip,
                    (2**64 - 5, step_index) if noise_kind == "philox" else None,
                )
                if path == "cpu":
                    core.step(*args)
                else:
                    with emulated_backend(max_blocks=2):
                        core.step(*args)
                outs[path] = (x0.float().clone(), prev.float().clone())
            # The emulation does the CPU loop's f32 operations in its order without FMA:
            # equal bits, which the tolerance-free check states.
            for k, what in enumerate(("x0", "prev")):
                assert torch.equal(outs["emulated"][k], outs["cpu"][k]), (
                    f"{what} {form}/{prediction}/{noise_kind} step {step_index}"
                )


def test_analytic_kernel_noise_is_rdiff_randn():
    """In-kernel noise (emulated) is rdiff.randn's stream: σ·randn added to the mean."""
    core = _analytic_core("ddpm")
    shape = (3, 4, 7, 9)  # per sample 252: rows start on lane groups; 3·252 elements
    g = torch.Generator().manual_seed(5)
    mo, x = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    step_index, seed = 4, 1234
    sigma = math.sqrt(core.variances[step_index])
    out = {}
    for kind in ("zero", "philox"):
        x0, prev = torch.empty(shape), torch.empty(shape)
        zeros = torch.zeros(shape)
        with emulated_backend():
            core.step(
                step_index,
                describe(mo),
                describe(x),
                describe(zeros) if kind == "zero" else None,
                describe(x0),
                describe(prev),
                3,
                252,
                None,
                (seed, step_index) if kind == "philox" else None,
            )
        out[kind] = prev.double()
    z = torch.from_numpy(rdiff.randn(shape, seed, offset=step_index)).double()
    torch.testing.assert_close(out["philox"] - out["zero"], sigma * z, rtol=0, atol=1e-6)


def test_emulated_backend_switch_restores_and_rejects_zero():
    assert _rdiff._set_emulated_backend(None) is None
    with emulated_backend(4):
        assert _rdiff._set_emulated_backend(4) == 4
    assert _rdiff._set_emulated_backend(None) is None
    with pytest.raises(ValueError, match="max_blocks"):
        _rdiff._set_emulated_backend(0)


# --- whole sampling loops through the emulated launcher --------------------------------------


def _toy_model(x: torch.Tensor, t: int) -> torch.Tensor:
    """A smooth deterministic stand-in for a network: ε̂(x, t)."""
    return torch.tanh(0.7 * x + 0.001 * t) * 0.9 + 0.05 * torch.sin(3 * x)


def _run_loop(make, dtype, generator_factory, steps, backend):
    sched = make()
    sched.set_timesteps(steps)
    x = torch.randn((2, 3, 8, 9), generator=torch.Generator().manual_seed(0)).to(dtype)
    gen = generator_factory()
    for t in sched.timesteps:
        eps = _toy_model(x.float(), int(t)).to(dtype)
        kw = {"eta": 0.8} if isinstance(sched, rdiff.DDIMScheduler) else {}
        if backend == "emulated":
            with emulated_backend(max_blocks=2):
                x = sched.step(eps, t, x, generator=gen, **kw).prev_sample
        else:
            x = sched.step(eps, t, x, generator=gen, **kw).prev_sample
    return x


LOOPS = {
    "dpmsolver++ 2M": (
        lambda: rdiff.DPMSolverMultistepScheduler(solver_order=2),
        lambda: None,
    ),
    "dpmsolver++ 3M thresholding": (
        lambda: rdiff.DPMSolverMultistepScheduler(
            solver_order=3, thresholding=True, sample_max_value=1.5
        ),
        lambda: None,
    ),
    "sde-dpmsolver++ 2M": (
        lambda: rdiff.DPMSolverMultistepScheduler(solver_order=2, algorithm_type="sde-dpmsolver++"),
        lambda: torch.Generator().manual_seed(3),
    ),
    # singlestep: orders 2 and 3 update from the group's start sample (self.sample)
    "dpmsolver++ singlestep 2": (
        lambda: rdiff.DPMSolverSinglestepScheduler(solver_order=2),
        lambda: None,
    ),
    "dpmsolver singlestep 3": (
        lambda: rdiff.DPMSolverSinglestepScheduler(
            solver_order=3, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"
        ),
        lambda: None,
    ),
    "dpmsolver++ singlestep 3 thresholding": (
        lambda: rdiff.DPMSolverSinglestepScheduler(
            solver_order=3, thresholding=True, sample_max_value=1.5
        ),
        lambda: None,
    ),
    "sde-dpmsolver++ singlestep 2": (
        lambda: rdiff.DPMSolverSinglestepScheduler(
            solver_order=2, algorithm_type="sde-dpmsolver++"
        ),
        lambda: torch.Generator().manual_seed(6),
    ),
    "ddim eta=0.8 clip_sample": (
        lambda: rdiff.DDIMScheduler(clip_sample=True, clip_sample_range=1.2),
        lambda: torch.Generator().manual_seed(4),
    ),
    "ddpm thresholding": (
        lambda: rdiff.DDPMScheduler(thresholding=True, sample_max_value=1.3),
        lambda: torch.Generator().manual_seed(5),
    ),
    "analytic ddpm, torch generator": (
        lambda: rdiff.AnalyticDPMScheduler(gamma=np.linspace(0.5, 0.99, 1000)),
        lambda: torch.Generator().manual_seed(3),
    ),
    "analytic ddim, philox seed": (
        lambda: rdiff.AnalyticDPMScheduler(
            gamma=np.linspace(0.5, 0.99, 1000), form="ddim", eta=1.0
        ),
        lambda: 2024,
    ),
}


@pytest.mark.parametrize("name", list(LOOPS))
@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_whole_loop_emulated_matches_cpu(name, dt):
    make, gen = LOOPS[name]
    dtype = DTYPES[dt]
    cpu = _run_loop(make, dtype, gen, 12, "cpu")
    emu = _run_loop(make, dtype, gen, 12, "emulated")
    assert torch.isfinite(cpu.float()).all()
    # Every step is bit-identical, so the whole loop is.
    assert torch.equal(emu, cpu), (emu.float() - cpu.float()).abs().max()


@no_cuda
def test_analytic_cuda_tensor_raises_unavailable():
    core = _analytic_core()
    x = torch.zeros(2, 4, 8, 8)
    bufs = [torch.zeros_like(x) for _ in range(3)]

    def cuda(t):
        ptr, numel, dtype, _, _ = describe(t)
        return (ptr, numel, dtype, "cuda", 0)

    for philox in (None, (1, 2)):
        with pytest.raises(rdiff.CudaUnavailableError, match="CUDA"):
            core.step(
                2,
                cuda(bufs[0]),
                cuda(x),
                None if philox else cuda(bufs[1]),
                cuda(bufs[2]),
                cuda(bufs[1]),
                2,
                4 * 64,
                (-1.0, 1.0),
                philox,
                0,
            )
    # Mixed CPU and CUDA buffers are refused too (never a crash).
    with pytest.raises((ValueError, rdiff.CudaUnavailableError)):
        core.step(
            2,
            describe(bufs[0]),
            cuda(x),
            None,
            describe(bufs[2]),
            describe(bufs[1]),
            2,
            4 * 64,
            None,
            (1, 2),
            0,
        )
