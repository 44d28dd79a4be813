"""The ``rdiff`` command line: ``rdiff info`` and ``rdiff sample``."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.random  # (sample_images draws with it; numpy loads it lazily, 8 ms)

from .unet import _COMPUTE_DTYPES  # (rdiff's __init__ has imported .unet already)

SCHEDULERS = (
    "dpmsolver++",
    "dpmsolver",
    "sde-dpmsolver++",
    "unipc",
    "dpmsolver-v3",
    "ddim",
    "ddpm",
    "analytic-ddpm",
    "analytic-ddim",
)
VARIANCES = ("fixed_small", "fixed_large")  # diffusers' DDPMScheduler variance_type names
_DEFAULT_STEPS = {
    "dpmsolver++": 10,
    "dpmsolver": 10,
    "sde-dpmsolver++": 20,
    "unipc": 10,
    "dpmsolver-v3": 10,
    "ddim": 50,
    "ddpm": 1000,
    "analytic-ddpm": 50,
    "analytic-ddim": 50,
}


def bundled_model_dir(name: str) -> Path:
    """The folder of a model shipped with rdiff (``rdiff sample --model bundled:NAME``)."""
    folder = Path(__file__).resolve().parent / "models" / name
    if not (folder / "config.json").is_file():
        avail = sorted(
            p.name for p in (Path(__file__).resolve().parent / "models").glob("*") if p.is_dir()
        )
        raise SystemExit(f"rdiff: no bundled model {name!r} (bundled: {', '.join(avail)})")
    return folder


def _resolve_model(spec: str) -> Path:
    if spec.startswith("bundled:"):
        return bundled_model_dir(spec.removeprefix("bundled:"))
    folder = Path(spec)
    if not folder.is_dir():
        raise SystemExit(f"rdiff: --model {spec}: not a directory (a diffusers model folder)")
    if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
        return folder / "unet"  # a pipeline folder
    return folder


def _scheduler_config(folder: Path) -> dict[str, Any]:
    for cand in (
        folder / "scheduler_config.json",
        folder.parent / "scheduler" / "scheduler_config.json",
    ):
        if cand.is_file():
            try:
                cfg = json.loads(cand.read_text(encoding="utf-8"))
            except ValueError as e:
                raise ValueError(f"{cand}: not valid JSON ({e})") from None
            if not isinstance(cfg, dict):
                raise ValueError(f"{cand}: expected a JSON object, got {type(cfg).__name__}")
            keep = (
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "prediction_type",
            )
            return {k: cfg[k] for k in keep if k in cfg and cfg[k] is not None}
    return {}


def make_scheduler(
    name: str,
    folder: Path,
    order: int | None,
    gamma: str | None = None,
    variance: str | None = None,
    ems: str | None = None,
    skip_type: str | None = None,
):
    """An rdiff scheduler for ``name`` (one of ``SCHEDULERS``), with the model's β schedule;
    ``variance`` is DDPM's ``variance_type`` (``fixed_small``: σ² = β̃, the default;
    ``fixed_large``: σ² = β)."""
    import rdiff

    base = _scheduler_config(folder)
    if variance is not None and name != "ddpm":
        raise SystemExit(f"rdiff: --variance applies to the ddpm scheduler, not {name}")
    if ems is not None and name != "dpmsolver-v3":
        raise SystemExit(f"rdiff: --ems applies to dpmsolver-v3, not {name}")
    if gamma is not None and not name.startswith("analytic-"):
        raise SystemExit(
            f"rdiff: --gamma applies to the analytic-ddpm and analytic-ddim schedulers, not {name}"
        )
    if name in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++"):
        # diffusers' default final step goes to σ = 0; its 'dpmsolver' (ε form) allows only
        # σ_min there
        final = "sigma_min" if name == "dpmsolver" else "zero"
        return rdiff.DPMSolverMultistepScheduler(
            **base, algorithm_type=name, solver_order=order or 2, final_sigmas_type=final
        )
    if name == "unipc":
        return rdiff.UniPCMultistepScheduler(**base, solver_order=order or 2)
    if name == "dpmsolver-v3":
        epath = Path(ems) if ems else folder / "ems.npz"
        if not epath.is_file():
            raise SystemExit(
                f"rdiff: dpmsolver-v3 needs the model's EMS table ({epath} is missing; make one "
                "with rdiff.estimate_ems and pass --ems)"
            )
        kw = {"skip_type": skip_type} if skip_type else {}
        return rdiff.DPMSolverV3Scheduler(ems=str(epath), **base, solver_order=order or 3, **kw)
    if skip_type is not None:
        raise SystemExit(f"rdiff: --skip-type applies to dpmsolver-v3, not {name}")
    if order not in (None, 1):
        raise SystemExit(
            f"rdiff: --order applies to the DPM-Solver and UniPC schedulers, not {name}"
        )
    if name == "ddim":
        return rdiff.DDIMScheduler(**base, set_alpha_to_one=True, timestep_spacing="leading")
    if name == "ddpm":
        return rdiff.DDPMScheduler(**base, variance_type=variance or "fixed_small")
    gpath = Path(gamma) if gamma else folder / "gamma.npz"
    if not gpath.is_file():
        raise SystemExit(
            f"rdiff: {name} needs the model's Γ table ({gpath} is missing; make one with "
            "rdiff.estimate_gamma and pass --gamma)"
        )
    form = name.removeprefix("analytic-")
    return rdiff.AnalyticDPMScheduler(gamma=str(gpath), form=form, **base)


def image_shape(config: Any, where: str = "the model's config.json") -> tuple[int, int, int]:
    """(C, H, W) of the model's samples from its config (``in_channels``, ``sample_size``: an
    int or [H, W]); ValueError naming ``where`` and the key unless they are positive ints."""

    def dim(key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}: {key!r} must be a positive integer, got {v!r}")
        return v

    for key in ("in_channels", "sample_size"):
        if config.get(key) is None:
            raise ValueError(f"{where}: {key!r} is missing (needed to know what to sample)")
    c = dim("in_channels", config["in_channels"])
    size = config["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2:
            raise ValueError(f"{where}: 'sample_size' must be an int or [H, W], got {size!r}")
        return c, dim("sample_size", size[0]), dim("sample_size", size[1])
    return c, dim("sample_size", size), dim("sample_size", size)


def _memory_bytes() -> int | None:
    """This machine's physical memory, or None where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_fits(need: int, what: str) -> None:
    """SystemExit (before any work) when ``need`` bytes exceed the machine's memory."""
    mem = _memory_bytes()
    if mem is not None and need > mem:
        raise SystemExit(
            f"rdiff sample: {what}: {need / 2**30:.1f} GiB needed, more than this machine's "
            f"{mem / 2**30:.1f} GiB of memory"
        )


def sample_images(
    unet: Any,
    scheduler: Any,
    n: int,
    steps: int,
    seed: int,
    batch_size: int,
    progress: bool = True,
) -> tuple[np.ndarray, int]:
    """Sample ``n`` images; returns (images (n, C, H, W) float32, model calls per image)."""
    c, h, w = image_shape(unet.config)
    rng = np.random.default_rng(seed)
    # the stochastic schedulers draw from `generator`; UniPC's step (as diffusers') has none
    noise_kw = (
        {"generator": rng} if "generator" in inspect.signature(scheduler.step).parameters else {}
    )
    # all initial noise first (one stream for the run), then the SDE noise from the same rng
    x_all = rng.standard_normal((n, c, h, w), dtype=np.float32)
    scheduler.set_timesteps(steps)
    timesteps = np.asarray(scheduler.timesteps)
    nfe = len(timesteps)
    # DPM-Solver-v3's timesteps are fractional: the network and the step get them as they are
    fractional = timesteps.dtype.kind == "f"
    # a model on CUDA samples on its device: the loop's tensors become torch CUDA tensors (the
    # noise is still drawn on the host from `rng`, so CPU and CUDA give the same images)
    device = unet.device
    if device.startswith("cuda"):
        import torch

        def on_device(a: np.ndarray) -> Any:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        def on_host(a: Any) -> np.ndarray:
            return a.float().cpu().numpy()
    else:
        on_device = on_host = np.asarray
    outs = []
    bar = None
    if progress:  # (tqdm.auto imports asyncio: 80 ms of the first run otherwise)
        from tqdm.auto import tqdm

        bar = tqdm(total=nfe * ((n + batch_size - 1) // batch_size), unit="step")
    for start in range(0, n, batch_size):
        scheduler.set_timesteps(steps)
        x = np.ascontiguousarray(x_all[start : start + batch_size]) * scheduler.init_noise_sigma
        x = on_device(x.astype(np.float32, copy=False))
        for t in timesteps:
            tt = on_device(np.full((x.shape[0],), t, dtype=np.float32 if fractional else np.int64))
            eps = unet(x, tt)
            x = scheduler.step(eps, t if fractional else int(t), x, **noise_kw).prev_sample
            if bar is not None:
                bar.update(1)
        outs.append(np.asarray(on_host(x), dtype=np.float32))
    if bar is not None:
        bar.close()
    return np.concatenate(outs, axis=0), nfe


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float images (n, C, H, W) → uint8 (n, H, W, C)."""
    x = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def _grid_layout(n: int, h: int, w: int, scale: int, pad: int) -> tuple[int, int, int, int]:
    """(rows, cols, grid height, grid width) of ``save_grid``'s grid of n images."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    return rows, cols, rows * (h * scale + pad) + pad, cols * (w * scale + pad) + pad


def save_grid(images: np.ndarray, path: str | os.PathLike, scale: int = 4, pad: int = 2) -> tuple:
    """Write a PNG grid of [-1, 1] images (n, C, H, W), each upscaled ``scale``× (nearest)."""
    from PIL import Image

    u8 = to_uint8(images)
    n, h, w, c = u8.shape
    rows, cols, _, _ = _grid_layout(n, h, w, scale, pad)
    hs, ws = h * scale, w * scale
    grid = np.full((rows * (hs + pad) + pad, cols * (ws + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        tile = u8[i].repeat(scale, axis=0).repeat(scale, axis=1)
        y0, x0 = pad + r * (hs + pad), pad + q * (ws + pad)
        grid[y0 : y0 + hs, x0 : x0 + ws] = tile
    img = Image.fromarray(grid[..., 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")
    img.save(path, format="PNG", optimize=False)
    return img.size


def _sample(args: argparse.Namespace) -> int:
    import rdiff

    if args.device.startswith("cuda"):
        cuda = rdiff.backends().get("cuda", {})
        if not cuda.get("available"):
            raise rdiff.CudaUnavailableError(
                f"rdiff sample --device {args.device}: CUDA is unavailable here "
                f"({cuda.get('reason', 'no reason given')})"
            )
    if args.n < 1 or args.batch_size < 1:
        raise SystemExit("rdiff: --n and --batch-size must be ≥ 1")
    npz = None
    if args.save_npz:
        # (numpy adds the extension when it is missing: say which file was written)
        npz = args.save_npz if str(args.save_npz).endswith(".npz") else f"{args.save_npz}.npz"
        if Path(args.save_npz).is_dir() or Path(npz).is_dir():
            raise SystemExit(f"rdiff sample: --save-npz {args.save_npz}: is a directory")
    if args.out and Path(args.out).is_dir():
        raise SystemExit(f"rdiff sample: --out {args.out}: is a directory")
    folder = _resolve_model(args.model)
    steps = args.steps if args.steps is not None else _DEFAULT_STEPS[args.scheduler]
    unet = rdiff.UNet2DModel.from_pretrained(
        folder,
        device=args.device,
        dtype=args.dtype,
        compute_dtype=getattr(args, "compute_dtype", "float32"),
    )
    c, h, w = image_shape(unet.config, str(folder / "config.json"))
    # before any work: the initial noise and the samples (float32), a batch's activations
    # (a few maps of the widest block's channels at full size, a lower bound), then the grid
    _check_fits(2 * 4 * args.n * c * h * w, f"--n {args.n} samples of {c}×{h}×{w}")
    widest = max(unet.config.get("block_out_channels") or [c])
    batch = min(args.n, args.batch_size)
    _check_fits(
        4 * 4 * batch * int(widest) * h * w,
        f"a batch of {batch} samples of {c}×{h}×{w} through the UNet",
    )
    if args.out:
        _, _, gh, gw = _grid_layout(args.n, h, w, args.scale, 2)
        _check_fits(2 * gh * gw * c, f"a {gw}×{gh} grid (--scale {args.scale}, --n {args.n})")
    sched = make_scheduler(
        args.scheduler,
        folder,
        args.order,
        args.gamma,
        args.variance,
        getattr(args, "ems", None),
        getattr(args, "skip_type", None),
    )
    t0 = time.perf_counter()
    images, nfe = sample_images(
        unet, sched, args.n, steps, args.seed, args.batch_size, progress=not args.quiet
    )
    wall = time.perf_counter() - t0
    nbatches = (args.n + args.batch_size - 1) // args.batch_size
    print(
        f"{args.scheduler}: {args.n} samples, NFE {nfe}, wall {wall:.2f} s, "
        f"{1000 * wall / (nfe * nbatches):.1f} ms/step (batch ≤ {args.batch_size})"
    )
    if args.out:
        size = save_grid(images, args.out, scale=args.scale)
        print(f"wrote {args.out} ({size[0]}x{size[1]})")
    if npz:
        np.savez(
            npz,
            samples=images,
            uint8=to_uint8(images),
            nfe=np.int64(nfe),
            seed=np.int64(args.seed),
            scheduler=np.str_(args.scheduler),
            steps=np.int64(steps),
        )
        print(f"wrote {npz}")
    return 0


def _info(_args: argparse.Namespace) -> int:
    import rdiff

    print(f"rdiff {rdiff.__version__}")
    print(json.dumps(rdiff.backends(), indent=2))
    return 0


def _positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _seed(text: str) -> int:
    """argparse type: an integer in [0, 2**64) (what numpy's generator takes)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= v < 1 << 64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {v}")
    return v


def main(argv: list[str] | None = None) -> int:
    """The ``rdiff`` command. Bad arguments exit through argparse (status 2); a failure while
    running (a bad model folder, CUDA unavailable, ...) raises ``SystemExit`` with a one-line
    message naming the command (status 1), never a traceback."""
    parser = argparse.ArgumentParser(prog="rdiff", description="Fast diffusion sampling.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the version and which backends work here")
    info.set_defaults(func=_info)
    s = sub.add_parser(
        "sample",
        help="sample a UNet2DModel (the bundled digits model or a diffusers folder) to a PNG grid",
    )
    s.add_argument("--model", default="bundled:digits", help="bundled:digits or a folder")
    s.add_argument("--scheduler", default="dpmsolver++", choices=SCHEDULERS)
    s.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="sampling steps (default: 10 for DPM-Solver, 20 SDE, 50 DDIM/analytic, 1000 DDPM)",
    )
    s.add_argument(
        "--order",
        type=int,
        choices=(1, 2, 3),
        default=None,
        help="DPM-Solver or UniPC order (default 2), DPM-Solver-v3's (default 3)",
    )
    s.add_argument(
        "--variance",
        default=None,
        choices=VARIANCES,
        help="ddpm only: σ² = β̃ (fixed_small, the default) or β (fixed_large), as diffusers",
    )
    s.add_argument("--n", type=_positive_int, default=64, help="number of samples")
    s.add_argument("--batch-size", type=_positive_int, default=256)
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--dtype", default="float32")
    s.add_argument(
        "--compute-dtype",
        default="float32",
        choices=_COMPUTE_DTYPES,
        help="the UNet's arithmetic: bfloat16 runs its products in bf16 with float32 sums "
        "(AMX tiles where the CPU has them); float16 and tfloat32 likewise on CUDA's tensor "
        "cores (CUDA only)",
    )
    s.add_argument(
        "--gamma", default=None, help="Γ table for analytic-* (default: MODEL/gamma.npz)"
    )
    s.add_argument(
        "--ems",
        default=None,
        help="EMS table for dpmsolver-v3 (default: MODEL/ems.npz; rdiff.estimate_ems)",
    )
    s.add_argument(
        "--skip-type",
        default=None,
        choices=("time_uniform", "logSNR", "time_quadratic", "edm"),
        help="dpmsolver-v3's time spacing (default time_uniform, the authors' for discrete "
        "models; time_quadratic is best on the bundled digits model at 4-5 steps)",
    )
    s.add_argument("--out", default="grid.png", help="PNG grid ('' for none)")
    s.add_argument("--scale", type=_positive_int, default=4, help="grid upscaling factor")
    s.add_argument("--save-npz", default=None, help="also save the samples to this .npz")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_sample)
    args = parser.parse_args(argv)
    from ._rdiff import RdiffError

    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, RdiffError) as e:
        raise SystemExit(f"rdiff {args.command}: {e}") from e
    except MemoryError as e:
        raise SystemExit(
            f"rdiff {args.command}: out of memory{f' ({e})' if str(e) else ''}; lower --n, "
            "--batch-size or --scale"
        ) from e


if __name__ == "__main__":
    sys.exit(main())
