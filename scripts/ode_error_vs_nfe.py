"""Error against the probability-flow ODE solution vs NFE for rdiff's and diffusers' ODE
samplers; writes ``docs/ode_error_vs_nfe.{json,md,png}``.

For the same initial noise x_T, every sampler's final output is compared (RMSE over all
samples and coordinates) with a reference solution of the same probability-flow ODE, on two
problems:

* ``digits``: the bundled digits DDPM (rdiff's native UNet, ε-prediction, 1000 discrete steps,
  linear β 1e-4 … 0.02), float32, x_T from ``numpy.random.default_rng(0)`` as ``rdiff sample``
  draws it (all of x_T first, then batches);
* ``gmm``: ``rdiff.testing.GaussianMixture`` (exact ε*, 4 diagonal components in d = 16) on
  the same discrete schedule, float64.

The reference is rdiff's DPM-Solver++ 3M (``lower_order_final=True``) at 1000 steps; the same
solver at 500 steps gives its self-error. Every sampler starts at t = 999 (diffusers' linspace
spacing) and ends either at σ = 0 (``final_sigmas_type="zero"``: the last step returns the x₀
prediction) or at the training step t = 0 (σ_min; the only end that diffusers allows for
DPM-Solver's ε form, DEIS and, in practice, UniPC bh1) and is compared with the reference
solved to the same end. For the mixture an independent float64 RK4 integration with the exact
ε* (in log σ/α, to σ/α = 1e-7) is also reported. Results (and the samples, under
``--cache-dir``) are cached as they come, so a run can be cut short (``--budget-minutes``) and
resumed; rdiff's UniPC rows run when ``rdiff.UniPCMultistepScheduler`` exists.

    RAYON_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=python \\
        nice -n 10 python scripts/ode_error_vs_nfe.py --n 1000 --n-gmm 4096
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

import rdiff
from rdiff.cli import bundled_model_dir

ROOT = Path(__file__).resolve().parents[1]
NFES = (4, 5, 6, 8, 10, 15, 20)
CONV_NFES = (10, 20, 40, 80, 160, 320)
REF_STEPS = (1000, 500)
ENDS = {"zero": "σ = 0 (final_sigmas_type='zero')", "sigma_min": "t = 0 (σ_min)"}

# label -> how to build it: lib (rdiff / diffusers), kind, constructor options, end
SETTINGS: dict[str, dict[str, Any]] = {
    "DDIM η=0 (rdiff, trailing)": {"lib": "rdiff", "kind": "ddim", "opts": {}, "end": "zero"},
    "DPM-Solver++ 2M (rdiff)": {"lib": "rdiff", "kind": "dpm", "opts": {"solver_order": 2}},
    "DPM-Solver++ 3M (rdiff)": {"lib": "rdiff", "kind": "dpm", "opts": {"solver_order": 3}},
    "UniPC-2 bh2 (diffusers)": {"lib": "diffusers", "kind": "unipc", "opts": {}},
    "UniPC-3 bh2 (diffusers)": {"lib": "diffusers", "kind": "unipc", "opts": {}},
    "UniPC-2 bh1 (diffusers)": {"lib": "diffusers", "kind": "unipc", "opts": {}},
    "UniPC-3 bh1 (diffusers)": {"lib": "diffusers", "kind": "unipc", "opts": {}},
    # the rows below end at t = 0 (σ_min)
    "DPM-Solver 2M ε-form (rdiff)": {
        "lib": "rdiff",
        "kind": "dpm",
        "opts": {"solver_order": 2, "algorithm_type": "dpmsolver"},
    },
    "DEIS-2 (diffusers)": {"lib": "diffusers", "kind": "deis", "opts": {"solver_order": 2}},
    "DEIS-3 (diffusers)": {"lib": "diffusers", "kind": "deis", "opts": {"solver_order": 3}},
    "UniPC-2 bh1 (diffusers, σ_min end)": {"lib": "diffusers", "kind": "unipc", "opts": {}},
    "UniPC-3 bh1 (diffusers, σ_min end)": {"lib": "diffusers", "kind": "unipc", "opts": {}},
    "UniPC-3 bh2 (diffusers, σ_min end)": {"lib": "diffusers", "kind": "unipc", "opts": {}},
    "DPM-Solver++ 3M (rdiff, σ_min end)": {
        "lib": "rdiff",
        "kind": "dpm",
        "opts": {"solver_order": 3},
    },
}
# rdiff's UniPC, where this rdiff has it (same constructor arguments as diffusers')
# DPM-Solver-v3 (rdiff only: no other package has it), ending where its authors' sampler
# ends (t = 1/N in their time, i.e. timestep 0): the authors' default spacing, their advice
# for low-resolution models (logSNR) and DDIM's for them (time_quadratic). Its statistics:
# the bundled model's ems.npz, and for the mixture an estimate made here (``_gmm_ems``).
RDIFF_V3 = {
    "DPM-Solver-v3 (rdiff, σ_min end)": {"lib": "rdiff", "kind": "v3", "opts": {}},
    "DPM-Solver-v3 logSNR (rdiff, σ_min end)": {
        "lib": "rdiff",
        "kind": "v3",
        "opts": {"skip_type": "logSNR"},
    },
    "DPM-Solver-v3 time_quadratic (rdiff, σ_min end)": {
        "lib": "rdiff",
        "kind": "v3",
        "opts": {"skip_type": "time_quadratic"},
    },
}
RDIFF_UNIPC = {
    "UniPC-2 bh2 (rdiff)": {"lib": "rdiff", "kind": "unipc", "opts": {}},
    "UniPC-3 bh1 (rdiff)": {"lib": "rdiff", "kind": "unipc", "opts": {}},
    "UniPC-3 bh2 (rdiff)": {"lib": "rdiff", "kind": "unipc", "opts": {}},
    "UniPC-3 bh1 (rdiff, σ_min end)": {"lib": "rdiff", "kind": "unipc", "opts": {}},
}
# The GaussianMixture convergence check: log-uniform σ/α steps (use_exponential_sigmas, i.e.
# uniform in λ) from t = 999 to t = 0, with ε* evaluated exactly at each step's own σ (the
# solvers' timesteps are then fractional), so that the error is the solver's alone.
_EXP = {"use_exponential_sigmas": True}
CONV_SETTINGS: dict[str, dict[str, Any]] = {
    "DPM-Solver++ 1 = DDIM (rdiff)": {"lib": "rdiff", "kind": "dpm", "opts": {"solver_order": 1}},
    "DPM-Solver++ 2M (rdiff)": {"lib": "rdiff", "kind": "dpm", "opts": {"solver_order": 2}},
    "DPM-Solver++ 3M (rdiff)": {"lib": "rdiff", "kind": "dpm", "opts": {"solver_order": 3}},
    "UniPC-2 bh2 (diffusers)": {"lib": "diffusers", "kind": "unipc", "opts": {}},
    "UniPC-3 bh2 (diffusers)": {"lib": "diffusers", "kind": "unipc", "opts": {}},
    "DEIS-2 (diffusers)": {"lib": "diffusers", "kind": "deis", "opts": {"solver_order": 2}},
    "DEIS-3 (diffusers)": {"lib": "diffusers", "kind": "deis", "opts": {"solver_order": 3}},
    # side checks: diffusers' own DPM-Solver++ 3M (is rdiff's order diffusers' too?), and
    # DEIS-3 with its σ table cast to float64 (diffusers keeps it in float32)
    "DPM-Solver++ 3M (diffusers)": {"lib": "diffusers", "kind": "dpm", "opts": {"solver_order": 3}},
    "DEIS-3 (diffusers, float64 σ)": {
        "lib": "diffusers",
        "kind": "deis64",
        "opts": {"solver_order": 3},
    },
}
RDIFF_UNIPC_CONV = {
    "UniPC-2 bh2 (rdiff)": {"lib": "rdiff", "kind": "unipc", "opts": {}},
    "UniPC-3 bh2 (rdiff)": {"lib": "rdiff", "kind": "unipc", "opts": {}},
}


def _complete_settings() -> None:
    """Fill in each label's solver order, UniPC solver type and end from the label."""
    for table in (SETTINGS, RDIFF_UNIPC, RDIFF_V3, CONV_SETTINGS, RDIFF_UNIPC_CONV):
        for label, s in table.items():
            if table is CONV_SETTINGS or table is RDIFF_UNIPC_CONV:
                s["opts"].update(_EXP)
            if "σ_min end" in label or "ε-form" in label or label.startswith("DEIS"):
                s.setdefault("end", "sigma_min")
            s.setdefault("end", "zero")
            m = re.match(r"UniPC-(\d) (bh\d)", label)
            if m:
                s["opts"].setdefault("solver_order", int(m.group(1)))
                s["opts"].setdefault("solver_type", m.group(2))


_complete_settings()


def all_rows() -> dict[str, dict[str, Any]]:
    """Every row the tables know, in their order."""
    return {**SETTINGS, **RDIFF_UNIPC, **RDIFF_V3}


def settings(problem: str = "gmm") -> dict[str, dict[str, Any]]:
    """The rows to run: SETTINGS, plus rdiff's UniPC rows (on the mixture: on the digits model
    they equal diffusers' rows to UniPC's parity bound, tests/test_unipc.py) and its
    DPM-Solver-v3 rows where this rdiff has the classes."""
    out = dict(SETTINGS)
    if hasattr(rdiff, "UniPCMultistepScheduler") and problem == "gmm":
        out.update(RDIFF_UNIPC)
    if hasattr(rdiff, "DPMSolverV3Scheduler"):
        out.update(RDIFF_V3)
    return out


def scheduler_config(folder: Path) -> dict[str, Any]:
    """The model's β schedule and prediction type from its diffusers scheduler config (the
    keys ``rdiff sample`` keeps; the timestep spacing stays each scheduler's default)."""
    cfg = json.loads((folder / "scheduler_config.json").read_text(encoding="utf-8"))
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
    return {k: cfg[k] for k in keep if cfg.get(k) is not None}


def make_sampler(spec: dict[str, Any], base: dict[str, Any], ems: Any = None) -> Any:
    """A scheduler for one row: ``base`` (the model's config) plus the row's options (and,
    for DPM-Solver-v3, the problem's EMS table)."""
    opts = dict(spec["opts"])
    end = spec["end"]
    if spec["kind"] == "v3":
        return rdiff.DPMSolverV3Scheduler(ems=ems, **base, **opts)
    if spec["lib"] == "rdiff":
        if spec["kind"] == "ddim":
            # trailing: starts at t = 999 and, for NFE | 1000, steps by exactly 1000/NFE
            # (DDIM's prev = t − ⌊1000/NFE⌋) to t = −1, i.e. ᾱ = 1 (σ = 0)
            return rdiff.DDIMScheduler(
                **base, set_alpha_to_one=True, timestep_spacing="trailing", clip_sample=False
            )
        if spec["kind"] == "dpm":
            opts.setdefault("algorithm_type", "dpmsolver++")
            return rdiff.DPMSolverMultistepScheduler(
                **base, lower_order_final=True, final_sigmas_type=end, **opts
            )
        return rdiff.UniPCMultistepScheduler(**base, final_sigmas_type=end, **opts)
    import diffusers

    if spec["kind"] == "unipc":
        return diffusers.UniPCMultistepScheduler(**base, final_sigmas_type=end, **opts)
    if spec["kind"] == "dpm":
        return diffusers.DPMSolverMultistepScheduler(
            **base, lower_order_final=True, final_sigmas_type=end, **opts
        )
    if spec["kind"] in ("deis", "deis64"):
        assert end == "sigma_min"  # diffusers 0.42's DEIS always ends at t = 0
        sched = diffusers.DEISMultistepScheduler(**base, **opts)
        if spec["kind"] == "deis64":
            set_timesteps = sched.set_timesteps

            def set_timesteps_float64(*a: Any, **kw: Any) -> None:
                set_timesteps(*a, **kw)
                sched.sigmas = sched.sigmas.double()

            sched.set_timesteps = set_timesteps_float64
        return sched
    raise ValueError(spec)


def applicable(spec: dict[str, Any], nfe: int, num_train: int = 1000) -> bool:
    """DDIM's trailing steps are uniform and end at σ = 0 only when NFE divides 1000."""
    return spec["kind"] != "ddim" or num_train % nfe == 0


def integrate(
    model, sched: Any, x_init: np.ndarray, steps: int, batch: int, torch_io: bool
) -> tuple[np.ndarray, int, int]:
    """Run ``sched`` for ``steps`` from x_init (batches of ``batch``); ``model(x, t)`` takes
    and returns numpy. Returns (final samples, model calls per sample, samples integrated). A
    batch whose output is entirely non-finite stops the run (the rest is filled with NaN)."""
    outs = []
    nfe = done = 0
    for start in range(0, len(x_init), batch):
        sched.set_timesteps(steps)
        # DPM-Solver-v3's timesteps are fractional; the others' integers
        ts = [t if isinstance(t, float) else int(t) for t in np.asarray(sched.timesteps).tolist()]
        nfe = len(ts)
        x = np.ascontiguousarray(x_init[start : start + batch]) * sched.init_noise_sigma
        if torch_io:
            import torch

            xt = torch.from_numpy(np.ascontiguousarray(x))
            for t, tt in zip(ts, sched.timesteps, strict=True):
                eps = torch.from_numpy(model(np.ascontiguousarray(xt.numpy()), t))
                xt = sched.step(eps, tt, xt).prev_sample
            x = xt.numpy()
        else:
            for t in ts:
                x = sched.step(model(x, t), t, x).prev_sample
        x = np.asarray(x)
        outs.append(x)
        done += len(x)
        if not np.isfinite(x).any():
            outs.append(np.full((len(x_init) - start - len(x), *x.shape[1:]), np.nan, x.dtype))
            break
    return np.concatenate(outs)[: len(x_init)], nfe, done


def last_timesteps(base: dict[str, Any]) -> dict[int, int]:
    """NFE -> the last timestep of diffusers' linspace spacing (where a σ = 0 sampler takes
    its final x̂₀)."""
    sch = rdiff.DPMSolverMultistepScheduler(**base)
    out = {}
    for k in NFES:
        sch.set_timesteps(k)
        out[k] = int(np.asarray(sch.timesteps)[-1])
    return out


def reference(
    model,
    base: dict[str, Any],
    x_init: np.ndarray,
    steps: int,
    batch: int,
    record: tuple[int, ...] = (),
) -> dict[str, np.ndarray]:
    """rdiff DPM-Solver++ 3M (lower_order_final) at ``steps`` to σ = 0 ("zero") and to t = 0
    ("sigma_min"): both runs share every step but the last, so they share the model calls.
    Also returns the path's state x_t at each timestep in ``record`` ("state-{t}") and the
    model's x̂₀ there ("x0-{t}")."""
    outs: dict[str, list] = {"zero": [], "sigma_min": []}
    outs.update({f"{w}-{t}": [] for t in record for w in ("state", "x0")})
    for start in range(0, len(x_init), batch):
        sch = {
            end: rdiff.DPMSolverMultistepScheduler(
                **base, solver_order=3, lower_order_final=True, final_sigmas_type=end
            )
            for end in ENDS
        }
        for s in sch.values():
            s.set_timesteps(steps)
        ac = np.asarray(sch["zero"].alphas_cumprod, dtype=np.float64)
        ts = [int(t) for t in np.asarray(sch["zero"].timesteps).tolist()]
        x = dict.fromkeys(ENDS, np.ascontiguousarray(x_init[start : start + batch]))
        seen = set()
        for t in ts:
            eps = model(x["zero"], t)
            if t in record and t not in seen:
                seen.add(t)
                x0 = (x["zero"] - math.sqrt(1.0 - ac[t]) * eps) / math.sqrt(ac[t])
                outs[f"state-{t}"].append(np.array(x["zero"]))
                outs[f"x0-{t}"].append(np.asarray(x0, dtype=x["zero"].dtype))
            same = np.array_equal(x["zero"], x["sigma_min"])
            x = {
                e: sch[e]
                .step(eps if (e == "zero" or same) else model(x[e], t), t, x[e])
                .prev_sample
                for e in ENDS
            }
        for e in ENDS:
            outs[e].append(np.asarray(x[e]))
    return {e: np.concatenate(v) for e, v in outs.items()}


def rmse(a: np.ndarray, b: np.ndarray) -> float | None:
    """sqrt(mean((a − b)²)) over all samples and coordinates (None if a is not finite)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(np.sqrt(np.mean(d * d))) if np.isfinite(d).all() else None


# ---------------------------------------------------------------------------- the problems


def gmm_problem() -> Any:
    """The mixture: 4 diagonal Gaussians in d = 16 (means U[−0.5, 0.5], stds U[0.2, 0.5] per
    coordinate, weights 0.1–0.4, from default_rng(1234)). The components overlap: with
    well-separated ones (means U[−1, 1], stds down to 0.05) a few samples near the boundary
    between two modes switch mode at some step sizes, and those few dominate the RMSE."""
    from rdiff.testing import GaussianMixture

    rng = np.random.default_rng(1234)
    means = rng.uniform(-0.5, 0.5, (4, 16))
    stds = rng.uniform(0.2, 0.5, (4, 16))
    gm = GaussianMixture(means, stds, [0.1, 0.2, 0.3, 0.4])
    return gm


def exact_ode_solution(
    gm: Any, ac: np.ndarray, x_init: np.ndarray, end: str, steps: int
) -> np.ndarray:
    """The mixture's ODE solution from t = 999 without rdiff's solvers: classical RK4 in
    s = log σ̃ (σ̃ = σ/α, x̃ = x/α, dx̃/ds = σ̃ ε*(x)) with the exact ε* at any (α, σ), float64,
    ``steps`` uniform steps; to t = 0 for ``end="sigma_min"``, else to σ̃ = 1e-7 followed by
    the exact x̂₀ (E[x₀ | x_t], whose distance to the σ = 0 limit is O(σ̃²))."""
    s_tilde = lambda a: math.sqrt((1.0 - a) / a)  # noqa: E731
    s0 = math.log(s_tilde(float(ac[-1])))
    s1 = math.log(s_tilde(float(ac[0]))) if end == "sigma_min" else math.log(1e-7)
    a_t = math.sqrt(float(ac[-1]))
    y = np.asarray(x_init, np.float64) / a_t
    h = (s1 - s0) / steps

    def f(y: np.ndarray, s: float) -> np.ndarray:
        st = math.exp(s)
        alpha = 1.0 / math.sqrt(1.0 + st * st)
        return st * gm.eps_at(alpha * y, alpha, st * alpha)

    s = s0
    for _ in range(steps):
        k1 = f(y, s)
        k2 = f(y + 0.5 * h * k1, s + 0.5 * h)
        k3 = f(y + 0.5 * h * k2, s + 0.5 * h)
        k4 = f(y + h * k3, s + h)
        y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        s += h
    alpha = 1.0 / math.sqrt(1.0 + math.exp(2 * s1))
    if end == "sigma_min":
        return alpha * y
    return gm.x0_at(alpha * y, alpha, math.exp(s1) * alpha)


class Problem:
    """One test problem: its model (numpy in/out), x_T, schedule config, batch and cache."""

    def __init__(self, name: str, n: int, seed: int, batch: int, cache: Path) -> None:
        self.name, self.n, self.seed, self.batch = name, n, seed, batch
        self.cache = cache / name
        self.cache.mkdir(parents=True, exist_ok=True)
        folder = bundled_model_dir("digits")
        self.base = scheduler_config(folder)
        rng = np.random.default_rng(seed)
        if name == "digits":
            unet = rdiff.UNet2DModel.from_pretrained(folder)
            c = int(unet.config["in_channels"])
            size = int(unet.config["sample_size"])
            self.x_init = rng.standard_normal((n, c, size, size), dtype=np.float32)

            def model(x: np.ndarray, t: float) -> np.ndarray:
                dt = np.float32 if isinstance(t, float) else np.int64
                return unet(np.ascontiguousarray(x), np.full((x.shape[0],), t, dtype=dt))

            self.model = model
            self.gm = None
            ems = folder / "ems.npz"
            self.ems = str(ems) if ems.is_file() else None
            self.describe = {
                "model": "bundled digits DDPM (rdiff.UNet2DModel, CPU, float32)",
                "shape": [c, size, size],
                "dtype": "float32",
            }
        else:
            gm = gmm_problem()
            b = self.base
            sched = rdiff.NoiseSchedule.discrete(
                b["num_train_timesteps"], b["beta_schedule"], b["beta_start"], b["beta_end"]
            )
            exact = gm.model(sched, prediction_type="epsilon")
            self.x_init = rng.standard_normal((n, gm.dim))
            self.model = lambda x, t: exact(x, t)
            self.gm, self.ac = gm, np.asarray(sched.alphas_cumprod)
            self.ems = self._gmm_ems(gm, sched, exact) if hasattr(rdiff, "estimate_ems") else None
            self.describe = {
                "model": "rdiff.testing.GaussianMixture exact ε* (float64)",
                "components": gm.n_components,
                "dim": gm.dim,
                "mixture": "default_rng(1234): means U[-0.5,0.5]^(4x16), stds U[0.2,0.5]^(4x16), "
                "weights 0.1/0.2/0.3/0.4",
                "dtype": "float64",
            }

    def _gmm_ems(self, gm: Any, sched: Any, exact: Any) -> Any:
        """The mixture's EMS: ``rdiff.estimate_ems`` over 4096 data samples (seed 99) on 1000
        λ intervals, float64 finite differences (cached)."""
        f = self.cache / "ems-gmm-4096-1000.npz"
        if f.is_file():
            return rdiff.EMSTable.load(f)
        t0 = time.perf_counter()
        table = rdiff.estimate_ems(
            exact,
            gm.sample_data(4096, seed=99),
            sched,
            steps=1000,
            batch_size=4096,
            fd_step=1e-4,
            progress=False,
        )
        table.save(f)
        print(f"[gmm] EMS estimated in {time.perf_counter() - t0:.0f} s")
        return table

    def path(self, tag: str) -> Path:
        """The cache file of one run's samples."""
        slug = re.sub(r"[^A-Za-z0-9+.-]+", "_", tag).strip("_")
        return self.cache / f"{slug}-n{self.n}-seed{self.seed}.npy"


# ---------------------------------------------------------------------------- running


def _save(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


def _run_reference(p: Problem, steps: int, res: dict, path: Path, results: dict) -> None:
    record = tuple(sorted(set(last_timesteps(p.base).values()))) if steps == 1000 else ()
    names = list(ENDS) + [f"x0-{t}" for t in record]
    files = {e: p.path(f"reference-{steps}-{e}") for e in names}
    if all(f.is_file() for f in files.values()):
        return
    t0 = time.perf_counter()
    out = reference(p.model, p.base, p.x_init, steps, p.batch, record)
    wall = time.perf_counter() - t0
    for e, f in files.items():
        np.save(f, out[e])
    res.setdefault("reference_runs", {})[str(steps)] = {
        "steps": steps,
        "wall_s": wall,
        "ms_per_sample_step": 1000 * wall / (p.n * steps),
    }
    print(f"[{p.name}] reference DPM-Solver++ 3M at {steps} steps: {wall:.0f} s", flush=True)
    _save(results, path)


def _reference_summary(p: Problem, res: dict) -> None:
    """The references' self-errors (and, for the mixture, their errors against RK4)."""
    summ = res.setdefault("reference", {})
    for e in ENDS:
        f1000, f500 = p.path(f"reference-1000-{e}"), p.path(f"reference-500-{e}")
        if f1000.is_file() and f500.is_file():
            summ[e] = {"rmse_500_vs_1000": rmse(np.load(f500), np.load(f1000))}
        if p.gm is not None and f1000.is_file():
            ex = res.get("exact", {}).get(e)
            if ex:
                ref = np.load(p.path(f"exact-{ex['steps']}-{e}"))
                summ.setdefault(e, {})["rmse_1000_vs_exact"] = rmse(np.load(f1000), ref)
                if f500.is_file():
                    summ[e]["rmse_500_vs_exact"] = rmse(np.load(f500), ref)


def _run_exact(p: Problem, res: dict, path: Path, results: dict, steps: int) -> None:
    """RK4 at ``steps`` and ``steps // 2`` for each end (the halving gives its self-error)."""
    ex = res.setdefault("exact", {})
    for e in ENDS:
        if e in ex and ex[e].get("steps") == steps:
            continue
        t0 = time.perf_counter()
        fine = exact_ode_solution(p.gm, p.ac, p.x_init, e, steps)
        coarse = exact_ode_solution(p.gm, p.ac, p.x_init, e, steps // 2)
        np.save(p.path(f"exact-{steps}-{e}"), fine)
        ex[e] = {
            "method": "RK4 in log(σ/α), exact ε*, float64",
            "steps": steps,
            "rmse_half_steps_vs_full": rmse(coarse, fine),
            "wall_s": time.perf_counter() - t0,
        }
        print(f"[{p.name}] RK4 {e}: self-error {ex[e]['rmse_half_steps_vs_full']:.2e}")
        _save(results, path)


def reference_for(p: Problem, res: dict, end: str) -> tuple[np.ndarray | None, str]:
    """The table's reference for an end: the mixture's RK4 solution where it was computed
    (exact ε*, independent of the samplers), else rdiff's 1000-step DPM-Solver++ 3M."""
    ex = res.get("exact", {}).get(end)
    if ex:
        return np.load(p.path(f"exact-{ex['steps']}-{end}")), "exact"
    f = p.path(f"reference-1000-{end}")
    return (np.load(f), "dpmsolver++3m-1000") if f.is_file() else (None, "")


def _run_cell(p, label, spec, nfe, res, path, results, budget) -> bool:
    """One (row, NFE) run; False if the time budget does not allow it."""
    key = f"{label}|{nfe}"
    runs = res.setdefault("runs", {})
    f = p.path(f"{label}-{nfe}")
    if key in runs and f.is_file():
        return True
    rate = res.get("_rate")
    if rate is not None and rate * p.n * nfe > budget():
        print(f"[{p.name}] skip {key}: needs ~{rate * p.n * nfe:.0f} s")
        return False
    if spec["kind"] == "v3" and p.ems is None:
        return True  # no statistics for this problem (the bundled table is missing)
    sched = make_sampler(spec, p.base, p.ems)
    t0 = time.perf_counter()
    out, used, done = integrate(p.model, sched, p.x_init, nfe, p.batch, spec["lib"] == "diffusers")
    wall = time.perf_counter() - t0
    np.save(f, out)
    finite = np.isfinite(out).all(axis=tuple(range(1, out.ndim)))
    runs[key] = {
        "label": label,
        "nfe": used,
        "end": spec["end"],
        "timesteps": [
            t if isinstance(t, float) else int(t) for t in np.asarray(sched.timesteps).tolist()
        ],
        "wall_s": wall,
        "ms_per_sample_step": 1000 * wall / (done * used),
        "nonfinite_fraction": float(1.0 - finite.mean()),
        "n_integrated": done,
    }
    if label in all_rows():
        res["_rate"] = wall / (done * used)
    print(
        f"[{p.name}] {label:38s} NFE {used:3d}  ({wall:6.1f} s)"
        + ("" if finite.all() else f"  non-finite: {1 - finite.mean():.0%}"),
        flush=True,
    )
    _save(results, path)
    return True


def _score(p: Problem, res: dict) -> None:
    """RMSE of every cached run to its end's reference (both references for the mixture)."""
    refs = {e: reference_for(p, res, e) for e in ENDS}
    r1000 = {e: p.path(f"reference-1000-{e}") for e in ENDS}
    for r in res.get("runs", {}).values():
        out = np.load(p.path(f"{r['label']}-{r['nfe']}"))
        ref, kind = refs[r["end"]]
        if ref is not None:
            r["rmse"] = rmse(out, ref)
            r["reference"] = kind
        if kind == "exact" and r1000[r["end"]].is_file():
            r["rmse_vs_dpm1000"] = rmse(out, np.load(r1000[r["end"]]))
    # the last-step term: the reference path's own state at each NFE's last timestep, then
    # the model's x̂₀ there (what a σ = 0 sampler with no error before its last step returns)
    ref, _ = refs["zero"]
    last = {}
    for k, t in last_timesteps(p.base).items():
        f = p.path(f"reference-1000-x0-{t}")
        if ref is not None and f.is_file():
            last[str(k)] = {"t": t, "rmse": rmse(np.load(f), ref)}
    res["last_step_term"] = last


def _sigma_model(p: Problem, sched: Any):
    """The mixture's exact ε* at the σ the scheduler is at (its ``sigmas[step_index]``, σ/α),
    whatever the integer timestep it passes."""

    def model(x: np.ndarray, t: int) -> np.ndarray:
        st = float(np.asarray(sched.sigmas, dtype=np.float64)[sched.step_index or 0])
        alpha = 1.0 / math.sqrt(1.0 + st * st)
        return p.gm.eps_at(x, alpha, st * alpha)

    return model


def conv_settings() -> dict[str, dict[str, Any]]:
    """The convergence check's rows (rdiff's UniPC where this rdiff has it)."""
    out = dict(CONV_SETTINGS)
    if hasattr(rdiff, "UniPCMultistepScheduler"):
        out.update(RDIFF_UNIPC_CONV)
    return out


def _run_convergence(p: Problem, res: dict, path: Path, results: dict) -> None:
    """The mixture's convergence check (see CONV_SETTINGS): RMSE to RK4 (to t = 0, then for
    the σ = 0 end the exact x̂₀ there, which is what the samplers' last step computes)."""
    conv = res.setdefault("convergence", {})
    ex = res["exact"]["sigma_min"]
    at_t0 = np.load(p.path(f"exact-{ex['steps']}-sigma_min"))
    a0, s0 = math.sqrt(float(p.ac[0])), math.sqrt(1.0 - float(p.ac[0]))
    refs = {"sigma_min": at_t0, "zero": p.gm.x0_at(at_t0, a0, s0)}
    for lab, spec in conv_settings().items():
        for k in CONV_NFES:
            key = f"{lab}|{k}"
            if key in conv:
                continue
            sched = make_sampler(spec, p.base)
            torch_io = spec["lib"] == "diffusers"
            out, used, _ = integrate(_sigma_model(p, sched), sched, p.x_init, k, p.n, torch_io)
            conv[key] = {"label": lab, "nfe": used, "end": spec["end"]}
            conv[key]["rmse"] = rmse(out, refs[spec["end"]])
            e = conv[key]["rmse"]
            print(
                f"[{p.name}] convergence {lab:32s} NFE {used:4d}: {e if e is None else f'{e:.3e}'}"
            )
        _save(results, path)


def run(args: argparse.Namespace) -> dict:
    """Run (or resume) everything; returns the results dict (also written to ``--json``)."""
    import torch

    torch.set_num_threads(1)
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    t_start = time.perf_counter()

    def budget() -> float:
        return args.budget_minutes * 60 - (time.perf_counter() - t_start)

    import diffusers

    results["meta"] = {
        "script": "scripts/ode_error_vs_nfe.py",
        "rdiff": rdiff.__version__,
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "threads": "1 (RAYON/OMP/MKL_NUM_THREADS=1, torch.set_num_threads(1))",
        "nfes": list(NFES),
        "reference": "rdiff DPMSolverMultistepScheduler(solver_order=3, dpmsolver++, "
        "lower_order_final=True) at 1000 steps; 500 steps for its self-error",
        "metric": "RMSE = sqrt(mean over samples and coordinates of (x - x_ref)^2)",
        "ends": ENDS,
        "spacing": "linspace (diffusers' default) for every row but DDIM (trailing)",
        "has_rdiff_unipc": hasattr(rdiff, "UniPCMultistepScheduler"),
        "has_rdiff_v3": hasattr(rdiff, "DPMSolverV3Scheduler"),
    }
    for name in args.problems.split(","):
        rows = settings(name)
        n = args.n if name == "digits" else args.n_gmm
        batch = args.batch_size if name == "digits" else n
        p = Problem(name, n, args.seed, batch, Path(args.cache_dir))
        res = results.setdefault("problems", {}).setdefault(name, {})
        if res.get("n") not in (None, n) or res.get("seed") not in (None, args.seed):
            res.clear()  # another n or seed: start this problem afresh
        res.update({"n": n, "seed": args.seed, "batch": batch, "setup": p.describe})
        if p.gm is not None:
            _run_exact(p, res, path, results, args.rk4_steps)
        _run_reference(p, 1000, res, path, results)
        order = list(rows)
        jobs = sorted(
            ((k, lab) for lab in rows for k in NFES), key=lambda j: (j[0], order.index(j[1]))
        )
        for k, lab in jobs:
            if applicable(rows[lab], k):
                _run_cell(p, lab, rows[lab], k, res, path, results, budget)
        if budget() > 0 or p.gm is not None:
            _run_reference(p, 500, res, path, results)
        if p.gm is not None:
            _run_convergence(p, res, path, results)
        _reference_summary(p, res)
        _score(p, res)
        res.pop("_rate", None)
        _save(results, path)
    return results


def main() -> None:
    """Command line: run (or resume) and write the docs."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="digits samples")
    p.add_argument("--n-gmm", type=int, default=4096, help="mixture samples")
    p.add_argument("--seed", type=int, default=0, help="x_T = default_rng(seed).standard_normal")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--problems", default="gmm,digits")
    p.add_argument("--rk4-steps", type=int, default=4000)
    p.add_argument("--budget-minutes", type=float, default=1e9)
    p.add_argument(
        "--cache-dir", default=str(Path.home() / ".cache" / "rdiff" / "ode_error_vs_nfe")
    )
    p.add_argument("--json", default=str(ROOT / "docs" / "ode_error_vs_nfe.json"))
    p.add_argument("--docs-only", action="store_true", help="only rewrite md/png from the json")
    args = p.parse_args()
    results = json.loads(Path(args.json).read_text()) if args.docs_only else run(args)
    write_docs(results)


def _fmt(v: float | None) -> str:
    return "NaN" if v is None else f"{v:.3g}"


def _grid(res: dict, key: str = "runs") -> dict[str, dict[int, dict]]:
    """label -> NFE -> run."""
    out: dict[str, dict[int, dict]] = {}
    for r in res.get(key, {}).values():
        out.setdefault(r["label"], {})[r["nfe"]] = r
    return out


def error_table(res: dict, end: str, nfes: tuple[int, ...] = NFES) -> str:
    """Markdown: RMSE per row × NFE for the rows that end at ``end`` (best per column bold)."""
    grid = _grid(res)
    labels = [lab for lab in all_rows() if lab in grid]
    labels = [lab for lab in labels if next(iter(grid[lab].values()))["end"] == end]
    best = {}
    for k in nfes:
        vals = [grid[lab][k]["rmse"] for lab in labels if grid[lab].get(k, {}).get("rmse")]
        best[k] = min(vals) if vals else None
    lines = [
        "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
        "|---|" + "---:|" * len(nfes),
    ]
    for lab in labels:
        cells = []
        for k in nfes:
            r = grid[lab].get(k)
            if r is None:
                cells.append("—")
                continue
            v = r.get("rmse")
            cells.append(f"**{_fmt(v)}**" if v is not None and v == best[k] else _fmt(v))
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    last = res.get("last_step_term", {})
    if end == "zero" and last:
        cells = [_fmt(last[str(k)]["rmse"]) if str(k) in last else "—" for k in nfes]
        lines.append(
            "| *last-step term: reference path to t_last, then x̂₀* | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def ratio_table(results: dict, nfes: tuple[int, ...] = (5, 6)) -> str:
    """Markdown: each row's RMSE over DPM-Solver++ 3M's (the one with the same end)."""
    probs = [n for n in ("digits", "gmm") if n in results.get("problems", {})]
    grids = {n: _grid(results["problems"][n]) for n in probs}
    base = {"zero": "DPM-Solver++ 3M (rdiff)", "sigma_min": "DPM-Solver++ 3M (rdiff, σ_min end)"}
    head = [f"{n} NFE {k}" for n in probs for k in nfes]
    lines = ["| sampler (÷ DPM-Solver++ 3M, same end) | " + " | ".join(head) + " |"]
    lines.append("|---|" + "---:|" * len(head))
    for lab in all_rows():
        if not any(lab in grids[n] for n in probs) or lab in base.values():
            continue
        cells = []
        for n in probs:
            row = grids[n].get(lab, {})
            for k in nfes:
                r = row.get(k)
                b = grids[n].get(base[r["end"]] if r else "", {}).get(k)
                if r is None or b is None or not b.get("rmse"):
                    cells.append("—")
                elif r.get("rmse") is None:
                    cells.append("NaN")
                else:
                    cells.append(f"{r['rmse'] / b['rmse']:.2f}")
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def convergence_table(res: dict) -> str:
    """Markdown: the mixture's convergence check, RMSE and the observed order between
    neighbouring NFEs (log ratio over log ratio of the step counts NFE − 1)."""
    grid = _grid(res, "convergence")
    lines = [
        "| sampler (end) | " + " | ".join(f"NFE {k}" for k in CONV_NFES) + " |",
        "|---|" + "---:|" * len(CONV_NFES),
    ]
    for lab, row in grid.items():
        cells = []
        prev = None
        for k in CONV_NFES:
            r = row.get(k)
            if r is None:
                cells.append("—")
                continue
            v = r.get("rmse")
            cell = _fmt(v)
            if prev is not None and v and prev[1]:
                order = math.log(prev[1] / v) / math.log((k - 1) / (prev[0] - 1))
                cell += f" ({order:.1f})"
            cells.append(cell)
            prev = (k, v)
        end = "σ=0" if next(iter(row.values()))["end"] == "zero" else "t=0"
        lines.append(f"| {lab} ({end}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _reference_lines(res: dict) -> list[str]:
    out = []
    ref = res.get("reference", {})
    ex = res.get("exact", {})
    for e in ENDS:
        r = ref.get(e, {})
        bits = [f"500 vs 1000 steps **{_fmt(r.get('rmse_500_vs_1000'))}**"]
        if "rmse_1000_vs_exact" in r:
            bits.append(f"1000 steps vs RK4 {_fmt(r['rmse_1000_vs_exact'])}")
            bits.append(f"500 steps vs RK4 {_fmt(r.get('rmse_500_vs_exact'))}")
        if e in ex:
            bits.append(
                f"RK4 {ex[e]['steps']} vs {ex[e]['steps'] // 2} steps "
                f"{_fmt(ex[e]['rmse_half_steps_vs_full'])}"
            )
        out.append(f"  * end {ENDS[e]}: " + "; ".join(bits))
    return out


def _smallest(res: dict, end: str) -> float | None:
    vals = [r["rmse"] for r in res.get("runs", {}).values() if r["end"] == end and r.get("rmse")]
    return min(vals) if vals else None


def _observations(results: dict) -> list[str]:
    """Data-driven remarks: non-finite rows, rows whose error grows with NFE."""
    out = []
    for name, res in results.get("problems", {}).items():
        grid = _grid(res)
        nan_rows = [
            lab for lab, row in grid.items() if any(r.get("rmse") is None for r in row.values())
        ]
        if nan_rows:
            out.append(f"* {name}: non-finite output (recorded as NaN): {', '.join(nan_rows)}.")
        worse = []
        for lab, row in grid.items():
            ks = sorted(k for k in row if row[k].get("rmse"))
            ups = [
                f"{a}→{b}: {_fmt(row[a]['rmse'])}→{_fmt(row[b]['rmse'])}"
                for a, b in itertools.pairwise(ks)
                if row[b]["rmse"] > 1.05 * row[a]["rmse"]
            ]
            if ups:
                worse.append(f"{lab} ({'; '.join(ups)})")
        if worse:
            out.append(f"* {name}: error grows with NFE for " + ", ".join(worse) + ".")
    return out


def write_docs(results: dict) -> None:
    """Write docs/ode_error_vs_nfe.md and .png from the results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = results.get("problems", {})
    meta = results.get("meta", {})
    titles = {"digits": "bundled digits DDPM", "gmm": "GaussianMixture (exact ε*)"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=False)
    labels = list(all_rows())
    cmap = plt.get_cmap("tab20")
    for ax, name in zip(axes, ("digits", "gmm"), strict=True):
        res = probs.get(name, {})
        grid = _grid(res)
        for i, lab in enumerate(labels):
            row = grid.get(lab, {})
            ks = [k for k in sorted(row) if row[k].get("rmse")]
            if not ks:
                continue
            dashed = row[ks[0]]["end"] == "sigma_min"
            ax.plot(
                ks,
                [row[k]["rmse"] for k in ks],
                marker="o" if not dashed else "s",
                ms=3.5,
                ls="--" if dashed else "-",
                color=cmap(i % 20),
                label=lab + (" [t=0]" if dashed else ""),
            )
        last = res.get("last_step_term", {})
        if last:
            ks = sorted(int(k) for k in last)
            ax.plot(
                ks, [last[str(k)]["rmse"] for k in ks], "k:", lw=2, label="last-step term (σ=0)"
            )
        for e, ls in (("zero", "-."), ("sigma_min", (0, (1, 3)))):
            v = res.get("reference", {}).get(e, {}).get("rmse_500_vs_1000")
            if v:
                ax.axhline(v, color="grey", ls=ls, lw=1, label=f"reference self-error ({e})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(NFES), [str(k) for k in NFES])
        ax.minorticks_off()
        ax.set_xlabel("NFE (model calls)")
        ax.set_ylabel("RMSE to the ODE solution")
        ax.set_title(f"{titles[name]} (n = {res.get('n', '?')})")
        ax.grid(True, which="major", alpha=0.3)
    handles, labs = axes[0].get_legend_handles_labels()
    h2, l2 = axes[1].get_legend_handles_labels()
    for h, lab in zip(h2, l2, strict=True):
        if lab not in labs:
            handles.append(h)
            labs.append(lab)
    fig.legend(handles, labs, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(ROOT / "docs" / "ode_error_vs_nfe.png", dpi=110)

    d = probs.get("digits", {})
    g = probs.get("gmm", {})
    gs = g.get("setup", {})
    parts = [
        "# Error against the ODE solution vs NFE",
        "",
        "Generated by `scripts/ode_error_vs_nfe.py` from `docs/ode_error_vs_nfe.json` "
        "(rerun `--docs-only` to rewrite this page and the plot):",
        "",
        "    RAYON_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=python \\",
        "        nice -n 10 python scripts/ode_error_vs_nfe.py --n 1000 --n-gmm 4096",
        "",
        "Sample quality (`docs/quality_vs_nfe.md`) mixes solver error with model error; this page "
        "measures the solver error alone: for the same initial noise x_T, the RMSE (over all "
        "samples and coordinates) between each sampler's output and a converged solution of the "
        "same probability-flow ODE.",
        "",
        "## Set-up",
        "",
        f"* **digits**: the bundled digits DDPM (rdiff's native UNet, ε-prediction), float32, "
        f"n = {d.get('n', '?')} samples, x_T = `numpy.random.default_rng({d.get('seed', 0)})`"
        f".standard_normal((n, 1, 16, 16), float32) (as `rdiff sample` draws it), batches of "
        f"{d.get('batch', '?')}.",
        f"* **gmm**: `rdiff.testing.GaussianMixture` with {gs.get('components', 4)} diagonal "
        f"components in d = {gs.get('dim', 16)} ({gs.get('mixture', '')}), its exact ε* "
        f"(`gm.model(schedule)`, float64), n = {g.get('n', '?')}, x_T = "
        f"`default_rng({g.get('seed', 0)}).standard_normal((n, 16))`.",
        "* **The ODE.** Both use the digits model's schedule (its `scheduler_config.json`: 1000 "
        "discrete steps, linear β 1e-4 … 0.02, ε-prediction; rdiff and diffusers compute ᾱ the "
        "same way). Every sampler starts from x_T at t = 999 (diffusers' `linspace` spacing) "
        "and ends at one of two places, and is compared with the reference solved to the same "
        "end:",
        '  * **σ = 0** (`final_sigmas_type="zero"`): the last step is first order and returns '
        "the model's x̂₀ at the last timestep (≈ 999/NFE). DDIM (ᾱ_prev = 1 via "
        "`set_alpha_to_one`), DPM-Solver++ 2M/3M, UniPC bh2 and (NaN, see below) UniPC bh1.",
        '  * **t = 0** (σ_min: σ/α = √((1−ᾱ₀)/ᾱ₀) ≈ 0.01, `final_sigmas_type="sigma_min"`): '
        "DPM-Solver's ε form (diffusers and rdiff forbid `zero` there), DEIS (diffusers 0.42.1's "
        "DEIS has no `final_sigmas_type` and always ends here), UniPC bh1 in the variant that "
        "works, and DPM-Solver++ 3M and UniPC-3 bh2 at the same end as peers. Rows ending here "
        "are marked [t=0] in the plot (dashed).",
        "* **Samplers.** rdiff's schedulers take numpy; diffusers' take torch tensors, the model "
        "wrapped with `torch.from_numpy`/`.numpy()`. Every scheduler gets the model's config "
        "(β schedule, prediction type) plus the row's options and is otherwise at its defaults "
        "(`lower_order_final=True`; UniPC `predict_x0=True`, corrector on; DEIS `logrho`). "
        "Timesteps: `linspace` for all but DDIM, which uses `trailing`: diffusers' DDIM steps "
        "from t to t − ⌊1000/NFE⌋ whatever the spacing, so `linspace` mis-steps and `leading` "
        "(DDIM's default, and the model config's) starts at t = 1000 − 1000/NFE instead of 999, "
        "another ODE problem. With `trailing` DDIM goes 999 → … → 1000/NFE − 1 → ᾱ = 1 in "
        "equal steps when NFE divides 1000, so it is not run at NFE 6 and 15.",
        "* **DPM-Solver-v3** (rdiff only; no other package has it) runs with its authors' "
        "recommended settings (order 3, corrector with pseudo-order, `lower_order_final`) and "
        "three of their spacings, snapped to its EMS grid, from t = 999 to training timestep 0 "
        "(the t = 0 end: where the authors' sampler ends), so it is compared with the t = 0 "
        "reference. Its statistics: the bundled digits model's `ems.npz` (512 digits, 201 λ "
        "points, `scripts/estimate_digits_ems.py`) and, for the mixture, `rdiff.estimate_ems` "
        "over 4096 samples of the mixture on 1001 λ points (float64 finite differences; "
        "cached beside the runs). Its timesteps are fractional (N·t − 1): the digits UNet and "
        "the mixture's ε* take them as they are.",
        "* NFE = model calls per sample = the number of timesteps (UniPC's corrector reuses the "
        "next step's model call). Threads: "
        f"{meta.get('threads', '1')}; rdiff {meta.get('rdiff', '?')}, diffusers "
        f"{meta.get('diffusers', '?')}, torch {meta.get('torch', '?')}.",
        "",
        "## The reference and how we know it converged",
        "",
        'rdiff\'s `DPMSolverMultistepScheduler(solver_order=3, algorithm_type="dpmsolver++", '
        "lower_order_final=True)` with the row's `final_sigmas_type`, at 1000 steps (linspace: "
        "t = 999 … 1, every integer once and t ≈ 500 twice, a zero-length step) and at 500 "
        "steps; both ends come from one run (they differ only in the last step). For the "
        "mixture, an independent solution without rdiff's solvers: classical RK4 in log(σ/α) "
        "with the exact ε* at every (α, σ), float64, to σ/α = 1e-7 followed by the exact x̂₀ "
        "(σ = 0 end) or to t = 0.",
        "",
        "RMSE between the solutions:",
        "",
        "* digits:",
        *_reference_lines(d),
        "* gmm:",
        *_reference_lines(g),
        "",
        "On the mixture the RK4 solution is converged to ~1e-9, so it is the mixture's reference "
        "below (the 1000-step DPM-Solver++ 3M one is also in the JSON, `rmse_vs_dpm1000`). It "
        "calibrates the digits reference: at the σ = 0 end the 1000-step solution's own error "
        "is dominated by its final x̂₀ step from t = 1, and the 500-vs-1000 difference "
        "understates it (gmm: "
        f"{_fmt(g.get('reference', {}).get('zero', {}).get('rmse_500_vs_1000'))} vs a true "
        f"{_fmt(g.get('reference', {}).get('zero', {}).get('rmse_1000_vs_exact'))}); at the "
        "t = 0 end the 500-step solution carries nearly all of the difference. The digits "
        "reference is the 1000-step solution. Smallest sampler error in the tables, against "
        "the reference's self-error: digits σ = 0 "
        f"{_fmt(_smallest(d, 'zero'))} vs "
        f"{_fmt(d.get('reference', {}).get('zero', {}).get('rmse_500_vs_1000'))}, t = 0 "
        f"{_fmt(_smallest(d, 'sigma_min'))} vs "
        f"{_fmt(d.get('reference', {}).get('sigma_min', {}).get('rmse_500_vs_1000'))}; gmm "
        f"σ = 0 {_fmt(_smallest(g, 'zero'))}, t = 0 {_fmt(_smallest(g, 'sigma_min'))} (RK4 "
        "error ~1e-9).",
        "",
        "## RMSE to the ODE solution",
        "",
        "Bold: the smallest in its column. The *last-step term* row is the reference path's "
        "own state at the last timestep of NFE-step linspace, followed by the model's x̂₀ "
        "there: what a σ = 0 sampler returns if it made no error before its last step.",
        "",
        f"### digits (n = {d.get('n', '?')}), ending at σ = 0",
        "",
        error_table(d, "zero"),
        "",
        "### digits, ending at t = 0 (σ_min)",
        "",
        error_table(d, "sigma_min"),
        "",
        f"### gmm (n = {g.get('n', '?')}), ending at σ = 0",
        "",
        error_table(g, "zero"),
        "",
        "### gmm, ending at t = 0 (σ_min)",
        "",
        error_table(g, "sigma_min"),
        "",
        "### Against DPM-Solver++ 3M at 5 and 6 NFE",
        "",
        "Each row's RMSE divided by that of rdiff's DPM-Solver++ 3M with the same end (< 1: "
        "closer to the ODE solution).",
        "",
        ratio_table(results),
        "",
        "![RMSE to the ODE solution vs NFE](ode_error_vs_nfe.png)",
        "",
        "## Observations",
        "",
        '* diffusers 0.42.1\'s UniPC with `solver_type="bh1"` and `final_sigmas_type="zero"` '
        "returns NaN at the last step, for every order and NFE and with or without "
        "`lower_order_final` (the last step's predictor computes B(h)·Σρ·D with B(h) = hh = −h "
        "= −∞ at σ = 0, times 0 when the step is first order: −∞·0 = NaN; bh2's B(h) = "
        "expm1(−h) = −1 stays finite). Its rows are recorded as NaN (each run stops after its "
        "first all-NaN batch); bh1 is also run to t = 0, where it works.",
        *_observations(results),
        "",
        "## Convergence check (gmm)",
        "",
        "On the linspace grid the λ = log(α/σ) steps near t = 0 hardly shrink with NFE (the "
        "σ = 0 end even takes one infinite step), so the tables above do not show the solvers' "
        "orders. Here each row instead takes log-uniform σ/α steps from t = 999 to t = 0 "
        "(`use_exponential_sigmas=True`, i.e. uniform in λ) and ε* is evaluated exactly at each "
        "step's own σ (`sigmas[step_index]`; the fractional timesteps are not used), so the "
        "error is the integrator's alone. σ = 0 rows' last step is then the exact x̂₀ at t = 0, "
        "and the reference is RK4 to t = 0 followed by the same x̂₀; DEIS ends at t = 0 with "
        "a zero-length last step (σ_min repeated), so it makes NFE − 1 steps like the others. "
        "In brackets: the observed order log(e₁/e₂)/log((NFE₂−1)/(NFE₁−1)).",
        "",
        convergence_table(g),
        "",
        "## Timings",
        "",
    ]
    for name, res in (("digits", d), ("gmm", g)):
        rr = res.get("reference_runs", {})
        runs = res.get("runs", {}).values()
        wall = sum(r["wall_s"] for r in runs) + sum(r["wall_s"] for r in rr.values())
        ms = [r["ms_per_sample_step"] for r in runs if r["nonfinite_fraction"] == 0]
        ref_bits = ", ".join(
            f"{k} steps {v['wall_s']:.0f} s ({v['ms_per_sample_step']:.2f} ms/sample/step)"
            for k, v in sorted(rr.items(), key=lambda kv: int(kv[0]))
        )
        parts.append(
            f"* {name}: reference runs {ref_bits}; all runs {wall / 60:.1f} min"
            + (f", median {np.median(ms):.2f} ms per sample per step" if ms else "")
            + "."
        )
    parts += [
        "",
        "One thread, niced, on a 2-core machine shared with other work: timings are indicative "
        "only.",
        "",
    ]
    md = ROOT / "docs" / "ode_error_vs_nfe.md"
    md.write_text("\n".join(parts))
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
