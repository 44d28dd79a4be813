"""What the multistep and singlestep DPM-Solver schedulers share: the solver options the Rust
core takes, the start of a step, SDE noise, the history and the forward process."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _tensor
from .._rdiff import _diffusers_karras, _lincomb, _sigma_to_t
from ._base import SchedulerBase, thresholding_scratch


class DPMSolverBase(SchedulerBase):
    """The shared half of ``DPMSolverMultistepScheduler`` and ``DPMSolverSinglestepScheduler``."""

    _core: Any
    model_outputs: list[Any]

    def _training_sigmas(self, ac: np.ndarray) -> None:
        """σ̃ = √((1−ᾱ)/ᾱ) per training timestep (what ``step`` reads until set_timesteps), and
        the public α_t, σ_t, λ_t, σ arrays diffusers' class has."""
        alpha_t, sigma_t = np.sqrt(ac), np.sqrt(1.0 - ac)
        self._sigmas = ((1.0 - ac) / ac) ** 0.5
        self._publish(
            alphas_cumprod=ac,
            alpha_t=alpha_t,
            sigma_t=sigma_t,
            lambda_t=np.log(alpha_t) - np.log(sigma_t),
            sigmas=self._sigmas,
        )

    def _solver_args(self, algorithm_type: str, solver_type: str) -> dict:
        """The options of the Rust core (``SolverArgs``), from the config and ``sigmas``;
        what a step reads of them is kept on the instance for the loop."""
        cfg = self.config
        self._core_thresholding = bool(cfg.thresholding)
        self._core_solver_order = int(cfg.solver_order)
        learned = (
            cfg.get("variance_type") in ("learned", "learned_range")
            and cfg.prediction_type == "epsilon"
        )
        return {
            "algorithm_type": algorithm_type,
            "solver_type": solver_type,
            "prediction_type": cfg.prediction_type,
            "thresholding": bool(cfg.thresholding),
            "dynamic_thresholding_ratio": float(cfg.dynamic_thresholding_ratio),
            "sample_max_value": float(cfg.sample_max_value),
            "flow": bool(cfg.use_flow_sigmas),
            "learned_variance": bool(learned),
            "sigmas": [float(s) for s in self._sigmas],
        }

    def _index_for_missing_timestep(self, t: Any, ts: np.ndarray) -> int:
        # diffusers falls back to the last step for a timestep it does not know.
        return len(ts) - 1

    def _history(self) -> list:
        """The converted outputs of the steps before, newest first (at most two)."""
        return self.model_outputs[::-1][:2]

    def _push_history(self, hist: Any) -> None:
        self.model_outputs[:-1] = self.model_outputs[1:]
        self.model_outputs[-1] = hist

    def _given_noise(self, variance_noise: Any, x: Any) -> Any:
        noise = _tensor.to_float32(variance_noise, x)
        if tuple(noise.shape) != tuple(x.shape):
            raise ValueError(
                f"variance_noise: shape {tuple(noise.shape)} does not match sample's "
                f"{tuple(x.shape)}"
            )
        return noise

    def _outputs(self, x: Any, mo: Any) -> dict:
        """The step's output buffers (history entry, new sample) and thresholding scratch."""
        out = {
            "hist": _tensor.empty_like(x, dtype=mo.dtype),
            "prev": _tensor.empty_like(x, dtype=mo.dtype),
            "stream": _tensor.cuda_stream(x),
        }
        if self._core_thresholding:
            out["bounds"] = thresholding_scratch(x, int(x.shape[0]) if x.ndim else 1)
        return out

    # -- diffusers' solver methods, for code written against diffusers' class ------------
    # Each is one fused pass with the step's own coefficients (the Rust core's, in float64).

    def _coefficients(self, order: int) -> list[float]:
        if self._core is None or self._step_index is None:
            raise ValueError(
                "the step index is not set: call set_timesteps, then step (or "
                "_init_step_index(timestep)) first"
            )
        return self._core.coefficients(self._step_index, order)

    def _fused(self, like: Any, terms: list, conv: Any = None, threshold: bool = False) -> Any:
        out = _tensor.empty_like(like)
        thr = bounds = None
        if threshold:
            cfg = self.config
            thr = (float(cfg.dynamic_thresholding_ratio), 1.0, float(cfg.sample_max_value))
            bounds = thresholding_scratch(like, int(like.shape[0]))
        _lincomb(out, terms, conv, None, thr, bounds, _tensor.cuda_stream(like))
        return out

    @staticmethod
    def _sample_arg(args: tuple, kwargs: dict, sample: Any, at: int) -> Any:
        """diffusers' deprecated positional (timestep, prev_timestep, sample) arguments."""
        if sample is None:
            if len(args) > at:
                return args[at]
            raise ValueError("missing `sample` as a required keyword argument")
        return sample

    def convert_model_output(
        self, model_output: Any, *args: Any, sample: Any = None, **kwargs: Any
    ) -> Any:
        """diffusers' conversion of the network's output at the current step: x₀ (thresholded
        when configured) for the dpmsolver++ types, ε for dpmsolver; model_output's type and
        dtype. A learned variance's extra channels are dropped, as diffusers does."""
        sample = self._sample_arg(args, kwargs, sample, 1)
        mo = model_output
        if mo.ndim >= 2 and mo.shape[1] == 2 * sample.shape[1]:
            mo = mo[:, : sample.shape[1]]
        mo, x = _tensor.contiguous(mo), _tensor.contiguous(sample)
        p, q, r, w = self._coefficients(1)[:4]
        return self._fused(x, [(r, x)], (x, mo, p, q, w), self._core_thresholding)

    def dpm_solver_first_order_update(
        self, model_output: Any, *args: Any, sample: Any = None, noise: Any = None, **kwargs: Any
    ) -> Any:
        """diffusers' first-order (DDIM) update from the current step with the converted
        ``model_output`` (``noise`` for the SDE types)."""
        sample = self._sample_arg(args, kwargs, sample, 2)
        return self._update([model_output], sample, noise, 1)

    def _update(self, outputs: list, sample: Any, noise: Any, order: int) -> Any:
        """a·x + w0·m0 + w1·m1 + w2·m2 + c·noise with the order-``order`` coefficients;
        ``outputs`` oldest first, as diffusers' ``model_output_list``."""
        a, w0, w1, w2, c = self._coefficients(order)[4:]
        x = _tensor.contiguous(sample)
        ms = [_tensor.contiguous(m) for m in outputs[::-1][:order]]
        terms = [(a, x), *zip((w0, w1, w2)[: len(ms)], ms, strict=True)]
        if c != 0.0:
            if noise is None:
                raise ValueError("noise: the SDE algorithm types need noise")
            terms.append(
                (
                    c,
                    _tensor.contiguous(noise).to(dtype=x.dtype)
                    if _tensor.is_torch(x)
                    else np.asarray(noise, dtype=x.dtype),
                )
            )
        return self._fused(x, terms)

    def _threshold_sample(self, sample: Any) -> Any:
        """diffusers' dynamic thresholding of x₀ predictions (per sample: s = the
        ``dynamic_thresholding_ratio`` quantile of |x₀|, clamped to [1, sample_max_value];
        x₀ clamped to [−s, s] and divided by s)."""
        x = _tensor.contiguous(sample)
        return self._fused(x, [], (x, x, 1.0, 0.0, 1.0), threshold=True)

    def _sigma_to_t(self, sigma: Any, log_sigmas: Any) -> np.ndarray:
        """diffusers' σ → fractional timestep, interpolating log σ in ``log_sigmas``."""
        s = np.asarray(sigma, dtype=np.float64)
        table = np.asarray(log_sigmas)
        if table.dtype not in (np.float32, np.float64):
            table = table.astype(np.float64)
        return _sigma_to_t(s.reshape(-1), np.ascontiguousarray(table.reshape(-1))).reshape(s.shape)

    def _convert_to_karras(self, in_sigmas: Any, num_inference_steps: int) -> np.ndarray:
        """diffusers' Karras σ (ρ = 7) between ``in_sigmas``' last and first values (or
        the config's ``sigma_min`` / ``sigma_max`` where it has them)."""
        sig = np.asarray(in_sigmas.cpu() if _tensor.is_torch(in_sigmas) else in_sigmas)
        smin, smax = self.config.get("sigma_min"), self.config.get("sigma_max")
        smin = float(sig[-1]) if smin is None else float(smin)
        smax = float(sig[0]) if smax is None else float(smax)
        return _diffusers_karras(int(num_inference_steps), smin, smax, 7.0)

    # -- forward process -------------------------------------------------------------------
    def _alpha_sigma_for_noise(self, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sigma = np.asarray(self._sigmas, dtype=np.float64)[self._noise_indices(timesteps)]
        if self.config.use_flow_sigmas:
            return 1.0 - sigma, sigma
        alpha = 1.0 / np.sqrt(sigma**2 + 1.0)
        return alpha, sigma * alpha
