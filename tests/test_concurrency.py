"""Concurrency (issue 9 item 3): rdiff released the GIL inside every step and UNet call.

- Schedulers, one instance per thread, from 4 threads at once give bit-identical results to
  serial use (numpy and torch inputs, rdiff and rdiff.diffusers classes).
- One scheduler instance used from two threads at once raises ``rdiff.ConcurrentUseError``
  (a deterministic test holds one thread inside ``step``), and two threads racing on one
  instance leave it in a state some serial order of their successful calls would give.
- One UNet shared by 4 threads gives the serial results bit for bit.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import rdiff
import rdiff.diffusers as rdd
from rdiff import cli

torch = pytest.importorskip("torch")

_THREADS = 4
_STEPS = 10
_SHAPE = (2, 4, 64, 64)  # 32k elements: each fused pass runs long enough to overlap

_KINDS = {
    "multistep": ({}, rdiff.DPMSolverMultistepScheduler, rdd.DPMSolverMultistepScheduler),
    "multistep-sde": (
        {"algorithm_type": "sde-dpmsolver++"},
        rdiff.DPMSolverMultistepScheduler,
        rdd.DPMSolverMultistepScheduler,
    ),
    "singlestep": (
        {"solver_order": 3},
        rdiff.DPMSolverSinglestepScheduler,
        rdd.DPMSolverSinglestepScheduler,
    ),
    "ddim": ({}, rdiff.DDIMScheduler, rdd.DDIMScheduler),
    "ddpm": ({}, rdiff.DDPMScheduler, rdd.DDPMScheduler),
    "analytic": ({"gamma": [0.9] * 1000}, rdiff.AnalyticDPMScheduler, rdd.AnalyticDPMScheduler),
}


def _make(kind: str, wrapped: bool):
    kw, plain, wrapped_cls = _KINDS[kind]
    s = (wrapped_cls if wrapped else plain)(**kw)
    s.set_timesteps(_STEPS)
    return s


def _model(x, t):
    """A deterministic non-linear stand-in for a network."""
    if isinstance(x, torch.Tensor):
        return torch.sin(x * (1.0 + float(t) / 1000.0))
    return np.sin(x * (1.0 + float(t) / 1000.0)).astype(x.dtype)


def _inputs(seed: int, framework: str):
    x = np.random.default_rng(seed).standard_normal(_SHAPE).astype(np.float32)
    return torch.from_numpy(x) if framework == "torch" else x


def _generator(seed: int, framework: str):
    if framework == "torch":
        return torch.Generator().manual_seed(seed)
    return np.random.default_rng(seed)


def _loop(sched, x, seed: int, framework: str):
    g = _generator(seed, framework)
    for t in sched.timesteps:
        x = sched.step(_model(x, t), t, x, generator=g).prev_sample
    return x


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return np.array_equal(a, b)


def _run_threads(target, n: int):
    """Runs target(i) on n threads that start together; returns results, re-raises errors."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("kind", list(_KINDS))
def test_one_scheduler_per_thread_matches_serial(kind, framework):
    wrapped = framework == "torch"  # the diffusers subclasses with torch, the plain with numpy
    serial = [
        _loop(_make(kind, wrapped), _inputs(i, framework), i, framework) for i in range(_THREADS)
    ]
    for _ in range(2):
        got = _run_threads(
            lambda i: _loop(_make(kind, wrapped), _inputs(i, framework), i, framework), _THREADS
        )
        for i in range(_THREADS):
            assert _equal(got[i], serial[i]), f"thread {i} differs from the serial run"


class _Gate(np.ndarray):
    """A model output that, once armed, stops the thread reading its dtype inside ``step``
    (to allocate the step's outputs) until released, so another thread can call the same
    scheduler meanwhile."""

    def arm(self):
        self.entered, self.release, self.armed = threading.Event(), threading.Event(), True
        return self

    @property
    def dtype(self):
        if getattr(self, "armed", False):
            self.armed = False
            self.entered.set()
            assert self.release.wait(30)
        return np.ndarray.dtype.__get__(self)


@pytest.mark.parametrize("wrapped", [False, True], ids=["rdiff", "rdiff.diffusers"])
@pytest.mark.parametrize("kind", list(_KINDS))
def test_concurrent_step_on_one_instance_raises(kind, wrapped):
    x = _inputs(0, "numpy")
    ref = _make(kind, wrapped)
    s = _make(kind, wrapped)
    ts = s.timesteps
    g_ref, g = _generator(0, "numpy"), _generator(0, "numpy")
    mo = _model(x, ts[0]).view(_Gate).arm()
    out: dict = {}
    th = threading.Thread(target=lambda: out.update(y=s.step(mo, ts[0], x, generator=g)))
    th.start()
    try:
        assert mo.entered.wait(30)
        with pytest.raises(rdiff.ConcurrentUseError, match=r"another thread.*own instance"):
            s.step(_model(x, ts[0]), ts[0], x, generator=_generator(1, "numpy"))
        with pytest.raises(rdiff.ConcurrentUseError, match="set_timesteps"):
            s.set_timesteps(_STEPS)
    finally:
        mo.release.set()
        th.join()
    # The refused calls left no trace: the loop finishes exactly as an undisturbed one.
    y = out["y"].prev_sample
    y_ref = ref.step(_model(x, ts[0]), ts[0], x, generator=g_ref).prev_sample
    assert np.array_equal(np.asarray(y), np.asarray(y_ref))
    for t in ts[1:]:
        y = s.step(_model(y, t), t, y, generator=g).prev_sample
        y_ref = ref.step(_model(y_ref, t), t, y_ref, generator=g_ref).prev_sample
    assert np.array_equal(np.asarray(y), np.asarray(y_ref))


def _rng():
    return np.random.default_rng(0)  # the same noise for every call (stochastic schedulers)


def _replay(kind, x0, warm, t, xs, order):
    """A fresh scheduler taken through the warm-up, then the racing calls one by one in
    ``order``: (the scheduler, {call: its output})."""
    r = _make(kind, False)
    y = x0
    for u in r.timesteps[:warm]:
        y = r.step(_model(y, u), u, y, generator=_rng()).prev_sample
    outs = {i: r.step(_model(xs[i], t), t, xs[i], generator=_rng()).prev_sample for i in order}
    return r, outs


@pytest.mark.parametrize("kind", ["multistep", "singlestep", "analytic"])
def test_racing_steps_leave_a_serial_history(kind):
    """Two threads call step on one instance at the same moment, 12 times over. Each call
    either raises ConcurrentUseError (and changes nothing) or succeeds; the outputs and the
    state afterwards must be those of the successful calls made one after another in some
    order. Without the guard, two overlapping calls read the same step index and history."""
    wrapped = False
    xs = [_inputs(10 + i, "numpy") for i in range(2)]
    refused = 0
    for trial in range(12):
        s = _make(kind, wrapped)
        ts = s.timesteps
        x0 = _inputs(trial, "numpy")
        warm = 1 + trial % 3  # race at different points of the history
        x = x0
        for t in ts[:warm]:
            x = s.step(_model(x, t), t, x, generator=_rng()).prev_sample
        t = ts[warm]

        def call(i, s=s, t=t):
            try:
                return s.step(_model(xs[i], t), t, xs[i], generator=_rng()).prev_sample
            except rdiff.ConcurrentUseError:
                return None

        got = _run_threads(call, 2)
        done = [i for i in range(2) if got[i] is not None]
        refused += 2 - len(done)
        assert done, "both calls were refused"

        orders = [done] if len(done) == 1 else [[0, 1], [1, 0]]
        matches = []
        for order in orders:
            r, outs = _replay(kind, x0, warm, t, xs, order)
            if all(np.array_equal(outs[i], got[i]) for i in done):
                matches.append(r)
        assert matches, f"trial {trial}: the outputs match no serial order of the calls {done}"
        # And the state: the next step from the same input agrees with the replay.
        r = matches[0]
        if s.step_index is not None and s.step_index < len(ts):
            t2 = ts[s.step_index]
            a = s.step(_model(x0, t2), t2, x0, generator=_rng()).prev_sample
            b = r.step(_model(x0, t2), t2, x0, generator=_rng()).prev_sample
            assert np.array_equal(a, b), f"trial {trial}: the history after the race differs"
    print(f"{kind}: {refused} of 24 racing calls refused with ConcurrentUseError")


@pytest.fixture(scope="module")
def unet():
    return rdiff.UNet2DModel.from_pretrained(cli.bundled_model_dir("digits"))


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_shared_unet_from_threads_matches_serial(unet, framework):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((4, 1, 16, 16)).astype(np.float32) for _ in range(_THREADS)]
    if framework == "torch":
        xs = [torch.from_numpy(x) for x in xs]
    ts = [10 + 200 * i for i in range(_THREADS)]
    serial = [unet(xs[i], ts[i]) for i in range(_THREADS)]

    def work(i):
        return [unet(xs[i], ts[i]) for _ in range(3)]

    for _ in range(2):
        got = _run_threads(work, _THREADS)
        for i in range(_THREADS):
            for y in got[i]:
                assert _equal(y, serial[i]), f"thread {i} differs from the serial call"


def test_one_unet_per_thread_matches_serial(unet):
    """Each CPU forward runs on one of rayon's threads, and a pool thread waiting on its own
    tasks may run another call's forward meanwhile: separate models in separate threads must
    still give the serial results (and not deadlock)."""
    folder = cli.bundled_model_dir("digits")
    models = [rdiff.UNet2DModel.from_pretrained(folder) for _ in range(_THREADS)]
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 1, 16, 16)).astype(np.float32) for _ in range(_THREADS)]
    ts = [50 + 150 * i for i in range(_THREADS)]
    serial = [unet(xs[i], ts[i]) for i in range(_THREADS)]

    def work(i):
        return [models[i](xs[i], ts[i]) for _ in range(4)]

    got = _run_threads(work, _THREADS)
    for i in range(_THREADS):
        for y in got[i]:
            assert _equal(y, serial[i]), f"thread {i} differs from the serial call"


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_functional_samplers_from_threads_match_serial(framework):
    """rdiff.sample and rdiff.k keep no shared state: 4 threads at once give serial results."""
    schedule = rdiff.NoiseSchedule.discrete()
    sigmas = rdiff.k.get_sigmas_karras(8, 0.05, 10.0)

    def eps(x, t):  # t has one value per sample
        return 0.5 * x * (1.0 + t.reshape(-1, 1, 1, 1)) + 0.1 * (
            x.sin() if framework == "torch" else np.sin(x)
        )

    def work(i):
        x = _inputs(i, framework)
        a = rdiff.sample(eps, x, schedule, steps=8, order=3)
        if framework == "torch":
            b = rdiff.k.sample_dpmpp_2m(lambda y, s: _model(y, 0) * 0.5, x, sigmas, disable=True)
        else:
            b = a
        return a, b

    serial = [work(i) for i in range(_THREADS)]
    for _ in range(2):
        got = _run_threads(work, _THREADS)
        for i in range(_THREADS):
            assert _equal(got[i][0], serial[i][0]) and _equal(got[i][1], serial[i][1])


def _copy_cases():
    l = np.full((41, 3, 4, 4), 0.95)  # noqa: E741 - the paper's name
    ems = rdiff.EMSTable.from_statistics(
        l, 0.05 + 0 * l, 0.01 + 0 * l, rdiff.NoiseSchedule.discrete()
    )
    return [
        (rdiff.DPMSolverMultistepScheduler, {"solver_order": 3}),
        (rdiff.DPMSolverSinglestepScheduler, {}),
        (rdiff.UniPCMultistepScheduler, {"solver_order": 3}),
        (rdiff.DDIMScheduler, {}),
        (rdiff.DDPMScheduler, {}),
        (rdiff.AnalyticDPMScheduler, {"gamma": [0.9] * 1000}),
        (rdiff.DPMSolverV3Scheduler, {"ems": ems}),
        (rdd.DPMSolverMultistepScheduler, {}),
        (rdd.UniPCMultistepScheduler, {}),
        (rdd.DPMSolverV3Scheduler, {"ems": ems}),
        (rdiff.EulerDiscreteScheduler, {"use_karras_sigmas": True}),
        (rdd.EulerAncestralDiscreteScheduler, {}),
        (rdd.FlowMatchEulerDiscreteScheduler, {"shift": 3.0, "stochastic_sampling": True}),
        (rdd.HeunDiscreteScheduler, {"clip_sample": True}),
        (rdd.LCMScheduler, {"thresholding": True}),
        (rdd.TCDScheduler, {}),
        (rdd.KDPM2DiscreteScheduler, {"use_karras_sigmas": True}),
        (rdd.KDPM2AncestralDiscreteScheduler, {}),
        (rdd.FlowMatchHeunDiscreteScheduler, {"shift": 3.0}),
        (rdd.LMSDiscreteScheduler, {"use_karras_sigmas": True}),
        (rdd.DEISMultistepScheduler, {"solver_order": 3}),
    ]


@pytest.mark.parametrize("case", range(21))
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_continue_where_the_original_is(case, how):
    """copy.deepcopy (the README's advice for one scheduler per thread) and pickle, mid-loop:
    the copy and the original give the same remaining steps, bit for bit (the Rust core is
    rebuilt from the config and the loop's arguments; the history is copied)."""
    import copy
    import inspect
    import pickle

    torch = pytest.importorskip("torch")
    cls, kw = _copy_cases()[case]
    s = cls(**kw)
    s.set_timesteps(8)
    if cls is rdiff.DPMSolverV3Scheduler:
        s.set_begin_index(1)  # the plan depends on it: the copy must rebuild the same
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 4, 4))).float()
    start = s.begin_index or 0

    def run(obj, x, ts):
        for t in ts:
            gen = torch.Generator().manual_seed(int(t))
            takes = "generator" in inspect.signature(obj.step).parameters
            extra = {"generator": gen} if takes else {}
            x = obj.step(0.1 * x, t, x, **extra).prev_sample
        return x

    x = run(s, x, s.timesteps[start : start + 3])
    c = copy.deepcopy(s) if how == "deepcopy" else pickle.loads(pickle.dumps(s))
    assert type(c) is cls and c.step_index == s.step_index
    rest = s.timesteps[start + 3 :]
    assert torch.equal(run(c, x.clone(), rest), run(s, x.clone(), rest))
