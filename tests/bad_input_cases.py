"""The bad-input battery's table: every public entry point fed wrong input.

Each :class:`Case` is one line of the table: an id, a snippet of code run in a namespace that
holds the fixtures below (``PRELUDE``), the exception it must raise (``None``: it must run,
its own asserts comparing with diffusers or with the clean input) and a regex the message must
match, naming the problem. ``tests/test_bad_input.py`` runs every case in-process and, in a few
batched subprocesses (``python tests/bad_input_cases.py BATCH NBATCHES [SKIP]``), so that an
abort or a segfault fails the case that was running instead of killing the suite.
"""

from __future__ import annotations

import re
import sys
import traceback
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    id: str
    code: str
    exc: str | None  # a name evaluated in the prelude's namespace, e.g. "ValueError"
    match: str = ""


# The fixtures every case sees. Cheap to build; the UNet is loaded on first use.
PRELUDE = r'''
import contextlib, inspect, io, json, logging, math, os, tempfile, warnings
import numpy as np
import torch
import diffusers
import rdiff
import rdiff.diffusers as rdd
import rdiff.metrics, rdiff.testing, rdiff.k, rdiff.cli
from rdiff import _tensor

logging.disable(logging.WARNING)  # the schedulers' config notices would flood the output
warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor")
rng = np.random.default_rng(0)
X = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
M = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
TX, TM = torch.from_numpy(X.copy()), torch.from_numpy(M.copy())
GAMMA = [0.9] * 1000
SCHED = rdiff.NoiseSchedule.discrete()
# DPM-Solver-v3's statistics for X's sample shape (3, 4, 4) on a 100-interval grid
_L = 0.9 + 0.1 * rng.random((101, 3, 4, 4))
EMS = rdiff.EMSTable.from_statistics(_L, 0.1 * (_L - 0.95), 0.05 * _L, SCHED)

PLAIN = {
    "multistep": rdiff.DPMSolverMultistepScheduler,
    "deis": rdiff.DEISMultistepScheduler,
    "singlestep": rdiff.DPMSolverSinglestepScheduler,
    "ddim": rdiff.DDIMScheduler,
    "ddpm": rdiff.DDPMScheduler,
    "analytic": rdiff.AnalyticDPMScheduler,
    "unipc": rdiff.UniPCMultistepScheduler,
    "v3": rdiff.DPMSolverV3Scheduler,
    "euler": rdiff.EulerDiscreteScheduler,
    "euler_a": rdiff.EulerAncestralDiscreteScheduler,
    "flow": rdiff.FlowMatchEulerDiscreteScheduler,
    "flow_heun": rdiff.FlowMatchHeunDiscreteScheduler,
    "heun": rdiff.HeunDiscreteScheduler,
    "lcm": rdiff.LCMScheduler,
    "lms": rdiff.LMSDiscreteScheduler,
    "tcd": rdiff.TCDScheduler,
    "kdpm2": rdiff.KDPM2DiscreteScheduler,
    "kdpm2_a": rdiff.KDPM2AncestralDiscreteScheduler,
}
WRAPPED = {
    "multistep": rdd.DPMSolverMultistepScheduler,
    "deis": rdd.DEISMultistepScheduler,
    "singlestep": rdd.DPMSolverSinglestepScheduler,
    "ddim": rdd.DDIMScheduler,
    "ddpm": rdd.DDPMScheduler,
    "analytic": rdd.AnalyticDPMScheduler,
    "unipc": rdd.UniPCMultistepScheduler,
    "v3": rdd.DPMSolverV3Scheduler,
    "euler": rdd.EulerDiscreteScheduler,
    "euler_a": rdd.EulerAncestralDiscreteScheduler,
    "flow": rdd.FlowMatchEulerDiscreteScheduler,
    "flow_heun": rdd.FlowMatchHeunDiscreteScheduler,
    "heun": rdd.HeunDiscreteScheduler,
    "lcm": rdd.LCMScheduler,
    "lms": rdd.LMSDiscreteScheduler,
    "tcd": rdd.TCDScheduler,
    "kdpm2": rdd.KDPM2DiscreteScheduler,
    "kdpm2_a": rdd.KDPM2AncestralDiscreteScheduler,
}
PEER = {
    "multistep": diffusers.DPMSolverMultistepScheduler,
    "deis": diffusers.DEISMultistepScheduler,
    "singlestep": diffusers.DPMSolverSinglestepScheduler,
    "ddim": diffusers.DDIMScheduler,
    "ddpm": diffusers.DDPMScheduler,
    "unipc": diffusers.UniPCMultistepScheduler,
    "euler": diffusers.EulerDiscreteScheduler,
    "euler_a": diffusers.EulerAncestralDiscreteScheduler,
    "flow": diffusers.FlowMatchEulerDiscreteScheduler,
    "flow_heun": diffusers.FlowMatchHeunDiscreteScheduler,
    "heun": diffusers.HeunDiscreteScheduler,
    "lcm": diffusers.LCMScheduler,
    "lms": diffusers.LMSDiscreteScheduler,
    "tcd": diffusers.TCDScheduler,
    "kdpm2": diffusers.KDPM2DiscreteScheduler,
    "kdpm2_a": diffusers.KDPM2AncestralDiscreteScheduler,
}


def make(kind, wrapped=False, n=10, **kw):
    """A scheduler of `kind` (rdiff or rdiff.diffusers class) with set_timesteps(n) done."""
    cls = (WRAPPED if wrapped else PLAIN)[kind]
    if kind == "analytic":
        kw.setdefault("gamma", GAMMA)
    if kind == "v3":
        kw.setdefault("ems", EMS)
    s = cls(**kw)
    if n:
        s.set_timesteps(n)
    return s


def first_t(s):
    t = s.timesteps[0]
    return int(t)


def one_step(s, mo, x, generator=None, **kw):
    return s.step(mo, s.timesteps[0], x, **gen_kw(s, generator), **kw).prev_sample


def gen_kw(s, gen):
    """{"generator": gen} for schedulers whose step takes one (UniPC's does not)."""
    return {"generator": gen} if "generator" in inspect.signature(s.step).parameters else {}


def run_loop(s, x, model=lambda x, t: 0.1 * x, n=None):
    for t in s.timesteps[: n or len(s.timesteps)]:
        x = s.step(model(x, t), t, x, **gen_kw(s, gen_for(x))).prev_sample
    return x


def gen_for(x):
    if _tensor.is_torch(x):
        return torch.Generator().manual_seed(0)
    return np.random.default_rng(0)


def as_np(x):
    if _tensor.is_torch(x):
        return x.detach().float().numpy()
    return np.asarray(x, dtype=np.float32)


def fake_cuda(shape=(2, 3, 4, 4), dtype=torch.float32):
    """A tensor that says it lives on cuda:0 (torch's FakeTensor; no GPU is needed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return torch.empty(shape, dtype=dtype, device="cuda")


def meta(shape=(2, 3, 4, 4), dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def noncontig(x):
    """x's values in a non-contiguous view (every other element of a wider buffer)."""
    if _tensor.is_torch(x):
        wide = torch.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype)
        wide[..., ::2] = x
        v = wide[..., ::2]
        assert not v.is_contiguous()
        return v
    wide = np.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype)
    wide[..., ::2] = x
    v = wide[..., ::2]
    assert not v.flags.c_contiguous
    return v


def with_value(x, v, idx=(0, 0, 0, 0)):
    y = x.copy() if isinstance(x, np.ndarray) else x.clone()
    y[idx] = v
    return y


def nan_mask_like_diffusers(kind, value, **config):
    """One step with `value` at one element of model_output: rdiff's non-finite pattern
    must be diffusers' (diffusers propagates NaN/Inf through a step, elementwise)."""
    peer = PEER[kind](**config)
    peer.set_timesteps(10)
    ours = make(kind, wrapped=True, **config)
    mo = with_value(TM, value)
    t = peer.timesteps[0]
    a = ours.step(mo, t, TX, **gen_kw(ours, torch.Generator().manual_seed(0))).prev_sample
    b = peer.step(mo, t, TX, **gen_kw(peer, torch.Generator().manual_seed(0))).prev_sample
    fin_a, fin_b = torch.isfinite(a), torch.isfinite(b)
    assert torch.equal(fin_a, fin_b), (fin_a.sum(), fin_b.sum())
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    assert torch.allclose(a[fin_a], b[fin_b], atol=1e-4)


_TYPESTR = {"float32": "<f4", "float16": "<f2", "float64": "<f8", "int32": "<i4"}


class Iface:
    """A buffer as the array interfaces describe it (``__array_interface__``, or
    ``__cuda_array_interface__`` for device "cuda"): what the core reads, doctored."""

    def __init__(self, d: dict, cuda: bool):
        setattr(self, "__cuda_array_interface__" if cuda else "__array_interface__", d)


def desc(a, device="cpu", dtype=None, ptr_shift=0, numel=None, ptr=None, shape=None):
    """`a` described through an array interface, with any field doctored; a meta tensor of
    a's shape for device "meta"."""
    a = np.asarray(a)
    if device == "meta":
        return torch.empty(a.shape, device="meta")
    if shape is None:
        shape = a.shape if numel is None else (numel,)
    d = {
        "data": (a.ctypes.data + ptr_shift if ptr is None else ptr, False),
        "shape": tuple(shape),
        "typestr": _TYPESTR[dtype or a.dtype.name],
        "version": 3,
    }
    return Iface(d, device == "cuda")


_UNET = []


def unet():
    if not _UNET:
        _UNET.append(rdiff.UNet2DModel.from_pretrained(rdiff.cli.bundled_model_dir("digits")))
    return _UNET[0]


UX = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)

_COND = {}


def cond_unet(sdxl=False):
    """A tiny random rdiff.UNet2DConditionModel (SD 1.x-like, or SDXL-like with text_time),
    context width 12, for CX / CX4 inputs."""
    if sdxl not in _COND:
        cfg = dict(
            sample_size=8,
            block_out_channels=[8, 16],
            layers_per_block=1,
            norm_num_groups=4,
            cross_attention_dim=12,
            attention_head_dim=2,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        )
        if sdxl:
            cfg.update(
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=10 + 6 * 8,
                use_linear_projection=True,
            )
        torch.manual_seed(0)
        m = diffusers.UNet2DConditionModel(**cfg).eval()
        _COND[sdxl] = rdiff.UNet2DConditionModel.from_diffusers(m)
    return _COND[sdxl]


CX4 = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
CX = rng.standard_normal((2, 5, 12)).astype(np.float32)
TEXT_TIME = {"text_embeds": np.zeros((2, 10), np.float32), "time_ids": np.zeros((2, 6), np.float32)}


def cli(*argv):
    """rdiff.cli.main(argv): (exit code, stderr text)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = rdiff.cli.main(list(argv))
        except SystemExit as e:
            code = e.code
    if isinstance(code, str):  # SystemExit(message): Python prints it and exits with 1
        return 1, err.getvalue() + code
    return code, err.getvalue()


def model_dir(scheduler_json=None, **config):
    """A copy of the bundled digits model folder (its files linked) whose config.json has
    ``config``'s entries replaced (Ellipsis: removed), and scheduler_config.json replaced by
    ``scheduler_json`` (text) when given."""
    src = rdiff.cli.bundled_model_dir("digits")
    d = tempfile.mkdtemp()
    for f in os.listdir(src):
        if f not in ("config.json", "scheduler_config.json"):
            os.symlink(src / f, os.path.join(d, f))
    cfg = json.loads((src / "config.json").read_text())
    for k, v in config.items():
        if v is Ellipsis:
            cfg.pop(k)
        else:
            cfg[k] = v
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    sched = (src / "scheduler_config.json").read_text()
    with open(os.path.join(d, "scheduler_config.json"), "w") as f:
        f.write(sched if scheduler_json is None else scheduler_json)
    return d


def gamma_file(**entries):
    """A saved GammaTable with some entries replaced (None: removed)."""
    d = tempfile.mkdtemp()
    good = os.path.join(d, "good.npz")
    rdiff.GammaTable.from_gamma(np.full(1000, 0.5), SCHED).save(good)
    with np.load(good) as z:
        data = {k: z[k] for k in z.files}
    for k, v in entries.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    p = os.path.join(d, "bad.npz")
    np.savez(p, **data)
    return p
'''

KINDS = (
    "multistep",
    "deis",
    "singlestep",
    "ddim",
    "ddpm",
    "analytic",
    "unipc",
    "v3",
    "euler",
    "euler_a",
    "flow",
    "flow_heun",
    "heun",
    "lcm",
    "lms",
    "tcd",
    "kdpm2",
    "kdpm2_a",
)


def _scheduler_cases() -> list[Case]:
    out: list[Case] = []
    for kind in KINDS:
        for wrapped in (False, True):
            w = "rdd" if wrapped else "rdiff"
            p = f"{w}.{kind}"
            mk = f"make({kind!r}, wrapped={wrapped})"
            mk0 = f"make({kind!r}, wrapped={wrapped}, n=0)"
            c = [
                # -- construction
                Case(
                    f"{p}.init.beta_schedule_unknown",
                    f"make({kind!r}, {wrapped}, beta_schedule='cubic')",
                    "ValueError",
                    r"beta_schedule.*cubic",
                ),
                Case(
                    f"{p}.init.num_train_0",
                    f"make({kind!r}, {wrapped}, num_train_timesteps=0)",
                    "ValueError",
                    r"num_train_timesteps",
                ),
                Case(
                    f"{p}.init.num_train_str",
                    f"make({kind!r}, {wrapped}, num_train_timesteps='1000')",
                    "TypeError",
                    r"num_train_timesteps",
                ),
                Case(
                    f"{p}.init.beta_start_nan",
                    f"make({kind!r}, {wrapped}, beta_start=float('nan'))",
                    "ValueError",
                    r"beta_start",
                ),
                Case(
                    f"{p}.init.beta_end_inf",
                    f"make({kind!r}, {wrapped}, beta_end=float('inf'))",
                    "ValueError",
                    r"beta_end",
                ),
                Case(
                    f"{p}.init.trained_betas_nan",
                    f"make({kind!r}, {wrapped}, num_train_timesteps=4, "
                    "trained_betas=[0.1, float('nan'), 0.2, 0.3])",
                    "ValueError",
                    r"trained_betas",
                ),
                Case(
                    f"{p}.init.trained_betas_ge_1",
                    f"make({kind!r}, {wrapped}, num_train_timesteps=3, "
                    "trained_betas=[0.1, 1.5, 0.2])",
                    "ValueError",
                    r"trained_betas",
                ),
                Case(
                    f"{p}.init.trained_betas_str",
                    f"make({kind!r}, {wrapped}, num_train_timesteps=3, trained_betas='abc')",
                    "(TypeError, ValueError)",
                    r"trained_betas",
                ),
                Case(
                    f"{p}.init.prediction_type_unknown",
                    f"make({kind!r}, {wrapped}, prediction_type='noise')",
                    "ValueError",
                    r"prediction_type.*noise",
                ),
                # -- set_timesteps
                Case(
                    f"{p}.set_timesteps.zero",
                    f"{mk0}.set_timesteps(0)",
                    "ValueError",
                    r"num_inference_steps",
                ),
                Case(
                    f"{p}.set_timesteps.negative",
                    f"{mk0}.set_timesteps(-3)",
                    "ValueError",
                    r"num_inference_steps",
                ),
                Case(
                    f"{p}.set_timesteps.float",
                    f"{mk0}.set_timesteps(2.5)",
                    "TypeError",
                    r"num_inference_steps",
                ),
                Case(
                    f"{p}.set_timesteps.str",
                    f"{mk0}.set_timesteps('10')",
                    "TypeError",
                    r"num_inference_steps",
                ),
                # diffusers' DPM-Solver and UniPC classes take more steps than training timesteps
                # (repeating some); its DDIM, DDPM and rdiff's Analytic-DPM refuse them.
                *(
                    []
                    if kind in ("multistep", "deis", "singlestep", "unipc")
                    else [
                        Case(
                            f"{p}.set_timesteps.too_many",
                            f"{mk0}.set_timesteps(1001)",
                            "ValueError",
                            r"num_inference_steps.*1001",
                        )
                    ]
                    # the σ-parametrised classes space fractional timesteps, any number of them
                    if kind
                    not in (
                        "euler",
                        "euler_a",
                        "flow",
                        "flow_heun",
                        "heun",
                        "kdpm2",
                        "kdpm2_a",
                        "lms",
                    )
                    else []
                ),
                # -- out of order
                *_out_of_order(kind, p, mk, mk0),
                Case(
                    f"{p}.step.reuse_after_set_timesteps",
                    f"s = {mk}\nrun_loop(s, X, n=3)\ns.set_timesteps(10)\n"
                    f"a = run_loop(s, X)\nb = run_loop({mk}, X)\n"
                    "assert np.array_equal(a, b)",
                    None,
                ),
                Case(
                    f"{p}.step.reuse_torch_after_set_timesteps",
                    f"s = {mk}\nrun_loop(s, TX, n=4)\ns.set_timesteps(10)\n"
                    f"a = run_loop(s, TX)\nb = run_loop({mk}, TX)\n"
                    "assert torch.equal(a, b)",
                    None,
                ),
                # -- wrong types
                Case(
                    f"{p}.step.mo_list",
                    f"one_step({mk}, M.tolist(), X)",
                    "TypeError",
                    r"model_output.*numpy array or a torch tensor",
                ),
                Case(
                    f"{p}.step.sample_none",
                    f"one_step({mk}, M, None)",
                    "TypeError",
                    r"sample.*numpy array or a torch tensor",
                ),
                Case(
                    f"{p}.step.mo_scalar", f"one_step({mk}, 1.0, X)", "TypeError", r"model_output"
                ),
                Case(
                    f"{p}.step.mixed_frameworks",
                    f"one_step({mk}, TM, X)",
                    "TypeError",
                    r"mixes a torch tensor and a numpy array",
                ),
                # -- wrong dtypes
                Case(
                    f"{p}.step.mo_int64",
                    f"one_step({mk}, M.astype(np.int64), X)",
                    "TypeError",
                    r"model_output.*dtype int64",
                ),
                Case(
                    f"{p}.step.mo_bool",
                    f"one_step({mk}, M > 0, X)",
                    "TypeError",
                    r"model_output.*dtype bool",
                ),
                Case(
                    f"{p}.step.mo_complex",
                    f"one_step({mk}, M.astype(np.complex64), X)",
                    "TypeError",
                    r"model_output.*dtype complex64",
                ),
                Case(
                    f"{p}.step.sample_int_torch",
                    f"one_step({mk}, TM, TX.to(torch.int32))",
                    "TypeError",
                    r"sample.*dtype torch.int32",
                ),
                Case(
                    f"{p}.step.mo_complex_torch",
                    f"one_step({mk}, TM.to(torch.complex64), TX)",
                    "TypeError",
                    r"model_output.*dtype torch.complex64",
                ),
                # float64 runs in float64 out; the deterministic steps match float32's result
                # (DDPM and Analytic-DPM draw their noise in the output dtype, as diffusers)
                Case(
                    f"{p}.step.float64_numpy",
                    f"a = one_step({mk}, M.astype(np.float64), X.astype(np.float64), "
                    "generator=np.random.default_rng(0))\n"
                    f"b = one_step({mk}, M, X, generator=np.random.default_rng(0))\n"
                    "assert a.dtype == np.float64 and np.isfinite(a).all()\n"
                    + (
                        ""
                        if kind in ("ddpm", "analytic", "euler_a", "lcm", "tcd")
                        else "assert np.allclose(a, b, atol=1e-5)"
                    ),
                    None,
                ),
                Case(
                    f"{p}.step.float16_mo_float32_sample",
                    f"a = one_step({mk}, TM.half(), TX, generator=gen_for(TX))\n"
                    "assert a.dtype == torch.float16 and torch.isfinite(a).all()",
                    None,
                ),
                # -- wrong shapes
                Case(
                    f"{p}.step.shape_mismatch",
                    f"one_step({mk}, M[:, :2], X)",
                    "ValueError",
                    r"model_output.*shape",
                ),
                Case(
                    f"{p}.step.batch_mismatch",
                    f"one_step({mk}, M[:1], X)",
                    "ValueError",
                    r"model_output.*shape",
                ),
                Case(
                    f"{p}.step.zero_batch",
                    f"one_step({mk}, M[:0], X[:0])",
                    "ValueError",
                    r"sample.*(empty|non-empty)",
                ),
                # zero-size but with a batch: runs, as diffusers' elementwise step does;
                # DPM-Solver-v3's statistics have the sample's shape, so it refuses another
                Case(
                    f"{p}.step.zero_channels_runs",
                    f"y = run_loop({mk}, X[:, :0])\nassert y.shape == (2, 0, 4, 4)",
                    None,
                )
                if kind != "v3"
                else Case(
                    f"{p}.step.sample_shape_not_the_tables",
                    f"run_loop({mk}, X[:, :2])",
                    "ValueError",
                    r"2 elements per sample|32 elements per sample.*EMS table has 48",
                ),
                Case(
                    f"{p}.step.scalar_arrays",
                    f"one_step({mk}, np.ones((), np.float32), np.ones((), np.float32))",
                    "ValueError",
                    r"sample.*(empty|non-empty|batch)",
                ),
                # -- wrong devices
                Case(f"{p}.step.meta", f"one_step({mk}, meta(), meta())", "ValueError", r"meta"),
                Case(
                    f"{p}.step.cuda",
                    f"one_step({mk}, fake_cuda(), fake_cuda())",
                    "rdiff.CudaUnavailableError",
                    r"CUDA",
                ),
                Case(
                    f"{p}.step.cuda_mo_cpu_sample",
                    f"one_step({mk}, fake_cuda(), TX)",
                    "(ValueError, rdiff.CudaUnavailableError)",
                    r"device|CUDA",
                ),
                # -- non-contiguous input works and equals the contiguous result
                Case(
                    f"{p}.step.noncontiguous_numpy",
                    f"a = one_step({mk}, noncontig(M), noncontig(X), generator=gen_for(X))\n"
                    f"b = one_step({mk}, M, X, generator=gen_for(X))\n"
                    "assert np.array_equal(a, b)",
                    None,
                ),
                Case(
                    f"{p}.step.noncontiguous_torch",
                    f"a = one_step({mk}, noncontig(TM), noncontig(TX), generator=gen_for(TX))\n"
                    f"b = one_step({mk}, TM, TX, generator=gen_for(TX))\n"
                    "assert torch.equal(a, b)",
                    None,
                ),
                Case(
                    f"{p}.step.transposed_torch",
                    f"a = one_step({mk}, TM.transpose(2, 3), TX.transpose(2, 3), "
                    "generator=gen_for(TX))\n"
                    f"b = one_step({mk}, TM.transpose(2, 3).contiguous(), "
                    "TX.transpose(2, 3).contiguous(), generator=gen_for(TX))\n"
                    "assert torch.equal(a, b)",
                    None,
                ),
                # -- timestep arguments
                Case(
                    f"{p}.step.timestep_str",
                    f"{mk}.step(M, 'late', X)",
                    "(TypeError, ValueError)",
                    r"timestep",
                ),
                Case(
                    f"{p}.add_noise.shape_mismatch",
                    f"{mk}.add_noise(X, M[:1], np.array([10, 20]))",
                    "ValueError",
                    r"noise.*shape",
                ),
                Case(
                    f"{p}.add_noise.int_dtype",
                    f"{mk}.add_noise(X.astype(np.int32), M, np.array([10, 20]))",
                    "TypeError",
                    r"original_samples.*dtype",
                ),
            ]
            c += [
                Case(
                    f"{p}.add_noise.timesteps_count",
                    f"{mk}.add_noise(X, M, np.array([1, 2, 3]))",
                    "ValueError",
                    r"timesteps: 3 values for a batch of 2",
                ),
                Case(
                    f"{p}.add_noise.timesteps_nan",
                    f"{mk}.add_noise(X, M, np.array([np.nan, 1.0]))",
                    "ValueError",
                    r"timesteps.*finite",
                ),
                Case(
                    f"{p}.add_noise.timesteps_str",
                    f"{mk}.add_noise(X, M, 'early')",
                    "TypeError",
                    r"timesteps",
                ),
            ]
            if kind in ("unipc", "v3"):
                # a bf16 model on float32 latents: each step returns the model output's dtype,
                # the corrector then reads the last float32 sample (found by fuzzing: a
                # TypeError naming the internal last_sample)
                c.append(
                    Case(
                        f"{p}.loop.bf16_model_on_float32_latents",
                        f"x = TX.clone()\ns = make({kind!r}, {wrapped})\n"
                        "for t in s.timesteps:\n"
                        "    x = s.step((0.1 * x).to(torch.bfloat16), t, x).prev_sample\n"
                        f"ref = run_loop(make({kind!r}, {wrapped}), TX.clone())\n"
                        "assert x.dtype == torch.bfloat16\n"
                        "assert (x.float() - ref).abs().max() <= 0.02 * ref.abs().max()",
                        None,
                    )
                )
            if kind in ("multistep", "unipc", "flow"):
                # dynamic shifting's mu whose shift overflows or is NaN (found by fuzzing: an
                # OverflowError, or errors about sigmas or flow_shift)
                flow = "" if kind == "flow" else ", use_flow_sigmas=True, "
                flow += "" if kind == "flow" else "prediction_type='flow_prediction'"
                c += [
                    Case(
                        f"{p}.set_timesteps.mu_{name}",
                        f"s = make({kind!r}, {wrapped}, n=0, use_dynamic_shifting=True{flow})\n"
                        f"s.set_timesteps(4, mu={value})",
                        "ValueError",
                        r"mu: e\^mu must be a finite positive shift",
                    )
                    for name, value in (("overflowing", "1e10"), ("nan", "float('nan')"))
                ]
            if kind == "ddim":
                c.append(
                    Case(
                        f"{p}.init.beta_start_str",
                        f"make({kind!r}, {wrapped}, beta_start='a')",
                        "TypeError",
                        r"beta_start: expected a number, got str",
                    )
                )
            if kind in ("ddim", "ddpm", "lcm", "tcd"):
                c.append(
                    Case(
                        f"{p}.step.timestep_past_int64",
                        f"{mk}.step(M, 10**30, X)",
                        "ValueError",
                        r"timestep: 1000000000000000000000000000000 is not a training timestep",
                    )
                )
            if kind in ("ddpm", "euler_a", "lcm", "tcd", "analytic"):
                # generators the noise cannot be drawn with (found by fuzzing: an
                # AttributeError, or a length error about 'noise')
                c += [
                    Case(
                        f"{p}.step.generator_str",
                        f"one_step({mk}, TM, TX, generator='abc')",
                        "TypeError",
                        r"generator: expected .*got str",
                    ),
                    Case(
                        f"{p}.step.generator_list_short",
                        f"g = [torch.Generator().manual_seed(i) for i in range(2)]\n"
                        f"one_step({mk}, torch.cat([TM, TM]), torch.cat([TX, TX]), generator=g)",
                        "ValueError",
                        r"generator: a list of 2 for a batch of 4",
                    ),
                    Case(
                        f"{p}.step.torch_generator_numpy_sample",
                        f"one_step({mk}, M, X, generator=torch.Generator())",
                        "TypeError",
                        r"generator: numpy samples draw .* numpy Generator",
                    ),
                ]
            if kind in ("lcm", "tcd"):
                # found by fuzzing: NaN samples from finite input (diffusers' too)
                c += [
                    Case(
                        f"{p}.step.epsilon_at_zero_snr",
                        f"s = make({kind!r}, {wrapped}, n=4, rescale_betas_zero_snr=True)\n"
                        "one_step(s, TM, TX, generator=gen_for(TX))",
                        "ValueError",
                        r"timestep 999: ᾱ = 0 .*v_prediction",
                    ),
                    Case(
                        f"{p}.init.timestep_scaling_nan",
                        f"make({kind!r}, {wrapped}, timestep_scaling=float('nan'))",
                        "ValueError",
                        r"timestep_scaling: must be finite",
                    ),
                ]
            if kind == "v3":
                # statistics whose coefficients fit float64 but not float32 (found by fuzzing:
                # NaN samples, one RuntimeWarning)
                c.append(
                    Case(
                        f"{p}.step.coefficients_past_float32",
                        "ems = rdiff.EMSTable.from_statistics(_L, np.full_like(_L, 20.0), "
                        "0.05 * _L, SCHED)\n"
                        f"s = make('v3', {wrapped}, n=5, ems=ems)\n"
                        "one_step(s, TM, TX)",
                        "ValueError",
                        r"ems: the step coefficients overflow float32",
                    )
                )
            if kind in ("ddim", "ddpm", "analytic", "v3"):
                # training timesteps out of range, below as above (found by fuzzing: v3's -1
                # gave NaN, DDIM's and DDPM's wrapped to the end of the table)
                c += [
                    Case(
                        f"{p}.add_noise.timesteps_{name}",
                        f"{mk}.add_noise(X, M, np.array([{t}, 5]))",
                        "ValueError",
                        r"timesteps: must lie in \[0, (999\]|1000\))",
                    )
                    for name, t in (("negative", -1), ("past_the_end", 1000))
                ]
            if kind in PEER_KINDS and wrapped:
                c += [
                    Case(
                        f"{p}.step.nan_like_diffusers",
                        f"nan_mask_like_diffusers({kind!r}, float('nan'))",
                        None,
                    ),
                    Case(
                        f"{p}.step.nan_thresholding_like_diffusers",
                        f"nan_mask_like_diffusers({kind!r}, float('nan'), thresholding=True)",
                        None,
                    ),
                    Case(
                        f"{p}.step.inf_thresholding_like_diffusers",
                        f"nan_mask_like_diffusers({kind!r}, float('inf'), thresholding=True)",
                        None,
                    ),
                    Case(
                        f"{p}.step.inf_like_diffusers",
                        f"nan_mask_like_diffusers({kind!r}, float('inf'))",
                        None,
                    ),
                ]
            if kind == "analytic":
                c += [
                    Case(
                        f"{p}.init.gamma_nan",
                        f"make('analytic', {wrapped}, gamma=[float('nan')] + [0.5] * 999)",
                        "ValueError",
                        r"gamma.*(finite|nan|NaN)",
                    ),
                    Case(
                        f"{p}.init.gamma_inf",
                        f"make('analytic', {wrapped}, gamma=[0.5] * 999 + [float('inf')])",
                        "ValueError",
                        r"gamma.*(finite|inf)",
                    ),
                    Case(
                        f"{p}.init.gamma_negative",
                        f"make('analytic', {wrapped}, gamma=[-0.5] * 1000)",
                        "ValueError",
                        r"gamma.*negative",
                    ),
                    Case(
                        f"{p}.init.gamma_short",
                        f"make('analytic', {wrapped}, gamma=[0.5] * 10)",
                        "ValueError",
                        r"gamma.*10 values",
                    ),
                    Case(
                        f"{p}.init.gamma_none",
                        f"make('analytic', {wrapped}, gamma=None)",
                        "ValueError",
                        r"gamma.*estimate_gamma",
                    ),
                    Case(
                        f"{p}.init.gamma_str_array",
                        f"make('analytic', {wrapped}, gamma=['a'] * 1000)",
                        "(TypeError, ValueError)",
                        r"gamma",
                    ),
                    Case(
                        f"{p}.init.form_unknown",
                        f"make('analytic', {wrapped}, form='ddx')",
                        "ValueError",
                        r"form.*ddx",
                    ),
                    Case(
                        f"{p}.init.eta_nan",
                        f"make('analytic', {wrapped}, form='ddim', eta=float('nan'))",
                        "ValueError",
                        r"eta",
                    ),
                    Case(
                        f"{p}.init.trajectory_unknown",
                        f"make('analytic', {wrapped}, trajectory='cubic')",
                        "ValueError",
                        r"trajectory.*cubic",
                    ),
                    Case(
                        f"{p}.init.data_range_reversed",
                        f"make('analytic', {wrapped}, data_range=(1, -1))",
                        "ValueError",
                        r"data_range",
                    ),
                    Case(
                        f"{p}.step.nan_propagates",
                        f"a = one_step({mk}, with_value(M, np.nan), X, "
                        "generator=gen_for(X))\n"
                        "assert np.isnan(a[0, 0, 0, 0]) and np.isfinite(a[1]).all()",
                        None,
                    ),
                ]
            if kind in ("multistep", "deis", "singlestep"):
                c += [
                    # more steps than training timesteps: the first timestep appears twice,
                    # the loop starts at its second occurrence (diffusers' rule) and overruns;
                    # the error says so (found by fuzzing: it only said "all steps are done")
                    Case(
                        f"{p}.loop.more_steps_than_timesteps",
                        f"run_loop(make({kind!r}, {wrapped}, n=2000), X[:, :1, :1, :2])",
                        "ValueError",
                        r"all 2000 steps are done.*appears 2 times.*at most num_train_timesteps",
                    ),
                    Case(
                        f"{p}.init.solver_order_4",
                        f"make({kind!r}, {wrapped}, solver_order=4)",
                        "ValueError",
                        r"solver_order.*4",
                    ),
                    Case(
                        f"{p}.init.solver_order_0",
                        f"make({kind!r}, {wrapped}, solver_order=0)",
                        "ValueError",
                        r"solver_order",
                    ),
                    Case(
                        f"{p}.init.algorithm_unknown",
                        f"make({kind!r}, {wrapped}, algorithm_type='dpm')",
                        "ValueError",
                        r"algorithm_type.*dpm",
                    ),
                    Case(
                        f"{p}.init.solver_type_unknown",
                        f"make({kind!r}, {wrapped}, solver_type='rk4')",
                        "ValueError",
                        r"solver_type.*rk4",
                    ),
                    Case(
                        f"{p}.init.threshold_ratio_nan",
                        f"make({kind!r}, {wrapped}, thresholding=True, "
                        "dynamic_thresholding_ratio=float('nan'))",
                        "ValueError",
                        r"dynamic_thresholding_ratio",
                    ),
                    Case(
                        f"{p}.init.sample_max_nan",
                        f"make({kind!r}, {wrapped}, thresholding=True, "
                        "sample_max_value=float('nan'))",
                        "ValueError",
                        r"sample_max_value",
                    ),
                    Case(
                        f"{p}.set_timesteps.custom_increasing",
                        f"{mk0}.set_timesteps(timesteps=[10, 500, 900])",
                        "ValueError",
                        r"timesteps",
                    ),
                    Case(
                        f"{p}.set_timesteps.custom_out_of_range",
                        f"{mk0}.set_timesteps(timesteps=[2000, 10])",
                        "ValueError",
                        r"timesteps",
                    ),
                    Case(
                        f"{p}.set_timesteps.both",
                        f"{mk0}.set_timesteps(10, timesteps=[900, 10])",
                        "ValueError",
                        r"exactly one|only one",
                    ),
                    Case(
                        f"{p}.step.variance_noise_shape",
                        f"s = make({kind!r}, {wrapped}, algorithm_type='sde-dpmsolver++')\n"
                        "one_step(s, M, X, variance_noise=M[:1])",
                        "ValueError",
                        r"variance_noise.*shape",
                    ),
                    Case(
                        f"{p}.step.history_dtype_change",
                        f"s = {mk}\ns.step(M, s.timesteps[0], X)\n"
                        "s.step(M.astype(np.float64), s.timesteps[1], X.astype(np.float64))",
                        "ValueError",
                        r"history.*set_timesteps",
                    ),
                ]
            if kind == "ddim":
                c += [
                    Case(
                        f"{p}.step.eta_nan",
                        f"{mk}.step(M, 900, X, eta=float('nan'))",
                        "ValueError",
                        r"eta",
                    ),
                    Case(
                        f"{p}.step.eta_negative",
                        f"{mk}.step(M, 900, X, eta=-1.0)",
                        "ValueError",
                        r"eta",
                    ),
                    Case(
                        f"{p}.init.timestep_spacing_unknown",
                        f"make('ddim', {wrapped}, timestep_spacing='log')",
                        "ValueError",
                        r"timestep_spacing.*log",
                    ),
                ]
            if kind == "ddpm":
                c += [
                    Case(
                        f"{p}.set_timesteps.custom_increasing",
                        f"{mk0}.set_timesteps(timesteps=[10, 500, 900])",
                        "ValueError",
                        r"timesteps",
                    ),
                ]
            if kind == "deis":
                # no custom timesteps (a TypeError, as in diffusers) and no SDE variant
                skip = (".set_timesteps.custom_", ".set_timesteps.both", ".variance_noise_")
                c = [case for case in c if not any(k in case.id for k in skip)]
            if kind in ("flow", "flow_heun"):
                # no β schedule and no prediction_type: a flow model predicts velocity
                skip = (".init.beta", ".init.trained_betas", ".init.prediction_type")
                c = [case for case in c if not any(k in case.id for k in skip)]
            out += c
    return out


PEER_KINDS = ("multistep", "deis", "singlestep", "ddim", "ddpm", "unipc")


def _out_of_order(kind: str, p: str, mk: str, mk0: str) -> list[Case]:
    """step before set_timesteps / after the last step. DDIM and DDPM are timestep-indexed
    and stateless in diffusers (DDPM even steps with no set_timesteps): they must agree with
    diffusers there; the multistep/stateful ones raise."""
    if kind in ("ddim", "ddpm"):
        after = Case(
            f"{p}.step.after_last_like_diffusers",
            f"s = {mk}\nrun_loop(s, TX)\npeer = PEER[{kind!r}]()\npeer.set_timesteps(10)\n"
            "t = peer.timesteps[-1]\n"
            "a = s.step(TM, t, TX, generator=torch.Generator().manual_seed(0)).prev_sample\n"
            "b = peer.step(TM, t, TX, generator=torch.Generator().manual_seed(0)).prev_sample\n"
            "assert torch.allclose(a, b, atol=1e-5)",
            None,
        )
    else:
        after = Case(
            f"{p}.step.after_last",
            f"s = {mk}\nrun_loop(s, X)\ns.step(M, s.timesteps[-1], X)",
            "ValueError",
            r"steps are done.*set_timesteps",
        )
    if kind in ("ddpm", "euler", "euler_a", "flow", "heun", "kdpm2", "kdpm2_a", "lms"):
        # (the σ-parametrised classes step over the training schedule, float timesteps;
        # diffusers' flow-matching Heun cannot: it has no stage state before set_timesteps)
        t = "999" if kind == "ddpm" else "peer.timesteps[0]"
        before = Case(
            f"{p}.step.before_set_timesteps_like_diffusers",
            f"s = {mk0}\npeer = PEER[{kind!r}]()\n"
            f"a = s.step(TM, {t}, TX, **gen_kw(s, torch.Generator().manual_seed(0)))"
            ".prev_sample\n"
            f"b = peer.step(TM, {t}, TX, **gen_kw(peer, torch.Generator().manual_seed(0)))"
            ".prev_sample\n"
            "assert torch.allclose(a, b, atol=1e-5)",
            None,
        )
    else:
        before = Case(
            f"{p}.step.before_set_timesteps",
            f"{mk0}.step(M, 999, X)",
            "ValueError",
            r"set_timesteps",
        )
    return [before, after]


def _schedule_cases() -> list[Case]:
    d = "rdiff.NoiseSchedule.discrete"
    return [
        Case("schedule.discrete.n0", f"{d}(0)", "ValueError", r"num_train_timesteps"),
        Case(
            "schedule.discrete.n_negative",
            f"{d}(-1)",
            "(ValueError, OverflowError)",
            r"num_train_timesteps|negative",
        ),
        Case("schedule.discrete.unknown", f"{d}(10, 'cubic')", "ValueError", r"cubic"),
        Case(
            "schedule.discrete.beta_nan",
            f"{d}(10, 'linear', float('nan'))",
            "ValueError",
            r"beta_start",
        ),
        Case(
            "schedule.discrete.beta_end_lt_start",
            f"{d}(10, 'linear', 0.5, 0.1)",
            "ValueError",
            r"beta",
        ),
        Case(
            "schedule.discrete.beta_end_1",
            f"{d}(10, 'linear', 0.1, 1.0)",
            "ValueError",
            r"beta_end",
        ),
        Case(
            "schedule.discrete.trained_nan",
            f"{d}(2, 'linear', trained_betas=[0.1, float('nan')])",
            "ValueError",
            r"trained_betas",
        ),
        # rdiff's documented convention: trained betas define N
        Case(
            "schedule.discrete.trained_len",
            f"assert {d}(3, 'linear', trained_betas=[0.1, 0.2]).num_train_timesteps == 2",
            None,
        ),
        Case(
            "schedule.discrete.trained_type",
            f"{d}(2, 'linear', trained_betas='ab')",
            "TypeError",
            r"trained_betas|sequence|str",
        ),
        Case(
            "schedule.linear_vp.nan",
            "rdiff.NoiseSchedule.linear_vp(float('nan'), 20.0)",
            "ValueError",
            r"beta_min",
        ),
        Case(
            "schedule.linear_vp.reversed",
            "rdiff.NoiseSchedule.linear_vp(20.0, 0.1)",
            "ValueError",
            r"beta",
        ),
        Case(
            "schedule.linear_vp.negative",
            "rdiff.NoiseSchedule.linear_vp(-1.0, 20.0)",
            "ValueError",
            r"beta_min",
        ),
        Case("schedule.alpha_t.nan", "SCHED.alpha_t(float('nan'))", "ValueError", r"\bt\b"),
        # outside [t_min, t_max] the reference's interpolation extrapolates; so does rdiff
        Case(
            "schedule.alpha_t.out_of_range",
            "assert 0 < SCHED.alpha_t(2.0) < SCHED.alpha_t(1.0)",
            None,
        ),
        Case("schedule.alpha_t.str", "SCHED.alpha_t('a')", "TypeError", r"\bt\b.*str"),
        Case(
            "schedule.alpha_t.inf_array",
            "SCHED.alpha_t(np.array([np.inf]))",
            "ValueError",
            r"\bt\b.*finite",
        ),
        Case("schedule.alpha_t.empty", "assert SCHED.alpha_t(np.array([])).shape == (0,)", None),
        Case(
            "schedule.alpha_t.complex",
            "SCHED.alpha_t(np.array([0.5 + 1j]))",
            "TypeError",
            r"complex|float",
        ),
        Case(
            "schedule.lambda_t.nan_array",
            "SCHED.lambda_t(np.array([0.5, np.nan]))",
            "ValueError",
            r"\bt\b",
        ),
        Case(
            "schedule.inverse_lambda.nan",
            "SCHED.inverse_lambda(float('nan'))",
            "ValueError",
            r"lam",
        ),
        Case("schedule.time_steps.zero", "SCHED.time_steps(0)", "ValueError", r"steps"),
        Case(
            "schedule.time_steps.unknown",
            "SCHED.time_steps(10, 'cubic')",
            "ValueError",
            r"skip_type.*cubic",
        ),
        Case(
            "schedule.time_steps.reversed",
            "SCHED.time_steps(10, 'logSNR', 0.1, 0.9)",
            "ValueError",
            r"t_end|t_start",
        ),
        Case(
            "schedule.time_steps.nan",
            "SCHED.time_steps(10, 'logSNR', float('nan'))",
            "ValueError",
            r"t_start",
        ),
        Case("schedule.timesteps.zero", "SCHED.timesteps(0)", "ValueError", r"num_inference_steps"),
        Case(
            "schedule.timesteps.unknown_spacing",
            "SCHED.timesteps(10, 'log')",
            "ValueError",
            r"spacing.*log",
        ),
        Case(
            "schedule.timesteps.unknown_sigmas",
            "SCHED.timesteps(10, sigmas='x')",
            "ValueError",
            r"sigmas.*x",
        ),
        Case(
            "schedule.timesteps.continuous",
            "rdiff.NoiseSchedule.linear_vp().timesteps(10)",
            "ValueError",
            r"discrete",
        ),
    ]


def _huge_cases() -> list[Case]:
    """Sizes no model uses: a ValueError before any allocation (they used to abort the
    process on a failed multi-gigabyte allocation)."""
    big = "10**10"
    more = r"more than rdiff supports"
    return [
        Case(
            "huge.schedule.discrete",
            f"rdiff.NoiseSchedule.discrete({big})",
            "ValueError",
            r"num_train_timesteps.*" + more,
        ),
        Case(
            "huge.schedule.timesteps",
            f"SCHED.timesteps({big})",
            "ValueError",
            r"num_inference_steps",
        ),
        Case(
            "huge.schedule.time_steps", f"SCHED.time_steps({big})", "ValueError", r"steps.*" + more
        ),
        Case(
            "huge.multistep.num_train",
            f"rdiff.DPMSolverMultistepScheduler(num_train_timesteps={big})",
            "ValueError",
            r"num_train_timesteps",
        ),
        Case(
            "huge.ddim.num_train",
            f"rdiff.DDIMScheduler(num_train_timesteps={big})",
            "ValueError",
            r"num_train_timesteps",
        ),
        Case(
            "huge.multistep.set_timesteps",
            f"make('multistep', n=0).set_timesteps({big})",
            "ValueError",
            r"num_inference_steps",
        ),
        Case(
            "huge.singlestep.order_list",
            f"make('singlestep').get_order_list({big})",
            "ValueError",
            r"steps.*" + more,
        ),
        Case(
            "huge.ddim.set_timesteps",
            f"make('ddim', n=0).set_timesteps({big})",
            "ValueError",
            r"num_inference_steps",
        ),
        Case(
            "huge.sample.multistep",
            f"rdiff.sample(lambda x, t: x, X, SCHED, steps={big})",
            "ValueError",
            r"steps.*" + more,
        ),
        Case(
            "huge.sample.singlestep",
            f"rdiff.sample(lambda x, t: x, X, SCHED, steps={big}, method='singlestep')",
            "ValueError",
            r"steps.*" + more,
        ),
        Case(
            "huge.k.karras",
            f"rdiff.k.get_sigmas_karras({big}, 0.1, 10.0)",
            "ValueError",
            r"\bn\b.*" + more,
        ),
        Case(
            "huge.k.exponential",
            f"rdiff.k.get_sigmas_exponential({big}, 0.1, 10.0)",
            "ValueError",
            r"\bn\b.*" + more,
        ),
    ]


def _sample_cases() -> list[Case]:
    f = "lambda x, t: 0.1 * x"
    s = "rdiff.sample"
    return [
        Case("sample.schedule_type", f"{s}({f}, X, 'linear')", "TypeError", r"schedule"),
        Case("sample.x_list", f"{s}({f}, X.tolist(), SCHED)", "TypeError", r"\bx\b"),
        Case(
            "sample.x_int", f"{s}({f}, X.astype(np.int64), SCHED)", "TypeError", r"x.*dtype int64"
        ),
        Case(
            "sample.x_complex", f"{s}({f}, TX.to(torch.complex64), SCHED)", "TypeError", r"x.*dtype"
        ),
        Case("sample.x_meta", f"{s}({f}, meta(), SCHED)", "ValueError", r"meta"),
        Case(
            "sample.x_cuda",
            f"{s}({f}, fake_cuda(), SCHED)",
            "rdiff.CudaUnavailableError",
            r"CUDA|cuda",
        ),
        Case("sample.x_empty", f"{s}({f}, X[:0], SCHED)", "ValueError", r"x.*(empty|non-empty)"),
        Case("sample.steps_0", f"{s}({f}, X, SCHED, steps=0)", "ValueError", r"steps"),
        Case("sample.steps_float", f"{s}({f}, X, SCHED, steps=2.5)", "TypeError", r"steps"),
        Case("sample.order_4", f"{s}({f}, X, SCHED, order=4)", "ValueError", r"order.*4"),
        Case("sample.order_0", f"{s}({f}, X, SCHED, order=0)", "ValueError", r"order"),
        Case(
            "sample.method_unknown", f"{s}({f}, X, SCHED, method='rk')", "ValueError", r"method.*rk"
        ),
        Case(
            "sample.algorithm_unknown",
            f"{s}({f}, X, SCHED, algorithm='ddim')",
            "ValueError",
            r"algorithm.*ddim",
        ),
        Case(
            "sample.skip_type_unknown",
            f"{s}({f}, X, SCHED, skip_type='x')",
            "ValueError",
            r"skip_type",
        ),
        Case(
            "sample.solver_type_unknown",
            f"{s}({f}, X, SCHED, solver_type='x')",
            "ValueError",
            r"solver_type",
        ),
        Case(
            "sample.t_end_ge_t_start",
            f"{s}({f}, X, SCHED, t_start=0.2, t_end=0.5)",
            "ValueError",
            r"t_end|t_start",
        ),
        Case(
            "sample.t_start_nan",
            f"{s}({f}, X, SCHED, t_start=float('nan'))",
            "ValueError",
            r"t_start",
        ),
        Case(
            "sample.ratio_nan",
            f"{s}({f}, X, SCHED, correcting_x0_fn='dynamic_thresholding',"
            " dynamic_thresholding_ratio=float('nan'))",
            "ValueError",
            r"dynamic_thresholding_ratio",
        ),
        Case(
            "sample.max_val_nan",
            f"{s}({f}, X, SCHED, correcting_x0_fn='dynamic_thresholding',"
            " thresholding_max_val=float('nan'))",
            "ValueError",
            r"thresholding_max_val",
        ),
        Case(
            "sample.correcting_unknown",
            f"{s}({f}, X, SCHED, correcting_x0_fn='clip')",
            "ValueError",
            r"correcting_x0_fn",
        ),
        Case(
            "sample.atol_nan",
            f"{s}({f}, X, SCHED, method='adaptive', atol=float('nan'))",
            "ValueError",
            r"atol",
        ),
        Case(
            "sample.model_returns_list",
            f"{s}(lambda x, t: x.tolist(), X, SCHED, steps=2)",
            "TypeError",
            r"model_fn",
        ),
        Case(
            "sample.model_returns_wrong_shape",
            f"{s}(lambda x, t: x[:1], X, SCHED, steps=2)",
            "ValueError",
            r"model_fn.*shape",
        ),
        Case(
            "sample.model_returns_int",
            f"{s}(lambda x, t: (x > 0).astype(np.int64), X, SCHED, steps=2)",
            "TypeError",
            r"model_fn",
        ),
        Case(
            "sample.model_returns_torch_for_numpy",
            f"{s}(lambda x, t: torch.from_numpy(x), X, SCHED, steps=2)",
            "TypeError",
            r"model_fn",
        ),
        Case(
            "sample.model_nan_propagates",
            f"y = {s}(lambda x, t: with_value(np.zeros_like(x), np.nan), X, SCHED, steps=3)\n"
            "assert np.isnan(y[0, 0, 0, 0])",
            None,
        ),
        Case(
            "sample.adaptive_nan_raises",
            f"{s}(lambda x, t: x * np.nan, X, SCHED, method='adaptive')",
            "FloatingPointError",
            r"finite",
        ),
        Case(
            "sample.noncontiguous",
            f"a = {s}({f}, noncontig(X), SCHED, steps=3)\nb = {s}({f}, X, SCHED, steps=3)\n"
            "assert np.array_equal(a, b)",
            None,
        ),
        Case("model_wrapper.schedule", f"rdiff.model_wrapper({f}, None)", "TypeError", r"schedule"),
        Case(
            "model_wrapper.model_type",
            f"rdiff.model_wrapper({f}, SCHED, model_type='eps')",
            "ValueError",
            r"model_type.*eps",
        ),
        Case(
            "model_wrapper.guidance",
            f"rdiff.model_wrapper({f}, SCHED, guidance_type='cfg')",
            "ValueError",
            r"guidance_type.*cfg",
        ),
        Case(
            "model_wrapper.scalar_condition",
            f"rdiff.model_wrapper({f}, SCHED, guidance_type='classifier-free', condition=1, "
            "unconditional_condition=np.zeros(2), guidance_scale=2.0)",
            "ValueError",
            r"condition: classifier-free guidance.*int",
        ),
        Case(
            "model_wrapper.condition_shapes",
            f"rdiff.model_wrapper({f}, SCHED, guidance_type='classifier-free', "
            "condition=torch.zeros(2, 3), unconditional_condition=torch.zeros(2, 4), "
            "guidance_scale=2.0)",
            "ValueError",
            r"same shape after the batch axis.*\(2, 3\).*\(2, 4\)",
        ),
        Case(
            "model_wrapper.classifier_missing",
            f"rdiff.model_wrapper({f}, SCHED, guidance_type='classifier')",
            "ValueError",
            r"classifier_fn",
        ),
    ]


def _analytic_cases() -> list[Case]:
    g = "rdiff.GammaTable"
    return [
        Case(
            "gamma.from_gamma.nan",
            f"{g}.from_gamma([np.nan] * 1000, SCHED)",
            "ValueError",
            r"gamma.*(finite|nan|NaN)",
        ),
        Case(
            "gamma.from_gamma.inf",
            f"{g}.from_gamma([np.inf] * 1000, SCHED)",
            "ValueError",
            r"gamma.*(finite|inf)",
        ),
        Case(
            "gamma.from_gamma.negative",
            f"{g}.from_gamma([-1.0] * 1000, SCHED)",
            "ValueError",
            r"negative",
        ),
        Case(
            "gamma.from_gamma.length",
            f"{g}.from_gamma([0.5] * 3, SCHED)",
            "ValueError",
            r"3 values",
        ),
        Case(
            "gamma.from_gamma.str",
            f"{g}.from_gamma('abc', SCHED)",
            "(TypeError, ValueError)",
            r"gamma",
        ),
        Case(
            "gamma.from_gamma.schedule_type",
            f"{g}.from_gamma([0.5] * 1000, 'linear')",
            "(TypeError, ValueError)",
            r"schedule",
        ),
        Case(
            "gamma.from_gamma.count_0",
            f"{g}.from_gamma([0.5] * 1000, SCHED, count=0)",
            "ValueError",
            r"count|sample",
        ),
        Case(
            "gamma.init.decreasing",
            f"{g}([5, 3], [1, 1], [0, 0], [0, 0], SCHED)",
            "ValueError",
            r"timesteps.*increasing",
        ),
        Case(
            "gamma.init.lengths",
            f"{g}([1, 3], [1], [0, 0], [0, 0], SCHED)",
            "ValueError",
            r"same length",
        ),
        Case(
            "gamma.init.alphas_nan",
            f"{g}([1], [1], [0], [0], np.full(10, np.nan))",
            "ValueError",
            r"alphas_cumprod|finite|ᾱ",
        ),
        Case(
            "gamma.merge.other_type",
            f"{g}.from_gamma([0.5] * 1000, SCHED).merge([1, 2])",
            "TypeError",
            r"GammaTable",
        ),
        Case(
            "gamma.merge.other_schedule",
            f"{g}.from_gamma([0.5] * 1000, SCHED).merge({g}.from_gamma([0.5] * 10, "
            "rdiff.NoiseSchedule.discrete(10)))",
            "ValueError",
            r"schedule",
        ),
        Case(
            "gamma.load.missing",
            f"{g}.load('/nonexistent/x.npz')",
            "rdiff.WeightsError",
            r"no such file",
        ),
        Case(
            "gamma.load.not_npz",
            f"p = tempfile.mktemp()\nopen(p, 'wb').write(b'garbage')\n{g}.load(p)",
            "rdiff.WeightsError",
            r"not a readable",
        ),
        Case(
            "gamma.load.missing_entry",
            f"{g}.load(gamma_file(sums=None))",
            "rdiff.WeightsError",
            r"not a valid.*sums",
        ),
        Case(
            "gamma.load.nan_alphas",
            f"{g}.load(gamma_file(alphas_cumprod=np.full(1000, np.nan)))",
            "rdiff.WeightsError",
            r"alphas_cumprod",
        ),
        Case(
            "gamma.load.bad_dtype",
            f"{g}.load(gamma_file(timesteps=np.arange(1000, dtype=np.float32)))",
            "rdiff.WeightsError",
            r"timesteps",
        ),
        Case(
            "gamma.load.other_schedule",
            f"{g}.load(gamma_file(), schedule=rdiff.NoiseSchedule.discrete(1000, "
            "'scaled_linear', 0.00085, 0.012))",
            "ValueError",
            r"schedule",
        ),
        Case(
            "gamma.save.missing_dir",
            "rdiff.GammaTable.from_gamma([0.5] * 1000, SCHED).save('/nonexistent/dir/g.npz')",
            "OSError",
            r"/nonexistent/dir",
        ),
        Case(
            "estimate_gamma.batch_size_0",
            "rdiff.estimate_gamma(lambda x, t: x, X, SCHED, batch_size=0, progress=False)",
            "ValueError",
            r"batch_size",
        ),
        Case(
            "estimate_gamma.batch_size_float",
            "rdiff.estimate_gamma(lambda x, t: x, X, SCHED, batch_size=2.0, progress=False)",
            "TypeError",
            r"batch_size",
        ),
        Case(
            "estimate_gamma.timesteps_range",
            "rdiff.estimate_gamma(lambda x, t: x, X, SCHED, timesteps=[1000], progress=False)",
            "ValueError",
            r"timesteps",
        ),
        Case(
            "estimate_gamma.empty_data",
            "rdiff.estimate_gamma(lambda x, t: x, X[:0], SCHED, timesteps=[1], progress=False)",
            "ValueError",
            r"data.*non-empty",
        ),
        Case(
            "estimate_gamma.data_str",
            "rdiff.estimate_gamma(lambda x, t: x, 'abc', SCHED, timesteps=[1], progress=False)",
            "(TypeError, ValueError)",
            r"data",
        ),
        Case(
            "estimate_gamma.data_complex",
            "rdiff.estimate_gamma(lambda x, t: x, X.astype(np.complex64), SCHED, "
            "timesteps=[1], progress=False)",
            "TypeError",
            r"data.*complex",
        ),
        Case(
            "estimate_gamma.prediction_type",
            "rdiff.estimate_gamma(lambda x, t: x, X, SCHED, prediction_type='eps', progress=False)",
            "ValueError",
            r"prediction_type",
        ),
        Case(
            "estimate_gamma.model_wrong_shape",
            "rdiff.estimate_gamma(lambda x, t: x[:1], X, SCHED, timesteps=[1], progress=False)",
            "ValueError",
            r"model output.*shape",
        ),
        Case(
            "estimate_gamma.model_int",
            "rdiff.estimate_gamma(lambda x, t: (x > 0).astype(np.int8), X, SCHED, "
            "timesteps=[1], progress=False)",
            "TypeError",
            r"model output.*dtype",
        ),
        Case(
            "estimate_gamma.model_nan",
            "rdiff.estimate_gamma(lambda x, t: x * np.nan, X, SCHED, timesteps=[1], "
            "progress=False)",
            "ValueError",
            r"model output.*(finite|NaN|nan)",
        ),
        Case(
            "estimate_gamma.data_meta",
            "rdiff.estimate_gamma(lambda x, t: x, meta(), SCHED, timesteps=[1], progress=False)",
            "ValueError",
            r"meta",
        ),
        Case(
            "optimal_trajectory.steps_0",
            "rdiff.optimal_trajectory(GAMMA, SCHED, 0)",
            "ValueError",
            r"num_steps",
        ),
        Case(
            "optimal_trajectory.steps_too_many",
            "rdiff.optimal_trajectory(GAMMA, SCHED, 1001)",
            "ValueError",
            r"num_steps.*1001",
        ),
        Case(
            "optimal_trajectory.steps_float",
            "rdiff.optimal_trajectory(GAMMA, SCHED, 2.5)",
            "TypeError",
            r"num_steps",
        ),
        Case(
            "optimal_trajectory.gamma_nan",
            "rdiff.optimal_trajectory([np.nan] * 1000, SCHED, 10)",
            "ValueError",
            r"gamma.*(finite|nan|NaN)",
        ),
        Case(
            "optimal_trajectory.gamma_short",
            "rdiff.optimal_trajectory([0.5] * 10, SCHED, 5)",
            "ValueError",
            r"gamma.*10",
        ),
        Case(
            "optimal_trajectory.gamma_none",
            "rdiff.optimal_trajectory(None, SCHED, 5)",
            "ValueError",
            r"gamma",
        ),
    ]


def _unet_cases() -> list[Case]:
    u = "unet()"
    return [
        Case(
            "unet.from_pretrained.variant_missing",
            "rdiff.UNet2DModel.from_pretrained(rdiff.cli.bundled_model_dir('digits'), "
            "variant='fp16')",
            "rdiff.WeightsError",
            r"diffusion_pytorch_model.fp16.safetensors",
        ),
        Case(
            "unet.from_pretrained.missing",
            "rdiff.UNet2DModel.from_pretrained('/nonexistent')",
            "rdiff.WeightsError",
            r"not a directory",
        ),
        Case(
            "unet.from_pretrained.cuda",
            "rdiff.UNet2DModel.from_pretrained(rdiff.cli.bundled_model_dir('digits'), "
            "device='cuda')",
            "rdiff.CudaUnavailableError",
            r"CUDA",
        ),
        Case(
            "unet.from_pretrained.device_unknown",
            "rdiff.UNet2DModel.from_pretrained(rdiff.cli.bundled_model_dir('digits'), "
            "device='tpu')",
            "ValueError",
            r"device.*tpu",
        ),
        Case(
            "unet.from_pretrained.dtype",
            "rdiff.UNet2DModel.from_pretrained(rdiff.cli.bundled_model_dir('digits'), "
            "dtype='int8')",
            "ValueError",
            r"dtype.*int8",
        ),
        Case(
            "unet.from_pretrained.bad_json",
            "d = tempfile.mkdtemp()\nopen(os.path.join(d, 'config.json'), 'w').write('{')\n"
            "open(os.path.join(d, 'diffusion_pytorch_model.safetensors'), 'wb').write(b'x')\n"
            "rdiff.UNet2DModel.from_pretrained(d)",
            "ValueError",
            r"not valid JSON",
        ),
        Case(
            "unet.from_pretrained.truncated_weights",
            "import shutil\nd = tempfile.mkdtemp()\nsrc = rdiff.cli.bundled_model_dir('digits')\n"
            "shutil.copy(src / 'config.json', d)\n"
            "b = open(src / 'diffusion_pytorch_model.safetensors', 'rb').read()\n"
            "open(os.path.join(d, 'diffusion_pytorch_model.safetensors'), 'wb')"
            ".write(b[:len(b) // 2])\n"
            "rdiff.UNet2DModel.from_pretrained(d)",
            "rdiff.WeightsError",
            r"safetensors|truncated|short|size",
        ),
        Case(
            "unet.call.list",
            f"{u}(UX.tolist(), 10)",
            "TypeError",
            r"sample.*numpy array or a torch tensor",
        ),
        Case("unet.call.int", f"{u}(UX.astype(np.int32), 10)", "TypeError", r"sample.*dtype int32"),
        Case(
            "unet.call.complex",
            f"{u}(torch.from_numpy(UX).to(torch.complex64), 10)",
            "TypeError",
            r"sample.*dtype",
        ),
        Case("unet.call.ndim3", f"{u}(UX[0], 10)", "ValueError", r"sample.*batch, channels"),
        Case(
            "unet.call.channels",
            f"{u}(np.zeros((2, 3, 8, 8), np.float32), 10)",
            "ValueError",
            r"input channels",
        ),
        Case(
            "unet.call.odd_size",
            f"{u}(np.zeros((2, 1, 6, 6), np.float32), 10)",
            "ValueError",
            r"multiples",
        ),
        Case("unet.call.empty", f"{u}(UX[:0], 10)", "ValueError", r"empty"),
        Case("unet.call.meta", f"{u}(meta((2, 1, 8, 8)), 10)", "ValueError", r"meta"),
        Case(
            "unet.call.cuda",
            f"{u}(fake_cuda((2, 1, 8, 8)), 10)",
            "rdiff.CudaUnavailableError",
            r"CUDA",
        ),
        Case("unet.call.timestep_str", f"{u}(UX, 'ten')", "TypeError", r"timestep"),
        Case(
            "unet.call.timestep_count",
            f"{u}(UX, np.array([1, 2, 3]))",
            "ValueError",
            r"timestep.*3 values",
        ),
        Case(
            "unet.call.timestep_empty", f"{u}(UX, np.array([]))", "ValueError", r"timestep.*empty"
        ),
        Case(
            "unet.call.timestep_nan",
            f"{u}(UX, np.array([np.nan, 1.0]))",
            "ValueError",
            r"timestep.*(finite|nan|NaN)",
        ),
        Case(
            "unet.call.timestep_bool",
            f"{u}(UX, np.array([True, False]))",
            "TypeError",
            r"timestep.*bool",
        ),
        Case(
            "unet.call.class_labels_unconditional",
            f"{u}(UX, 10, class_labels=[1, 2])",
            "ValueError",
            r"class",
        ),
        Case(
            "unet.call.noncontiguous",
            f"a = {u}(noncontig(UX), 10)\nb = {u}(UX, 10)\nassert np.array_equal(a, b)",
            None,
        ),
        Case(
            "unet.call.nan_propagates",
            f"a = {u}(with_value(UX, np.nan), 10)\nassert np.isnan(a[0]).any()",
            None,
        ),
        Case(
            "unet.call.float64",
            f"a = {u}(UX.astype(np.float64), 10)\nb = {u}(UX, 10)\n"
            "assert a.dtype == np.float64 and np.allclose(a, b, atol=1e-5)",
            None,
        ),
        Case(
            "unet.from_diffusers.not_a_model",
            "rdiff.UNet2DModel.from_diffusers(object())",
            "TypeError",
            r"module|UNet2DModel",
        ),
    ]


def _cond_unet_cases() -> list[Case]:
    u, xl = "cond_unet()", "cond_unet(sdxl=True)"
    return [
        Case(
            "cond_unet.call.context_width",
            f"{u}(CX4, 10, CX[..., :8])",
            "ValueError",
            r"encoder_hidden_states: width 8.*cross_attention_dim is 12",
        ),
        Case(
            "cond_unet.call.context_batch",
            f"{u}(CX4, 10, CX[:1])",
            "ValueError",
            r"encoder_hidden_states: batch 1 differs from the sample's batch 2",
        ),
        Case(
            "cond_unet.call.context_missing",
            f"{u}(CX4, 10)",
            "TypeError",
            r"encoder_hidden_states",
        ),
        Case(
            "cond_unet.call.context_ndim",
            f"{u}(CX4, 10, CX[0])",
            "ValueError",
            r"encoder_hidden_states: expected \(batch, tokens, 12\)",
        ),
        Case(
            "cond_unet.call.context_no_tokens",
            f"{u}(CX4, 10, CX[:, :0])",
            "ValueError",
            r"encoder_hidden_states: no tokens",
        ),
        Case(
            "cond_unet.call.context_int",
            f"{u}(CX4, 10, CX.astype(np.int32))",
            "TypeError",
            r"encoder_hidden_states: unsupported dtype int32",
        ),
        Case(
            "cond_unet.call.context_list",
            f"{u}(CX4, 10, CX.tolist())",
            "TypeError",
            r"encoder_hidden_states: expected a numpy array or a torch tensor",
        ),
        Case(
            "cond_unet.call.context_cuda",
            f"{u}(CX4, 10, fake_cuda((2, 5, 12)))",
            "(rdiff.CudaUnavailableError, ValueError)",
            r"CUDA|device",
        ),
        Case(
            "cond_unet.call.context_nan_propagates",
            f"a = {u}(CX4, 10, np.full_like(CX, np.nan))\nassert np.isnan(a).any()",
            None,
        ),
        Case(
            "cond_unet.call.attention_mask",
            f"{u}(CX4, 10, CX, attention_mask=np.ones((2, 8, 8)))",
            "NotImplementedError",
            r"attention_mask: not supported",
        ),
        Case(
            "cond_unet.call.cross_attention_kwargs",
            f"{u}(CX4, 10, CX, cross_attention_kwargs={{'scale': 0.5, 'gligen': {{}}}})",
            "NotImplementedError",
            r"cross_attention_kwargs: \['gligen'\] not supported.*only a LoRA 'scale'",
        ),
        Case(
            "cond_unet.call.t2i_adapter_residuals",
            f"{u}(CX4, 10, CX, down_block_additional_residuals=(CX4,))",
            "ValueError",
            r"down_intrablock_additional_residuals\[0\]: expected shape \[2, 8, 8, 8\]",
        ),
        Case(
            "cond_unet.call.controlnet_residual_count",
            f"{u}(CX4, 10, CX, down_block_additional_residuals=(CX4,), "
            "mid_block_additional_residual=CX4)",
            "ValueError",
            r"down_block_additional_residuals: 1 given, but this UNet has 4 skip",
        ),
        Case(
            "cond_unet.call.controlnet_residual_nan_propagates",
            "d = [np.full(s, np.nan, np.float32) for s in "
            "[(2, 8, 8, 8), (2, 8, 8, 8), (2, 8, 4, 4), (2, 16, 4, 4)]]\n"
            f"a = {u}(CX4, 10, CX, down_block_additional_residuals=d, "
            "mid_block_additional_residual=d[-1])\nassert np.isnan(a).any()",
            None,
        ),
        Case(
            "cond_unet.call.class_labels_unconditional",
            f"{u}(CX4, 10, CX, class_labels=[1, 2])",
            "ValueError",
            r"class_labels given, but this model has no class embedding",
        ),
        Case(
            "cond_unet.call.added_cond_missing",
            f"{xl}(CX4, 10, CX)",
            "ValueError",
            r"added_cond_kwargs.*text_embeds.*time_ids",
        ),
        Case(
            "cond_unet.call.text_embeds_width",
            f"{xl}(CX4, 10, CX, added_cond_kwargs=dict(TEXT_TIME, "
            "text_embeds=np.zeros((2, 7), np.float32)))",
            "ValueError",
            r"7 text_embeds and 6 time_ids.*takes 58",
        ),
        Case(
            "cond_unet.call.time_ids_width",
            f"{xl}(CX4, 10, CX, added_cond_kwargs=dict(TEXT_TIME, "
            "time_ids=np.zeros((2, 5), np.float32)))",
            "ValueError",
            r"10 text_embeds and 5 time_ids",
        ),
        Case(
            "cond_unet.from_pretrained.unsupported_key",
            "d = tempfile.mkdtemp()\n"
            "json.dump({'_class_name': 'UNet2DConditionModel', 'encoder_hid_dim': 8}, "
            "open(os.path.join(d, 'config.json'), 'w'))\n"
            "open(os.path.join(d, 'diffusion_pytorch_model.safetensors'), 'wb').write(b'x')\n"
            "rdiff.UNet2DConditionModel.from_pretrained(d)",
            "ValueError",
            r"encoder_hid_dim",
        ),
        Case(
            "cond_unet.from_diffusers.not_a_model",
            "rdiff.UNet2DConditionModel.from_diffusers(object())",
            "TypeError",
            r"module|UNet2DConditionModel",
        ),
    ]


def _core_cases() -> list[Case]:
    """The Rust bindings themselves (what the Python layer calls), given buffers the Python
    layer would never pass, through the array interfaces: CUDA where CUDA cannot run, a meta
    device, a bad dtype, a null, misaligned or short buffer, shapes that lie. Each must be an
    exception, never a dereference."""
    out = "O = np.empty_like(X)\n"
    lc = "rdiff._rdiff._lincomb({o}, [(1.0, {x})])"
    ms = "s = make('multistep')\nO, H = np.empty_like(X), np.empty_like(X)\n"
    step = (
        "s._core.step({i}, {n}, model_output={mo}, sample={x}, history={h}, hist={hist}, prev={o})"
    )
    dd = "s = make('ddim')\nO, Z = np.empty_like(X), np.empty_like(X)\n"
    an = "s = make('analytic')\nO, Z = np.empty_like(X), np.empty_like(X)\n"
    return [
        Case(
            "core.lincomb.cuda",
            out + lc.format(o="desc(O, 'cuda')", x="desc(X, 'cuda')"),
            "rdiff.CudaUnavailableError",
            r"CUDA|cuda",
        ),
        Case(
            "core.lincomb.cuda_mixed",
            out + lc.format(o="desc(O)", x="desc(X, 'cuda')"),
            "(ValueError, rdiff.CudaUnavailableError)",
            r"device|CUDA|cuda",
        ),
        Case(
            "core.lincomb.meta",
            out + lc.format(o="desc(O, 'meta')", x="desc(X, 'meta')"),
            "ValueError",
            r"device.*meta|meta.*device",
        ),
        Case(
            "core.lincomb.dtype_int",
            out + lc.format(o="desc(O, dtype='int32')", x="desc(X)"),
            "TypeError",
            r"dtype.*int32|<i4",
        ),
        Case(
            "core.lincomb.short",
            out + lc.format(o="desc(O, numel=7)", x="desc(X)"),
            "ValueError",
            r"elements|length|numel",
        ),
        Case(
            "core.lincomb.null",
            out + lc.format(o="desc(O, ptr=0)", x="desc(X)"),
            "ValueError",
            r"null",
        ),
        Case(
            "core.lincomb.misaligned",
            out + lc.format(o="desc(O, ptr_shift=1)", x="desc(X)"),
            "ValueError",
            r"aligned",
        ),
        Case("core.lincomb.not_a_tuple", out + "rdiff._rdiff._lincomb(O, [], 2)", "TypeError", r""),
        Case(
            "core.multistep.cuda",
            ms
            + step.format(
                i=0,
                n=0,
                mo="desc(M, 'cuda')",
                x="desc(X, 'cuda')",
                h="[]",
                hist="desc(H, 'cuda')",
                o="desc(O, 'cuda')",
            ),
            "rdiff.CudaUnavailableError",
            r"CUDA|cuda",
        ),
        Case(
            "core.multistep.step_index_past_end",
            ms + step.format(i=99, n=0, mo="M", x="X", h="[]", hist="H", o="O"),
            "ValueError",
            r"step index 99",
        ),
        Case(
            "core.multistep.order_4",
            ms + "s._core.coefficients(5, 4)",
            "ValueError",
            r"order 4",
        ),
        Case(
            "core.multistep.missing_history",
            ms + step.format(i=5, n=1, mo="M", x="X", h="[]", hist="H", o="O"),
            "ValueError",
            r"model_outputs|history|m1",
        ),
        Case(
            "core.multistep.bad_stride",
            ms
            + step.format(i=0, n=0, mo="desc(M, shape=(2, 4800))", x="X", h="[]", hist="H", o="O"),
            "ValueError",
            r"stride|elements|shape",
        ),
        Case(
            "core.ddim.cuda",
            dd + "s._core.ddim(900, 800, 0.0, False, model_output=desc(M, 'cuda'), "
            "sample=desc(X, 'cuda'), x0=desc(Z, 'cuda'), prev=desc(O, 'cuda'))",
            "rdiff.CudaUnavailableError",
            r"CUDA|cuda",
        ),
        Case(
            "core.ddim.timestep_out_of_range",
            dd + "s._core.ddim(5000, 800, 0.0, False, model_output=M, sample=X, x0=Z, prev=O)",
            "ValueError",
            r"timestep",
        ),
        Case(
            "core.analytic.cuda",
            an + "s._core.step(0, model_output=desc(M, 'cuda'), sample=desc(X, 'cuda'), "
            "noise=desc(M, 'cuda'), x0=desc(Z, 'cuda'), prev=desc(O, 'cuda'))",
            "rdiff.CudaUnavailableError",
            r"CUDA|cuda",
        ),
        Case(
            "core.analytic.step_past_end",
            an + "s._core.step(99, model_output=M, sample=X, noise=M, x0=Z, prev=O)",
            "ValueError",
            r"step",
        ),
        Case(
            "core.gamma_batch_sums.cuda",
            "rdiff._rdiff._gamma_batch_sums(desc(M, 'cuda'), None, 48, 'epsilon', 0.5)",
            "(ValueError, rdiff.CudaUnavailableError)",
            r"CUDA|cuda|CPU",
        ),
        Case(
            "core.gamma_batch_sums.batch_0",
            "rdiff._rdiff._gamma_batch_sums(np.zeros((0, 48), np.float32), None, 48, 'epsilon', "
            "0.5)",
            "ValueError",
            r"batch",
        ),
        Case(
            "core.unet.cuda",
            "O = np.empty_like(UX)\n"
            "unet()._core.forward(desc(UX, 'cuda'), [10.0], desc(O, 'cuda'))",
            "rdiff.CudaUnavailableError",
            r"CUDA|cuda",
        ),
        Case(
            "core.unet.short_output",
            "O = np.empty_like(UX)\nunet()._core.forward(UX, [10.0], desc(O, numel=10))",
            "ValueError",
            r"output buffer",
        ),
        Case(
            "core.unet.shape_lies",
            # A buffer describes its own shape now; the lie left is an output for another batch.
            "O = np.empty((4, 1, 8, 8), np.float32)\nunet()._core.forward(UX, [10.0], O)",
            "ValueError",
            r"output buffer.*shape",
        ),
    ]


K_SAMPLERS = (
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
    "sample_euler_ancestral",
    "sample_euler",
    "sample_heun",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_lms",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_sde",
)


def _k_cases() -> list[Case]:
    """Every rdiff.k sampler: bad x, NaN or negative sigmas, a model of the wrong shape/type."""
    out: list[Case] = []
    sig = "torch.tensor([1.0, 0.5, 0.0])"
    for name in K_SAMPLERS:
        f = f"rdiff.k.{name}"
        out += [
            Case(
                f"k.{name}.x_int",
                f"{f}(lambda x, s: x, TX.long(), {sig}, disable=True)",
                "TypeError",
                r"\bx\b.*dtype",
            ),
            Case(
                f"k.{name}.x_list",
                f"{f}(lambda x, s: x, X.tolist(), {sig}, disable=True)",
                "TypeError",
                r"\bx\b",
            ),
            Case(
                f"k.{name}.x_meta",
                f"{f}(lambda x, s: x, meta(), {sig}, disable=True)",
                "ValueError",
                r"meta",
            ),
            Case(
                f"k.{name}.x_cuda",
                f"{f}(lambda x, s: x, fake_cuda(), {sig}, disable=True)",
                "rdiff.CudaUnavailableError",
                r"CUDA|cuda",
            ),
            Case(
                f"k.{name}.sigmas_nan",
                f"{f}(lambda x, s: x, TX, torch.tensor([1.0, float('nan'), 0.0]), disable=True)",
                "ValueError",
                r"sigmas.*finite",
            ),
            Case(
                f"k.{name}.sigmas_negative",
                f"{f}(lambda x, s: x, TX, torch.tensor([1.0, -0.5, 0.0]), disable=True)",
                "ValueError",
                r"sigmas.*non-negative",
            ),
            Case(
                f"k.{name}.model_shape",
                f"{f}(lambda x, s: x[:1], TX, {sig}, disable=True)",
                "ValueError",
                r"shape",
            ),
            Case(
                f"k.{name}.model_numpy",
                f"{f}(lambda x, s: x.numpy(), TX, {sig}, disable=True)",
                "TypeError",
                r"ndarray|numpy",
            ),
            Case(
                f"k.{name}.noncontiguous",
                f"a = {f}(lambda x, s: 0.5 * x, noncontig(TX), {sig}, disable=True, "
                "**({'noise_sampler': lambda s, t: torch.ones_like(TX)} "
                f"if 'sde' in {name!r} or 'ancestral' in {name!r} else {{}}))\n"
                f"b = {f}(lambda x, s: 0.5 * x, TX, {sig}, disable=True, "
                "**({'noise_sampler': lambda s, t: torch.ones_like(TX)} "
                f"if 'sde' in {name!r} or 'ancestral' in {name!r} else {{}}))\n"
                "assert torch.equal(a, b)",
                None,
            ),
        ]
    return out


def _misc_cases() -> list[Case]:
    gm = "rdiff.testing.GaussianMixture"
    return [
        Case("testing.gm.std_negative", f"{gm}([[0.0]], [-1.0])", "ValueError", r"std"),
        Case("testing.gm.std_nan", f"{gm}([[0.0]], [np.nan])", "ValueError", r"std"),
        Case("testing.gm.means_nan", f"{gm}([[np.nan]], [1.0])", "ValueError", r"means"),
        Case(
            "testing.gm.weights_negative",
            f"{gm}([[0.0], [1.0]], [1.0, 1.0], [2.0, -1.0])",
            "ValueError",
            r"weights",
        ),
        Case("testing.gm.shapes", f"{gm}([[0.0], [1.0]], [1.0])", "ValueError", r"stds|means"),
        Case("testing.gm.empty", f"{gm}(np.zeros((0, 2)), [])", "ValueError", r"means|component"),
        Case("testing.gm.str", f"{gm}('abc', [1.0])", "(TypeError, ValueError)", r"means"),
        Case(
            "testing.gm.sample_negative",
            f"{gm}.single([0.0], 1.0, 1).sample_data(-1)",
            "ValueError",
            r"\bn\b",
        ),
        Case(
            "testing.gm.eps_dim",
            f"{gm}.single([0.0, 0.0], 1.0, 2).eps_at(np.zeros((3, 5)), 1.0, 0.5)",
            "ValueError",
            r"\bx\b.*dim|shape",
        ),
        Case(
            "testing.gm.eps_sigma_negative",
            f"{gm}.single([0.0], 1.0, 1).eps_at(np.zeros((3, 1)), 1.0, -1.0)",
            "ValueError",
            r"sigma",
        ),
        Case(
            "testing.gm.eps_alpha_sigma_0",
            f"{gm}.single([0.0], 1.0, 1).eps_at(np.zeros((3, 1)), 0.0, 0.0)",
            "ValueError",
            r"alpha|sigma",
        ),
        Case(
            "testing.gm.eps_nan_x",
            f"{gm}.single([0.0], 1.0, 1).eps_at(np.full((3, 1), np.nan), 1.0, 0.5)",
            "ValueError",
            r"\bx\b",
        ),
        # k-diffusion: n = 0 gives [0.] (linspace of 0 points, then the appended zero), and
        # sigma_min > sigma_max just runs the formula; rdiff.k does the same
        Case(
            "k.karras.n0", "assert rdiff.k.get_sigmas_karras(0, 0.1, 10.0).tolist() == [0.0]", None
        ),
        Case(
            "k.karras.nan",
            "rdiff.k.get_sigmas_karras(10, float('nan'), 10.0)",
            "ValueError",
            r"sigma_min",
        ),
        Case(
            "k.karras.reversed",
            "r = np.linspace(0, 1, 3)\nlo, hi = 10.0 ** (1 / 7), 0.1 ** (1 / 7)\n"
            "want = (hi + r * (lo - hi)) ** 7\n"
            "got = rdiff.k.get_sigmas_karras(3, 10.0, 0.1).numpy()\n"
            "assert np.allclose(got[:3], want, rtol=1e-6) and got[3] == 0",
            None,
        ),
        Case(
            "k.karras.n_float", "rdiff.k.get_sigmas_karras(2.5, 0.1, 10.0)", "TypeError", r"\bn\b"
        ),
        Case(
            "k.exponential.n_negative",
            "rdiff.k.get_sigmas_exponential(-2, 0.1, 10.0)",
            "ValueError",
            r"\bn\b",
        ),
        # one sigma: no step, k-diffusion returns x
        Case(
            "k.dpmpp_2m.sigmas_one",
            "y = rdiff.k.sample_dpmpp_2m(lambda x, s: x, TX, torch.tensor([1.0]), disable=True)\n"
            "assert torch.equal(y, TX)",
            None,
        ),
        Case(
            "k.dpmpp_2m.sigmas_empty",
            "rdiff.k.sample_dpmpp_2m(lambda x, s: x, TX, torch.tensor([]))",
            "ValueError",
            r"sigmas",
        ),
        Case(
            "metrics.fdd.wrong_shape",
            "rdiff.metrics.frechet_digits_distance(np.zeros((4, 3, 3)))",
            "ValueError",
            r"samples.*shape",
        ),
        Case(
            "metrics.fdd.one_sample",
            "rdiff.metrics.frechet_digits_distance(np.zeros((1, 8, 8)))",
            "ValueError",
            r"samples",
        ),
        Case(
            "metrics.fdd.nan",
            "rdiff.metrics.frechet_digits_distance(np.full((10, 16, 16), np.nan))",
            "ValueError",
            r"samples.*(finite|NaN|nan)",
        ),
        Case(
            "metrics.classify.str",
            "rdiff.metrics.classify_digits('abc')",
            "(TypeError, ValueError)",
            r"samples",
        ),
        Case(
            "metrics.frechet.shapes",
            "rdiff.metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))",
            "ValueError",
            r"shape|dimension",
        ),
        Case(
            "backends.returns",
            "b = rdiff.backends()\nassert b['cpu']['available'] is True\n"
            "assert b['cuda']['available'] or b['cuda']['reason']",
            None,
        ),
        Case(
            "cli.unknown_command",
            "code, err = cli('frobnicate')\nassert code == 2 and 'invalid choice' in err, err",
            None,
        ),
        Case(
            "cli.sample.unknown_scheduler",
            "code, err = cli('sample', '--scheduler', 'x')\n"
            "assert code == 2 and 'invalid choice' in err, err",
            None,
        ),
        Case(
            "cli.sample.n_0",
            "code, err = cli('sample', '--n', '0', '--out', '')\n"
            "assert code == 2 and '--n' in err, err",
            None,
        ),
        Case(
            "cli.sample.steps_0",
            "code, err = cli('sample', '--steps', '0', '--out', '')\n"
            "assert code == 2 and '--steps' in err, err",
            None,
        ),
        Case(
            "cli.sample.order_4",
            "code, err = cli('sample', '--order', '4', '--out', '')\n"
            "assert code == 2 and '--order' in err, err",
            None,
        ),
        Case(
            "cli.sample.model_missing",
            "code, err = cli('sample', '--model', '/nonexistent', '--out', '')\n"
            "assert code != 0 and '/nonexistent' in err, err",
            None,
        ),
        Case(
            "cli.sample.device_cuda",
            "code, err = cli('sample', '--device', 'cuda', '--n', '2', '--out', '')\n"
            "assert code != 0 and 'CUDA' in err, err",
            None,
        ),
        Case(
            "cli.sample.dtype_unknown",
            "code, err = cli('sample', '--dtype', 'int8', '--n', '2', '--out', '')\n"
            "assert code != 0 and 'dtype' in err, err",
            None,
        ),
    ]


def _config_and_misc_cases() -> list[Case]:
    """Scheduler config fields and mutations, set_begin_index, EMS estimation, the CLI,
    rdiff.noise.randn, metrics and the test mixture (an adversarial pass's findings)."""
    ems = (
        "rdiff.ems.estimate_ems({model}, np.ones((4, 3), np.float32), SCHED, steps={steps}, "
        "progress=False{kw})"
    )
    sample = "'sample', '--quiet', '--steps', '1', '--out', ''"
    v_pred = "prediction_type='v_prediction'"
    return [
        # -- EMS estimation: 10⁹ steps was an OOM kill; fd_step=0 blamed the model
        Case(
            "ems.estimate.steps_huge",
            ems.format(model="lambda x, t: 0 * x", steps=10**9, kw=""),
            "ValueError",
            r"steps: 1000000000 is more than rdiff supports",
        ),
        Case(
            "ems.estimate.fd_step_0",
            ems.format(model="lambda x, t: 0 * x", steps=10, kw=", fd_step=0"),
            "ValueError",
            r"fd_step",
        ),
        Case(
            "ems.estimate.model_wrong_shape",
            ems.format(model="lambda x, t: x[:, :2]", steps=10, kw=""),
            "ValueError",
            r"model: returned shape \(4, 2\)",
        ),
        Case(
            "ems.from_statistics.continuous_schedule",
            "rdiff.EMSTable.from_statistics(_L, _L, _L, rdiff.NoiseSchedule.linear_vp())",
            "ValueError",
            r"EMSTable\.from_statistics.*discrete",
        ),
        # -- a config's every dict mutator raises (|=, clear and popitem changed a config its
        # scheduler then ignored); diffusers' FrozenDict raises Exception, TypeError is one
        Case(
            "rdiff.ddim.config.mutators",
            "s = make('ddim')\nc = s.config\nbefore = dict(c)\n"
            "for op in (lambda: c.__ior__({'prediction_type': 'v_prediction'}), c.clear, "
            "c.popitem, lambda: c.pop('eta', None), lambda: c.setdefault('x', 1), "
            "lambda: c.__delitem__('clip_sample'), lambda: c.update(a=1)):\n"
            "    try:\n        op()\n    except TypeError as e:\n"
            "        assert 'read-only' in str(e), e\n"
            "    else:\n        raise AssertionError(op)\n"
            "assert dict(s.config) == before",
            None,
        ),
        Case(
            "rdiff.ddim.config.ior",
            "c = make('ddim').config\nc |= {'prediction_type': 'v_prediction'}",
            "TypeError",
            r"read-only",
        ),
        # -- set_begin_index: an int in [0, len(timesteps)] (-1 was an OverflowError, 50 of 10
        # failed at the step, 'a' and 1.5 inside the step)
        Case(
            "rdiff.multistep.set_begin_index.every_kind",
            "for kind in PLAIN:\n"
            "    for wrapped in (False, True):\n"
            "        s = make(kind, wrapped)\n"
            "        n = len(s.timesteps)\n"
            "        s.set_begin_index(n - 1)\n"
            "        s.set_begin_index(np.int64(0))\n"
            "        for bad, exc in ((-1, ValueError), (n + 1, ValueError), ('a', TypeError), "
            "(1.5, TypeError), (True, TypeError)):\n"
            "            try:\n                s.set_begin_index(bad)\n"
            "            except exc as e:\n"
            "                assert 'begin_index' in str(e), (kind, e)\n"
            "            else:\n                raise AssertionError((kind, wrapped, bad))",
            None,
        ),
        Case(
            "rdiff.multistep.set_begin_index.past_end",
            "make('multistep').set_begin_index(50)",
            "ValueError",
            r"begin_index: must be in \[0, 10\], got 50",
        ),
        Case(
            "rdiff.euler.set_begin_index.negative",
            "make('euler').set_begin_index(-1)",
            "ValueError",
            r"begin_index",
        ),
        Case(
            "rdiff.flow.set_begin_index.float",
            "make('flow').set_begin_index(1.5)",
            "TypeError",
            r"begin_index: expected an integer",
        ),
        Case(
            "rdd.unipc.set_begin_index.torch_int_runs",
            "s = make('unipc', True)\ns.set_begin_index(torch.tensor(3))\n"
            "assert s.begin_index == 3",
            None,
        ),
        # -- DDPM's fixed_large_log: all-NaN samples in diffusers (√ of log β)
        Case(
            "rdiff.ddpm.init.fixed_large_log",
            "make('ddpm', variance_type='fixed_large_log')",
            "ValueError",
            r"variance_type.*NaN.*fixed_large",
        ),
        Case(
            "rdd.ddpm.init.fixed_large_log",
            "make('ddpm', True, variance_type='fixed_large_log')",
            "ValueError",
            r"variance_type.*NaN.*fixed_large",
        ),
        # -- config fields keep their name in type errors
        Case(
            "rdiff.ddim.init.beta_schedule_none",
            "make('ddim', beta_schedule=None)",
            "TypeError",
            r"beta_schedule: expected a str",
        ),
        Case(
            "rdiff.ddim.init.rescale_int_runs",  # 0 and 1 are read as diffusers reads them
            f"a = run_loop(make('ddim', rescale_betas_zero_snr=1, {v_pred}), X)\n"
            f"b = run_loop(make('ddim', rescale_betas_zero_snr=True, {v_pred}), X)\n"
            "assert np.array_equal(a, b)",
            None,
        ),
        Case(
            "rdiff.ddim.init.clip_sample_str",  # diffusers reads "false" as True
            "make('ddim', clip_sample='false')",
            "TypeError",
            r"clip_sample: expected a bool",
        ),
        Case(
            "rdiff.multistep.init.karras_none",
            "make('multistep', use_karras_sigmas=None)",
            "TypeError",
            r"use_karras_sigmas: expected a bool",
        ),
        Case(
            "rdd.unipc.init.karras_none",
            "make('unipc', True, use_karras_sigmas=None)",
            "TypeError",
            r"use_karras_sigmas: expected a bool",
        ),
        Case(
            "rdiff.deis.init.karras_none",
            "make('deis', use_karras_sigmas=None)",
            "TypeError",
            r"use_karras_sigmas",
        ),
        Case(
            "rdiff.ddim.init.steps_offset_str",
            "make('ddim', steps_offset='1')",
            "TypeError",
            r"steps_offset: expected an integer",
        ),
        Case(
            "rdiff.ddim.init.sample_max_value_none",
            "make('ddim', sample_max_value=None)",
            "TypeError",
            r"sample_max_value: expected a number",
        ),
        Case(
            "rdiff.ddim.init.clip_sample_range_list",
            "make('ddim', clip_sample_range=[1.0])",
            "TypeError",
            r"clip_sample_range",
        ),
        Case(
            "rdiff.multistep.init.flow_shift_str",
            "make('multistep', flow_shift='3')",
            "TypeError",
            r"flow_shift: expected a number",
        ),
        Case(
            "rdiff.lcm.init.timestep_scaling_none",
            "make('lcm', timestep_scaling=None)",
            "TypeError",
            r"timestep_scaling",
        ),
        Case("rdiff.flow.init.shift_none", "make('flow', shift=None)", "TypeError", r"shift"),
        Case(
            "rdiff.ddim.init.num_train_huge",
            "make('ddim', num_train_timesteps=10**20)",
            "ValueError",
            r"num_train_timesteps: 100000000000000000000 is more than rdiff supports",
        ),
        Case(
            "rdiff.ddim.init.trained_betas_scalar",
            "make('ddim', trained_betas=0.5)",
            "TypeError",
            r"trained_betas: expected a sequence",
        ),
        # -- from_config / from_pretrained with a non-dict
        Case(
            "rdiff.ddim.from_config.list",
            "rdiff.DDIMScheduler.from_config([['beta_end', 0.02]])",
            "TypeError",
            r"config: expected a dict",
        ),
        Case(
            "rdiff.ddim.from_config.path",
            "rdiff.DDIMScheduler.from_config(tempfile.mkdtemp())",
            "TypeError",
            r"config: .*from_pretrained",
        ),
        Case(
            "rdiff.ddim.from_pretrained.json_list",
            "d = tempfile.mkdtemp()\n"
            "with open(os.path.join(d, 'scheduler_config.json'), 'w') as f:\n"
            "    f.write('[1, 2]')\n"
            "rdiff.DDIMScheduler.from_pretrained(d)",
            "TypeError",
            r"scheduler_config\.json: expected a JSON object",
        ),
        # -- a flow shift so large that every timestep is the same
        Case(
            "rdiff.flow.init.shift_collapse",
            "make('flow', shift=1e30)",
            "ValueError",
            r"shift: 1e\+30 crowds every σ",
        ),
        Case(
            "rdd.flow_heun.init.shift_collapse",
            "make('flow_heun', True, shift=1e30)",
            "ValueError",
            r"shift: 1e\+30 crowds every σ",
        ),
        Case(
            "rdiff.flow.set_shift.str",
            "make('flow', n=0).set_shift('3')",
            "TypeError",
            r"shift: expected a number",
        ),
        # -- the CLI: out-of-memory sizes, bad model configs, arguments for another scheduler
        Case(
            "cli.sample.n_huge",
            f"code, err = cli({sample}, '--n', '1000000000')\n"
            "assert code == 1 and '--n' in err and 'memory' in err, err",
            None,
        ),
        Case(
            "cli.sample.scale_huge",
            "code, err = cli('sample', '--quiet', '--steps', '1', '--n', '2', '--scale', "
            "'100000', '--out', os.path.join(tempfile.mkdtemp(), 'g.png'))\n"
            "assert code == 1 and '--scale' in err and 'memory' in err, err",
            None,
        ),
        Case(
            "cli.sample.sample_size_huge",
            f"code, err = cli({sample}, '--n', '1', '--model', model_dir(sample_size=100000))\n"
            "assert code == 1 and 'memory' in err, err",
            None,
        ),
        Case(
            "cli.sample.sample_size_missing",
            f"code, err = cli({sample}, '--n', '1', '--model', model_dir(sample_size=...))\n"
            "assert code == 1 and 'config.json' in err and 'sample_size' in err, err",
            None,
        ),
        Case(
            "cli.sample.sample_size_null",
            f"code, err = cli({sample}, '--n', '1', '--model', model_dir(sample_size=None))\n"
            "assert code == 1 and 'config.json' in err and 'sample_size' in err, err",
            None,
        ),
        Case(
            "cli.sample.scheduler_config_not_json",
            f"code, err = cli({sample}, '--n', '1', '--model', model_dir(scheduler_json='{{'))\n"
            "assert code == 1 and 'scheduler_config.json' in err, err",
            None,
        ),
        Case(
            "cli.sample.seed_negative",
            f"code, err = cli({sample}, '--seed', '-1')\nassert code == 2 and '--seed' in err, err",
            None,
        ),
        Case(
            "cli.sample.gamma_with_ddim",
            f"code, err = cli({sample}, '--scheduler', 'ddim', '--gamma', 'g.npz')\n"
            "assert code == 1 and '--gamma' in err, err",
            None,
        ),
        Case(
            "cli.sample.ems_with_ddim",
            f"code, err = cli({sample}, '--scheduler', 'ddim', '--ems', 'e.npz')\n"
            "assert code == 1 and '--ems' in err, err",
            None,
        ),
        Case(
            "cli.sample.save_npz_directory",
            f"d = tempfile.mkdtemp()\ncode, err = cli({sample}, '--save-npz', d)\n"
            "assert code == 1 and '--save-npz' in err and not os.path.exists(d + '.npz'), err",
            None,
        ),
        # -- rdiff.noise.randn's shape: '12' was (1, 2), (2.7, 3) was (2, 3)
        Case(
            "noise.randn.shape_str",
            "rdiff.noise.randn('12', 0)",
            "TypeError",
            r"shape: expected an int or a sequence of ints",
        ),
        Case("noise.randn.shape_float", "rdiff.noise.randn((2.7, 3), 0)", "TypeError", r"shape"),
        Case(
            "noise.randn.shape_integer_kinds_run",
            "a = rdiff.noise.randn(torch.Size([2, 3]), 0)\n"
            "b = rdiff.noise.randn((np.int64(2), torch.tensor(3)), 0)\n"
            "assert a.shape == (2, 3) and np.array_equal(a, b)",
            None,
        ),
        # -- metrics
        Case(
            "metrics.upsample.size_0",
            "rdiff.metrics.upsample_digits(np.zeros((2, 8, 8)), 0)",
            "ValueError",
            r"size",
        ),
        Case(
            "metrics.upsample.size_negative",
            "rdiff.metrics.upsample_digits(np.zeros((2, 8, 8)), -3)",
            "ValueError",
            r"size",
        ),
        Case(
            "metrics.upsample.one_dim",
            "rdiff.metrics.upsample_digits(np.zeros(64), 16)",
            "ValueError",
            r"\bx\b.*shape",
        ),
        Case(
            "metrics.frechet.complex_mu",
            "rdiff.metrics.frechet_distance(np.array([1j, 0]), np.eye(2), np.zeros(2), np.eye(2))",
            "TypeError",
            r"mu1.*complex",
        ),
        # -- the test mixture at finite x whose squared distances overflow: NaN before
        Case(
            "testing.gm.eps_huge_x",
            "rdiff.testing.GaussianMixture([[0.0], [1.0]], [1.0, 0.5])"
            ".eps_at(np.array([[1e200]]), 1.0, 0.5)",
            "ValueError",
            r"\bx\b.*too large",
        ),
        Case(
            "testing.gm.log_prob_huge_x",
            "rdiff.testing.GaussianMixture([[0.0], [1.0]], [1.0, 0.5])"
            ".log_prob(np.array([[1e200]]))",
            "ValueError",
            r"\bx\b.*too large",
        ),
    ]


def all_cases() -> list[Case]:
    cases = (
        _scheduler_cases()
        + _schedule_cases()
        + _huge_cases()
        + _sample_cases()
        + _analytic_cases()
        + _unet_cases()
        + _cond_unet_cases()
        + _k_cases()
        + _core_cases()
        + _misc_cases()
        + _config_and_misc_cases()
    )
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return cases


CASES = all_cases()

# The feature test module that runs each case in process (by id prefix); tests/test_bad_input.py
# runs every case again in subprocesses and checks that each has exactly one owner.
OWNERS: dict[str, tuple[str, ...]] = {
    "test_deis": ("rdiff.deis.", "rdd.deis."),
    "test_dpm_multistep": (
        "rdiff.multistep.",
        "rdd.multistep.",
        "core.multistep.",
        "huge.multistep.",
    ),
    "test_dpm_singlestep": ("rdiff.singlestep.", "rdd.singlestep.", "huge.singlestep."),
    "test_unipc": ("rdiff.unipc.", "rdd.unipc."),
    "test_dpm_solver_v3": ("rdiff.v3.", "rdd.v3."),
    "test_euler": (
        "rdiff.euler.",
        "rdd.euler.",
        "rdiff.euler_a.",
        "rdd.euler_a.",
        "rdiff.heun.",
        "rdd.heun.",
        "rdiff.kdpm2.",
        "rdd.kdpm2.",
        "rdiff.kdpm2_a.",
        "rdd.kdpm2_a.",
        "rdiff.lms.",
        "rdd.lms.",
    ),
    "test_flow_match": ("rdiff.flow.", "rdd.flow."),
    "test_flow_match_heun": ("rdiff.flow_heun.", "rdd.flow_heun."),
    "test_lcm": ("rdiff.lcm.", "rdd.lcm."),
    "test_tcd": ("rdiff.tcd.", "rdd.tcd."),
    "test_ddim_ddpm": (
        "rdiff.ddim.",
        "rdd.ddim.",
        "rdiff.ddpm.",
        "rdd.ddpm.",
        "core.ddim.",
        "huge.ddim.",
    ),
    "test_analytic": (
        "rdiff.analytic.",
        "rdd.analytic.",
        "core.analytic.",
        "core.gamma_batch_sums.",
        "gamma.",
        "estimate_gamma.",
        "optimal_trajectory.",
    ),
    "test_schedule": ("schedule.", "huge.schedule."),
    "test_sample": ("sample.", "model_wrapper.", "huge.sample."),
    "test_k": ("k.", "huge.k."),
    "test_unet": ("unet.", "core.unet."),
    "test_cond_unet": ("cond_unet.",),
    "test_lincomb": ("core.lincomb.",),
    "test_testing": ("testing.",),
    "test_digits": ("cli.", "metrics."),
    "test_ems": ("ems.",),
    "test_noise": ("noise.",),
    "test_cuda": ("backends.",),
}


def owner(case: Case) -> list[str]:
    """The test modules whose prefixes match the case's id."""
    return [m for m, prefixes in OWNERS.items() if case.id.startswith(prefixes)]


def cases_for(module: str) -> list[Case]:
    """The cases a feature test module runs (``module``: its name, e.g. ``__name__``)."""
    name = module.rsplit(".", 1)[-1]
    return [c for c in CASES if name in owner(c)]


def bad_input_test(module: str):
    """A test function running ``cases_for(module)`` in process, one test per case; the
    prelude namespace comes from the session fixture ``bad_input_ns`` (tests/conftest.py)."""
    import pytest

    cases = cases_for(module)

    @pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])
    def test_bad_input(case, bad_input_ns):
        if ".cuda" in case.id and bad_input_ns["rdiff"].backends()["cuda"]["available"]:
            pytest.skip("checks the error raised where CUDA is unavailable")
        err = check(case, bad_input_ns)
        assert err is None, f"{case.id}: {err}"

    return test_bad_input


def prelude_namespace() -> dict:
    ns: dict = {"__name__": "bad_input_prelude"}
    exec(compile(PRELUDE, "<prelude>", "exec"), ns)
    return ns


def check(case: Case, ns: dict) -> str | None:
    """Runs one case in a copy of ns; None when it behaved, else what went wrong."""
    env = dict(ns)
    try:
        exec(compile(case.code, f"<case {case.id}>", "exec"), env)
    except BaseException as e:
        if case.exc is None:
            return f"raised {type(e).__module__}.{type(e).__name__}: {e}\n" + "".join(
                traceback.format_exception(e)[-4:]
            )
        expected = eval(case.exc, env)
        if not isinstance(e, expected) or type(e).__name__ == "PanicException":
            return f"raised {type(e).__module__}.{type(e).__name__}: {e}, expected {case.exc}"
        if not re.search(case.match, str(e)):
            return f"message {str(e)!r} does not match {case.match!r}"
        return None
    if case.exc is not None:
        return f"did not raise (expected {case.exc} matching {case.match!r})"
    return None


def main(argv: list[str]) -> int:
    """``python bad_input_cases.py BATCH NBATCHES [SKIP]``: runs the batch's cases from the
    SKIP-th on, printing a line before and after each (flushed), so that the caller can tell
    which case killed the interpreter and restart after it."""
    batch, nbatches = int(argv[0]), int(argv[1])
    skip = int(argv[2]) if len(argv) > 2 else 0
    ns = prelude_namespace()
    for case in CASES[batch::nbatches][skip:]:
        print(f"START {case.id}", flush=True)
        err = check(case, ns)
        if err is None:
            print(f"PASS {case.id}", flush=True)
        else:
            print(f"FAIL {case.id} {err!r}", flush=True)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
