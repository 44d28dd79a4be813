"""Type stubs for the compiled extension module `rdiff._rdiff`."""

from typing import Any, Literal, TypeAlias, overload

import numpy as np
import numpy.typing as npt

__version__: str

class RdiffError(RuntimeError):
    """Base class of rdiff's backend errors."""

class CudaUnavailableError(RdiffError):
    """The CUDA backend cannot run here: no driver, no GPU or no NVRTC library."""

class CudaError(RdiffError):
    """A CUDA call (compile, load or launch) failed."""

class ConcurrentUseError(RdiffError):
    """A stateful object (a scheduler) was used from two threads at once."""

class WeightsError(OSError):
    """A weights, config or statistics file is missing, truncated or malformed."""

def backends() -> dict[str, dict[str, Any]]:
    """Which backends work here: ``{"cpu": {"available": True, "threads": int}, "cuda":
    {"available": bool, "devices"/"nvrtc_version" or "reason": ...}}``."""

_ArrayLike = npt.ArrayLike
_F64Array: TypeAlias = npt.NDArray[np.float64]
_I64Array: TypeAlias = npt.NDArray[np.int64]

class NoiseSchedule:
    """A diffusion forward process q(x_t | x_0) = N(α_t x_0, σ_t² I)."""

    @staticmethod
    def discrete(
        num_train_timesteps: int = 1000,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        trained_betas: list[float] | None = None,
        rescale_betas_zero_snr: bool = False,
    ) -> NoiseSchedule:
        """A discrete schedule, computed exactly as diffusers' schedulers compute it."""

    @staticmethod
    def linear_vp(beta_min: float = 0.1, beta_max: float = 20.0) -> NoiseSchedule:
        """The continuous linear VP schedule on t ∈ [1e-3, 1]."""

    @property
    def kind(self) -> Literal["discrete", "linear_vp"]: ...
    @property
    def betas(self) -> _F64Array | None:
        """β_i, float64 of shape (N,); None for a continuous schedule."""

    @property
    def alphas_cumprod(self) -> _F64Array | None:
        """ᾱ_i, float64 of shape (N,); None for a continuous schedule."""

    @property
    def num_train_timesteps(self) -> int | None: ...
    @property
    def t_min(self) -> float: ...
    @property
    def t_max(self) -> float: ...
    @overload
    def alpha_t(self, t: float) -> float: ...
    @overload
    def alpha_t(self, t: _ArrayLike) -> _F64Array: ...
    @overload
    def sigma_t(self, t: float) -> float: ...
    @overload
    def sigma_t(self, t: _ArrayLike) -> _F64Array: ...
    @overload
    def lambda_t(self, t: float) -> float: ...
    @overload
    def lambda_t(self, t: _ArrayLike) -> _F64Array: ...
    @overload
    def inverse_lambda(self, lam: float) -> float: ...
    @overload
    def inverse_lambda(self, lam: _ArrayLike) -> _F64Array: ...
    def timesteps(
        self,
        num_inference_steps: int,
        spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
        sigmas: Literal["default", "karras", "exponential", "beta", "lu"] = "default",
        final_sigma: Literal["zero", "sigma_min"] = "zero",
        lambda_min_clipped: float = ...,
    ) -> tuple[_I64Array, _F64Array]:
        """Integer timesteps (int64, shape (n,), strictly decreasing and distinct) and sigmas
        (float64, shape (n + 1,), float32 values, last one the final sigma), as diffusers'
        DPMSolverMultistepScheduler.set_timesteps with the same options, with repeated
        timesteps nudged apart (see the method's docstring). Discrete schedules only."""

    def time_steps(
        self,
        steps: int,
        skip_type: Literal["time_uniform", "logSNR", "time_quadratic"] = "time_uniform",
        t_start: float | None = None,
        t_end: float | None = None,
    ) -> _F64Array:
        """The DPM-Solver reference's time steps: float64 of shape (steps + 1,), from t_start
        (default t_max) down to t_end (default t_min)."""

def _diffusers_schedule(
    alphas_cumprod: npt.NDArray[np.float64],
    num_inference_steps: int | None = None,
    timesteps: list[int] | None = None,
    spacing: Literal["linspace", "leading", "trailing"] = "linspace",
    steps_offset: int = 0,
    sigma_kind: Literal["default", "karras", "exponential", "beta", "lu", "flow"] = "default",
    flow_shift: float = 1.0,
    final_sigma: Literal["zero", "sigma_min"] = "zero",
    lambda_min_clipped: float = ...,
    round_timesteps: bool = True,
) -> tuple[_I64Array, _F64Array]:
    """diffusers' DPMSolverMultistepScheduler.set_timesteps: `alphas_cumprod` is float64 of
    shape (N,) with the zero-SNR fix applied; pass exactly one of `num_inference_steps` and
    `timesteps`. Returns timesteps (int64, shape (n,)) and sigmas (float64 holding float32
    values, shape (n + 1,)). `round_timesteps` should be `beta_schedule != "squaredcos_cap_v2"`
    (it only affects Karras and Lu sigmas, as in diffusers)."""

class _GaussianMixture:
    """The Rust core of ``rdiff.testing.GaussianMixture``; use that class instead."""

    def __init__(
        self,
        means: npt.ArrayLike,
        stds: npt.ArrayLike,
        weights: npt.ArrayLike | None = None,
    ) -> None: ...
    @property
    def dim(self) -> int: ...
    @property
    def n_components(self) -> int: ...
    @property
    def means(self) -> npt.NDArray[np.float64]: ...
    @property
    def stds(self) -> npt.NDArray[np.float64]: ...
    @property
    def weights(self) -> npt.NDArray[np.float64]: ...
    def mean(self) -> npt.NDArray[np.float64]: ...
    def cov(self) -> npt.NDArray[np.float64]: ...
    def log_prob(
        self, x: npt.ArrayLike, alpha: npt.ArrayLike, sigma: npt.ArrayLike
    ) -> npt.NDArray[np.float64]: ...
    def predict(
        self,
        x: npt.ArrayLike,
        alpha: npt.ArrayLike,
        sigma: npt.ArrayLike,
        prediction_type: str,
    ) -> npt.NDArray[np.float64]: ...
    def x0_cov_trace(
        self, x: npt.ArrayLike, alpha: npt.ArrayLike, sigma: npt.ArrayLike
    ) -> npt.NDArray[np.float64]: ...

class _MultistepCore:
    """Per-scheduler constants of the multistep DPM-Solver; built by ``set_timesteps``."""

    def __init__(
        self,
        algorithm_type: str,
        solver_type: str,
        prediction_type: str,
        thresholding: bool,
        dynamic_thresholding_ratio: float,
        sample_max_value: float,
        flow: bool,
        sigmas: list[float],
    ) -> None: ...
    def coefficients(self, step_index: int, order: int) -> list[float]:
        """The step's scalars (p, q, r, w, a, w0, w1, w2, c)."""
    def step(
        self,
        step_index: int,
        order: int,
        mo: tuple[int, int, str, str, int],
        x: tuple[int, int, str, str, int],
        m1: tuple[int, int, str, str, int] | None,
        m2: tuple[int, int, str, str, int] | None,
        noise: tuple[int, int, str, str, int] | None,
        hist: tuple[int, int, str, str, int],
        prev: tuple[int, int, str, str, int],
        batch: int,
        mo_stride: int,
        stream: int | None = None,
        bounds: tuple[int, int, str, str, int] | None = None,
    ) -> None:
        """One fused step over caller-owned buffers described by ``rdiff._tensor.describe``.

        For CUDA tensors the kernels are enqueued on ``stream`` (the caller's
        ``torch.cuda.current_stream().cuda_stream``; 0 or None is the default stream); with
        dynamic thresholding ``bounds`` is a float32 scratch tensor of ``batch`` elements on
        the same device (required there, ignored for CPU tensors).
        """

class _DdimCore:
    """Per-scheduler constants of the DDIM and DDPM schedulers (diffusers' arithmetic)."""

    def __init__(
        self,
        alphas_cumprod: list[float],
        final_alpha_cumprod: float,
        prediction_type: str,
        clip_sample: bool,
        clip_sample_range: float,
        thresholding: bool,
        dynamic_thresholding_ratio: float,
        sample_max_value: float,
        variance_type: str = "fixed_small",
    ) -> None: ...
    def ddim_coefficients(
        self,
        timestep: int,
        prev_timestep: int,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
    ) -> tuple[float, ...]:
        """The DDIM step's scalars (p, q, d, h1, h2, h3, a, w0, w_eps, std)."""
    def ddpm_coefficients(self, timestep: int, prev_timestep: int) -> tuple[float, ...]:
        """The DDPM step's scalars, as ``ddim_coefficients`` (std NaN for learned variances)."""
    def ddim(
        self,
        timestep: int,
        prev_timestep: int,
        eta: float,
        use_clipped_model_output: bool,
        mo: _Desc,
        x: _Desc,
        noise: _Desc | None,
        x0: _Desc,
        prev: _Desc,
        batch: int,
        mo_stride: int,
        stream: int | None = None,
        bounds: _Desc | None = None,
    ) -> None:
        """One fused DDIM step: x̂₀ into ``x0``, the new sample into ``prev``; ``noise`` (model
        dtype) is required when η > 0. ``stream``/``bounds`` as for ``_MultistepCore.step``."""
    def ddpm(
        self,
        timestep: int,
        prev_timestep: int,
        mo: _Desc,
        x: _Desc,
        noise: _Desc | None,
        x0: _Desc,
        prev: _Desc,
        batch: int,
        mo_stride: int,
        stream: int | None = None,
        bounds: _Desc | None = None,
    ) -> None:
        """One fused DDPM step; ``noise`` is required when timestep > 0."""

def _ddim_timesteps(
    num_train_timesteps: int, num_inference_steps: int, timestep_spacing: str, steps_offset: int
) -> npt.NDArray[np.int64]:
    """diffusers' DDIM/DDPM timesteps for ``num_inference_steps`` (int64, descending)."""

class _SinglestepCore:
    """Per-scheduler constants of the singlestep DPM-Solver; built by ``set_timesteps``."""

    def __init__(
        self,
        algorithm_type: str,
        solver_type: str,
        prediction_type: str,
        thresholding: bool,
        dynamic_thresholding_ratio: float,
        sample_max_value: float,
        flow: bool,
        sigmas: list[float],
    ) -> None: ...
    def coefficients(self, step_index: int, order: int) -> list[float]:
        """The step's scalars (p, q, r, w, a, w0, w1, w2, c); x is the group's start sample."""
    def step(
        self,
        step_index: int,
        order: int,
        mo: tuple[int, int, str, str, int],
        x: tuple[int, int, str, str, int],
        start: tuple[int, int, str, str, int] | None,
        m1: tuple[int, int, str, str, int] | None,
        m2: tuple[int, int, str, str, int] | None,
        noise: tuple[int, int, str, str, int] | None,
        hist: tuple[int, int, str, str, int],
        prev: tuple[int, int, str, str, int],
        batch: int,
        mo_stride: int,
        stream: int | None = None,
        bounds: tuple[int, int, str, str, int] | None = None,
    ) -> None:
        """One fused step: conversion from ``x`` (the current sample), update from ``start``
        (the group's start sample; None means ``x``)."""

def _singlestep_order_list(
    steps: int, solver_order: int, lower_order_final: bool, final_sigma_zero: bool
) -> list[int]:
    """diffusers' ``DPMSolverSinglestepScheduler.get_order_list``."""

_Desc = tuple[int, int, str, str, int]

def _cuda_kernels() -> list[str]:
    """The CUDA kernel sources rdiff ships."""

def _cuda_compile(kernel: str, arch: str) -> dict[str, Any]:
    """NVRTC compile of one kernel source: cubin, ptx, log, options, per-entry resources."""

def _emulated_kernels() -> list[str]:
    """The entry points of the host-compiled kernels (the emulated launcher)."""

def _emulated_dpm_step(
    order: int,
    coefficients: list[float],
    mo: _Desc,
    x: _Desc,
    m1: _Desc | None,
    m2: _Desc | None,
    noise: _Desc | None,
    hist: _Desc,
    prev: _Desc,
    batch: int,
    mo_stride: int,
    thresholding: tuple[float, float] | None = None,
    max_blocks: int = 3,
) -> None:
    """``_MultistepCore.step`` through the CUDA kernels on the emulated launcher (CPU buffers)."""

def _emulated_threshold(
    mo: _Desc,
    x: _Desc,
    batch: int,
    mo_stride: int,
    p: float,
    q: float,
    ratio: float,
    max_value: float,
) -> list[float]:
    """Per-sample dynamic-thresholding bounds from the radix-select kernel (emulated)."""

def _emulated_add_noise(
    x0: _Desc, eps: _Desc, alpha: list[float], sigma: list[float], out: _Desc, max_blocks: int = 3
) -> None:
    """out = alpha_b * x0 + sigma_b * eps through the CUDA kernel (emulated)."""

def _emulated_gamma(eps: _Desc, batch: int) -> list[float]:
    """Per-sample sum of squares / d through the CUDA reduction kernel (emulated)."""

def _set_emulated_backend(max_blocks: int | None = None) -> int | None:
    """Route CPU tensors of the steps that have a kernel through the emulated launcher (at most
    ``max_blocks`` blocks), or back to the CPU loops with None; returns the previous value."""

def _philox_normal_fill(out: _Desc, seed: int, offset: int) -> None:
    """Fill a contiguous float32 CPU buffer with elements 0..numel of the Philox stream."""

# -- Analytic-DPM (python/rdiff/analytic.py and schedulers/analytic_dpm.py wrap these) --------

_TensorDesc: TypeAlias = tuple[int, int, str, str, int]

def _gamma_batch_sums(
    mo: _TensorDesc,
    x: _TensorDesc | None,
    batch: int,
    mo_stride: int,
    per_sample: int,
    p: float,
    q: float,
) -> tuple[int, float, float, int, int]:
    """Σv, Σv² of v = ‖p·x + q·mo‖²/d over a batch: (count, sum, sum_sq, sum_fixed,
    sum_sq_fixed), the last two exact integers at scale 2⁶⁴."""

def _optimal_trajectory(
    gamma: list[float], alphas_cumprod: list[float], num_steps: int
) -> _I64Array:
    """Analytic-DPM's optimal trajectory: 0-based timesteps, descending."""

def _trajectory_cost(
    gamma: list[float], alphas_cumprod: list[float], timesteps: list[int]
) -> float:
    """Σ log(1 − (1 − ᾱ_t/ᾱ_s)·Γ_t/β̄_t) over consecutive timesteps of a trajectory."""

class _AnalyticCore:
    """The Rust core of ``rdiff.AnalyticDPMScheduler``: every step's scalars, the fused step."""

    def __init__(
        self,
        alphas_cumprod: list[float],
        timesteps: list[int],
        gamma: list[float],
        form: Literal["ddpm", "ddim"],
        eta: float,
        cov_max: float,
        last_cap: float | None,
        prediction_type: str,
        variances: list[float] | None = None,
    ) -> None: ...
    @property
    def variances(self) -> _F64Array: ...
    @property
    def lambda2(self) -> _F64Array: ...
    def coefficients(self, step_index: int) -> list[float]: ...
    def step(
        self,
        step_index: int,
        mo: _TensorDesc,
        x: _TensorDesc,
        noise: _TensorDesc | None,
        x0: _TensorDesc,
        prev: _TensorDesc,
        batch: int,
        mo_stride: int,
        clip: tuple[float, float] | None,
        philox: tuple[int, int] | None = None,
        stream: int | None = None,
    ) -> None:
        """Noise: the f32 ``noise`` buffer, else the Philox stream ``philox=(seed, offset)``.
        CUDA tensors run the kernel on ``stream`` (the caller's cudaStream_t)."""

# ---------------------------------------------------------------- functional samplers

class _ReferenceCore:
    """The DPM-Solver reference's per-step scalars over one schedule (``rdiff.sample``)."""

    def __init__(self, schedule: NoiseSchedule, algorithm: str, solver_type: str) -> None: ...
    def data_prediction(self, t: float) -> tuple[float, float]:
        """(p, q) with x₀ = p·x + q·ε at time t."""
    def multistep(self, t_prev: list[float], t: float, order: int) -> tuple[float, list[float]]:
        """(c_x, [c_0, …]) of a multistep update; c_0 weighs the newest model value."""
    def singlestep(
        self, s: float, t: float, order: int, r1: float | None = None, r2: float | None = None
    ) -> tuple[list[float], list[tuple[float, list[float]]]]:
        """(intermediate times, [(c_x, [c_s, c_s1, …]) per stage]) of a singlestep update."""

def _check_method(method: str) -> None: ...
def _multistep_orders(steps: int, order: int, lower_order_final: bool) -> list[int]: ...
def _singlestep_schedule(
    schedule: NoiseSchedule,
    steps: int,
    order: int,
    skip_type: str,
    t_start: float,
    t_end: float,
    fixed: bool,
) -> tuple[list[float], list[int], list[tuple[float | None, float | None]]]: ...
def _adaptive_next_h(h: float, err: float, order: int, theta: float, remaining: float) -> float: ...
def _lincomb(
    out: _TensorDesc,
    terms: list[tuple[float, _TensorDesc]],
    batch: int,
    conv: tuple[_TensorDesc, _TensorDesc, float, float, float] | None = None,
    hist: _TensorDesc | None = None,
    threshold: tuple[float, float] | None = None,
) -> None:
    """out = Σ c·term (+ w·m, m = p·x + q·mo, thresholded, kept in hist): one fused pass."""

def _adaptive_error(
    hi: _TensorDesc, lo: _TensorDesc, prev: _TensorDesc, atol: float, rtol: float, batch: int
) -> float: ...
def _k_sigmas(
    kind: str, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0
) -> list[float]: ...
def _k_step(
    kind: str,
    sigmas: list[float],
    i: int,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    sigma_hat: float | None = None,
) -> tuple[float, list[float], float]: ...
def _k_heun_correction(sigma_hat: float, sigma_next: float) -> list[float]: ...
def _k_churn_gamma(
    sigma: float, n_steps: int, s_churn: float, s_tmin: float, s_tmax: float
) -> float: ...

class _UNet2D:
    """The native UNet2DModel; ``rdiff.UNet2DModel`` wraps it."""

    @staticmethod
    def from_dir(path: str, weights_name: str) -> _UNet2D:
        """Load ``config.json`` and the safetensors file ``weights_name`` from ``path``."""
    @staticmethod
    def from_tensors(config_json: str, tensors: dict[str, npt.NDArray[np.float32]]) -> _UNet2D:
        """Build from a config.json text and float32 arrays by diffusers' weight names."""
    @property
    def in_channels(self) -> int: ...
    @property
    def out_channels(self) -> int: ...
    @property
    def arena_bytes(self) -> int:
        """Bytes the activation arena has allocated so far."""
    def check(self, shape: tuple[int, int, int, int], timesteps: int) -> None:
        """ValueError unless a call with this sample shape and timestep count can run."""
    def forward(
        self,
        sample: tuple[int, int, str, str, int],
        shape: tuple[int, int, int, int],
        timesteps: list[float],
        out: tuple[int, int, str, str, int],
        class_indices: list[int] | None = None,
        class_values: list[float] | None = None,
    ) -> None:
        """The forward pass over caller-owned NCHW buffers (GIL released)."""

class _CudaUNet2D:
    """The UNet2DModel graph through the CUDA kernels (device -1: the emulated launcher)."""

    @staticmethod
    def from_dir(
        path: str, weights_name: str, device: int, max_blocks: int = 8, threads: int = 0
    ) -> _CudaUNet2D:
        """Load a diffusers folder for CUDA device ``device`` (CudaUnavailableError without one)."""
    @staticmethod
    def from_tensors(
        config_json: str,
        tensors: dict[str, npt.NDArray[np.float32]],
        device: int,
        max_blocks: int = 8,
        threads: int = 0,
    ) -> _CudaUNet2D:
        """Build from a config.json text and float32 arrays, for ``device`` as in from_dir."""
    @property
    def in_channels(self) -> int: ...
    @property
    def out_channels(self) -> int: ...
    @property
    def device(self) -> int:
        """The CUDA device ordinal, -1 for the emulated launcher."""
    @property
    def arena_bytes(self) -> int:
        """Bytes of device activation memory allocated so far."""
    def check(self, shape: tuple[int, int, int, int], timesteps: int) -> None:
        """ValueError unless a call with this sample shape and timestep count can run."""
    def forward(
        self,
        sample: tuple[int, int, str, str, int],
        shape: tuple[int, int, int, int],
        timesteps: list[float],
        out: tuple[int, int, str, str, int],
        class_indices: list[int] | None = None,
        class_values: list[float] | None = None,
        stream: int = 0,
    ) -> None:
        """The forward pass over NCHW buffers on the model's device, on ``stream``."""
