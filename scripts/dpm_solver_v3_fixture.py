"""Writes tests/fixtures/dpm_solver_v3_gm.npz: DPM-Solver-v3 (Zheng, Lu et al., NeurIPS 2023) run
by its authors' own code on an exact problem, for rdiff's tests to compare against.

    PYTHONPATH=python OMP_NUM_THREADS=1 python scripts/dpm_solver_v3_fixture.py \\
        PATH/TO/DPM-Solver-v3 [--authors-ems PATH/TO/compute_ems.py]

The first argument is a git directory (or checkout) of https://github.com/thu-ml/DPM-Solver-v3 at
commit ba168717cef161d3b0b0fae1d69f8ff66838aee3 (2023-12-03, "add code"; another commit is
accepted with a warning). Its ``dpm_solver_v3.py`` is written to a temporary directory with
``git show`` and imported from there as it is (nothing of it is kept in rdiff); the script then

1. estimates the empirical model statistics (EMS) l, s, b on the authors' λ grid (uniform in λ
   from t = 1 to t = 1/N) from data samples of a ``rdiff.testing.GaussianMixture``, by the
   procedure of the authors' EMS example for ScoreSDE: l = E[σ v ⊙ (∂ε/∂x) v] with one Rademacher
   v per sample (forward-mode JVP), l' by central differences smoothed over ±5 grid points, then
   f = (σε − l x)/α and f' = e^{−λ}((l − 1)ε + dε/dλ) − l' x/α, with dε/dλ the total derivative
   along the VP ODE (forward-mode JVP in (x, t)), and the per-coordinate regression
   s = Cov(f, f')/Var(f), b = E f' − s E f. That example is not in the commit above (it was added
   to the repository later); with ``--authors-ems PATH`` its functions ``get_time_steps``,
   ``get_noise_and_jvp_x``, ``get_noise_and_total_derivative``, ``compute_l_d`` and
   ``compute_sb`` are read from PATH and run as they are, otherwise this script's transcription
   of the same formulas runs (``settings["ems"]["implementation"]`` says which). The JVPs need a
   differentiable ε: the mixture's exact ε is written here in torch (checked against
   ``GaussianMixture.eps_at`` to 1e-12);
2. runs the authors' ``DPM_Solver_v3`` with those EMS, for NFE 5 and 10 and several settings,
   from one seeded x_T, with the mixture's exact ε (``GaussianMixture.model``) behind the
   authors' ``model_wrapper`` and ``NoiseScheduleVP("discrete", alphas_cumprod=...)``.

Everything runs in float64 on the CPU: ``torch.set_default_dtype(torch.float64)`` (so the authors'
``linspace``/``tensor`` calls are float64) and ``Tensor.cuda`` made the identity while their
code runs. Their sampler builds the times of each update with ``torch.FloatTensor`` (float32);
the main outputs (``<run>/x``) replace it by float64, ``<run>/x_f32time`` keep it as written.
The model's timestep input 1000·(t − 1/N) is clipped to [0, N − 1] (it leaves that range by
rounding only). ``ode_x_end`` (not the authors' code) is the exact ODE's solution from x_T, by
scipy's DOP853 in λ. ``settings_json`` records every setting. The two EMS estimates (1024 and
16384 data samples, a 201-point grid) take ~45 s on one core, the 28 sampler runs ~3 s; the two
EMS implementations give bit-identical fixtures.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import io
import json
import math
import os
import subprocess
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.autograd.forward_ad as fwad

AUTHORS_COMMIT = "ba168717cef161d3b0b0fae1d69f8ff66838aee3"
N_TRAIN = 1000
SHAPE = (2, 2, 2)  # one sample, C×H×W: the authors' EMS arrays are (grid, C, H, W)
MIXTURE = {
    "means": [
        [-0.6, 0.4, 0.0, 0.8, -0.3, 0.5, -0.9, 0.2],
        [0.5, -0.7, 0.6, -0.2, 0.9, -0.4, 0.3, -0.8],
        [0.1, 0.9, -0.8, 0.3, 0.0, 0.7, 0.6, -0.1],
    ],
    "stds": [
        [0.30, 0.20, 0.45, 0.25, 0.35, 0.15, 0.40, 0.30],
        [0.25, 0.35, 0.20, 0.40, 0.15, 0.30, 0.25, 0.45],
        [0.40, 0.15, 0.30, 0.20, 0.45, 0.25, 0.35, 0.20],
    ],
    "weights": [0.3, 0.5, 0.2],
}
EMS_STEPS = 200  # the λ grid has EMS_STEPS + 1 points
EMS_DATA = 1024  # data samples (the authors: 1024 or 4096)
EMS_REF_DATA = 16384  # a second, larger estimate for statistical comparisons
N_SAMPLES = 64
SEEDS = {
    "ems_data": 0,
    "ems_noise_l": 1,
    "ems_noise_f": 2,
    "ref_data": 3,
    "ref_noise_l": 4,
    "ref_noise_f": 5,
    "x_T": 6,
}
NFES = (5, 10)
# name: (skip_type, order, p_pseudo, use_corrector, c_pseudo, lower_order_final, degenerated).
# tu_*: the discrete-time codebases (stable-diffusion/sampler.py: time_uniform, order 3
# unconditional / 2 guided, c_pseudo, lower_order_final; guided-diffusion: order 2, corrector);
# lsnr_*: ScoreSDE CIFAR-10 (sample.sh: 5 steps p_pseudo and no lower_order_final, <= 8 steps
# corrector, c_pseudo False); *_degenerate: l = 1, s = b = 0 (DPM-Solver++ on their grid).
CONFIGS = {
    "tu_o3_pc": ("time_uniform", 3, False, True, True, True, False),
    "tu_o2_pc": ("time_uniform", 2, False, True, True, True, False),
    "tu_o2_p": ("time_uniform", 2, False, False, True, True, False),
    "lsnr_o3_ppseudo_c_nolof": ("logSNR", 3, True, True, False, False, False),
    "lsnr_o3_c": ("logSNR", 3, False, True, False, True, False),
    "lsnr_o3_p": ("logSNR", 3, False, False, False, True, False),
    "lsnr_o3_p_degenerate": ("logSNR", 3, False, False, False, True, True),
}
CONFIG_FIELDS = (
    "skip_type",
    "order",
    "p_pseudo",
    "use_corrector",
    "c_pseudo",
    "lower_order_final",
    "degenerated",
)
EMS_FUNCTIONS = (
    "get_time_steps",
    "get_noise_and_jvp_x",
    "get_noise_and_total_derivative",
    "compute_l_d",
    "compute_sb",
)


def import_rdiff():
    for attempt in range(6):  # the extension may be mid-rebuild
        try:
            import rdiff
            from rdiff.testing import GaussianMixture

            return rdiff, GaussianMixture
        except ImportError as e:
            if attempt == 5:
                raise
            print(f"import rdiff failed ({e}); retrying in 60 s", flush=True)
            time.sleep(60)
    raise AssertionError


def load_authors_solver(repo: Path, workdir: Path):
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if commit != AUTHORS_COMMIT:
        print(f"warning: {repo} is at {commit}, the fixture was made at {AUTHORS_COMMIT}")
    text = subprocess.run(
        ["git", "-C", str(repo), "show", f"{commit}:dpm_solver_v3.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = workdir / "dpm_solver_v3.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("authors_dpm_solver_v3", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, commit


def load_authors_ems(path: Path) -> dict:
    tree = ast.parse(path.read_text())
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in EMS_FUNCTIONS]
    missing = set(EMS_FUNCTIONS) - {d.name for d in defs}
    if missing:
        raise SystemExit(f"{path}: missing {sorted(missing)}")
    namespace = {"np": np, "torch": torch, "fwAD": fwad, "os": os}
    exec(compile(ast.Module(body=defs, type_ignores=[]), str(path), "exec"), namespace)
    return {name: namespace[name] for name in EMS_FUNCTIONS}


# ---------------------------------------------------------------- this script's transcription


def own_noise_and_jvp_x(x, t, v, noise_pred_fn):
    with fwad.dual_level():
        out = noise_pred_fn(fwad.make_dual(x, v), torch.ones(x.shape[0]) * t)
        noise, jvp = fwad.unpack_dual(out)
    return noise, jvp


def own_noise_and_total_derivative(x, t, noise_pred_fn, ns):
    """ε(x, t) and dε/dλ along the VP ODE dx/dλ = σ² x − σ ε (tangent (dx/dλ, dt/dλ))."""
    sigma = ns.marginal_std(t)
    with fwad.dual_level():
        _, dlam_dt = fwad.unpack_dual(ns.marginal_lambda(fwad.make_dual(t, torch.ones_like(t))))
    noise = noise_pred_fn(x, torch.ones(x.shape[0]) * t)
    with fwad.dual_level():
        xd = fwad.make_dual(x, sigma**2 * x - sigma * noise)
        td = fwad.make_dual(t, torch.ones_like(t) / dlam_dt)
        _, jvp = fwad.unpack_dual(noise_pred_fn(xd, torch.ones(x.shape[0]) * td))
    return noise, jvp


def own_l_d(l_grid: np.ndarray, lambda_0: float, lambda_t: float, window: int = 5) -> np.ndarray:
    n = len(l_grid)
    gap = (lambda_0 - lambda_t) / (n - 1)
    d = np.empty_like(l_grid)
    d[0] = (l_grid[1] - l_grid[0]) / gap
    d[-1] = (l_grid[-1] - l_grid[-2]) / gap
    d[1:-1] = (l_grid[2:] - l_grid[:-2]) / (2 * gap)
    out = np.empty_like(d)
    for i in range(n):
        lo, hi = max(0, i - window), min(n, i + window + 1)
        out[i] = d[lo:hi].sum(axis=0) / (hi - lo)
    return out


def own_sb(f, f_d, f_f, f_f_d):
    s = (f_f_d - f * f_d) / (f_f - f * f)
    return s, f_d - s * f


# ---------------------------------------------------------------- the mixture's ε in torch


def torch_mixture_eps(gm, ns):
    """noise_pred_fn(x, t_continuous) = ε*(x; α(t), σ(t)), differentiable in x and t."""
    mu = torch.from_numpy(gm.means)
    var0 = torch.from_numpy(gm.stds) ** 2
    logw = torch.log(torch.from_numpy(gm.weights))

    def eps_at(x, alpha, sigma):
        rows = x.reshape(x.shape[0], -1)
        a = alpha.reshape(-1, 1, 1)
        s = sigma.reshape(-1, 1, 1)
        var = a**2 * var0 + s**2  # (n, K, d)
        diff = rows[:, None, :] - a * mu  # (n, K, d)
        logn = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        r = torch.softmax(logw + logn, dim=-1)
        eps = sigma.reshape(-1, 1) * (r[..., None] * diff / var).sum(1)
        return eps.reshape(x.shape)

    def noise_pred_fn(x, t):
        # the EMS code passes one time for all samples: evaluate the schedule once (its
        # interpolation sorts every input against all N knots) and broadcast
        assert bool(torch.all(t == t[0]))
        one = t[:1]
        return eps_at(
            x, ns.marginal_alpha(one).expand(t.shape), ns.marginal_std(one).expand(t.shape)
        )

    return eps_at, noise_pred_fn


# ---------------------------------------------------------------- EMS


def estimate_ems(fns, ns, noise_pred_fn, data, seed_l, seed_f, steps, t_t, t_0, tmp: Path):
    grid = fns["get_time_steps"](ns, "logSNR", t_t, t_0, steps, "cpu")
    lambda_t = ns.marginal_lambda(torch.tensor(t_t)).item()
    lambda_0 = ns.marginal_lambda(torch.tensor(t_0)).item()
    x0 = torch.from_numpy(data)
    l_grid = np.zeros((len(grid), *SHAPE))
    torch.manual_seed(seed_l)
    for j in range(len(grid)):
        t = grid[j : j + 1]  # shape (1,): the discrete schedule returns (-1,)-shaped values
        v = torch.randint(0, 2, x0.shape) * 2.0 - 1
        z = torch.randn_like(x0)
        alpha, sigma = ns.marginal_alpha(t), ns.marginal_std(t)
        _, jvp = fns["get_noise_and_jvp_x"](alpha * x0 + sigma * z, t, v, noise_pred_fn)
        l_grid[j] = (sigma * jvp * v).mean(dim=0).numpy()
    if "compute_l_d" in fns:
        np.savez_compressed(tmp / "l.npz", l=l_grid)
        fns["compute_l_d"](str(tmp), lambda_0, lambda_t)
        l_d = np.load(tmp / "l_d.npz")["l_d"]
    else:
        l_d = own_l_d(l_grid, lambda_0, lambda_t)
    mom = {k: np.zeros_like(l_grid) for k in ("f", "f_d", "f_f", "f_f_d")}
    torch.manual_seed(seed_f)
    for j in range(len(grid)):
        t = grid[j : j + 1]  # shape (1,): the discrete schedule returns (-1,)-shaped values
        z = torch.randn_like(x0)
        alpha, sigma = ns.marginal_alpha(t), ns.marginal_std(t)
        xt = alpha * x0 + sigma * z
        noise, eps_d = fns["get_noise_and_total_derivative"](xt, t, noise_pred_fn, ns)
        lj, ldj = torch.from_numpy(l_grid[j]), torch.from_numpy(l_d[j])
        lam = ns.marginal_lambda(t)
        a = (sigma * noise - lj * xt) / alpha
        b = torch.exp(-lam) * ((lj - 1) * noise + eps_d) - ldj * xt / alpha
        mom["f"][j] = a.mean(0).numpy()
        mom["f_d"][j] = b.mean(0).numpy()
        mom["f_f"][j] = (a * a).mean(0).numpy()
        mom["f_f_d"][j] = (a * b).mean(0).numpy()
    if "compute_sb" in fns:
        np.savez_compressed(tmp / "f.npz", **mom)
        fns["compute_sb"](str(tmp))
        sb = np.load(tmp / "sb.npz")
        s, b = sb["s"], sb["b"]
    else:
        s, b = own_sb(mom["f"], mom["f_d"], mom["f_f"], mom["f_f_d"])
    lam_grid = ns.marginal_lambda(grid).numpy()
    return {"t": grid.numpy(), "lambda": lam_grid, "l": l_grid, "l_d": l_d, "s": s, "b": b, **mom}


# ---------------------------------------------------------------- sampling


@contextlib.contextmanager
def cpu_float64(float64_times: bool):
    cuda, float_tensor = torch.Tensor.cuda, torch.FloatTensor
    torch.Tensor.cuda = lambda self, *a, **k: self
    if float64_times:
        torch.FloatTensor = lambda data: torch.tensor([float(v) for v in data])
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.FloatTensor = cuda, float_tensor


def run_sampler(mod, ns, model_fn, stats_dir, x_t, steps, cfg, float64_times):
    skip, order, p_pseudo, use_corrector, c_pseudo, lof, degenerated = cfg
    with cpu_float64(float64_times), contextlib.redirect_stdout(io.StringIO()):
        solver = mod.DPM_Solver_v3(
            str(stats_dir), ns, steps=steps, skip_type=skip, degenerated=degenerated, device="cpu"
        )
        x, xs = solver.sample(
            torch.from_numpy(x_t).clone(),
            model_fn,
            order=order,
            p_pseudo=p_pseudo,
            use_corrector=use_corrector,
            c_pseudo=c_pseudo,
            lower_order_final=lof,
            return_intermediate=True,
        )
    t = solver.timesteps.numpy()
    return {
        "x": x.numpy(),
        "intermediate": torch.stack(xs).numpy(),
        "t": t,
        "lambda": ns.marginal_lambda(solver.timesteps).numpy(),
        "index": np.asarray(solver.indexes, dtype=np.int64),
    }


def ode_reference(gm, x_t: np.ndarray, lambda_t: float, lambda_0: float) -> np.ndarray:
    """The exact ODE's x at λ_0 from x_T at λ_T: dx/dλ = σ² x − σ ε*, DOP853, tolerances 1e-12."""
    from scipy.integrate import solve_ivp

    n = x_t.shape[0]

    def rhs(lam, y):
        alpha, sigma = (
            math.sqrt(1 / (1 + math.exp(-2 * lam))),
            math.sqrt(1 / (1 + math.exp(2 * lam))),
        )
        x = y.reshape(n, -1)
        return (sigma**2 * x - sigma * gm.eps_at(x, alpha, sigma)).ravel()

    y0 = x_t.reshape(-1)
    sol = solve_ivp(rhs, (lambda_t, lambda_0), y0, method="DOP853", rtol=1e-12, atol=1e-12)
    assert sol.success, sol.message
    return sol.y[:, -1].reshape(x_t.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo", type=Path, help="git directory or checkout of DPM-Solver-v3")
    parser.add_argument(
        "--authors-ems",
        type=Path,
        default=None,
        help="a file holding the authors' EMS functions (see the docstring)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "tests/fixtures/dpm_solver_v3_gm.npz",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    started = time.time()
    rdiff, gaussian_mixture = import_rdiff()

    schedule = rdiff.NoiseSchedule.discrete(N_TRAIN)  # diffusers' linear β, 1e-4 .. 0.02
    gm = gaussian_mixture(MIXTURE["means"], np.asarray(MIXTURE["stds"]), MIXTURE["weights"])
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        mod, commit = load_authors_solver(args.repo, tmp)
        ns = mod.NoiseScheduleVP(
            "discrete", alphas_cumprod=torch.from_numpy(schedule.alphas_cumprod.copy())
        )
        t_t, t_0 = float(ns.T), 1.0 / ns.total_N  # DPM_Solver_v3's defaults for discrete models
        eps_at, noise_pred_fn = torch_mixture_eps(gm, ns)

        probe = gm.sample_data(256, seed=99).reshape(-1, *SHAPE)
        for a, s in ((0.999, 0.0447), (0.6, 0.8), (0.01, 0.99995)):
            err = np.abs(
                eps_at(torch.from_numpy(probe), torch.tensor(a), torch.tensor(s)).numpy()
                - gm.eps_at(probe, a, s)
            ).max()
            assert err < 1e-12, f"torch ε differs from GaussianMixture.eps_at by {err}"

        if args.authors_ems is not None:
            fns = load_authors_ems(args.authors_ems)
            impl = f"authors' functions read from {args.authors_ems}"
        else:
            fns = {
                "get_time_steps": None,
                "get_noise_and_jvp_x": own_noise_and_jvp_x,
                "get_noise_and_total_derivative": own_noise_and_total_derivative,
            }
            impl = "this script's transcription"
        if fns["get_time_steps"] is None:
            # the grid DPM_Solver_v3.__init__ builds: its own get_time_steps("logSNR", ...)
            def grid_fn(ns_, skip, t_start, t_end, n, device):
                holder = types.SimpleNamespace(noise_schedule=ns_)
                return mod.DPM_Solver_v3.get_time_steps(holder, skip, t_start, t_end, n, device)

            fns["get_time_steps"] = grid_fn

        data = gm.sample_data(EMS_DATA, seed=SEEDS["ems_data"]).reshape(-1, *SHAPE)
        with contextlib.redirect_stdout(io.StringIO()):
            seeds = (SEEDS["ems_noise_l"], SEEDS["ems_noise_f"])
            ems = estimate_ems(fns, ns, noise_pred_fn, data, *seeds, EMS_STEPS, t_t, t_0, tmp)
            ref_data = gm.sample_data(EMS_REF_DATA, seed=SEEDS["ref_data"]).reshape(-1, *SHAPE)
            seeds = (SEEDS["ref_noise_l"], SEEDS["ref_noise_f"])
            ref = estimate_ems(fns, ns, noise_pred_fn, ref_data, *seeds, EMS_STEPS, t_t, t_0, tmp)
        print(f"EMS done ({time.time() - started:.1f} s)", flush=True)

        stats_dir = tmp / "stats"
        stats_dir.mkdir()
        np.savez_compressed(stats_dir / "l.npz", l=ems["l"])
        np.savez_compressed(stats_dir / "sb.npz", s=ems["s"], b=ems["b"])
        exact = gm.model(schedule, prediction_type="epsilon")

        def model(x, t_input, cond=None):  # model_wrapper calls model(x, t_input, None)
            return exact(x, torch.clamp(t_input, 0.0, N_TRAIN - 1.0))

        model_fn = mod.model_wrapper(model, ns, model_type="noise")
        x_t = np.random.default_rng(SEEDS["x_T"]).standard_normal((N_SAMPLES, *SHAPE))
        out = {
            "x_T": x_t,
            "alphas_cumprod": schedule.alphas_cumprod,
            "gm_means": gm.means,
            "gm_stds": gm.stds,
            "gm_weights": gm.weights,
            "ems_data": data,
            **{f"ems_{k}": v for k, v in ems.items()},
            **{f"ref_{k}": ref[k] for k in ("l", "s", "b")},
        }
        lambda_t, lambda_0 = float(ems["lambda"][0]), float(ems["lambda"][-1])
        out["ode_x_end"] = ode_reference(gm, x_t, lambda_t, lambda_0)
        runs = []
        for name, cfg in CONFIGS.items():
            for nfe in NFES:
                run = f"{name}_nfe{nfe}"
                res = run_sampler(mod, ns, model_fn, stats_dir, x_t, nfe, cfg, True)
                f32 = run_sampler(mod, ns, model_fn, stats_dir, x_t, nfe, cfg, False)
                out.update({f"{run}/{k}": v for k, v in res.items()})
                out[f"{run}/x_f32time"] = f32["x"]
                diff = np.abs(f32["x"] - res["x"]).max()
                rmse = np.sqrt(np.mean((res["x"] - out["ode_x_end"]) ** 2))
                runs.append(run)
                print(
                    f"{run}: t = {np.round(res['t'], 6).tolist()}, indexes {res['index']}, "
                    f"rmse vs ODE {rmse:.2e}, |x_f32time - x| = {diff:.2e}",
                    flush=True,
                )

    settings = {
        "authors": {
            "repository": "https://github.com/thu-ml/DPM-Solver-v3",
            "commit": commit,
            "file": "dpm_solver_v3.py",
        },
        "generated_by": "scripts/dpm_solver_v3_fixture.py",
        "dtype": "float64 (torch default dtype), CPU; Tensor.cuda patched to the identity",
        "sample_shape": list(SHAPE),
        "mixture": MIXTURE,
        "schedule": {
            "kind": "discrete",
            "num_train_timesteps": N_TRAIN,
            "beta_schedule": "linear",
            "beta_start": 1e-4,
            "beta_end": 0.02,
            "authors_noise_schedule": "NoiseScheduleVP('discrete', alphas_cumprod="
            "rdiff's alphas_cumprod); t_i = (i + 1)/N, log α piecewise linear in t",
            "t_start": t_t,
            "t_end": t_0,
        },
        "model": "GaussianMixture.model(schedule, 'epsilon') at t_input = 1000 (t - 1/N) "
        "(model_wrapper's map for discrete models), clipped to [0, N - 1]",
        "ems": {
            "implementation": impl,
            "grid_steps": EMS_STEPS,
            "grid": "get_time_steps('logSNR', t_start, t_end, grid_steps): uniform in λ, "
            "index 0 at t_start (λ_T), index grid_steps at t_end (λ_0)",
            "n_data": EMS_DATA,
            "n_data_ref": EMS_REF_DATA,
            "x_lambda": "alpha * x0 + sigma * z, fresh z per grid point, the same x0",
            "l": "mean over samples of sigma * v * (d eps/dx) v, v Rademacher, fresh per "
            "grid point (torch.manual_seed(seed_l) then randint, randn_like per point)",
            "l_d": "central differences in λ (one-sided at the ends), mean over ±5 points",
            "f": "(sigma eps - l x)/alpha",
            "f_d": "exp(-λ) ((l - 1) eps + d eps/dλ) - l_d x/alpha, d eps/dλ the JVP with "
            "tangent (σ² x - σ eps, 1/(dλ/dt))",
            "s": "(E[f f_d] - E f E f_d)/(E[f²] - (E f)²)",
            "b": "E f_d - s E f",
            "ref": "the same estimate with n_data_ref samples and other seeds",
        },
        "seeds": SEEDS,
        "sampler": {
            "x_T": f"numpy default_rng({SEEDS['x_T']}).standard_normal((64, 2, 2, 2))",
            "nfe": list(NFES),
            "configs": {k: dict(zip(CONFIG_FIELDS, v, strict=True)) for k, v in CONFIGS.items()},
            "half": False,
            "t_start": None,
            "t_end": None,
            "outputs": "<run>/x final x at t_end (no denoising step); "
            "<run>/intermediate the cached x at t_0..t_{nfe-1} after any "
            "corrector; <run>/t, /lambda, /index the times snapped to the "
            "EMS grid; <run>/x_f32time with the authors' float32 "
            "torch.FloatTensor times",
            "runs": runs,
        },
        "ode_x_end": "x at λ_0 (t_end) of the exact probability-flow ODE from x_T at λ_T, "
        "scipy solve_ivp DOP853 in λ, rtol = atol = 1e-12 (not the authors' code)",
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
    }
    out["settings_json"] = np.asarray(json.dumps(settings))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(
        f"wrote {args.out} ({args.out.stat().st_size} bytes) from {commit} "
        f"in {time.time() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
