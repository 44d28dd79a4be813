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
    ) -> None:
        """One fused step over caller-owned buffers described by ``rdiff._tensor.describe``."""

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
