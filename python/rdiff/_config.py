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

    __setitem__ = __delitem__ = __setattr__ = update = pop = setdefault = _refuse  # type: ignore

    def __reduce__(self) -> tuple:
        # rebuilt whole (pickle's and deepcopy's default would set item by item)
        return (FrozenConfig, (dict(self),))


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
            config = json.load(f)
        for key in ("cache_dir", "local_files_only", "revision", "token", "torch_dtype"):
            kwargs.pop(key, None)
        return cls.from_config(config, **kwargs)


def _diffusers_version() -> str:
    try:
        from importlib.metadata import version

        return version("diffusers")
    except Exception:
        return "0.30.0"
