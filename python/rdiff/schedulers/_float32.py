"""diffusers' float32 schedule arithmetic, with the library that computes it.

diffusers forms σ-derived schedule values (KDPM2's log-midpoints, the ancestral σ_up and
σ_down, the input scaling √(σ² + 1)) with torch's float32 ``sqrt``, ``log``, ``exp`` and
``lerp``. These are not correctly rounded on every CPU: torch's AVX2 kernels differ from
numpy's in the last bit where its AVX-512 ones agree. One ulp of a σ moves a midpoint's
timestep, and a half-precision input by a rounding step, so a class that stands in for
diffusers' computes them with torch when torch is loaded, and with numpy otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _tensor


class Float32Math:
    """Elementwise float32 math on numpy arrays, by torch (``torch_ops``) or numpy."""

    def __init__(self, torch_ops: bool):
        self._torch = _tensor.torch_module() if torch_ops else None

    def _apply(self, name: str, *arrays: np.ndarray, **kw: Any) -> np.ndarray:
        a = [np.ascontiguousarray(x, dtype=np.float32) for x in arrays]
        if self._torch is None:
            with np.errstate(divide="ignore", invalid="ignore"):
                return _NUMPY[name](*a, **kw)
        t = [self._torch.from_numpy(x) for x in a]
        return getattr(self._torch, name)(*t, **kw).numpy()

    def sqrt(self, a: np.ndarray) -> np.ndarray:
        """a ** 0.5, as diffusers writes it (torch's pow by ½ is its sqrt)."""
        if self._torch is None:
            return self._apply("sqrt", a)
        return self._apply("pow", a, exponent=0.5)

    def log(self, a: np.ndarray) -> np.ndarray:
        return self._apply("log", a)

    def exp(self, a: np.ndarray) -> np.ndarray:
        return self._apply("exp", a)

    def lerp_half(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """torch.lerp(start, end, 0.5)."""
        if self._torch is None:
            return self._apply("lerp", start, end)
        return self._apply("lerp", start, end, weight=0.5)


_NUMPY = {
    "sqrt": np.sqrt,
    "log": np.log,
    "exp": np.exp,
    # torch's lerp at a weight ≥ ½: end − (end − start)·(1 − w)
    "lerp": lambda s, e: (e - (e - s) * np.float32(0.5)).astype(np.float32),
}


def float32_math(scheduler: Any) -> Float32Math:
    """The arithmetic ``scheduler``'s diffusers peer uses: torch's for the torch-facing
    classes (``rdiff.diffusers``) when torch is loaded, numpy's otherwise."""
    return Float32Math(bool(scheduler._torch_timesteps) and _tensor.torch_module() is not None)
