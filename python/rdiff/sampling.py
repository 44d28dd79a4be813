"""The DPM-Solver reference sampler, ``rdiff.sample``, and its model wrapper.

``sample`` is ``DPM_Solver(model_fn, noise_schedule, ...).sample(x, ...)`` of the DPM-Solver
reference code (LuChengTHU/dpm-solver, ``dpm_solver_pytorch.py``) with the same arguments,
defaults and meaning, for discrete and continuous (``linear_vp``) schedules. Every per-step
scalar (the times, the intermediate points s₁ = λ⁻¹(λ_s + r₁h), the combination weights, the
orders) comes from Rust in float64, and every update is one fused pass in Rust over buffers
allocated with the caller's framework (numpy arrays or torch CPU or CUDA tensors in, the same
type out; CUDA tensors run rdiff's kernel on the current stream), with the GIL released.
``model_wrapper`` is the reference's ``model_wrapper``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _tensor
from ._rdiff import (
    NoiseSchedule,
    _adaptive_next_h,
    _check_method,
    _error_norm,
    _lincomb,
    _multistep_orders,
    _ReferenceCore,
    _singlestep_schedule,
)

__all__ = ["SampleInfo", "model_wrapper", "sample"]

# The reference's fixed constants of the adaptive solver (`dpm_solver_adaptive`).
_H_INIT = 0.05
_THETA = 0.9
_T_ERR = 1e-5


@dataclass
class SampleInfo:
    """What a ``sample(..., return_info=True)`` run did.

    Attributes:
        nfe: the number of ``model_fn`` calls (for ``"adaptive"`` the reference's count,
            ``order`` per trial step, accepted or not; +1 with ``denoise_to_zero``).
        method: the sampling method.
        orders: the order of each (accepted) step.
        timesteps: the times visited, from ``t_start`` to ``t_end`` (accepted steps only).
        rejected: the number of rejected trial steps (``"adaptive"`` only; else 0).
    """

    nfe: int = 0
    method: str = "multistep"
    orders: list[int] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    rejected: int = 0


class _Value:
    """A model value m (ε or x₀): a concrete buffer, or the pending conversion
    x₀ = p·x + q·ε (optionally thresholded) that the next fused pass evaluates and keeps."""

    __slots__ = ("buf", "eps", "p", "q", "threshold", "x")

    def __init__(self, buf=None, x=None, eps=None, p=0.0, q=0.0, threshold=None):
        self.buf, self.x, self.eps, self.p, self.q, self.threshold = buf, x, eps, p, q, threshold


def _check_int(v: Any, name: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name}: must be at least {lo}, got {v}")
    return int(v)


class _Run:
    """One sampling run: the model calls, the fused passes and the bookkeeping."""

    def __init__(self, model_fn, x, schedule, core, algorithm, correcting_x0_fn, threshold):
        self.model_fn = model_fn
        self.x0 = x
        self.schedule = schedule
        self.core = core
        self.algorithm = algorithm
        self.correcting_x0_fn = correcting_x0_fn
        self.threshold = threshold
        self.batch = int(x.shape[0]) if x.ndim > 0 else 1
        self.torch = _tensor.is_torch(x)
        self.stream = _tensor.cuda_stream(x)
        self.info = SampleInfo()

    # ---------------------------------------------------------------- framework helpers

    def t_vec(self, t: float) -> Any:
        """The time as the model sees it: shape (batch,), float64 numpy or a torch tensor on
        x's device (float64 for float64 x, else float32, as the reference's timesteps)."""
        if self.torch:
            torch = _tensor.torch_module()
            dt = torch.float64 if self.x0.dtype == torch.float64 else torch.float32
            return torch.full((self.batch,), float(t), dtype=dt, device=self.x0.device)
        return np.full((self.batch,), float(t), dtype=np.float64)

    def as_buffer(self, v: Any, what: str) -> Any:
        """v as a contiguous buffer of x's framework, dtype, device and shape."""
        x = self.x0
        if _tensor.is_torch(v) != self.torch or not (self.torch or isinstance(v, np.ndarray)):
            raise TypeError(
                f"{what}: returned a {type(v).__name__} for a {type(x).__name__} input; return "
                "the input's type"
            )
        _tensor.check_float(v, what)
        if tuple(v.shape) != tuple(x.shape):
            raise ValueError(f"{what}: returned shape {tuple(v.shape)}, expected {tuple(x.shape)}")
        if self.torch:
            return v.detach().to(dtype=x.dtype, device=x.device).contiguous()
        return np.ascontiguousarray(v, dtype=x.dtype)

    def empty(self) -> Any:
        return _tensor.empty_like(self.x0)

    # ---------------------------------------------------------------- model values

    def eps(self, x: Any, t: float) -> Any:
        out = self.model_fn(x, self.t_vec(t))
        self.info.nfe += 1
        return self.as_buffer(out, "model_fn")

    def data_value(self, x: Any, eps: Any, t: float) -> _Value:
        """x₀ = (x − σ_t ε)/α_t with the reference's correction (data_prediction_fn)."""
        p, q = self.core.data_prediction(t)
        if callable(self.correcting_x0_fn):
            x0 = self.empty()
            _lincomb(x0, [], (x, eps, p, q, 1.0), stream=self.stream)
            return _Value(
                buf=self.as_buffer(self.correcting_x0_fn(x0, self.t_vec(t)), "correcting_x0_fn")
            )
        return _Value(x=x, eps=eps, p=p, q=q, threshold=self.threshold)

    def model_value(self, x: Any, t: float) -> _Value:
        eps = self.eps(x, t)
        if self.algorithm == "dpmsolver":
            return _Value(buf=eps)
        return self.data_value(x, eps, t)

    def pass_(self, out: Any, terms: list, conv: Any = None, hist: Any = None, thr: Any = None):
        """One fused pass (``_lincomb``) on x's device, with the thresholding scratch."""
        bounds = _tensor.scratch(self.x0, self.batch) if thr is not None else None
        _lincomb(out, terms, conv, hist, thr, bounds, self.stream)

    def materialize(self, v: _Value) -> Any:
        if v.buf is None:
            out = self.empty()
            self.pass_(out, [], (v.x, v.eps, v.p, v.q, 1.0), None, v.threshold)
            v.buf, v.x, v.eps = out, None, None
        return v.buf

    # ---------------------------------------------------------------- the fused update

    def combine(self, cx: float, x: Any, pairs: list, keep: bool = True) -> Any:
        """One fused pass: cx·x + Σ c·m over (c, _Value) pairs; a pending value is converted
        in the same pass (and kept for later updates when ``keep``)."""
        out = self.empty()
        terms = [(cx, x)] if cx != 0.0 else []
        conv = hist = thr = None
        pending = None
        for c, v in pairs:
            if v.buf is not None:
                if c != 0.0:
                    terms.append((c, v.buf))
            elif pending is not None:  # pragma: no cover - the drivers never do this
                self.materialize(v)
                terms.append((c, v.buf))
            else:
                pending = v
                conv = (v.x, v.eps, v.p, v.q, c)
                thr = v.threshold
                if keep:
                    hist = self.empty()
        self.pass_(out, terms, conv, hist, thr)
        if pending is not None and hist is not None:
            pending.buf, pending.x, pending.eps = hist, None, None
        return out


def _progress(total: int | None, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return None
    return tqdm(total=total)


def sample(
    model_fn: Callable[[Any, Any], Any],
    x: Any,
    schedule: NoiseSchedule,
    *,
    steps: int = 20,
    t_start: float | None = None,
    t_end: float | None = None,
    order: int = 2,
    method: str = "multistep",
    algorithm: str = "dpmsolver++",
    skip_type: str = "time_uniform",
    solver_type: str = "dpmsolver",
    lower_order_final: bool = True,
    denoise_to_zero: bool = False,
    atol: float = 0.0078,
    rtol: float = 0.05,
    correcting_x0_fn: str | Callable | None = None,
    correcting_xt_fn: Callable | None = None,
    thresholding_max_val: float = 1.0,
    dynamic_thresholding_ratio: float = 0.995,
    return_intermediate: bool = False,
    return_info: bool = False,
    progress: bool = False,
) -> Any:
    """Solve the diffusion ODE from ``t_start`` to ``t_end`` with DPM-Solver / DPM-Solver++.

    The reference's ``DPM_Solver(model_fn, schedule, algorithm_type=algorithm,
    correcting_x0_fn=..., correcting_xt_fn=..., thresholding_max_val=...,
    dynamic_thresholding_ratio=...).sample(x, steps=..., ...)``, same arguments, defaults and
    meaning:

    - ``model_fn(x, t_continuous)`` returns the noise prediction ε (wrap a network with
      :func:`model_wrapper`). ``t_continuous`` has shape (batch,): a float64 numpy array for
      numpy ``x``; for torch ``x`` a tensor on x's device, float64 for float64 ``x`` and
      float32 otherwise. It must return x's type and shape (its dtype is cast to x's).
    - ``method``: ``"multistep"`` (``steps`` NFE; warm-up with orders 1, …, order−1),
      ``"singlestep"`` (DPM-Solver-fast: orders ≤ ``order`` mixed to use exactly ``steps``
      NFE), ``"singlestep_fixed"`` (⌊steps/order⌋ steps of order ``order``) or
      ``"adaptive"`` (DPM-Solver-12 for order 2, DPM-Solver-23 for order 3, with the
      reference's error control: tolerances ``atol``, ``rtol``, h_init = 0.05 in λ, safety
      θ = 0.9, stopping within 1e-5 of ``t_end``; ``steps`` is ignored).
    - ``algorithm``: ``"dpmsolver++"`` (data prediction) or ``"dpmsolver"`` (noise prediction).
    - ``skip_type``: ``"time_uniform"``, ``"logSNR"`` or ``"time_quadratic"``
      (``NoiseSchedule.time_steps``). ``t_start`` defaults to ``schedule.t_max`` (1),
      ``t_end`` to ``schedule.t_min`` (1/N for a discrete schedule, 1e-3 for linear VP).
    - ``solver_type``: ``"dpmsolver"`` or ``"taylor"`` (diffusers' "midpoint" / "heun").
    - ``lower_order_final``: as in the reference, the multistep method lowers the order of the
      final steps only when ``steps < 10`` (diffusers' schedulers use ``< 15``; rdiff.sample
      follows the reference).
    - ``denoise_to_zero``: a final data-prediction step at ``t_end`` (one more NFE).
    - ``correcting_x0_fn``: None, ``"dynamic_thresholding"`` (Imagen's: per sample
      s = max(quantile(|x₀|, dynamic_thresholding_ratio), thresholding_max_val), x₀ ←
      clamp(x₀, −s, s)/s, fused into the update pass) or a callable ``f(x0, t) -> x0``. As in
      the reference it acts on the data prediction only, i.e. with ``algorithm="dpmsolver++"``
      and in ``denoise_to_zero``. ``correcting_xt_fn(x, t, step) -> x`` corrects the samples
      (not with ``"adaptive"``). Both receive ``t`` as the model does.
    - ``return_intermediate``: also return the list of samples after each step (the initial
      ``x`` first for multistep), not with ``"adaptive"``.
    - ``return_info``: also return a :class:`SampleInfo` (NFE, orders, times, rejections), e.g.
      the adaptive solver's NFE (the reference prints it).
    - ``progress``: a tqdm progress bar.

    Returns ``x_end``; ``(x_end, intermediates)`` with ``return_intermediate``;
    ``(x_end, info)`` with ``return_info``; ``(x_end, intermediates, info)`` with both.
    ``x_end`` has x's type, dtype, device and shape. Arithmetic runs in float32 (float64 for
    float64 inputs); the scalars in float64.

    Raises:
        ValueError: an unknown method/algorithm/skip_type/solver_type, an order outside 1..3
            (2..3 for "adaptive"), fewer steps than the order for "multistep" or
            "singlestep_fixed", ``t_end >= t_start`` or times outside the schedule, and
            return_intermediate / correcting_xt_fn with "adaptive".
        TypeError: x is not a float numpy array or torch tensor; model_fn returns another type.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule: expected an rdiff.NoiseSchedule, got {type(schedule).__name__}")
    _tensor.check_float(x, "x")
    if x.ndim < 1 or math.prod(tuple(x.shape)) == 0:
        raise ValueError(f"x: expected a non-empty batch of samples, got shape {tuple(x.shape)}")
    _check_method(method)
    steps = _check_int(steps, "steps", 1)
    order = _check_int(order, "order", 1)
    if method == "adaptive":
        if order not in (2, 3):
            raise ValueError(f"order: the adaptive method needs order 2 or 3, got {order}")
        if return_intermediate:
            raise ValueError("return_intermediate: not available with the adaptive method")
        if correcting_xt_fn is not None:
            raise ValueError("correcting_xt_fn: not available with the adaptive method")
    elif order not in (1, 2, 3):
        raise ValueError(f"order: must be 1, 2 or 3, got {order}")
    if method in ("multistep", "singlestep_fixed") and steps < order:
        raise ValueError(
            f"steps: the {method} method of order {order} needs at least {order} steps, got {steps}"
        )
    core = _ReferenceCore(schedule, algorithm, solver_type)
    t_start = schedule.t_max if t_start is None else float(t_start)
    t_end = schedule.t_min if t_end is None else float(t_end)
    # Validates skip_type and the time range (t_end < t_start inside the schedule).
    schedule.time_steps(1, skip_type, t_start, t_end)
    threshold = None
    if correcting_x0_fn == "dynamic_thresholding":
        if not 0.0 <= dynamic_thresholding_ratio <= 1.0:
            raise ValueError(
                f"dynamic_thresholding_ratio: must lie in [0, 1], got {dynamic_thresholding_ratio}"
            )
        if math.isnan(float(thresholding_max_val)):
            raise ValueError("thresholding_max_val: must be a number, got nan")
        threshold = (float(dynamic_thresholding_ratio), float(thresholding_max_val), math.inf)
    elif correcting_x0_fn is not None and not callable(correcting_x0_fn):
        raise ValueError(
            'correcting_x0_fn: expected None, "dynamic_thresholding" or a callable, got '
            f"{correcting_x0_fn!r}"
        )
    if method == "adaptive" and not (atol >= 0 and rtol >= 0 and atol + rtol > 0):
        raise ValueError(f"atol, rtol: must be non-negative and not both 0, got {atol}, {rtol}")

    x = _tensor.contiguous(x)
    run = _Run(model_fn, x, schedule, core, algorithm, correcting_x0_fn, threshold)
    run.info.method = method
    opts = _Options(
        method=method,
        steps=steps,
        order=order,
        t_start=t_start,
        t_end=t_end,
        skip_type=skip_type,
        lower_order_final=bool(lower_order_final),
        denoise_to_zero=bool(denoise_to_zero),
        atol=float(atol),
        rtol=float(rtol),
        correcting_xt_fn=correcting_xt_fn,
        return_intermediate=bool(return_intermediate),
        return_info=bool(return_info),
        progress=bool(progress),
    )
    if run.torch:
        torch = _tensor.torch_module()
        with torch.no_grad():
            return _sample(run, x, opts)
    return _sample(run, x, opts)


@dataclass
class _Options:
    method: str
    steps: int
    order: int
    t_start: float
    t_end: float
    skip_type: str
    lower_order_final: bool
    denoise_to_zero: bool
    atol: float
    rtol: float
    correcting_xt_fn: Callable | None
    return_intermediate: bool
    return_info: bool
    progress: bool


def _sample(run: _Run, x: Any, o: _Options) -> Any:
    method, steps, order = o.method, o.steps, o.order
    t_end = o.t_end
    xt_fn = o.correcting_xt_fn
    intermediates: list = []
    keep_all = o.return_intermediate
    bar = None
    step = 0
    info = run.info
    if method == "adaptive":
        x = _adaptive(run, x, order, o.t_start, t_end, o.atol, o.rtol, o.progress)
    elif method == "multistep":
        times = [float(v) for v in run.schedule.time_steps(steps, o.skip_type, o.t_start, t_end)]
        orders = _multistep_orders(steps, order, o.lower_order_final)
        bar = _progress(steps, o.progress)
        t_prev = [times[0]]
        m_prev = [run.model_value(x, times[0])]
        if xt_fn is not None:
            x = run.as_buffer(xt_fn(x, run.t_vec(times[0]), 0), "correcting_xt_fn")
        if keep_all:
            intermediates.append(x)
        info.timesteps.append(times[0])
        for step in range(1, steps + 1):
            t = times[step]
            k = orders[step - 1]
            cx, ws = run.core.multistep(t_prev[-k:], t, k)
            pairs = [(w, m_prev[-1 - j]) for j, w in enumerate(ws)]
            x = run.combine(cx, x, pairs, keep=step < steps)
            if xt_fn is not None:
                x = run.as_buffer(xt_fn(x, run.t_vec(t), step), "correcting_xt_fn")
            if keep_all:
                intermediates.append(x)
            info.orders.append(k)
            info.timesteps.append(t)
            t_prev = [*t_prev, t][-order:]
            if step < steps:
                m_prev = [*m_prev, run.model_value(x, t)][-order:]
            if bar is not None:
                bar.update(1)
    else:
        outer, orders, ratios = _singlestep_schedule(
            run.schedule, steps, order, o.skip_type, o.t_start, t_end, method == "singlestep_fixed"
        )
        bar = _progress(len(orders), o.progress)
        info.timesteps.append(outer[0])
        for step, (k, (r1, r2)) in enumerate(zip(orders, ratios, strict=True)):
            s, t = outer[step], outer[step + 1]
            x = _singlestep_update(run, x, s, t, k, r1, r2)
            if xt_fn is not None:
                x = run.as_buffer(xt_fn(x, run.t_vec(t), step), "correcting_xt_fn")
            if keep_all:
                intermediates.append(x)
            info.orders.append(k)
            info.timesteps.append(t)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if o.denoise_to_zero:
        eps = run.eps(x, t_end)
        x = run.materialize(run.data_value(x, eps, t_end))
        if xt_fn is not None:
            x = run.as_buffer(xt_fn(x, run.t_vec(t_end), step + 1), "correcting_xt_fn")
        if keep_all:
            intermediates.append(x)
    out: tuple = (x,)
    if keep_all:
        out += (intermediates,)
    if o.return_info:
        out += (info,)
    return out[0] if len(out) == 1 else out


def _singlestep_update(run: _Run, x: Any, s: float, t: float, k: int, r1, r2) -> Any:
    """One singlestep DPM-Solver-k step from s to t (k model calls, k fused passes)."""
    times, stages = run.core.singlestep(s, t, k, r1, r2)
    ms = [run.model_value(x, s)]
    for j, u in enumerate(times):
        cx, ws = stages[j]
        xj = run.combine(cx, x, list(zip(ws, ms, strict=False)))
        ms.append(run.model_value(xj, u))
    cx, ws = stages[-1]
    return run.combine(cx, x, list(zip(ws, ms, strict=False)), keep=False)


def _adaptive(run: _Run, x: Any, order: int, t_T: float, t_0: float, atol, rtol, progress):
    """The reference's dpm_solver_adaptive (DPM-Solver-12 / -23)."""
    sch, core, info = run.schedule, run.core, run.info
    s = t_T
    lam_s = float(sch.lambda_t(s))
    lam_0 = float(sch.lambda_t(t_0))
    h = _H_INIT
    x_prev = x
    norms = _tensor.scratch(x, run.batch, wide=True)
    bar = _progress(None, progress)
    info.timesteps.append(s)
    r1 = 0.5 if order == 2 else 1.0 / 3.0
    # A step below this (10^8 of them to the end) means the tolerances ask for more than the
    # sample's precision can give: the loop would crawl on forever.
    h_floor = 1e-8 * abs(lam_0 - lam_s)
    while abs(s - t_0) > _T_ERR:
        if h < h_floor:
            raise ValueError(
                f"adaptive solver: the step size fell to {h:.1e} in log-SNR at t={s} (over 10^8 "
                f"steps to go): atol={atol}, rtol={rtol} ask for more than the sample's "
                "precision can give; loosen them"
            )
        t = float(sch.inverse_lambda(lam_s + h))
        times, stages = core.singlestep(s, t, order, r1, None if order == 2 else 2.0 / 3.0)
        m_s = run.model_value(x, s)
        if order == 2:
            ((lcx, lws),) = core.singlestep(s, t, 1)[1]
            x_lo = run.combine(lcx, x, [(lws[0], m_s)])
            x_s1 = run.combine(stages[0][0], x, [(stages[0][1][0], m_s)])
            m_s1 = run.model_value(x_s1, times[0])
            cx, ws = stages[1]
            x_hi = run.combine(cx, x, [(ws[0], m_s), (ws[1], m_s1)], keep=False)
        else:
            lcx, lws = core.singlestep(s, t, 2, r1)[1][1]
            x_s1 = run.combine(stages[0][0], x, [(stages[0][1][0], m_s)])
            m_s1 = run.model_value(x_s1, times[0])
            x_lo = run.combine(lcx, x, [(lws[0], m_s), (lws[1], m_s1)])
            cx, ws = stages[1]
            x_s2 = run.combine(cx, x, [(ws[0], m_s), (ws[1], m_s1)])
            m_s2 = run.model_value(x_s2, times[1])
            cx, ws = stages[2]
            x_hi = run.combine(cx, x, [(ws[0], m_s), (ws[1], m_s1), (ws[2], m_s2)], keep=False)
        _error_norm(x_hi, x_lo, x_prev, float(atol), float(rtol), norms, run.stream)
        # One read of the batch's worst norm: the step-size control needs it on the host.
        err = float(norms.max())
        if not math.isfinite(err):
            raise FloatingPointError(
                f"adaptive solver: the error estimate at t={s} is {err} (does model_fn return "
                "finite values?)"
            )
        if err <= 1.0:
            x, s, x_prev = x_hi, t, x_lo
            lam_s = float(sch.lambda_t(s))
            info.orders.append(order)
            info.timesteps.append(s)
        else:
            info.rejected += 1
        h = _adaptive_next_h(h, err, order, _THETA, lam_0 - lam_s)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return x


# ---------------------------------------------------------------------------- model_wrapper

_MODEL_TYPES = ("noise", "x_start", "v", "score")
_GUIDANCE_TYPES = ("uncond", "classifier", "classifier-free")


def _coef(values: Any, x: Any) -> Any:
    """Per-sample float64 values as x's framework/dtype, shaped to broadcast over x."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    if _tensor.is_torch(x):
        torch = _tensor.torch_module()
        return torch.as_tensor(np.asarray(values), dtype=x.dtype, device=x.device).reshape(shape)
    return np.asarray(values, dtype=x.dtype).reshape(shape)


def _t_numpy(t: Any) -> np.ndarray:
    if _tensor.is_torch(t):
        return t.detach().to("cpu").double().numpy()
    return np.asarray(t, dtype=np.float64)


def _cat(parts: list, like: Any) -> Any:
    if _tensor.is_torch(like):
        return _tensor.torch_module().cat(parts)
    return np.concatenate([np.asarray(p) for p in parts])


def _check_conditions(condition: Any, unconditional_condition: Any) -> None:
    """Classifier-free guidance batches both conditions along their first axis: each needs
    one, and the same shape after it."""
    shapes = {}
    for name, c in (("condition", condition), ("unconditional_condition", unconditional_condition)):
        shape = getattr(c, "shape", None)
        if shape is None or len(shape) == 0:
            raise ValueError(
                f"{name}: classifier-free guidance concatenates the conditions along a batch "
                f"axis, so it must be an array or tensor with one; got "
                f"{type(c).__name__}{'' if shape is None else ' of shape ()'}"
            )
        shapes[name] = tuple(shape)
    if shapes["condition"][1:] != shapes["unconditional_condition"][1:]:
        raise ValueError(
            "condition and unconditional_condition must have the same shape after the batch "
            f"axis, got {shapes['condition']} and {shapes['unconditional_condition']}"
        )


def model_wrapper(
    model: Callable,
    schedule: NoiseSchedule,
    model_type: str = "noise",
    guidance_type: str = "uncond",
    condition: Any = None,
    unconditional_condition: Any = None,
    guidance_scale: float = 1.0,
    classifier_fn: Callable | None = None,
    model_kwargs: dict | None = None,
    classifier_kwargs: dict | None = None,
) -> Callable[[Any, Any], Any]:
    """The reference's ``model_wrapper``: a network → ``model_fn(x, t_continuous) -> ε``.

    The network sees the reference's model time ``t_input``: for a discrete schedule of N
    training steps, t_input = (t_continuous − 1/N)·1000 (so 0 … 999 for N = 1000, diffusers'
    timestep index); for a continuous schedule, t_input = t_continuous.

    Args:
        model: ``model(x, t_input, **model_kwargs)`` (``"uncond"``, ``"classifier"``) or
            ``model(x, t_input, cond, **model_kwargs)`` (``"classifier-free"``), returning
            ``model_type``: ``"noise"`` (ε), ``"x_start"`` (x₀; ε = (x − α_t x₀)/σ_t), ``"v"``
            (ε = α_t v + σ_t x) or ``"score"`` (ε = −σ_t·score).
        schedule: the ``rdiff.NoiseSchedule``.
        guidance_type: ``"uncond"``; ``"classifier"``: ε − guidance_scale·σ_t·∇_x
            classifier_fn(x, t_input, condition, **classifier_kwargs) summed over the batch
            (torch autograd; torch inputs only); ``"classifier-free"``: ε_u + s·(ε_c − ε_u),
            with cond and uncond batched into one model call (x and t repeated, conditions
            concatenated as [unconditional_condition, condition]); with guidance_scale = 1 or
            no unconditional_condition, one conditional call.

    Raises:
        ValueError: unknown model_type / guidance_type, or "classifier" without a
            classifier_fn.
        TypeError (at call time): classifier guidance with numpy inputs.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule: expected an rdiff.NoiseSchedule, got {type(schedule).__name__}")
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"model_type: expected one of {_MODEL_TYPES}, got {model_type!r}")
    if guidance_type not in _GUIDANCE_TYPES:
        raise ValueError(f"guidance_type: expected one of {_GUIDANCE_TYPES}, got {guidance_type!r}")
    if guidance_type == "classifier" and classifier_fn is None:
        raise ValueError('classifier_fn: required by guidance_type="classifier"')
    if guidance_type == "classifier-free" and unconditional_condition is not None:
        _check_conditions(condition, unconditional_condition)
    model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
    classifier_kwargs = {} if classifier_kwargs is None else dict(classifier_kwargs)
    discrete = schedule.kind == "discrete"
    total_n = schedule.num_train_timesteps

    def get_model_input_time(t_continuous: Any) -> Any:
        if discrete:
            return (t_continuous - 1.0 / total_n) * 1000.0
        return t_continuous

    def noise_pred_fn(x: Any, t_continuous: Any, cond: Any = None) -> Any:
        t_input = get_model_input_time(t_continuous)
        if cond is None:
            output = model(x, t_input, **model_kwargs)
        else:
            output = model(x, t_input, cond, **model_kwargs)
        if model_type == "noise":
            return output
        tn = _t_numpy(t_continuous)
        sigma_t = _coef(schedule.sigma_t(tn), x)
        if model_type == "score":
            return -sigma_t * output
        alpha_t = _coef(schedule.alpha_t(tn), x)
        if model_type == "x_start":
            return (x - alpha_t * output) / sigma_t
        return alpha_t * output + sigma_t * x

    def cond_grad_fn(x: Any, t_input: Any) -> Any:
        torch = _tensor.torch_module()
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_prob = classifier_fn(x_in, t_input, condition, **classifier_kwargs)
            return torch.autograd.grad(log_prob.sum(), x_in)[0]

    def model_fn(x: Any, t_continuous: Any) -> Any:
        if guidance_type == "uncond":
            return noise_pred_fn(x, t_continuous)
        if guidance_type == "classifier":
            if not _tensor.is_torch(x):
                raise TypeError(
                    "classifier guidance differentiates classifier_fn with torch.autograd and "
                    f"needs torch tensors; got {type(x).__name__}"
                )
            cond_grad = cond_grad_fn(x, get_model_input_time(t_continuous))
            sigma_t = _coef(schedule.sigma_t(_t_numpy(t_continuous)), x)
            noise = noise_pred_fn(x, t_continuous)
            return noise - guidance_scale * sigma_t * cond_grad
        if guidance_scale == 1.0 or unconditional_condition is None:
            return noise_pred_fn(x, t_continuous, cond=condition)
        x_in = _cat([x, x], x)
        t_in = _cat([t_continuous, t_continuous], t_continuous)
        c_in = _cat([unconditional_condition, condition], condition)
        out = noise_pred_fn(x_in, t_in, cond=c_in)
        n = out.shape[0] // 2
        noise_uncond, noise = out[:n], out[n:]
        return noise_uncond + guidance_scale * (noise - noise_uncond)

    return model_fn
