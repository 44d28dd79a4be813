"""`python/rdiff/_rdiff.pyi` against the built module: every function, class, method and
property the extension defines is in the stub and the other way round, with the same
parameter names, kinds and defaults-or-not (from PyO3's ``__text_signature__``), so the stub
cannot drift from the bindings."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from rdiff import _rdiff

STUB = Path(_rdiff.__file__).with_name("_rdiff.pyi")


def _stub() -> ast.Module:
    return ast.parse(STUB.read_text(encoding="utf-8"))


def _is_typeddict(node: ast.ClassDef) -> bool:
    return any(isinstance(b, ast.Name) and b.id == "TypedDict" for b in node.bases)


def _stub_params(fn: ast.FunctionDef, skip_self: bool) -> list[tuple[str, str, bool]]:
    """(name, kind, has_default) of a stub function's parameters."""
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    if skip_self and positional and positional[0].arg in ("self", "cls"):
        positional = positional[1:]
    n_defaults = len(a.defaults)
    out = []
    for i, p in enumerate(positional):
        has_default = i >= len(positional) - n_defaults
        out.append((p.arg, "positional", has_default))
    for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        out.append((p.arg, "keyword", d is not None))
    return out


def _module_params(obj) -> list[tuple[str, str, bool]]:
    sig = inspect.signature(obj)
    out = []
    for p in sig.parameters.values():
        if p.name in ("self", "cls", "$self", "$cls"):
            continue
        kind = "keyword" if p.kind is p.KEYWORD_ONLY else "positional"
        out.append((p.name, kind, p.default is not p.empty))
    return out


def _public(names) -> set[str]:
    return {n for n in names if not (n.startswith("__") and n.endswith("__"))}


def test_every_module_name_is_in_the_stub_and_back():
    stub = _stub()
    declared = set()
    for node in stub.body:
        if isinstance(node, ast.FunctionDef):
            declared.add(node.name)
        elif isinstance(node, ast.ClassDef) and not _is_typeddict(node):
            declared.add(node.name)
    module = _public(dir(_rdiff)) - {"_rdiff"}
    assert module - declared == set(), "in the module, missing from the stub"
    assert declared - module == set(), "in the stub, missing from the module"


def _functions():
    return [n for n in _stub().body if isinstance(n, ast.FunctionDef)]


@pytest.mark.parametrize("fn", _functions(), ids=lambda f: f.name)
def test_function_signatures_match(fn):
    assert _stub_params(fn, skip_self=False) == _module_params(getattr(_rdiff, fn.name))


def _classes():
    return [
        n
        for n in _stub().body
        if isinstance(n, ast.ClassDef)
        and not _is_typeddict(n)
        and not issubclass(getattr(_rdiff, n.name), BaseException)
    ]


@pytest.mark.parametrize("cls", _classes(), ids=lambda c: c.name)
def test_class_members_and_signatures_match(cls):
    real = getattr(_rdiff, cls.name)
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    declared = set(methods) - {"__init__"}
    present = {n for n in _public(vars(real)) if not n.startswith("__") and n not in ("_rdiff",)}
    assert present == declared, f"module {sorted(present)} vs stub {sorted(declared)}"
    if "__init__" in methods:
        assert _stub_params(methods["__init__"], skip_self=True) == _module_params(real)
    for name, node in methods.items():
        if name == "__init__":
            continue
        decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
        member = inspect.getattr_static(real, name)
        if "property" in decorators:
            assert not callable(member) or hasattr(member, "__get__"), name
            assert type(member).__name__ == "getset_descriptor", name
            continue
        if "overload" in decorators:
            continue
        assert callable(getattr(real, name)), name
        assert _stub_params(node, skip_self="staticmethod" not in decorators) == (
            _module_params(getattr(real, name))
        ), name
