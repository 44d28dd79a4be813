"""Type stubs for the compiled extension module `rdiff._rdiff`."""

from typing import Any, Literal, TypeAlias, TypedDict, overload

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
    """Which backends work here: ``{"cpu": {"available": True, "threads": int, "simd":
    "avx512" | "avx2" | "baseline", "bf16_kernel": "amx" | "portable"}, "cuda": {"available":
    bool, "devices"/"nvrtc_version" or "reason": ...}}``."""

def fma_peak_gflops(seconds: float = 0.5) -> float:
    """The CPU's measured float32 FMA peak in GFLOP/s on all of rayon's threads (the
    benchmarks' yardstick), taking about ``seconds``."""

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
        sqrt_alphas_cumprod: list[float] | None = None,
    ) -> NoiseSchedule:
        """A discrete schedule, computed exactly as diffusers' schedulers compute it.

        ``sqrt_alphas_cumprod``: √ᾱ of the schedule before the zero-SNR rescale, as the
        caller's framework rounds it (None: correctly rounded float32)."""

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

def _sigma_to_t(
    sigma: npt.NDArray[np.float64], log_sigmas: npt.NDArray[np.float32] | npt.NDArray[np.float64]
) -> _F64Array:
    """diffusers' `_sigma_to_t`: the fractional timestep of each σ (float64, shape (n,)) in the
    ascending log σ table (float32 or float64, shape (N,), N ≥ 2)."""

def _diffusers_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> _F64Array:
    """diffusers' `_convert_to_karras` arithmetic: n Karras σ (float64) from sigma_max down."""

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
    sigma_table: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None,
    unipc: bool = False,
    flow_sigmas: list[float] | None = None,
    shift_terminal: float | None = None,
    karras_flow: bool = False,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> tuple[_I64Array, _F64Array]:
    """diffusers' DPMSolverMultistepScheduler.set_timesteps: `alphas_cumprod` is float64 of
    shape (N,) with the zero-SNR fix applied; pass exactly one of `num_inference_steps` and
    `timesteps`. Returns timesteps (int64, shape (n,)) and sigmas (float64 holding float32
    values, shape (n + 1,)). `round_timesteps` should be `beta_schedule != "squaredcos_cap_v2"`
    (it only affects Karras and Lu sigmas, as in diffusers). `sigma_table`: σ and log σ
    (float32, shape (N,)) as the caller's framework computes them, else rdiff's own."""

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

# A tensor argument: a numpy array, a torch tensor (read through DLPack), or any object with
# ``__dlpack__``, ``__array_interface__`` or ``__cuda_array_interface__`` (src/py/tensor.rs).
_Tensor: TypeAlias = Any

class _SolverArgs(TypedDict):
    """The solver options both DPM-Solver cores take (``SolverArgs`` in src/py/dpm_multistep.rs)."""

    algorithm_type: str
    solver_type: str
    prediction_type: str
    thresholding: bool
    dynamic_thresholding_ratio: float
    sample_max_value: float
    flow: bool
    learned_variance: bool
    sigmas: list[float]

class _DpmMultistep:
    """Per-loop constants of the multistep DPM-Solver (``rdiff.DPMSolverMultistepScheduler``);
    built by ``set_timesteps``."""

    def __init__(
        self,
        solver: _SolverArgs,
        solver_order: int,
        lower_order_final: bool,
        euler_at_final: bool,
        final_sigma_zero: bool,
    ) -> None: ...
    def order(self, step_index: int, lower_order_nums: int) -> int:
        """diffusers' order rule for step ``step_index``."""
    def coefficients(self, step_index: int, order: int) -> list[float]:
        """The step's scalars (p, q, r, w, a, w0, w1, w2, c)."""
    def step(
        self,
        step_index: int,
        lower_order_nums: int,
        *,
        model_output: _Tensor,
        sample: _Tensor,
        history: list[_Tensor | None],
        hist: _Tensor,
        prev: _Tensor,
        noise: _Tensor | None = None,
        bounds: _Tensor | None = None,
        stream: int = 0,
    ) -> None:
        """One fused step: the converted model output into ``hist``, the new sample into
        ``prev``. ``history``: earlier converted outputs, newest first; ``noise``: float32 (SDE
        types); ``bounds``: the thresholding scratch; ``stream``: the caller's CUDA stream."""

class _UniPcArgs(TypedDict):
    solver_type: Literal["bh1", "bh2"]
    prediction_type: str
    predict_x0: bool
    thresholding: bool
    dynamic_thresholding_ratio: float
    sample_max_value: float
    flow: bool
    solver_order: int
    lower_order_final: bool
    sigmas: list[float]

class _UniPc:
    """Per-loop constants of UniPC (``rdiff.UniPCMultistepScheduler``); built by
    ``set_timesteps``."""

    def __init__(self, solver: _UniPcArgs) -> None: ...
    def order(self, step_index: int, lower_order_nums: int) -> int:
        """diffusers' predictor order at ``step_index``."""
    def conversion(self, step_index: int) -> list[float]:
        """The conversion's (p, q, r, w) at ``step_index``: m = r·x + w·(p·x + q·mo)."""
    def weights(
        self, step_index: int, order: int, corrector: bool
    ) -> tuple[float, float, list[float], float]:
        """(a, w0, [w_1, …], wt) of the update from ``step_index`` to the next."""
    def step(
        self,
        step_index: int,
        lower_order_nums: int,
        corrector_order: int | None,
        *,
        model_output: _Tensor,
        sample: _Tensor,
        last_sample: _Tensor | None,
        history: list[_Tensor | None],
        hist: _Tensor,
        prev: _Tensor,
        corrected: _Tensor | None = None,
        bounds: _Tensor | None = None,
        predict: bool = True,
        stream: int = 0,
    ) -> int:
        """One fused step (corrector of the last interval, predictor of the next): the
        converted output into ``hist``, the corrected sample into ``corrected``, the result
        into ``prev``. Returns the predictor's order (0 when ``predict`` is off)."""

class _DpmSolverV3Args(TypedDict):
    solver_order: int
    predictor_pseudo: bool
    use_corrector: bool
    corrector_pseudo: bool
    lower_order_final: bool
    corrector_half: bool
    prediction_type: str

class _DpmSolverV3:
    """DPM-Solver-v3's statistics and per-loop coefficients (``rdiff.DPMSolverV3Scheduler``)."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        t_start: float,
        t_end: float,
        lambdas: list[float],
        l: npt.NDArray[np.float64],
        s: npt.NDArray[np.float64],
        b: npt.NDArray[np.float64],
        options: _DpmSolverV3Args,
    ) -> None: ...
    def set_timesteps(self, steps: int, skip_type: str, begin: int = 0) -> None:
        """The run's time steps on the EMS grid and the coefficients of steps ``begin``…"""
    @property
    def times(self) -> list[float]:
        """The continuous times t_0 > … > t_K of the run."""
    @property
    def indexes(self) -> list[int]:
        """The EMS grid index of every time step."""
    @property
    def orders(self) -> list[tuple[int, int]]:
        """(corrector order or 0, predictor order) of every step."""
    def history_needed(self, i: int) -> int:
        """The earlier f step ``i`` reads."""
    def coefficients(self) -> npt.NDArray[np.float64]:
        """Every step's coefficient rows, float64 (steps, 13, per_sample)."""
    def step(
        self,
        i: int,
        *,
        model_output: _Tensor,
        sample: _Tensor,
        last_sample: _Tensor | None,
        history: list[_Tensor],
        coef: _Tensor,
        hist: _Tensor,
        prev: _Tensor,
        corrected: _Tensor | None = None,
        stream: int = 0,
    ) -> None:
        """One fused step: f of the output into ``hist``, the corrected sample into
        ``corrected`` (with a corrector), the result into ``prev``."""

class _DpmSinglestep:
    """Per-loop constants of the singlestep DPM-Solver (``rdiff.DPMSolverSinglestepScheduler``)."""

    def __init__(self, solver: _SolverArgs, order_list: list[int]) -> None: ...
    def coefficients(self, step_index: int, order: int) -> list[float]:
        """The step's scalars (p, q, r, w, a, w0, w1, w2, c)."""
    def step(
        self,
        step_index: int,
        *,
        model_output: _Tensor,
        sample: _Tensor,
        start: _Tensor | None,
        history: list[_Tensor | None],
        hist: _Tensor,
        prev: _Tensor,
        noise: _Tensor | None = None,
        bounds: _Tensor | None = None,
        stream: int = 0,
    ) -> int:
        """One fused step converting at ``sample`` and updating from ``start`` (the group's
        first sample); returns the step's order (1 opens a group)."""

class _Ddim:
    """Per-scheduler constants of ``rdiff.DDIMScheduler`` and ``rdiff.DDPMScheduler``."""

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
    ) -> tuple[float, float, float, float, float, float, float, float, float, float]:
        """(p, q, d, h1, h2, h3, a, w0, w_eps, std) of a DDIM step."""
    def variance(self, timestep: int, prev_timestep: int) -> float:
        """DDIM's β̃ from ``timestep`` to ``prev_timestep`` (diffusers' ``_get_variance``)."""
    def ddpm_variances(self, timestep: int, prev_timestep: int) -> tuple[float, float]:
        """DDPM's (β̃_t clamped at 1e-20, β_t) from ``timestep`` to ``prev_timestep``."""
    def ddpm_coefficients(
        self, timestep: int, prev_timestep: int
    ) -> tuple[float, float, float, float, float, float, float, float, float, float]:
        """As ``ddim_coefficients`` for a DDPM step (std NaN for learned variances)."""
    def ddim(
        self,
        timestep: int,
        prev_timestep: int,
        eta: float,
        use_clipped_model_output: bool,
        *,
        model_output: _Tensor,
        sample: _Tensor,
        x0: _Tensor,
        prev: _Tensor,
        noise: _Tensor | None = None,
        bounds: _Tensor | None = None,
        stream: int = 0,
    ) -> None:
        """One fused DDIM step: x₀ into ``x0``, the new sample into ``prev``."""
    def ddpm(
        self,
        timestep: int,
        prev_timestep: int,
        *,
        model_output: _Tensor,
        sample: _Tensor,
        x0: _Tensor,
        prev: _Tensor,
        noise: _Tensor | None = None,
        bounds: _Tensor | None = None,
        stream: int = 0,
    ) -> None:
        """One fused DDPM step (learned variances read the model output's second half)."""
    def lcm_coefficients(
        self, timestep: int, prev_timestep: int, timestep_scaling: float, last: bool
    ) -> tuple[float, float, float, float, float, float, float, float, float, float]:
        """As ``ddim_coefficients`` for an LCM step."""
    def lcm(
        self,
        timestep: int,
        prev_timestep: int,
        timestep_scaling: float,
        last: bool,
        *,
        model_output: _Tensor,
        sample: _Tensor,
        x0: _Tensor,
        prev: _Tensor,
        noise: _Tensor | None = None,
        bounds: _Tensor | None = None,
        stream: int = 0,
    ) -> None:
        """One fused LCM step: the denoised sample into ``x0``, the new sample into ``prev``."""
    def tcd_coefficients(
        self, timestep: int, prev_timestep: int, eta: float, last: bool
    ) -> tuple[float, float, float, float, float, float, float, float, float, float]:
        """As ``ddim_coefficients`` for a TCD step."""
    def tcd(
        self,
        timestep: int,
        prev_timestep: int,
        eta: float,
        last: bool,
        *,
        model_output: _Tensor,
        sample: _Tensor,
        x0: _Tensor,
        prev: _Tensor,
        noise: _Tensor | None = None,
        stream: int = 0,
    ) -> None:
        """One fused TCD step: the noised estimate into ``x0``, the new sample into ``prev``."""

def _ddim_timesteps(
    num_train_timesteps: int, num_inference_steps: int, timestep_spacing: str, steps_offset: int
) -> npt.NDArray[np.int64]:
    """diffusers' DDIM/DDPM timesteps for ``num_inference_steps`` (int64, descending)."""

class _Euler:
    """Per-loop constants of the Euler family (``EulerDiscreteScheduler``,
    ``EulerAncestralDiscreteScheduler``, ``FlowMatchEulerDiscreteScheduler``, Heun, KDPM2 and
    KDPM2 ancestral)."""

    def __init__(
        self,
        sigmas: list[float],
        prediction_type: str,
        kind: str,
        stochastic: bool = False,
        clip_sample_range: float | None = None,
        sigmas_interpol: list[float] | None = None,
        sigmas_down: list[float] | None = None,
        sigmas_up: list[float] | None = None,
    ) -> None: ...
    def churn(self, step_index: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
        """The churn γ of step ``step_index`` (0 outside [s_tmin, s_tmax])."""
    def coefficients(
        self, step_index: int, gamma: float = 0.0
    ) -> tuple[float, float, float, float, float]:
        """(p, q, a, c, noise): x0 = p·x + q·mo, prev = a·x + c·mo + noise·n."""
    def step(
        self,
        step_index: int,
        gamma: float = 0.0,
        *,
        model_output: _Tensor,
        sample: _Tensor,
        prev: _Tensor,
        x0: _Tensor | None = None,
        noise: _Tensor | None = None,
        stream: int = 0,
    ) -> None:
        """One fused step: the new sample into ``prev``, x0 into ``x0`` when given."""
    def second_stage(
        self,
        step_index: int,
        gamma: float = 0.0,
        *,
        model_output: _Tensor,
        sample: _Tensor,
        first_sample: _Tensor,
        first_x0: _Tensor,
        x0: _Tensor,
        prev: _Tensor,
        noise: _Tensor | None = None,
        stream: int = 0,
    ) -> None:
        """The second stage (Heun, KDPM2, KDPM2 ancestral with ``noise``): x0 and the new
        sample from the first stage's state."""

class _Lms:
    """Per-loop constants of ``LMSDiscreteScheduler``."""

    def __init__(self, sigmas: list[float], prediction_type: str) -> None: ...
    def coefficients(self, step_index: int, order: int) -> list[float]:
        """c_0 … c_{order−1} of the step (c_j weighs the slope of j steps back)."""
    def step(
        self,
        step_index: int,
        order: int,
        *,
        model_output: _Tensor,
        sample: _Tensor,
        history: list[_Tensor],
        derivative: _Tensor,
        x0: _Tensor,
        prev: _Tensor,
        scratch: _Tensor | None = None,
        stream: int = 0,
    ) -> None:
        """One fused step: the slope, x0 and the new sample (above order 4, with the earlier
        slopes first summed into ``scratch``)."""

def _euler_schedule(
    table: npt.NDArray[np.float32],
    log_table: npt.NDArray[np.float32],
    num_inference_steps: int | None = None,
    timesteps: list[float] | None = None,
    spacing: str = "linspace",
    steps_offset: int = 0,
    interpolation: str = "linear",
    sigma_kind: str = "default",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    final_sigma: str = "zero",
    continuous: bool = False,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``EulerDiscreteScheduler.set_timesteps``: float32 (timesteps, sigmas)."""

def _euler_schedule_from_sigmas(
    log_table: npt.NDArray[np.float32], sigmas: list[float], continuous: bool = False
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``set_timesteps(sigmas=...)``: the caller's σ and their timesteps (float32)."""

def _flow_match_training_sigmas(
    num_train_timesteps: int, shift: float | None = None
) -> npt.NDArray[np.float32]:
    """The training σ of ``FlowMatchEulerDiscreteScheduler`` (float32, descending)."""

def _flow_match_schedule(
    num_inference_steps: int | None,
    sigmas: list[float] | None,
    timesteps: list[float] | None,
    num_train_timesteps: int,
    shift_type: str,
    shift: float,
    shift_terminal: float | None,
    sigma_kind: str,
    invert: bool,
    sigma_min: float,
    sigma_max: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``FlowMatchEulerDiscreteScheduler.set_timesteps``: float32 (timesteps, sigmas)."""

def _singlestep_order_list(
    steps: int, solver_order: int, lower_order_final: bool, final_sigma_zero: bool
) -> list[int]:
    """diffusers' ``DPMSolverSinglestepScheduler.get_order_list``."""

def _cuda_kernels() -> list[str]:
    """The CUDA kernel sources rdiff ships."""

def _cuda_compile(kernel: str, arch: str) -> dict[str, Any]:
    """NVRTC compile of one kernel source: cubin, ptx, log, options, per-entry resources."""

def _register_cuda_libraries(groups: list[list[str]]) -> None:
    """Record the environment's CUDA libraries (groups of candidate paths, loading order);
    loaded when rdiff first needs CUDA."""

def _load_cuda_libraries() -> list[str]:
    """Load the registered CUDA libraries now (once per process); the paths loaded."""

def _emulated_kernels() -> list[str]:
    """The entry points of the host-compiled kernels (the emulated launcher)."""

def _emulated_launches() -> int:
    """Kernel launches the emulated launcher has run in this process."""

def _set_emulated_backend(max_blocks: int | None = None) -> int | None:
    """Run every fused pass over CPU tensors on the CUDA kernels through the emulated launcher
    (at most ``max_blocks`` blocks), or on the CPU loops with None; returns the previous value."""

def _unet_attention(
    q: _Tensor,
    k: _Tensor,
    v: _Tensor,
    out: _Tensor,
    b: int,
    heads: int,
    compute_dtype: str,
    stream: int = 0,
) -> None:
    """One multi-head attention by the path a device model's call takes: ``q`` and ``out``
    ``[heads·dh][b·tq]``, ``k`` and ``v`` ``[heads·dh][b·tk]``, float32, contiguous; CPU
    tensors on the emulated launcher, CUDA tensors on their device (private: tests)."""

def _philox_normal_fill(out: _Tensor, seed: int, offset: int) -> None:
    """Fill a contiguous float32 CPU buffer with elements 0..numel of the Philox stream."""

def _torch_normal_fill(out: _Tensor, state: npt.NDArray[np.uint8], dtype: str, math: str) -> None:
    """Fill a contiguous float32 CPU buffer (>= 16 elements) with what ``torch.randn`` draws in
    ``dtype`` (float32, bfloat16, float16) from the CPU generator state ``state``
    (``get_state().numpy()``), with the ln/sin/cos ``math`` (libm, cephes, cephes_fma); writes
    into ``state`` the state torch would leave."""

# -- Analytic-DPM (python/rdiff/analytic.py and schedulers/analytic_dpm.py wrap these) --------

def _gamma_batch_sums(
    mo: _Tensor,
    x: _Tensor | None,
    per_sample: int,
    prediction_type: str,
    alpha_cumprod: float,
) -> tuple[int, float, float, int, int]:
    """(count, Σv, Σv², Σv and Σv² in exact fixed point) of v = ‖ε‖²/d over a batch of model
    outputs (CPU), converted to ε from ``prediction_type`` at ᾱ_t = ``alpha_cumprod``."""

def _optimal_trajectory(
    gamma: list[float], alphas_cumprod: list[float], num_steps: int
) -> _I64Array:
    """Analytic-DPM's optimal trajectory: 0-based timesteps, descending."""

def _trajectory_cost(
    gamma: list[float], alphas_cumprod: list[float], timesteps: list[int]
) -> float:
    """Σ log(1 − (1 − ᾱ_t/ᾱ_s)·Γ_t/β̄_t) over consecutive timesteps of a trajectory."""

class _AnalyticDpm:
    """Every step's scalars of one Analytic-DPM loop (``rdiff.AnalyticDPMScheduler``)."""

    def __init__(
        self,
        alphas_cumprod: list[float],
        timesteps: list[int],
        gamma: list[float],
        form: str,
        eta: float,
        cov_max: float,
        last_cap: float | None,
        prediction_type: str,
        variances: list[float] | None = None,
    ) -> None: ...
    @property
    def variances(self) -> _F64Array:
        """σ² of every step."""
    @property
    def lambda2(self) -> _F64Array:
        """λ² of every step."""
    def coefficients(self, step_index: int) -> list[float]:
        """(c_x0, c_x, c_eps, sigma2) of one step."""
    def step(
        self,
        step_index: int,
        *,
        model_output: _Tensor,
        sample: _Tensor,
        x0: _Tensor,
        prev: _Tensor,
        noise: _Tensor | None = None,
        clip: tuple[float, float] | None = None,
        philox: tuple[int, int] | None = None,
        stream: int = 0,
    ) -> None:
        """One fused step: x̂₀ into ``x0``, the new sample into ``prev``; the noise is the
        float32 ``noise`` or the Philox stream ``philox = (seed, offset)``."""

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
    out: _Tensor,
    terms: list[tuple[float, _Tensor]],
    conv: tuple[_Tensor, _Tensor, float, float, float] | None = None,
    hist: _Tensor | None = None,
    threshold: tuple[float, float, float] | None = None,
    bounds: _Tensor | None = None,
    stream: int = 0,
    *,
    r: float = 0.0,
    w: float = 1.0,
    chain: tuple[_Tensor, float, float, list[float]] | None = None,
    coef: _Tensor | None = None,
    rows: dict[str, int] | None = None,
) -> None:
    """out = Σ c·term (+ wm·m, m = r·x + w·(p·x + q·mo), thresholded into ``bounds``, kept in
    hist): one fused pass (``rdiff.sample``, ``rdiff.k``); ``chain = (mid, a2, wm2, [c2_i])``
    continues from y kept in ``mid``; ``rows`` names rows of ``coef`` as per-element weights
    ("r", "a", "wm", "c0".."c3", "bias", "chain_a", "chain_wm", "chain_c0".., "chain_bias")."""

def _error_norm(
    hi: _Tensor,
    lo: _Tensor,
    prev: _Tensor,
    atol: float,
    rtol: float,
    out: _Tensor,
    stream: int = 0,
) -> None:
    """The adaptive solver's error norm of each sample into ``out`` (float64)."""

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
def _k_two_stage(
    kind: str,
    sigma: float,
    sigma_mid: float,
    sigma_to: float,
    noise: float = 0.0,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> tuple[list[float], float, list[float], float]: ...
def _k_dpm_solver_step(
    order: int, t: float, t_next: float, r1: float = 0.5, r2: float = 2.0 / 3.0
) -> tuple[float, list[float], list[float]]: ...

class _UNet2D:
    """The native UNet2DModel or UNet2DConditionModel (by the config's ``_class_name``) on the
    device chosen at load; ``rdiff.UNet2DModel`` / ``rdiff.UNet2DConditionModel`` wrap it."""

    @staticmethod
    def from_dir(
        path: str,
        weights_name: str,
        device: int | None = None,
        max_blocks: int = 8,
        threads: int = 0,
        compute_dtype: str = "float32",
    ) -> _UNet2D:
        """Load ``config.json`` and the safetensors ``weights_name`` from ``path`` for
        ``device``: None the CPU, n CUDA device n, -1 the emulated launcher (tests);
        ``compute_dtype`` "float32", "bfloat16", or "float16" and "tfloat32" (a device
        only)."""
    @staticmethod
    def from_tensors(
        config_json: str,
        tensors: dict[str, npt.NDArray[np.float32]],
        device: int | None = None,
        max_blocks: int = 8,
        threads: int = 0,
        compute_dtype: str = "float32",
    ) -> _UNet2D:
        """Build from a config.json text and float32 arrays, for ``device`` and
        ``compute_dtype`` as in from_dir."""
    @property
    def in_channels(self) -> int: ...
    @property
    def out_channels(self) -> int: ...
    @property
    def cross_attention_dim(self) -> int | None:
        """The width of ``encoder_hidden_states`` (a UNet2DConditionModel), else None."""
    @property
    def device(self) -> int | None:
        """The CUDA ordinal, -1 for the emulated launcher, None for the CPU."""
    @property
    def compute_dtype(self) -> str:
        """What the matrix products compute in: "float32", "bfloat16" or "float16"."""
    @property
    def arena_bytes(self) -> int:
        """Bytes the activation arena has allocated so far."""
    @property
    def weight_bytes(self) -> int:
        """Bytes of weights the model holds on the host (half-precision matrices as stored). A
        device model's matrices leave the host once uploaded, at load."""
    @property
    def unused_weights(self) -> list[str]:
        """The names of the weights' tensors the model does not read (sorted)."""
    @property
    def timesteps_on_device(self) -> bool:
        """Whether ``forward`` may take the timesteps as a float32 tensor on the model's
        device (a device model whose time projection needs only the timesteps)."""
    @property
    def device_traffic(self) -> tuple[int, int] | None:
        """``(allocations, host-to-device copies)`` on the model's device since load; None on
        the CPU. A warm call with device timesteps and no host-side conditioning adds none."""
    @property
    def device_weight_bytes(self) -> int | None:
        """Bytes of the weights' copies on the model's device (the matrices uploaded at load,
        the vectors by the first call); None on the CPU. A bfloat16 or float16 model keeps
        its matrices there in that type."""
    def check(self, shape: tuple[int, int, int, int], timesteps: int) -> None:
        """ValueError unless a call with this sample shape and timestep count can run."""
    def forward(
        self,
        sample: _Tensor,
        timesteps: list[float] | _Tensor,
        out: _Tensor,
        class_indices: list[int] | None = None,
        class_values: list[float] | None = None,
        stream: int = 0,
        context: _Tensor | None = None,
        text_embeds: list[float] | None = None,
        time_ids: list[float] | None = None,
        timestep_cond: list[float] | None = None,
        down_residuals: list[_Tensor] | None = None,
        mid_residual: _Tensor | None = None,
        adapter_residuals: list[_Tensor] | None = None,
    ) -> None:
        """The forward pass over NCHW buffers on the model's device (GIL released);
        ``timesteps`` host values or a float32 tensor there (one per sample, or one for all);
        ``context`` is ``encoder_hidden_states`` (batch, tokens, width) there too, and
        ``down_residuals`` / ``mid_residual`` a ControlNet's residuals (NCHW, both or
        neither), ``adapter_residuals`` a T2I-Adapter's; the rest the added conditioning as
        host float32 rows."""
