"""What only a GPU can check, as one short script (run it first on a machine with CUDA).

    python scripts/gpu_check.py [--quick]

Each check prints PASS or FAIL with its figures; the exit status is the number of failures.
Without CUDA it says so and exits 0, checking nothing.

1. Scheduler steps on CUDA tensors (the kernels NVRTC compiles, launched for real) equal the
   same steps on the CPU: DPM-Solver++ 2M, UniPC, Euler ancestral (given noise), in float32
   and bfloat16. With two GPUs, a step on ``cuda:1`` leaves torch's current device as it was.
2. Every ``rdiff.diffusers`` scheduler's 20-step loop on CUDA tensors equals the CPU loop
   (stochastic ones: finite, since the two devices' generators differ).
3. A compiled 20-step loop (``torch.compile(fullgraph=True)``: scale_model_input, a small
   conv net, step) equals eager mode on CUDA, and again under CUDA graphs
   (``mode="reduce-overhead"``), run twice (the second run replays the captured graph).
4. The native UNets on CUDA (``device="cuda"``) equal diffusers' torch modules: a small
   UNet2DModel with attention and small random SD 1.x / SD 2.x / SDXL
   UNet2DConditionModels, each also in bf16, f16 and TF32 tensor-core math (near them; their
   attention on rdiff's fused tensor-core kernels), SD 1.x also with a ControlNet's float16
   residuals.
5. A native UNet forward (timesteps as a GPU tensor) captured in a CUDA graph by
   ``torch.cuda.graph`` replays to eager's results, with no device allocation or host copy
   by rdiff during the capture (and the device memory taken outside torch's pool, where
   cuBLAS would allocate a workspace of its own); eager and replay times.
6. ``rdiff sample --device cuda`` gives the CPU's samples.
7. Speed: the DDPM-CIFAR-10 UNet2DModel (batch 1 and 8) and the SD-1.5-shaped
   UNet2DConditionModel (batch 2, 64×64, 77 tokens) on CUDA, rdiff against torch (f32, torch's
   default TF32 settings), with their relative difference: one table; then
   ``compute_dtype="bfloat16"`` and ``"float16"`` against torch's autocast in each, and
   ``"tfloat32"`` against torch's default (TF32 convolutions).
8. Each attention path alone (run before the UNets): the fused tensor-core kernels in bf16,
   f16, TF32 and f32 (3xTF32) and the f32 ones against torch's
   ``scaled_dot_product_attention``, at small ragged shapes and at Stable Diffusion's, and the
   tensor-core kernels' time against torch's SDPA (flash attention on 16-bit inputs; f32
   inputs for TF32 and f32).

Needs diffusers for 4 to 7 (the oracle); without it those checks say so and are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time
import traceback

import torch

import rdiff.diffusers as rdd

FAILURES = 0
ONLY = None  # --only: the checks whose function name contains it


def rdiff_backends() -> dict:
    import rdiff

    return rdiff.backends()


def report(name: str, ok: bool, detail: str) -> None:
    global FAILURES
    FAILURES += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def loop(s, x, model):
    for t in s.timesteps:
        x = s.step(model(s.scale_model_input(x, t)), t, x).prev_sample
    return x


def steps_match_cpu(steps: int) -> None:
    for name, kw in [
        ("DPMSolverMultistepScheduler", {}),
        ("UniPCMultistepScheduler", {}),
        ("EulerAncestralDiscreteScheduler", {}),
    ]:
        for dtype in (torch.float32, torch.bfloat16):
            outs = []
            for device in ("cpu", "cuda"):
                s = getattr(rdd, name)(**kw)
                s.set_timesteps(steps)
                g = torch.Generator().manual_seed(0)
                x = torch.randn(2, 4, 32, 32, generator=g).to(device, dtype)
                for i, t in enumerate(s.timesteps):
                    mo = torch.tanh(x.float()).to(dtype)
                    extra = {}
                    if "Ancestral" in name:
                        extra["generator"] = torch.Generator(device).manual_seed(i)
                    x = s.step(mo, t, s.scale_model_input(x, t), **extra).prev_sample
                outs.append(x.float().cpu())
            if "Ancestral" in name:
                # the two devices' generators differ: only finiteness and scale compare
                ok = bool(torch.isfinite(outs[1]).all())
                detail = "finite"
            else:
                err = float((outs[0] - outs[1]).abs().max())
                tol = 1e-5 if dtype == torch.float32 else 1e-2
                ok, detail = err <= tol * max(1.0, float(outs[0].abs().max())), f"max |Δ| {err:.2e}"
            report(f"{name} {str(dtype)[6:]} cuda = cpu", ok, detail)


def current_device_kept() -> None:
    """With two GPUs or more: a step on ``cuda:1`` tensors, called while device 0 is current,
    leaves torch's current device at 0 (rdiff puts the thread's CUDA context back)."""
    if torch.cuda.device_count() < 2:
        print("SKIP current_device_kept: one GPU")
        return
    torch.cuda.set_device(0)
    s = rdd.DPMSolverMultistepScheduler()
    s.set_timesteps(4)
    x = torch.randn(2, 4, 8, 8, device="cuda:1")
    x = s.step(torch.tanh(x), s.timesteps[0], x).prev_sample
    torch.cuda.synchronize(1)
    now = torch.cuda.current_device()
    report("a step on cuda:1 keeps torch's current device", now == 0, f"current device {now}")


STOCHASTIC = ("Ancestral", "DDPM", "LCM", "TCD")


def every_scheduler_matches_cpu(steps: int) -> None:
    import inspect

    for name, cls in vars(rdd).items():
        if not (inspect.isclass(cls) and name.endswith("Scheduler")):
            continue
        outs = []
        try:
            for device in ("cpu", "cuda"):
                s = cls()
                s.set_timesteps(steps)
                x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
                x = (x * float(getattr(s, "init_noise_sigma", 1.0))).to(device)
                for i, t in enumerate(s.timesteps):
                    xi = s.scale_model_input(x, t)
                    mo = torch.tanh(xi)
                    extra = {}
                    if any(k in name for k in STOCHASTIC):
                        extra["generator"] = torch.Generator(device).manual_seed(i)
                    x = s.step(mo, t, x, **extra).prev_sample
                outs.append(x.float().cpu())
        except Exception as e:
            if not outs:  # the CPU loop itself needs more than defaults: not a CUDA question
                print(f"SKIP {name}: needs more than the default config ({repr(e)[:120]})")
            else:
                report(f"{name} f32 cuda = cpu", False, repr(e)[:300])
            continue
        if any(k in name for k in STOCHASTIC):
            ok, detail = bool(torch.isfinite(outs[1]).all()), "finite (generators differ)"
        else:
            err = float((outs[0] - outs[1]).abs().max())
            ok = err <= 1e-5 * max(1.0, float(outs[0].abs().max()))
            detail = f"max |Δ| {err:.2e}"
        report(f"{name} f32 cuda = cpu", ok, detail)


def compiled_loop(steps: int) -> None:
    torch.manual_seed(0)
    net = (
        torch.nn.Sequential(
            torch.nn.Conv2d(4, 32, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(32, 4, 3, padding=1),
        )
        .cuda()
        .eval()
    )
    x = torch.randn(2, 4, 32, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    # timesteps on the GPU (set_timesteps(n, device=...), as diffusers' pipelines call it;
    # with set_begin_index(0), since a CUDA graph cannot read the first timestep's position
    # on the host) and on the CPU
    # (allocation origins in the message if CUDA-graph trees find a tensor outside their pool)
    torch._inductor.config.triton.cudagraph_trees_history_recording = True
    for mode in ("default", "reduce-overhead"):
        for where in ("cuda", "cpu"):
            s = rdd.DPMSolverMultistepScheduler()

            def start(s=s, where=where):
                s.set_timesteps(steps, device=where)
                if where == "cuda":
                    s.set_begin_index(0)

            with torch.no_grad():
                torch._dynamo.reset()
                eager_net = torch.compile(net, mode=mode)  # (the compiled model's numerics)
                start()
                want = loop(s, x, eager_net)
                torch._dynamo.reset()
                compiled = torch.compile(loop, fullgraph=True, mode=mode)
                for run in (1, 2, 3):
                    name = f"compiled loop ({mode}, timesteps on {where}) run {run}"
                    start()
                    try:
                        got = compiled(s, x, net)
                    except Exception as e:  # report, do not stop the other checks
                        print(repr(e)[:6000])
                        report(name, False, repr(e)[:200])
                        break
                    err = float((got - want).abs().max())
                    ok = err <= 1e-4 * max(1.0, float(want.abs().max()))
                    report(name, ok, f"max |Δ| {err:.2e}")


def _rel(got, want) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    return float((got - want).abs().max() / want.abs().max())


def _randomised(module, seed: int = 0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module.eval()


def _cond_config(family: str) -> dict:
    cfg = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=[32, 64],
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=12,
        attention_head_dim=[2, 4] if family != "sd1" else 8,
    )
    if family == "sd1":
        cfg["down_block_types"] = ["CrossAttnDownBlock2D", "DownBlock2D"]
        cfg["up_block_types"] = ["UpBlock2D", "CrossAttnUpBlock2D"]
    elif family == "sd2":
        cfg["down_block_types"] = ["CrossAttnDownBlock2D"] * 2
        cfg["up_block_types"] = ["CrossAttnUpBlock2D"] * 2
        cfg.update(use_linear_projection=True, upcast_attention=True)
    else:
        cfg["down_block_types"] = ["DownBlock2D", "CrossAttnDownBlock2D"]
        cfg["up_block_types"] = ["CrossAttnUpBlock2D", "UpBlock2D"]
        cfg.update(
            transformer_layers_per_block=[1, 2],
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=10 + 6 * 8,
        )
    return cfg


def _cond_inputs(cfg: dict, b: int, size: int, tokens: int, device: str) -> dict:
    g = torch.Generator().manual_seed(1)
    kw = dict(
        sample=torch.randn(b, cfg["in_channels"], size, size, generator=g).to(device),
        timestep=torch.tensor(637),
        encoder_hidden_states=torch.randn(b, tokens, cfg["cross_attention_dim"], generator=g).to(
            device
        ),
    )
    if cfg.get("addition_embed_type") == "text_time":
        w = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(b, w, generator=g).to(device),
            "time_ids": torch.tensor([[512.0, 512.0, 0.0, 0.0, 512.0, 512.0]] * b).to(device),
        }
    return kw


SMALL_UNET = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=[32, 64],
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=8,
)


def unets_match_torch() -> None:
    import diffusers

    import rdiff

    m = _randomised(diffusers.UNet2DModel(**SMALL_UNET))
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10, 500, 990])
    with torch.no_grad():
        want = m(x, t).sample
    # cuBLAS's GEMMs in every dtype, rdiff's own GEMM kernel in f32
    cases = [(d, False) for d in (torch.float32, torch.float16, torch.bfloat16)]
    # bf16 and f16 math: cuBLAS's tensor cores, the kernel's rounding
    device_bytes = {}
    for (label, dtype, lo, hi), kernel in itertools.product(
        [
            ("bf16", "bfloat16", 1e-4, 3e-2),
            ("f16", "float16", 1e-5, 4e-3),
            # no lower bound: FAST_TF32 allows TF32, and cuBLAS may keep small GEMMs in f32
            ("tf32", "tfloat32", 0.0, 4e-3),
        ],
        (False, True),
    ):
        ours = rdiff.UNet2DModel.from_diffusers(m, device="cuda", compute_dtype=dtype)
        with gemm_path(kernel):
            err = _rel(ours(x.cuda(), t.cuda()), want)
        name = f"UNet2DModel cuda compute {label}{' (own GEMM)' if kernel else ''} ≈ diffusers"
        report(name, lo <= err <= hi, f"rel {err:.1e}")
        device_bytes[label] = ours._core.device_weight_bytes
    for dtype, kernel in [*cases, (torch.float32, True)]:
        ours = rdiff.UNet2DModel.from_diffusers(m, device="cuda")
        with gemm_path(kernel):
            got = ours(x.cuda().to(dtype), t.cuda())
        same = got.device.type == "cuda" and got.dtype == dtype
        err = _rel(got.float(), want)
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        name = f"UNet2DModel cuda {str(dtype)[6:]}{' (own GEMM)' if kernel else ''} = diffusers"
        report(name, same and err <= tol, f"rel {err:.1e}")
        device_bytes["f32"] = ours._core.device_weight_bytes
    # a bf16 or f16 model's matrices in 16 bits on the device
    full = device_bytes["f32"]
    for label in ("bf16", "f16"):
        share = device_bytes[label] / full
        name = f"UNet2DModel {label} weights on the device"
        report(name, 0.45 <= share <= 0.52, f"{share:.3f}× f32's")
    # and the host keeps none of them, only the biases' and norms' vectors
    host = rdiff.UNet2DModel.from_diffusers(m)._core.weight_bytes
    left = ours._core.weight_bytes
    report("UNet2DModel matrices leave the host", left <= 0.01 * host, f"{left / host:.4f}×")
    for family in ("sd1", "sd2", "sdxl"):
        cfg = _cond_config(family)
        m = _randomised(diffusers.UNet2DConditionModel(**cfg))
        kw = _cond_inputs(cfg, 2, 16, 7, "cpu")
        with torch.no_grad():
            want = m(**kw).sample
        ours = rdiff.UNet2DConditionModel.from_diffusers(m, device="cuda")
        for kernel in (False, True):
            with gemm_path(kernel):
                got = ours(**_cond_inputs(cfg, 2, 16, 7, "cuda"))
            name = f"UNet2DConditionModel {family} cuda{' (own GEMM)' if kernel else ''}"
            report(f"{name} = diffusers", _rel(got, want) <= 1e-4, f"rel {_rel(got, want):.1e}")
        # bf16, f16 and TF32 math: cuBLAS's tensor cores and the fused tensor-core attention
        # (rdiff_unet_attention_mma_*, whose fragment layouts only a GPU can confirm)
        for label, dtype, lo, hi in (
            ("bf16", "bfloat16", 1e-4, 3e-2),
            ("f16", "float16", 1e-5, 4e-3),
            ("tf32", "tfloat32", 0.0, 4e-3),
        ):
            ours = rdiff.UNet2DConditionModel.from_diffusers(m, device="cuda", compute_dtype=dtype)
            err = _rel(ours(**_cond_inputs(cfg, 2, 16, 7, "cuda")), want)
            name = f"UNet2DConditionModel {family} cuda compute {label} ≈ diffusers"
            report(name, lo <= err <= hi, f"rel {err:.1e}")
    # ControlNet's residuals, in float16 on the device as a float16 pipeline passes them.
    cfg = _cond_config("sd1")
    m = _randomised(diffusers.UNet2DConditionModel(**cfg))
    net = _randomised(
        diffusers.ControlNetModel.from_unet(m, conditioning_embedding_out_channels=(16, 32))
    )
    kw = _cond_inputs(cfg, 2, 16, 7, "cpu")
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        down, mid = net(**kw, controlnet_cond=image, return_dict=False)
        down, mid = [d.half() for d in down], mid.half()
        res = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        want = m(**kw, **res).sample
    ours = rdiff.UNet2DConditionModel.from_diffusers(m, device="cuda")
    got = ours(
        **_cond_inputs(cfg, 2, 16, 7, "cuda"),
        down_block_additional_residuals=[d.cuda() for d in down],
        mid_block_additional_residual=mid.cuda(),
    )
    err = _rel(got, want)
    report(
        "UNet2DConditionModel sd1 cuda + ControlNet residuals = diffusers",
        err <= 1e-4,
        f"rel {err:.1e}",
    )


def cli_sample_matches_cpu() -> None:
    """``rdiff sample --device cuda`` gives the CPU's images (same noise, drawn on the host)."""
    import tempfile

    import numpy as np

    from rdiff import cli

    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        for device in ("cpu", "cuda"):
            npz = os.path.join(tmp, f"{device}.npz")
            argv = ["sample", "--steps", "10", "--n", "16", "--quiet", "--out", ""]
            t0 = time.perf_counter()
            cli.main([*argv, "--device", device, "--save-npz", npz])
            print(f"rdiff sample --device {device}: {time.perf_counter() - t0:.2f} s")
            got[device] = np.load(npz)["samples"]
    err = float(np.abs(got["cpu"] - got["cuda"]).max())
    report("rdiff sample --device cuda = cpu", err <= 1e-3, f"max |Δ| {err:.1e}")


def _cuda_time(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


@contextlib.contextmanager
def gemm_path(kernel: bool):
    """Within it, the CUDA UNet's GEMMs run on rdiff's own kernel (``RDIFF_NO_CUBLAS``) when
    ``kernel``, else on cuBLAS where it loads."""
    if kernel:
        os.environ["RDIFF_NO_CUBLAS"] = "1"
    try:
        yield
    finally:
        os.environ.pop("RDIFF_NO_CUBLAS", None)


def _graph_matches_eager(name: str, model, inputs: dict) -> None:
    """Captures ``model(**inputs)`` in a CUDA graph after two warm-up calls on a side stream
    (kernels compiled, weights uploaded, the arena filled), replays it on new values written
    into ``inputs`` and compares with eager calls on copies; reports whether the capture made
    any device allocation or host copy, and eager against replay time."""
    call = lambda: model(**inputs)  # noqa: E731
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            call()
    torch.cuda.current_stream().wait_stream(side)
    traffic = model._core.device_traffic
    torch.cuda.synchronize()
    free, pool = torch.cuda.mem_get_info()[0], torch.cuda.memory_reserved()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    graph.replay()
    torch.cuda.synchronize()
    quiet = model._core.device_traffic == traffic
    # device memory the capture took outside torch's pool: the graph itself, and cuBLAS's
    # workspace had it allocated its own inside the capture (rdiff gives it one)
    outside = (free - torch.cuda.mem_get_info()[0]) - (torch.cuda.memory_reserved() - pool)
    g = torch.Generator(device="cuda")
    worst = 0.0
    for seed in (5, 6):
        g.manual_seed(seed)
        for key, v in inputs.items():
            if key == "timestep":
                v.copy_(torch.randint(0, 1000, v.shape, generator=g, device="cuda"))
            else:
                v.copy_(torch.randn(v.shape, generator=g, device="cuda"))
        graph.replay()
        want = model(**{k: v.clone() for k, v in inputs.items()})
        worst = max(worst, _rel(out, want))
    eager, replay = _cuda_time(call, 10), _cuda_time(graph.replay, 10)
    report(
        f"{name} in a CUDA graph = eager",
        # 1e-5, not bit equality: captured, cuBLAS works in rdiff's workspace, eagerly in its
        # own pool, and may choose another algorithm (split-K) for another workspace size
        quiet and worst <= 1e-5,
        f"rel {worst:.1e}, device traffic in the capture: {'none' if quiet else 'SOME'}, "
        f"{outside / 2**20:.1f} MiB outside torch's pool; "
        f"eager {1e3 * eager:.2f} ms, replay {1e3 * replay:.2f} ms",
    )


def unet_in_a_cuda_graph() -> None:
    """A native UNet forward with a timestep tensor on the GPU, captured by
    ``torch.cuda.graph``, replays to eager's results: a UNet2DModel (int64 timesteps), and an
    SD-1-style UNet2DConditionModel on cuBLAS and on rdiff's own GEMM kernel."""
    import diffusers

    import rdiff

    gen = torch.Generator().manual_seed(2)
    m = _randomised(diffusers.UNet2DModel(**SMALL_UNET))
    ours = rdiff.UNet2DModel.from_diffusers(m, device="cuda")
    inputs = dict(
        sample=torch.randn(3, 3, 16, 16, generator=gen).cuda(),
        timestep=torch.tensor([10, 500, 990]).cuda(),
    )
    _graph_matches_eager("UNet2DModel", ours, inputs)
    cfg = _cond_config("sd1")
    ours = rdiff.UNet2DConditionModel.from_diffusers(
        _randomised(diffusers.UNet2DConditionModel(**cfg)), device="cuda"
    )
    for kernel in (False, True):
        inputs = _cond_inputs(cfg, 2, 16, 7, "cuda")
        inputs["timestep"] = torch.tensor([637.0, 20.0]).cuda()
        with gemm_path(kernel):
            name = f"UNet2DConditionModel sd1{' (own GEMM)' if kernel else ''}"
            _graph_matches_eager(name, ours, inputs)


def attention_matches_torch(quick: bool) -> None:
    """rdiff's attention on the GPU, by the path a model's call takes (``_unet_attention``),
    against torch's ``scaled_dot_product_attention`` in f64: bf16, f16 and TF32 on the fused
    tensor-core kernels (heads up to 160 wide), f32 below 4,096 query × key pairs on the
    fused f32 kernel and from there on the tensor cores with each operand split in two
    (3xTF32, heads up to 64), wider heads by cuBLAS's two GEMMs, at the unit tests' shapes
    (ragged tiles, heads of 8 to 160) and at Stable Diffusion's; then the 4,096²
    self-attentions' time against torch's SDPA, bf16 and f16 on 16-bit inputs (flash
    attention), TF32 and f32 on f32 ones, one table."""
    from rdiff import _rdiff

    bands = {
        "float32": (0.0, 1e-5),
        # (160-wide heads: cuBLAS's FAST_TF32, which may truncate operands, 1.5e-3 simulated)
        "tfloat32": (0.0, 4e-3),
        "bfloat16": (1e-3, 8e-3),
        "float16": (1e-4, 1e-3),
    }
    # (b, heads, dh, tq, tk)
    small = [(2, 3, 8, 15, 7), (1, 2, 40, 70, 77), (2, 1, 64, 64, 64), (1, 1, 128, 17, 65)]
    small.append((1, 2, 160, 20, 7))
    # SD 1.5's heads of 40, 80 and 160 at 64×64 latents; SD 2.x's and SDXL's of 64
    sd = [(2, 8, 40, 4096, 4096), (2, 8, 40, 4096, 77), (2, 8, 80, 1024, 1024)]
    sd += [(2, 8, 160, 256, 77), (2, 10, 64, 4096, 4096)]
    stream = torch.cuda.current_stream().cuda_stream
    rows = []
    for shape in small + sd:
        b, heads, dh, tq, tk = shape
        g = torch.Generator(device="cuda").manual_seed(tq + dh)
        q, k, v = (torch.randn(b, heads, t, dh, device="cuda", generator=g) for t in (tq, tk, tk))
        want = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
        ours = [x.permute(1, 3, 0, 2).reshape(heads * dh, -1).contiguous() for x in (q, k, v)]
        out = torch.empty(heads * dh, b * tq, device="cuda")

        def call(compute, ours=ours, out=out, b=b, heads=heads):
            _rdiff._unet_attention(*ours, out, b, heads, compute, stream)

        for compute, (lo, hi) in bands.items():
            out.fill_(float("nan"))
            call(compute)
            got = out.reshape(heads, dh, b, tq).permute(2, 0, 3, 1).double()
            err = float((got - want).norm() / want.norm())
            report(f"attention {shape} {compute} ≈ torch", lo <= err <= hi, f"rel {err:.1e}")
            # timed where the kernel's work dwarfs a call's own cost (a synchronize, the
            # context switch): the 4,096² self-attentions
            if shape in sd and tk == tq:
                dtype = getattr(torch, compute, torch.float32)  # (tfloat32: float32)
                qt, kt, vt = (x.to(dtype) for x in (q, k, v))
                reps = 3 if quick else 10
                ta = _cuda_time(lambda: call(compute), reps)  # noqa: B023
                tt = _cuda_time(
                    lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt),  # noqa: B023
                    reps,
                )
                rows.append((shape, compute, ta, tt, 4 * b * heads * tq * tk * dh / ta / 1e12))
    print(
        "\n| (b, heads, dh, tq, tk) | math | rdiff ms | torch SDPA ms | torch / rdiff | TFLOP/s |"
    )
    print("|---|---|---|---|---|---|")
    for shape, compute, ta, tt, tflops in rows:
        times = f"{ta * 1e3:.3f} | {tt * 1e3:.3f} | {tt / ta:.2f}×"
        print(f"| {shape} | {compute} | {times} | {tflops:.0f} |")


def unet_speed(quick: bool) -> None:
    """Per model: torch with its defaults (TF32 convolutions) and in strict f32, rdiff with
    cuBLAS and with its own GEMM kernel; the differences against strict-f32 torch. Then
    tensor-core math: rdiff's ``compute_dtype="bfloat16"`` and ``"float16"`` (cuBLAS) against
    torch's autocast in the same dtype."""
    import diffusers

    import rdiff

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benches"))
    from bench_cond_unet import SD15
    from bench_unet import CIFAR10

    reps = 3 if quick else 10
    rows = []

    half_rows = []
    # tf32: rdiff's against torch's default (TF32 convolutions), not an autocast
    halves = (("bf16", torch.bfloat16), ("f16", torch.float16), ("tf32", "tfloat32"))

    def measure(name, call_ref, call_ours, calls_half):
        """``calls_half``: rdiff's call per entry of ``halves``."""
        tf32 = torch.backends.cudnn.allow_tf32
        autos = []
        with torch.no_grad():
            tt = _cuda_time(call_ref, reps)
            torch.backends.cudnn.allow_tf32 = False
            want = call_ref()
            t32 = _cuda_time(call_ref, reps)
            torch.backends.cudnn.allow_tf32 = tf32
            for label, dtype in halves:
                if label == "tf32":
                    autos.append((call_ref().float(), tt))
                    continue
                with torch.autocast("cuda", dtype=dtype):
                    autos.append((call_ref().float(), _cuda_time(call_ref, reps)))
        cells = []
        for kernel in (False, True):
            with gemm_path(kernel):
                got = call_ours()
                cells += [_cuda_time(call_ours, reps), _rel(got, want)]
        rows.append((name, tt, t32, *cells))
        for (label, _), (auto, ta), call in zip(halves, autos, calls_half, strict=True):
            got = call()
            half_rows.append(
                (name, label, ta, _rel(auto, want), _cuda_time(call, reps), _rel(got, want))
            )

    def natives(cls, ref):
        """rdiff's f32 model of ``ref`` on CUDA, and one per entry of ``halves``."""
        return cls.from_diffusers(ref, device="cuda"), [
            cls.from_diffusers(ref, device="cuda", compute_dtype=dtype) for _, dtype in halves
        ]

    torch.manual_seed(0)
    ref = diffusers.UNet2DModel(**CIFAR10).eval()
    ours, lows = natives(rdiff.UNet2DModel, ref)
    ref = ref.cuda()
    for b in (1, 8):
        x = torch.randn(b, 3, 32, 32, device="cuda")
        t = torch.full((b,), 500, device="cuda")
        measure(
            f"DDPM-CIFAR-10 UNet2DModel, batch {b}",
            lambda x=x, t=t: ref(x, t).sample,
            lambda x=x, t=t: ours(x, t),
            [lambda x=x, t=t, low=low: low(x, t) for low in lows],
        )
    del ref, ours, lows
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**SD15).eval()
    ours, lows = natives(rdiff.UNet2DConditionModel, ref)
    ref = ref.cuda()
    g = torch.Generator().manual_seed(0)
    kw = dict(
        sample=torch.randn(2, 4, 64, 64, generator=g).cuda(),
        timestep=torch.tensor(500),
        encoder_hidden_states=torch.randn(2, 77, 768, generator=g).cuda(),
    )
    measure(
        "SD-1.5 UNet2DConditionModel, batch 2, 64×64",
        lambda: ref(**kw).sample,
        lambda: ours(**kw),
        [lambda low=low: low(**kw) for low in lows],
    )
    print(
        "\n| model | torch ms (TF32 convs) | torch ms (f32) | rdiff ms (cuBLAS) | rel. diff "
        "| rdiff ms (own GEMM) | rel. diff | rdiff (cuBLAS) vs torch default |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, tt, t32, tc, rc, tk, rk in rows:
        print(
            f"| {name} | {tt * 1e3:.2f} | {t32 * 1e3:.2f} | {tc * 1e3:.2f} | {rc:.1e} | "
            f"{tk * 1e3:.2f} | {rk:.1e} | {tt / tc:.2f}× |"
        )
    print(
        "\n| model | math | torch autocast (tf32: default) ms | its rel. diff | rdiff ms (cuBLAS) "
        "| its rel. diff | rdiff vs torch |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, label, ta, ra, t16, r16 in half_rows:
        cells = f"{ta * 1e3:.2f} | {ra:.1e} | {t16 * 1e3:.2f} | {r16:.1e}"
        print(f"| {name} | {label} | {cells} | {ta / t16:.2f}× |")
    for name, _, _, _, rc, _, rk in rows:
        report(f"{name} cuda (cuBLAS) = torch f32", rc <= 1e-4, f"rel {rc:.1e}")
        report(f"{name} cuda (own GEMM) = torch f32", rk <= 1e-4, f"rel {rk:.1e}")
    for name, label, _, ra, _, r16 in half_rows:
        ok = r16 <= max(3e-2 if label == "bf16" else 4e-3, 3 * ra)
        report(f"{name} cuda {label} ≈ torch f32", ok, f"rel {r16:.1e} (torch {label} {ra:.1e})")


def guarded(fn, *args) -> None:
    """Runs one check; an exception is a failure with its traceback, and the others go on."""
    if ONLY and ONLY not in fn.__name__:
        return
    print(f"-- {fn.__name__} ({time.strftime('%H:%M:%S')})", flush=True)
    try:
        fn(*args)
    except Exception as e:
        traceback.print_exc()
        report(fn.__name__, False, repr(e)[:300])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="run only the checks whose name contains this")
    args = ap.parse_args()
    global ONLY
    ONLY = args.only

    if not torch.cuda.is_available():
        print("no CUDA device: nothing checked")
        return 0
    print(torch.cuda.get_device_name(), rdd.__name__)
    print(rdiff_backends())
    steps = 8 if args.quick else 20
    guarded(steps_match_cpu, steps)
    guarded(current_device_kept)
    guarded(every_scheduler_matches_cpu, steps)
    guarded(attention_matches_torch, args.quick)
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        print(f"SKIP the UNet checks: diffusers cannot be imported ({e})")
    else:
        guarded(unets_match_torch)
        guarded(unet_in_a_cuda_graph)
        guarded(cli_sample_matches_cpu)
        guarded(unet_speed, args.quick)
    guarded(compiled_loop, steps)
    print(f"{FAILURES} failure(s)")
    return FAILURES


if __name__ == "__main__":
    sys.exit(main())
