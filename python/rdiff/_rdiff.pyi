"""Type stubs for the compiled extension ``rdiff._rdiff`` (partial)."""

from typing import Any

import numpy as np
import numpy.typing as npt

def __getattr__(name: str) -> Any: ...  # the classes and functions not stubbed yet

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
