"""The rules of docs/architecture.md that can be read off the source: no import circle among
the crate's modules, device dispatch in src/target.rs only (no `cfg(feature = "cuda")` in the
bindings but for the NVRTC compile report), Python exceptions built in one place
(src/py/errors.rs), and one engine (every kernel launch goes through the fused pass, the error
norm or the UNet)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

pytestmark = pytest.mark.skipif(not SRC.is_dir(), reason="needs the source tree")


def _modules() -> dict[str, Path]:
    """Module path (`cpu::lincomb`) → file, test modules excluded."""
    out = {}
    for p in SRC.rglob("*.rs"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] in ("mod", "lib"):
            parts = parts[:-1]
        if parts and parts[-1] == "tests":
            continue
        out["::".join(parts)] = p
    return out


def _code(p: Path) -> str:
    """The file without its comments and its `#[cfg(test)] mod tests { … }` tail."""
    s = p.read_text(encoding="utf-8")
    s = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", s, flags=re.S)
    return re.sub(r"//[^\n]*", "", s)


def _imports() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(parts: list[str]) -> str | None:
        for k in range(len(parts), 0, -1):
            m = "::".join(parts[:k])
            if m in mods:
                return m
        return None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        here = m.split("::") if m else []
        for kind, rest in re.findall(r"\b(crate|super)::([A-Za-z0-9_:]+)", _code(p)):
            # `super` of module a::b (a/b.rs or a/b/mod.rs) is a.
            base = [] if kind == "crate" else here[:-1]
            t = resolve(base + rest.split("::"))
            if t and t != m and not m.startswith(t + "::"):
                edges[m].add(t)
    return edges


def test_no_import_circle_among_modules():
    edges = _imports()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(v: str) -> None:
        state[v] = 1
        path.append(v)
        for w in sorted(edges[v]):
            if state.get(w) == 1:
                cycle = [*path[path.index(w) :], w]
                raise AssertionError("import circle: " + " → ".join(cycle))
            if w not in state:
                visit(w)
        path.pop()
        state[v] = 2

    for v in sorted(edges):
        if v not in state:
            visit(v)


def test_device_dispatch_lives_in_target():
    offenders = []
    for p in (SRC / "py").glob("*.rs"):
        n = _code(p).count('cfg(feature = "cuda")')
        if n and p.name != "cuda.rs":
            offenders.append(f"{p.name}: {n}")
    assert not offenders, offenders
    for p in SRC.rglob("*.rs"):
        if "cuda" in p.relative_to(SRC).parts or p.name == "target.rs":
            continue
        assert "StreamLauncher" not in _code(p), f"{p}: launches on a device outside target.rs"


def test_python_exceptions_are_built_in_one_place():
    for p in (SRC / "py").glob("*.rs"):
        if p.name != "errors.rs":
            assert "new_err(" not in _code(p), f"{p.name} builds a PyErr beside the error enum"


def test_one_fused_engine():
    """Scheduler steps and samplers launch one kernel family (lincomb, with threshold as its
    first pass) and the error norm; no other elementwise step kernel exists."""
    kernels = sorted(p.stem for p in (SRC.parent / "kernels").glob("*.cu"))
    assert kernels == [
        "error_norm",
        "gemm",
        "lincomb",
        "threshold",
        "unet_attention",
        "unet_conv",
        "unet_ops",
    ]
