"""Sample quality (Fréchet digits distance) against NFE for rdiff's samplers on the bundled
digits model; writes ``docs/quality_vs_nfe.{json,md,png}``.

Every setting samples ``--n`` digits from the same seeded initial noise (numpy default_rng),
with rdiff's native UNet and rdiff's schedulers, and scores them with
``rdiff.metrics.frechet_digits_distance``. Results are cached in the JSON file as they come,
so a run can be cut short (``--budget-minutes``) and resumed; the Markdown lists what was run
and what was not.

    python scripts/quality_vs_nfe.py --n 1000 --budget-minutes 25
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import rdiff
from rdiff.cli import bundled_model_dir, make_scheduler, sample_images
from rdiff.metrics import frechet_digits_distance, load_real_digits, noise_floor

ROOT = Path(__file__).resolve().parents[1]
NFES = (4, 5, 6, 8, 10, 15, 20, 25, 50, 100, 1000)
# label -> (cli scheduler name, order, trajectory or DDPM variance_type)
SETTINGS = {
    "DDPM (β̃)": ("ddpm", None, None),
    # the Analytic-DPM paper's other baseline: σ² = β_t (diffusers' "fixed_large")
    "DDPM (β)": ("ddpm", None, "fixed_large"),
    # the same two on the Analytic rows' uniform trajectory (custom timesteps): the paper
    # compares every method on the same timesteps
    "DDPM (β̃), uniform steps": ("ddpm", None, "fixed_small|uniform"),
    "DDPM (β), uniform steps": ("ddpm", None, "fixed_large|uniform"),
    "DDIM (η=0)": ("ddim", None, None),
    "Analytic-DDPM": ("analytic-ddpm", None, "uniform"),
    "Analytic-DDIM": ("analytic-ddim", None, "uniform"),
    "Analytic-DDPM (optimal traj.)": ("analytic-ddpm", None, "optimal"),
    "Analytic-DDIM (optimal traj.)": ("analytic-ddim", None, "optimal"),
    "DPM-Solver-2M": ("dpmsolver", 2, None),
    "DPM-Solver-3M": ("dpmsolver", 3, None),
    "DPM-Solver++-2M": ("dpmsolver++", 2, None),
    "DPM-Solver++-3M": ("dpmsolver++", 3, None),
    "UniPC-2 (bh2)": ("unipc", 2, None),
    "UniPC-3 (bh2)": ("unipc", 3, None),
    # DPM-Solver-v3 with the bundled EMS table: the authors' discrete default spacing
    # (time_uniform), their advice for low-resolution models (logSNR) and DDIM's
    # (time_quadratic)
    "DPM-Solver-v3": ("dpmsolver-v3", 3, None),
    "DPM-Solver-v3 (logSNR)": ("dpmsolver-v3", 3, "logSNR"),
    "DPM-Solver-v3 (time_quadratic)": ("dpmsolver-v3", 3, "time_quadratic"),
}


class _OnUniformTrajectory:
    """A DDPM scheduler stepped on the Analytic-DPM uniform trajectory (the authors' 'linear'
    choice) through custom timesteps, so that it visits the Analytic rows' timesteps."""

    def __init__(self, sched, trajectory):
        self._sched, self._trajectory = sched, trajectory

    def set_timesteps(self, k: int) -> None:
        self._trajectory.set_timesteps(k)
        self._sched.set_timesteps(timesteps=[int(t) for t in self._trajectory.timesteps])

    def __getattr__(self, name):
        return getattr(self._sched, name)


def _scheduler(folder: Path, name: str, order, trajectory):
    if name == "ddpm":
        variance, _, steps = (trajectory or "fixed_small").partition("|")
        sched = make_scheduler(name, folder, order, variance=variance)  # = rdiff sample's
        if steps == "uniform":
            uniform = make_scheduler("analytic-ddpm", folder, order)
            return _OnUniformTrajectory(sched, uniform)
        return sched
    sched = make_scheduler(name, folder, order)
    if name == "dpmsolver-v3":
        if trajectory is not None:
            cfg = {**sched.config, "skip_type": trajectory}
            sched = rdiff.DPMSolverV3Scheduler.from_config(cfg)
        return sched
    if trajectory is not None:
        cfg = dict(sched.config)
        cfg["trajectory"] = trajectory
        sched = rdiff.AnalyticDPMScheduler.from_config(cfg)
    return sched


def result_key(label: str, nfe: int, n: int, seed: int) -> str:
    """The cache key of one run (seed 0, the table's seed, keeps the original short key)."""
    return f"{label}|{nfe}|{n}" + ("" if seed == 0 else f"|seed={seed}")


def _same_as_uniform(folder: Path, label: str, k: int, n: int, seed: int, results: dict):
    """For an optimal-trajectory setting: the cache key of its uniform twin's run when both
    visit the same K timesteps (the case for K ≥ 10 with this model's Γ), else None."""
    name, order, traj = SETTINGS[label]
    if traj != "optimal":
        return None
    twin = label.removesuffix(" (optimal traj.)")
    twin_key = result_key(twin, k, n, seed)
    if twin_key not in results:
        return None
    a = _scheduler(folder, name, order, "optimal")
    b = _scheduler(folder, name, order, "uniform")
    a.set_timesteps(k)
    b.set_timesteps(k)
    return twin_key if np.array_equal(np.asarray(a.timesteps), np.asarray(b.timesteps)) else None


def run(args) -> dict:
    folder = bundled_model_dir("digits")
    unet = rdiff.UNet2DModel.from_pretrained(folder)
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    t_start = time.perf_counter()
    nfes = [int(v) for v in args.nfes.split(",")]
    labels = list(SETTINGS) if args.settings == "all" else args.settings.split(";")
    # cheapest first, so a cut-short run has the whole low-NFE picture; within an NFE in the
    # table's order (the baselines first, and each uniform trajectory before its optimal twin)
    order = list(SETTINGS)
    jobs = sorted(
        ((k, lab) for lab in labels for k in nfes), key=lambda j: (j[0], order.index(j[1]))
    )
    sec_per_image_step = None
    for k, lab in jobs:
        n = args.n if k < 1000 else args.n_1000
        key = result_key(lab, k, n, args.seed)
        if key in results:
            continue
        twin = _same_as_uniform(folder, lab, k, n, args.seed, results)
        if twin is not None:
            # same scheduler, same timesteps, same noise: the samples are the same, bit for bit
            results[key] = {**results[twin], "label": lab, "same_as": twin, "wall_s": 0.0}
            print(f"{lab:32s} NFE {k:5d}: same timesteps as {twin}, FD copied", flush=True)
            path.write_text(json.dumps(results, indent=1) + "\n")
            continue
        remaining = args.budget_minutes * 60 - (time.perf_counter() - t_start)
        if sec_per_image_step is not None and sec_per_image_step * n * k > remaining:
            print(f"skip {key}: needs ~{sec_per_image_step * n * k:.0f}s, {remaining:.0f}s left")
            continue
        name, order, traj = SETTINGS[lab]
        sched = _scheduler(folder, name, order, traj)
        t0 = time.perf_counter()
        x, nfe = sample_images(unet, sched, n, k, args.seed, args.batch_size, progress=False)
        wall = time.perf_counter() - t0
        sec_per_image_step = wall / (n * nfe)
        fd = frechet_digits_distance(x)
        results[key] = {"label": lab, "nfe": nfe, "n": n, "fd": fd, "wall_s": wall}
        if args.seed != 0:
            results[key]["seed"] = args.seed
        print(
            f"{lab:32s} NFE {nfe:5d} n {n:5d} seed {args.seed}  FD {fd:8.3f}  ({wall:.0f}s)",
            flush=True,
        )
        path.write_text(json.dumps(results, indent=1) + "\n")
    return results


def floors(ns: list[int]) -> dict[int, tuple[float, float]]:
    """FD of n random real digits against all 1,797 (the metric's floor at that n): mean and
    sample std over 5 random subsets."""
    real = load_real_digits()
    rng = np.random.default_rng(0)
    out = {}
    for n in ns:
        vals = [frechet_digits_distance(real[rng.permutation(len(real))[:n]]) for _ in range(5)]
        out[n] = (float(np.mean(vals)), float(np.std(vals, ddof=1)))
    return out


def spread_table(results: dict, n: int) -> str:
    """Markdown: mean ± sample std (and min–max) of FD over noise seeds, for every
    (setting, NFE) run at ``n`` samples with more than one seed."""
    by_cell: dict[tuple[str, int], dict[int, float]] = {}
    for r in results.values():
        if r["n"] == n:
            by_cell.setdefault((r["label"], r["nfe"]), {})[r.get("seed", 0)] = r["fd"]
    cells = {c: v for c, v in by_cell.items() if len(v) > 1}
    if not cells:
        return "(no setting has been run with more than one seed)"
    nfes = sorted({k for _, k in cells})
    lines = [
        "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
        "|---|" + "---:|" * len(nfes),
    ]
    for lab in SETTINGS:
        if not any((lab, k) in cells for k in nfes):
            continue
        row = []
        for k in nfes:
            v = cells.get((lab, k))
            if v is None:
                row.append("—")
                continue
            a = np.array([v[s] for s in sorted(v)])
            spread = f"{a.min():.2f}–{a.max():.2f}"
            row.append(f"{a.mean():.2f} ± {a.std(ddof=1):.2f} ({spread}, {len(a)} seeds)")
        lines.append(f"| {lab} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_table(results: dict, n: int, base: str = "DDPM (β̃)") -> str:
    """Markdown: per seed, FD of each setting minus FD of ``base`` at the same NFE. Every
    setting starts from the same noise for a seed, so these paired differences vary far less
    from seed to seed than the FDs themselves."""
    by = {
        (r["label"], r["nfe"], r.get("seed", 0)): r["fd"] for r in results.values() if r["n"] == n
    }
    seeds = sorted({s for _, _, s in by})
    cells = {}
    for lab, k, _ in by:
        if lab == base:
            continue
        both = [s for s in seeds if (lab, k, s) in by and (base, k, s) in by]
        if len(both) > 1:
            cells[(lab, k)] = [by[(lab, k, s)] - by[(base, k, s)] for s in both]
    if not cells:
        return "(no paired runs over several seeds)"
    nfes = sorted({k for _, k in cells})
    lines = [
        "| sampler − " + base + " | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
        "|---|" + "---:|" * len(nfes),
    ]
    for lab in SETTINGS:
        if any((lab, k) in cells for k in nfes):
            row = [
                ", ".join(f"{v:+.2f}" for v in cells[(lab, k)]) if (lab, k) in cells else "—"
                for k in nfes
            ]
            lines.append(f"| {lab} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_docs(results: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nfes = [int(v) for v in args.nfes.split(",")]
    ns = sorted({r["n"] for r in results.values()})
    fl = floors(ns)
    nf = noise_floor()
    table = {}
    for r in results.values():
        if r.get("seed", 0) != 0:
            continue  # the main table is seed 0 throughout; other seeds go to the spread table
        row = table.setdefault(r["label"], {})
        # one entry per cell: the run at the default n wins over a smaller side run
        if r["nfe"] not in row or row[r["nfe"]]["n"] != args.n:
            row[r["nfe"]] = r
    lines = [
        "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
        "|---|" + "---:|" * len(nfes),
    ]
    for lab in SETTINGS:
        row = table.get(lab, {})
        cells = []
        for k in nfes:
            r = row.get(k)
            if r is None:
                cells.append("—")
            else:
                cells.append(f"{r['fd']:.2f}" + ("" if r["n"] == args.n else f" (n={r['n']})"))
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    seeds_table = spread_table(results, args.n)
    md = ROOT / "docs" / "quality_vs_nfe.md"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=[plt.get_cmap("tab20")(i) for i in range(0, 20, 20 // len(SETTINGS))])
    for lab in SETTINGS:
        row = table.get(lab, {})
        ks = sorted(row)
        if ks:
            (line,) = ax.plot(ks, [row[k]["fd"] for k in ks], marker="o", label=lab)
            # the range over noise seeds, where more than one was run
            for k in ks:
                fds = [
                    r["fd"]
                    for r in results.values()
                    if r["label"] == lab and r["nfe"] == k and r["n"] == args.n
                ]
                if len(fds) > 1:
                    ax.vlines(k, min(fds), max(fds), color=line.get_color(), lw=3, alpha=0.4)
    ax.axhline(
        fl[args.n][0] if args.n in fl else nf["half_vs_all"],
        color="k",
        ls=":",
        label=f"real floor (n={args.n})",
    )
    ax.set_xscale("log")
    done = sorted({r["nfe"] for r in results.values()})
    ax.set_xticks(done, [str(k) for k in done])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("NFE (model calls)")
    ax.set_ylabel("Fréchet digits distance")
    ax.set_title("rdiff samplers on the bundled digits DDPM")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "quality_vs_nfe.png", dpi=110)
    header = (ROOT / "docs" / "quality_vs_nfe.head.md").read_text()
    floor_lines = ", ".join(f"n = {n}: {m:.2f} ± {sd:.2f}" for n, (m, sd) in fl.items())
    body = (
        header.replace("{TABLE}", "\n".join(lines))
        .replace("{FLOORS}", floor_lines)
        .replace("{HALVES}", f"{nf['halves']:.2f}")
        .replace("{HALF_VS_ALL}", f"{nf['half_vs_all']:.2f}")
        .replace("{SEEDS}", seeds_table)
        .replace("{PAIRED}", paired_table(results, args.n))
        .replace("{PAIRED_SAME}", paired_table(results, args.n, base="DDPM (β̃), uniform steps"))
    )
    md.write_text(body)
    print(f"wrote {md}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--n-1000", type=int, default=1000, help="samples for the 1000-NFE settings")
    p.add_argument("--nfes", default=",".join(map(str, NFES)))
    p.add_argument("--settings", default="all", help="'all' or labels separated by ';'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--budget-minutes", type=float, default=1e9)
    p.add_argument("--json", default=str(ROOT / "docs" / "quality_vs_nfe.json"))
    p.add_argument("--docs-only", action="store_true", help="only rewrite md/png from the json")
    args = p.parse_args()
    results = json.loads(Path(args.json).read_text()) if args.docs_only else run(args)
    write_docs(results, args)


if __name__ == "__main__":
    main()
