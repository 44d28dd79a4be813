"""rdiff's schedulers inside torch.compile (schedulers/_compile.py): a denoising loop of
``scale_model_input``, a torch model and ``step`` compiles with ``fullgraph=True`` (no graph
break at the PyO3 calls) and gives eager mode's samples."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import rdiff.diffusers as rdd


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(8, 4, 3, padding=1),
    ).eval()


def loop(s, x, model):
    for t in s.timesteps:
        xin = s.scale_model_input(x, t)
        x = s.step(model(xin), t, x).prev_sample
    return x


def _eager_and_compiled(s, model, backend, steps=20, eager_model=None):
    x = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(1))
    x = x * float(s.init_noise_sigma)
    with torch.no_grad():
        s.set_timesteps(steps)
        torch.manual_seed(5)  # (LCM draws its noise from the global generator)
        want = loop(s, x, eager_model or model)
        s.set_timesteps(steps)
        torch._dynamo.reset()
        compiled = torch.compile(loop, fullgraph=True, backend=backend)
        torch.manual_seed(5)
        got = compiled(s, x, model)
    return want, got


CLASSES = [
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("EulerAncestralDiscreteScheduler", {}),
    ("HeunDiscreteScheduler", {}),
    ("KDPM2DiscreteScheduler", {}),
    ("LMSDiscreteScheduler", {}),
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverSinglestepScheduler", {}),
    ("DEISMultistepScheduler", {}),
    ("UniPCMultistepScheduler", {}),
    ("DDIMScheduler", {}),
    ("DDPMScheduler", {}),
    ("LCMScheduler", {}),
    ("TCDScheduler", {}),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}),
    ("FlowMatchHeunDiscreteScheduler", {"shift": 3.0}),
]


@pytest.mark.parametrize(("name", "kw"), CLASSES)
def test_a_compiled_loop_is_one_graph_and_equals_eager(name, kw):
    """fullgraph=True fails on any graph break; aot_eager runs the traced graph with eager
    kernels, so the samples are eager mode's bit for bit."""
    steps = 4 if name in ("LCMScheduler", "TCDScheduler") else 20
    want, got = _eager_and_compiled(getattr(rdd, name)(**kw), _net(), "aot_eager", steps)
    assert torch.isfinite(want).all()
    assert torch.equal(got, want)


def test_inductor_compiles_the_loop():
    """With inductor the model's kernels are its own, so the reference loop runs the same
    compiled model eagerly: the scheduler's steps must then give the same samples."""
    net = _net()
    with torch.no_grad():
        eager_model = torch.compile(net)
        want, got = _eager_and_compiled(
            rdd.DPMSolverMultistepScheduler(), net, "inductor", eager_model=eager_model
        )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_small_unet_loop_compiles():
    """A 20-step loop with diffusers' UNet2DModel (attention blocks included)."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=12,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4,
    ).eval()

    def unet_loop(s, x):
        for t in s.timesteps:
            x = s.step(unet(s.scale_model_input(x, t), t).sample, t, x).prev_sample
        return x

    s = rdd.UniPCMultistepScheduler()
    x = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        s.set_timesteps(20)
        want = unet_loop(s, x)
        s.set_timesteps(20)
        torch._dynamo.reset()
        got = torch.compile(unet_loop, fullgraph=True, backend="aot_eager")(s, x)
    # (aot_eager decomposes the UNet's ops, which rounds differently from eager's)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_a_compiled_whole_loop_leaves_no_history_alive(name):
    """CUDA graphs (reduce-overhead) let nothing made in the region outlive it but its
    outputs: after the last step the history the operator calls left is dropped."""
    s = getattr(rdd, name)()
    want, got = _eager_and_compiled(s, _net(), "eager", steps=6)
    assert torch.equal(want, got)
    assert all(m is None for m in s.model_outputs)
    assert not any(isinstance(v, torch.Tensor) and v.shape == got.shape for v in vars(s).values())
    s.set_timesteps(6)  # a new loop runs as before
    assert torch.equal(loop(s, got, _net()), loop(_fresh(name, 6), got, _net()))


@pytest.mark.parametrize(("name", "kw"), CLASSES)
def test_loops_after_the_dropped_history_run_as_before(name, kw):
    """Whatever a class keeps between steps, dropping what the operator left after the last
    step does not change the next loop, eager or compiled."""
    steps = 4 if name in ("LCMScheduler", "TCDScheduler") else 8
    s = getattr(rdd, name)(**kw)
    first = _eager_and_compiled(s, _net(), "eager", steps)
    second = _eager_and_compiled(s, _net(), "eager", steps)
    for a in (*first, *second[1:]):
        assert torch.equal(a, second[0])


def _fresh(name, steps):
    s = getattr(rdd, name)()
    s.set_timesteps(steps)
    return s


def _with_generator(s, x, g, net):
    for t in s.timesteps:
        x = s.step(net(s.scale_model_input(x, t)), t, x, generator=g).prev_sample
    return x


@pytest.mark.parametrize(
    "name, kw",
    [
        ("EulerAncestralDiscreteScheduler", {}),
        ("KDPM2AncestralDiscreteScheduler", {}),
        ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
        ("DDPMScheduler", {}),
    ],
)
def test_a_generator_inside_the_compiled_loop_draws_eager_modes_noise(name, kw):
    s = getattr(rdd, name)(**kw)
    net = _net()
    x = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        s.set_timesteps(8)
        want = _with_generator(s, x, torch.Generator().manual_seed(3), net)
        torch._dynamo.reset()
        compiled = torch.compile(_with_generator, fullgraph=True, backend="aot_eager")
        s.set_timesteps(8)
        got = compiled(s, x, torch.Generator().manual_seed(3), net)
        assert torch.equal(got, want)
        # another generator is another graph's constant (Dynamo guards on its identity)
        s.set_timesteps(8)
        other = compiled(s, x, torch.Generator().manual_seed(4), net)
        s.set_timesteps(8)
        assert torch.equal(other, _with_generator(s, x, torch.Generator().manual_seed(4), net))
        assert not torch.equal(other, want)


def test_a_list_of_generators_inside_the_compiled_loop():
    s = rdd.EulerAncestralDiscreteScheduler()
    net = _net()
    x = torch.randn(2, 4, 12, 12, generator=torch.Generator().manual_seed(1))

    def gens():
        return [torch.Generator().manual_seed(k) for k in (7, 8)]

    with torch.no_grad():
        s.set_timesteps(6)
        want = _with_generator(s, x, gens(), net)
        torch._dynamo.reset()
        compiled = torch.compile(_with_generator, fullgraph=True, backend="aot_eager")
        s.set_timesteps(6)
        assert torch.equal(compiled(s, x, gens(), net), want)


def test_unsupported_arguments_and_a_scheduler_not_set_up():
    s = rdd.EulerAncestralDiscreteScheduler()
    s.set_timesteps(3)
    net = _net()

    def with_list(s, x, g):
        t = s.timesteps[0]
        return s.step(net(x), t, x, generator=[g, 3]).prev_sample

    torch._dynamo.reset()
    with pytest.raises(Exception, match="not supported"):
        compiled = torch.compile(with_list, fullgraph=True, backend="aot_eager")
        compiled(s, torch.zeros(1, 4, 4, 4), torch.Generator())
    fresh = rdd.DPMSolverMultistepScheduler()
    fresh.timesteps = torch.tensor([999, 500])

    def no_setup(s, x):
        return s.step(net(x), s.timesteps[0], x).prev_sample

    torch._dynamo.reset()
    with pytest.raises(Exception, match="set_timesteps"):
        torch.compile(no_setup, fullgraph=True, backend="aot_eager")(fresh, torch.zeros(1, 4, 4, 4))


def test_copies_get_their_own_handle():
    import copy

    s = rdd.EulerDiscreteScheduler()
    s.set_timesteps(5)
    c = copy.deepcopy(s)
    assert c._compile_handle == id(c) != s._compile_handle
