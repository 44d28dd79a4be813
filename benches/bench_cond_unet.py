"""The native UNet2DConditionModel against torch (diffusers' module) on the same weights.

Run: python benches/bench_cond_unet.py [--quick] [--threads N] [--only sd15|sdxl|loop|control]
[--weights float32|float16|bfloat16] [--compute-dtype float32|bfloat16]

- **sd15**: the Stable Diffusion 1.5 UNet's configuration (diffusers' defaults with
  cross_attention_dim 768: 860 M parameters), random weights, 64×64×4 latents, batch 2 (one
  classifier-free-guidance step), a 77×768 context.
- **sdxl**: SDXL's UNet configuration (2.6 G parameters) at a reduced 64×64 latent (512 px;
  SDXL's own is 128×128), batch 2, a 77×2048 context, text_time conditioning.
- **loop**: a whole tiny Stable Diffusion pipeline (random models) — 20 DPM-Solver++ steps with
  guidance — with rdiff's UNet and scheduler against the stock pipeline.
- **control**: one SD-1.5 ControlNet step (the sd15 inputs, a 512×512 control image, diffusers'
  ControlNetModel.from_unet in torch) with torch's UNet against rdiff's, the ControlNet alone,
  and the time `rdiff.UNet2DConditionModel.from_diffusers` takes on that UNet (not in the
  default set).

Per model: the best time per call for both (alternating rounds in one process, same threads),
each as GFLOP/s (torch's FlopCounterMode) and a share of this machine's f32 FMA peak (measured
in the same run by rdiff's FMA loop), their relative difference, and in a fresh subprocess
per variant the peak resident memory (VmHWM) while loading the saved folder, and (reset after
loading) while running two calls: torch maps the safetensors file and pages the weights in
during its first call; rdiff copies them out at load.

`--weights float16` (or bfloat16) saves the checkpoint in that dtype, as Stable Diffusion's are
distributed, with the random weights rounded to it first so that every run computes on the
same values: torch loads it with `torch_dtype=torch.float32` (its CPU speed is in f32); rdiff
keeps the matrices as stored and widens them where they are used (the same results as f32
weights, in half the memory).

`--compute-dtype bfloat16` loads rdiff's model with ``compute_dtype="bfloat16"`` (bf16
products with f32 sums; torch stays f32, so "rel. diff" is then bf16's error).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from bench_unet import best_time  # benches/ is the script's folder, first on sys.path

SD15 = dict(sample_size=64, cross_attention_dim=768)
SDXL = dict(
    sample_size=128,
    block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)

CHILD = r"""
import gc, os, sys
which, path, kind = sys.argv[1], sys.argv[2], sys.argv[3]
threads = int(sys.argv[4])
os.environ["RAYON_NUM_THREADS"] = str(threads)
import torch
torch.set_num_threads(threads)
def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
start = status("VmRSS:")
if which == "torch":
    from diffusers import UNet2DConditionModel
    m = UNet2DConditionModel.from_pretrained(path, torch_dtype=torch.float32).eval()
else:
    import rdiff
    m = rdiff.UNet2DConditionModel.from_pretrained(path)
sys.path.insert(0, os.path.dirname(sys.argv[5]))
from bench_cond_unet import inputs
kw = inputs(kind)
gc.collect()
load_peak = status("VmHWM:")
with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
    fh.write("5")
with torch.no_grad():
    for _ in range(2):
        m(**kw)
print(start, load_peak, status("VmHWM:"))
"""


def inputs(kind: str) -> dict:
    """The call's inputs: batch 2, 64×64 latents, a 77-token context."""
    import torch

    g = torch.Generator().manual_seed(0)
    width = 768 if kind == "sd15" else 2048
    kw = dict(
        sample=torch.randn(2, 4, 64, 64, generator=g),
        timestep=torch.tensor(500),
        encoder_hidden_states=torch.randn(2, 77, width, generator=g),
    )
    if kind == "sdxl":
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 1280, generator=g),
            "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * 2),
        }
    return kw


def memory(which: str, path: str, kind: str, threads: int) -> tuple[float, float]:
    """A fresh process's peak resident MiB while loading, and while running two calls."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, which, path, kind, str(threads), __file__],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    _, load_peak, call_peak = (int(v) for v in out[-3:])
    return load_peak / 1024, call_peak / 1024


def gflop(model, kw: dict) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**kw)
    return counter.get_total_flops() / 1e9


def bench_model(kind: str, args, peak: float) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    import rdiff

    cfg = SD15 if kind == "sd15" else SDXL
    torch.manual_seed(0)
    ref = UNet2DConditionModel(**cfg).eval()
    stored = getattr(torch, args.weights)
    if stored != torch.float32:
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(p.to(stored))
    params = sum(p.numel() for p in ref.parameters()) / 1e6
    kw = inputs(kind)
    rounds, reps = (1, 2) if args.quick else (2, 3)

    def run_torch():
        with torch.no_grad():
            return ref(**kw).sample

    with tempfile.TemporaryDirectory() as tmp:
        if stored == torch.float32:
            ref.save_pretrained(tmp)
        else:
            ref.to(stored).save_pretrained(tmp)
            ref.float()
        g = gflop(ref, kw)
        want = run_torch()
        tt = tr = float("inf")
        # SDXL's weights (10 GiB in f32) do not fit twice beside torch's working memory here:
        # time torch, free it, then load rdiff's; SD 1.5 alternates rounds in one process.
        together = kind == "sd15"
        if not together:
            for _ in range(rounds):
                tt = min(tt, best_time(run_torch, reps))
            del ref
        ours = rdiff.UNet2DConditionModel.from_pretrained(tmp, compute_dtype=args.compute_dtype)

        def run_rdiff():
            return ours(**kw)

        got = run_rdiff()
        rel = float((got - want).abs().max() / want.abs().max())
        for _ in range(rounds):
            if together:
                tt = min(tt, best_time(run_torch, reps))
            tr = min(tr, best_time(run_rdiff, reps))
        ours = None  # free its weights before the memory subprocesses
        if together:
            del ref
        if args.no_memory:
            mt = mr = (float("nan"), float("nan"))
        else:
            mt = memory("torch", tmp, kind, args.threads)
            mr = memory("rdiff", tmp, kind, args.threads)
    gt, gr = g / tt, g / tr
    name = "SD 1.5" if kind == "sd15" else "SDXL (64×64 latents)"
    if stored != torch.float32:
        name += f", {args.weights} checkpoint"
    if args.compute_dtype != "float32":
        name += f", rdiff in {args.compute_dtype}"
    print(
        f"| {name}, {params:.0f} M params, {g:.0f} GFLOP | {tt:.2f} | {tr:.2f} | "
        f"{tt / tr:.2f}× | {gt:.0f} ({100 * gt / peak:.0f}%) | {gr:.0f} ({100 * gr / peak:.0f}%) "
        f"| {mt[0]:.0f} / {mt[1]:.0f} | {mr[0]:.0f} / {mr[1]:.0f} | {rel:.1e} |",
        flush=True,
    )


def bench_loop(args) -> None:
    """A tiny pipeline's 20-step guided loop: stock against rdiff's UNet and scheduler."""
    import warnings

    import numpy as np
    import torch
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    import rdiff.diffusers as rd

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
    ).eval()
    sched = DPMSolverMultistepScheduler(beta_schedule="scaled_linear")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 77, 32, generator=g)
    kw = dict(
        prompt_embeds=emb[:1],
        negative_prompt_embeds=emb[1:],
        num_inference_steps=20,
        guidance_scale=7.5,
        height=64,
        width=64,
        output_type="latent",
    )

    def run():
        with torch.no_grad():
            return pipe(generator=torch.Generator().manual_seed(1), **kw).images

    want = run()
    stock = best_time(run, 3)
    pipe.unet = rd.UNet2DConditionModel.from_diffusers(unet)
    pipe.scheduler = rd.DPMSolverMultistepScheduler.from_config(sched.config)
    got = run()
    ours = best_time(run, 3)
    diff = float(np.abs(got.numpy() - want.numpy()).max())
    print(
        f"\nTiny SD pipeline (UNet 32/64 channels, 32×32×4 latents), 20 DPM-Solver++ steps with "
        f"guidance, latents out: stock {stock * 1e3:.0f} ms, rdiff UNet + scheduler "
        f"{ours * 1e3:.0f} ms ({stock / ours:.2f}×); max |Δ latents| {diff:.1e}"
    )


def bench_control(args) -> None:
    """One SD-1.5 ControlNet step: the ControlNet in torch, then torch's or rdiff's UNet."""
    import time
    import warnings

    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    import rdiff

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = ControlNetModel.from_unet(unet).eval()
    t0 = time.perf_counter()
    ours = rdiff.UNet2DConditionModel.from_diffusers(unet)
    load = time.perf_counter() - t0
    kw = inputs("sd15")
    image = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(1))

    def residuals():
        with torch.no_grad():
            down, mid = net(**kw, controlnet_cond=image, return_dict=False)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def step(model):
        with torch.no_grad():
            return model(**kw, **residuals())

    reps = 1 if args.quick else 2
    times = {"torch": [], "rdiff": [], "controlnet": []}
    for _ in range(2):  # alternating rounds
        for name, model in (("torch", unet), ("rdiff", ours)):
            step(model)
            times[name].append(best_time(lambda m=model: step(m), reps))
        times["controlnet"].append(best_time(residuals, reps))
    t, r, c = (min(v) for v in times.values())
    print(
        f"SD-1.5 ControlNet step (batch 2, 64×64 latents): torch ControlNet + UNet {t:.2f} s, "
        f"torch ControlNet + rdiff UNet {r:.2f} s ({t / r:.2f}×); the ControlNet alone "
        f"{c:.2f} s; rdiff.UNet2DConditionModel.from_diffusers {load:.2f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", choices=["sd15", "sdxl", "loop", "control"])
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument(
        "--weights",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="the saved checkpoint's dtype (both compute in float32)",
    )
    ap.add_argument(
        "--compute-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="rdiff's compute_dtype (torch computes in float32)",
    )
    args = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import torch

    import rdiff

    torch.set_num_threads(args.threads)
    peak = rdiff._rdiff.fma_peak_gflops(1.0)
    print(
        f"rdiff {rdiff.__version__}, torch {torch.__version__}, threads {args.threads}, "
        f"load average {os.getloadavg()[0]:.1f}; f32 FMA peak {peak:.0f} GFLOP/s measured "
        f"({rdiff.backends()['cpu']['simd']})\n"
    )
    kinds = [args.only] if args.only else ["sd15", "sdxl", "loop"]
    if any(k in ("sd15", "sdxl") for k in kinds):
        print(
            "| model (batch 2, 64×64×4, 77 tokens) | torch s | rdiff s | speed-up | "
            "torch GFLOP/s (% peak) | rdiff GFLOP/s (% peak) | torch peak MiB load / calls | "
            "rdiff peak MiB load / calls | rel. diff |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
    for k in kinds:
        if k == "loop":
            bench_loop(args)
        elif k == "control":
            bench_control(args)
        else:
            bench_model(k, args, peak)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
