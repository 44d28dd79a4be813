"""A diffusers-compatible configuration for rdiff's schedulers, without diffusers.

A scheduler's constructor arguments are its config: ``scheduler.config`` is a read-only
mapping with attribute access (like diffusers' ``FrozenDict``), ``from_config`` accepts a dict,
a diffusers ``FrozenDict`` or an object with a ``.config``, and ``save_pretrained`` /
``from_pretrained`` read and write ``scheduler_config.json`` in diffusers' format.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from typing import Any

CONFIG_NAME = "scheduler_config.json"


class FrozenConfig(dict):
    """A read-only dict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a scheduler's config is read-only; use register_to_config")

    # every mutator of dict (diffusers' FrozenDict misses clear, popitem and |=, which then
    # change a config its scheduler no longer reads)
    __setitem__ = __delitem__ = __setattr__ = __delattr__ = _refuse  # type: ignore
    update = pop = popitem = setdefault = clear = __ior__ = _refuse  # type: ignore

    def __reduce__(self) -> tuple:
        # rebuilt whole (pickle's and deepcopy's default would set item by item)
        return (FrozenConfig, (dict(self),))


# The type of every scheduler config field that code converts (or the core reads), checked
# by name in each scheduler's __init__ before anything else reads it (fields not listed, such
# as trained_betas or an EMS table, have their own checks). "?": None is accepted too, where
# diffusers reads None as "off" or "unset". Integer flags 0 and 1 count as bools, as diffusers
# reads them (a string such as "false", which diffusers reads as True, does not).
_SUMMED_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")  # summed
CONFIG_TYPES: dict[str, str] = {
    **dict.fromkeys(
        """num_train_timesteps steps_offset solver_order original_inference_steps
        base_image_seq_len max_image_seq_len""".split(),
        "int",
    ),
    **dict.fromkeys(
        """beta_start beta_end clip_sample_range sample_max_value flow_shift shift eta
        dynamic_thresholding_ratio timestep_scaling lambda_min_clipped""".split(),
        "float",
    ),
    **dict.fromkeys(
        "base_shift max_shift shift_terminal sigma_min sigma_max clip_sigma_pixels".split(),
        "float?",
    ),
    **dict.fromkeys(_SUMMED_FLAGS, "bool"),  # (diffusers' sum of the three fails on None)
    **dict.fromkeys(
        """clip_sample set_alpha_to_one thresholding rescale_betas_zero_snr use_lu_lambdas
        use_flow_sigmas lower_order_final euler_at_final use_dynamic_shifting invert_sigmas
        stochastic_sampling clip_x0 corrector_half corrector_pseudo predict_x0
        predictor_pseudo use_corrector""".split(),
        "bool?",
    ),
    **dict.fromkeys(
        """beta_schedule prediction_type timestep_spacing algorithm_type solver_type
        final_sigmas_type interpolation_type timestep_type time_shift_type skip_type
        trajectory form""".split(),
        "str",
    ),
    "variance_type": "str?",
}
_MAX_TRAIN_TIMESTEPS = 1 << 20  # (the core's limit on any step count)
_INT_LIMIT = 1 << 62  # (what the core's integers hold)


def check_config(config: dict) -> None:
    """TypeError / ValueError naming the first field of ``config`` whose value has the wrong
    type for ``CONFIG_TYPES`` (before int()/float() or the core would fail without the name)."""
    import numpy as np

    for name, value in config.items():
        kind = CONFIG_TYPES.get(name)
        if kind is None or (value is None and kind.endswith("?")):
            continue
        kind = kind.rstrip("?")
        got = f"got {type(value).__name__} {value!r}"
        is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        if kind == "bool":
            if not (isinstance(value, (bool, np.bool_)) or (is_int and value in (0, 1))):
                raise TypeError(f"{name}: expected a bool, {got}")
        elif kind == "int":
            if not is_int:
                raise TypeError(f"{name}: expected an integer, {got}")
            high = _MAX_TRAIN_TIMESTEPS if name == "num_train_timesteps" else _INT_LIMIT
            if abs(int(value)) > high:
                raise ValueError(f"{name}: {value} is more than rdiff supports ({high})")
        elif kind == "float":
            real = isinstance(value, (int, float, np.integer, np.floating))
            if not real or isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name}: expected a number, {got}")
        elif not isinstance(value, str):
            raise TypeError(f"{name}: expected a str, {got}")


def _to_plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


class ConfigMixin:
    """Config handling shared by rdiff's schedulers (the diffusers subclasses use diffusers')."""

    config_name = CONFIG_NAME

    def _register(self, **kwargs: Any) -> None:
        check_config(kwargs)
        object.__setattr__(self, "_rdiff_config", FrozenConfig(kwargs))

    @property
    def config(self) -> FrozenConfig:
        return self._rdiff_config

    def register_to_config(self, **kwargs: Any) -> None:
        """Update config entries (diffusers pipelines call this to adjust a scheduler)."""
        merged = dict(self._rdiff_config)
        merged.update(kwargs)
        object.__setattr__(self, "_rdiff_config", FrozenConfig(merged))

    @classmethod
    def _init_params(cls) -> set[str]:
        params = inspect.signature(cls.__init__).parameters
        return {n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD}

    @classmethod
    def from_config(cls, config: Any = None, **kwargs: Any):
        """Build from a dict, a diffusers FrozenDict or config, or anything with ``.config``."""
        if config is None:
            config = {}
        if hasattr(config, "config") and not isinstance(config, dict):
            config = config.config
        if isinstance(config, (str, os.PathLike)):
            raise TypeError(
                f"config: expected a dict, got the path {os.fspath(config)!r}; "
                f"use {cls.__name__}.from_pretrained to load a folder"
            )
        if not isinstance(config, Mapping):
            raise TypeError(
                f"config: expected a dict (a scheduler's config), got {type(config).__name__}"
            )
        merged = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        merged.update(kwargs)
        allowed = cls._init_params()
        return cls(**{k: v for k, v in merged.items() if k in allowed})

    def save_config(self, save_directory: str | os.PathLike, **_: Any) -> None:
        os.makedirs(save_directory, exist_ok=True)
        data = {k: _to_plain(v) for k, v in self.config.items()}
        data["_class_name"] = type(self).__name__
        data["_diffusers_version"] = _diffusers_version()
        with open(os.path.join(save_directory, CONFIG_NAME), "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write ``scheduler_config.json`` into ``save_directory``."""
        self.save_config(save_directory, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        **kwargs: Any,
    ):
        """Load from a local folder holding ``scheduler_config.json`` (or its ``subfolder``)."""
        folder = os.fspath(pretrained_model_name_or_path)
        if subfolder:
            folder = os.path.join(folder, subfolder)
        path = folder if folder.endswith(".json") else os.path.join(folder, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} at {path} (rdiff loads local folders only)")
        with open(path) as f:
            try:
                config = json.load(f)
            except ValueError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise TypeError(f"{path}: expected a JSON object, got {type(config).__name__}")
        for key in ("cache_dir", "local_files_only", "revision", "token", "torch_dtype"):
            kwargs.pop(key, None)
        return cls.from_config(config, **kwargs)


def _diffusers_version() -> str:
    try:
        from importlib.metadata import version

        return version("diffusers")
    except Exception:
        return "0.30.0"
