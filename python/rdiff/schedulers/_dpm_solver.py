"""What the multistep and singlestep DPM-Solver schedulers share: the solver options the Rust
core takes, the start of a step, SDE noise, the history and the forward process."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _tensor
from ._base import SchedulerBase, thresholding_scratch

SIGMA_FLAGS = (
    ("use_karras_sigmas", "karras"),
    ("use_lu_lambdas", "lu"),
    ("use_exponential_sigmas", "exponential"),
    ("use_beta_sigmas", "beta"),
    ("use_flow_sigmas", "flow"),
)


class DPMSolverBase(SchedulerBase):
    """The shared half of ``DPMSolverMultistepScheduler`` and ``DPMSolverSinglestepScheduler``."""

    _core: Any
    model_outputs: list[Any]

    def _sigma_kind(self) -> str:
        cfg = self.config
        for flag, kind in SIGMA_FLAGS:
            if cfg.get(flag, False):
                return kind
        return "default"

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
            "sigmas": [float(s) for s in self.sigmas],
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

    # -- forward process -------------------------------------------------------------------
    def _alpha_sigma_for_noise(self, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._begin_index is None:
            idx = [self.index_for_timestep(t) for t in timesteps]
        elif self._step_index is not None:
            idx = [self._step_index] * len(timesteps)
        else:
            idx = [self._begin_index] * len(timesteps)
        sigma = np.asarray(self.sigmas, dtype=np.float64)[idx]
        if self.config.use_flow_sigmas:
            return 1.0 - sigma, sigma
        alpha = 1.0 / np.sqrt(sigma**2 + 1.0)
        return alpha, sigma * alpha
