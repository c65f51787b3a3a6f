import copy
import math
import warnings

import pytest
import torch

import consingan
import torch.nn.functional as F

from consingan.config import make_config
from consingan.core.networks import Conv2d, Discriminator, Generator, set_fast_kernels
from consingan.core.step import StageState, plain_step, train_step
from consingan.core.engine import Engine, EngineOptions, g_param_groups, make_optimizers


def grown(config, n):
    G = Generator(config)
    for _ in range(n - 1):
        G.grow()
    return G


def ids(module):
    return {id(p) for p in module.parameters()}


@pytest.mark.parametrize("stage", [0, 1, 2, 3, 4])
def test_trained_parameters_and_learning_rates(stage):
    c = make_config("generation", nfc=4, train_stages=5, lr_g=1e-3, lr_scale=0.1, train_depth=3)
    G = grown(c, stage + 1)
    groups = g_param_groups(G, c, stage)
    lr_of = {}
    for g in groups:
        for p in g["params"]:
            lr_of[id(p)] = g["lr"]
    # the newest three stages: lr_g, lr_g*0.1, lr_g*0.01 from the top down
    for dist in range(min(3, stage + 1)):
        block = G.body[stage - dist]
        assert all(lr_of[i] == pytest.approx(1e-3 * 0.1 ** dist) for i in ids(block))
        assert all(p.requires_grad for p in block.parameters())
    # older stages are frozen and not in the optimizer
    for k in range(0, stage - 2):
        assert not ids(G.body[k]) & set(lr_of)
        assert not any(p.requires_grad for p in G.body[k].parameters())
    # head while stage < train_depth, with lr_g * lr_scale**stage
    if stage < 3:
        assert all(lr_of[i] == pytest.approx(1e-3 * 0.1 ** stage) for i in ids(G.head))
    else:
        assert not ids(G.head) & set(lr_of)
        assert not any(p.requires_grad for p in G.head.parameters())
    # tail always with lr_g
    assert all(lr_of[i] == pytest.approx(1e-3) for i in ids(G.tail))


def test_scheduler_decays_at_eighty_percent():
    c = make_config("generation", nfc=4, niter=10)
    G = grown(c, 1)
    opt_d, opt_g, sd, sg = make_optimizers(G, Discriminator(c), c, 0)
    lrs = []
    for _ in range(10):
        lrs.append(opt_d.param_groups[0]["lr"])
        opt_d.step(), opt_g.step(), sd.step(), sg.step()
    assert lrs[7] == pytest.approx(5e-4) and lrs[8] == pytest.approx(5e-5)


@pytest.mark.parametrize("niter, first_decayed", [(7, 6), (1001, 801), (13, 11), (1000, 800)])
def test_fractional_milestone_decays_at_the_next_iteration(niter, first_decayed):
    """0.8*niter fractional (7 -> 5.6): the paper's torch decayed at the first iteration past it, ceil(5.6) = 6
    scheduler steps; current torch would never decay on the float. Both optimizers follow."""
    c = make_config("generation", nfc=4, niter=niter)
    opt_d, opt_g, sd, sg = make_optimizers(grown(c, 1), Discriminator(c), c, 0)
    decayed_at = None
    for steps in range(1, niter + 1):
        opt_d.step(), opt_g.step(), sd.step(), sg.step()
        if decayed_at is None and opt_d.param_groups[0]["lr"] < 5e-4 * 0.5:
            decayed_at = steps
            assert opt_g.param_groups[-1]["lr"] == pytest.approx(5e-5)
    assert decayed_at == first_decayed == math.ceil(0.8 * niter)


def test_prelu_starts_at_a_quarter_whatever_lrelu_alpha():
    from consingan.core.networks import Generator

    c = make_config("generation", nfc=4, activation="prelu", lrelu_alpha=0.3)
    slopes = [m.weight.item() for m in Generator(c).modules() if isinstance(m, torch.nn.PReLU)]
    slopes += [m.weight.item() for m in Discriminator(c).modules() if isinstance(m, torch.nn.PReLU)]
    assert slopes and all(s == 0.25 for s in slopes)


def _iterations_per_stage(c, tmp_path) -> dict[int, int]:
    """Train ``c`` on a small random image; the last iteration logged for each stage."""
    import json

    consingan.train(torch.rand(1, 3, 20, 30) * 2 - 1, c, out_dir=tmp_path, device="cpu")
    last = {}
    for line in (tmp_path / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "iter" in r:  # not a stage_end line
            last[r["stage"]] = r["iter"]
    return last


def test_first_stages_train_niter_low_iterations(tmp_path):
    """--niter_low: the stages below the top train_depth run that many iterations, with their own decay."""
    c = make_config("generation", nfc=4, niter=3, niter_low=5, train_stages=3, train_depth=2, min_size=12,
                    max_size=30, manualSeed=1)
    assert [c.stage_niter(k) for k in range(3)] == [5, 3, 3]
    assert _iterations_per_stage(c, tmp_path) == {0: 5, 1: 3, 2: 3}
    G = grown(c, 0)
    opt_d, _, sd, _ = make_optimizers(G, Discriminator(c), c, 0)
    assert sd.milestones == {4.0: 1}  # 0.8 * 5


def test_Dsteps_stages_sets_each_stages_discriminator_updates(tmp_path):
    """--Dsteps_stages: stage k's discriminator takes that many Adam steps per iteration (its optimizer
    is the stage's own); the user's --Dsteps wins over a preset's per-stage values; JSON round trip."""
    import json

    from consingan.config import Config
    from consingan.errors import UserError

    c = make_config("generation", nfc=4, niter=2, Dsteps_stages=(3, 2, 1), train_stages=3, min_size=12,
                    max_size=30, manualSeed=1)
    assert [c.stage_Dsteps(k) for k in range(3)] == [3, 2, 1] and c.for_stage(1).Dsteps == 2
    steps = {}

    class Counting(Engine):
        def _run_stage(self):
            super()._run_stage()
            opt_d = self.optim[0]
            steps[self.stage] = int(opt_d.state[opt_d.param_groups[0]["params"][0]]["step"])

    Counting.start(torch.rand(1, 3, 20, 30) * 2 - 1, c).run()
    assert steps == {0: 2 * 3, 1: 2 * 2, 2: 2 * 1}
    assert Config.from_dict(json.loads(c.to_json())) == c
    assert [c.replace(Dsteps=5).stage_Dsteps(k) for k in range(3)] == [3, 2, 1]  # the per-stage values win
    mine = make_config("generation", preset="fast", Dsteps=4, manualSeed=1)  # over a preset's: the user's
    assert mine.Dsteps_stages == () and [mine.stage_Dsteps(k) for k in range(6)] == [4] * 6
    with pytest.raises(UserError, match="--Dsteps_stages has 2 values for 6 stages"):
        make_config("generation", Dsteps_stages=(2, 2))
    with pytest.raises(UserError, match="at least 1"):
        make_config("generation", Dsteps_stages=(3, 3, 3, 0, 2, 2))


def test_niter_stages_sets_every_stage_and_survives_the_model_file(tmp_path):
    """--niter_stages: each stage runs its own count (over --niter and --niter_low), decays at 0.8 of it,
    and the counts come back from JSON as they went in."""
    import json

    from consingan.config import Config

    c = make_config("generation", nfc=4, niter=3, niter_low=5, niter_stages=(4, 2, 6), train_stages=3,
                    train_depth=2, min_size=12, max_size=30, manualSeed=1)
    assert _iterations_per_stage(c, tmp_path) == {0: 4, 1: 2, 2: 6}
    _, _, sd, _ = make_optimizers(grown(c, 2), Discriminator(c), c, 2)
    assert sd.milestones == {5: 1}  # 0.8 * 6 = 4.8, rounded up
    assert Config.from_dict(json.loads(c.to_json())) == c  # as config.json and model.pt store it


def test_noise_amplitude_follows_rmse_rule():
    torch.manual_seed(0)
    c = make_config("generation", nfc=4, train_stages=3, min_size=12, max_size=40, noise_amp=0.1)
    image = torch.rand(1, 3, 30, 40) * 2 - 1
    t = Engine.start(image, c, EngineOptions(channels_last=False))
    t.begin_stage(0)
    t.begin_stage(1)
    assert t.amps[0] == 1.0
    with torch.no_grad():
        rec = t.G(t.fixed, t.shapes[:2], [1.0, 0.0])
    expected = 0.1 * torch.sqrt(((rec - t.reals[1]) ** 2).mean()).item()
    assert t.amps[1] == pytest.approx(expected, rel=1e-6)
    assert t.amps[1] > 0


def _stage_state(mode, seed=0, device="cpu", channels_last=False, **kw):
    torch.manual_seed(seed)
    c = make_config(mode, nfc=8, train_stages=3, min_size=12, max_size=40, niter=10, manualSeed=seed, **kw)
    t = Engine.start(torch.rand(1, 3, 30, 40) * 2 - 1, c, EngineOptions(device=device, channels_last=channels_last))
    for k in range(3):
        t.begin_stage(k)
    opt_d, opt_g, _, _ = t.optim
    return StageState(c, t.G, t.D, opt_g, opt_d, t.reals[2], list(t.shapes), list(t.amps), t.fixed), t


def _clone_state(s):
    G, D = copy.deepcopy(s.G), copy.deepcopy(s.D)
    opt_d, opt_g, _, _ = make_optimizers(G, D, s.config, 2)
    return StageState(s.config, G, D, opt_g, opt_d, s.real, s.shapes, s.amps, s.fixed)


@pytest.fixture
def float64():
    # In float32, Adam divides each gradient by its own magnitude, so rounding-level differences in
    # gradients near zero grow to ~1e-4 relative after a step, for any two orders of summation
    # (batched or not, other thread counts). In float64 rounding stays far below the tolerance, and
    # any real difference in the computation still shows.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _assert_same_networks(a, b, rtol=1e-5, atol=1e-8):
    """G and D of stage states ``a`` and ``b`` hold the same parameters."""
    for net_a, net_b in ((a.G, b.G), (a.D, b.D)):
        for (n, p), q in zip(net_a.named_parameters(), net_b.parameters()):
            assert torch.allclose(p, q, rtol=rtol, atol=atol), n


def _max_rel_diff(a, b):
    return max(((p - q).abs().max() / p.abs().max().clamp_min(1e-12)).item()
               for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("mode", ["generation", "retarget", "harmonization", "editing"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_train_step_equals_plain_computation(mode, channels_last, float64):
    """Iterations of the project's step and of the straightforward one from the same state and seeds."""
    _check_step_equals_plain(mode, channels_last)


def test_train_step_equals_plain_computation_with_two_d_steps(float64):
    """Fewer discriminator updates per iteration (--Dsteps 2, the fast preset's): still the same numbers."""
    _check_step_equals_plain("generation", True, Dsteps=2)


def _check_step_equals_plain(mode, channels_last, **settings):
    from consingan.core.noise import random_noise

    a, t = _stage_state(mode, **settings)
    b = _clone_state(a)
    set_fast_kernels(a.G, a.D, on=False)  # the straightforward computation: torch's kernels
    assert b.G.fast_upsample and all(m.summed_bias for m in b.D.modules() if isinstance(m, Conv2d))
    assert all(m.inplace for m in b.G.modules() if isinstance(m, torch.nn.LeakyReLU))
    before = copy.deepcopy(a.G)
    if channels_last:
        fmt = torch.channels_last
        b.G.to(memory_format=fmt)
        b.D.to(memory_format=fmt)
        b = StageState(b.config, b.G, b.D, b.opt_g, b.opt_d, b.real.contiguous(memory_format=fmt),
                       b.shapes, b.amps, [z.contiguous(memory_format=fmt) for z in b.fixed])
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        noise = random_noise(a.config, a.shapes, "cpu", gen)
        alphas = torch.rand(a.config.Dsteps, generator=gen)
        la = plain_step(a, noise, alphas)
        lb = train_step(b, noise, alphas)
        for name in la:
            assert torch.allclose(la[name], lb[name], rtol=1e-5, atol=1e-8), name
    _assert_same_networks(a, b)
    # the comparison is not vacuous: training moved the weights by far more than the tolerance
    assert _max_rel_diff(before.body[-1], a.G.body[-1]) > 1e-3


def test_lazy_penalty_weights_cover_every_update_once_on_average():
    from consingan.core.step import penalty_weight

    paper = make_config("generation", manualSeed=0)
    assert [penalty_weight(paper, i, j) for i in range(2) for j in range(3)] == [1] * 6
    lazy = make_config("generation", gp_every=2, manualSeed=0)
    assert [penalty_weight(lazy, i, j) for i in range(2) for j in range(3)] == [2, 0, 2, 0, 2, 0]
    lazy3 = make_config("generation", gp_every=3, manualSeed=0)
    weights = [penalty_weight(lazy3, i, j) for i in range(10) for j in range(3)]
    assert weights[:3] == [3, 0, 0] and sum(weights) == len(weights)


def test_lazy_penalty_step_equals_plain_computation_and_changes_the_numbers(float64):
    """With --gp_every 2 the fast step still equals the straightforward one; both differ from the paper's."""
    from consingan.core.noise import random_noise

    a, _ = _stage_state("generation", gp_every=2)
    b, exact = _clone_state(a), _clone_state(a)
    exact.config = a.config.replace(gp_every=1)
    set_fast_kernels(a.G, a.D, on=False)
    gen = torch.Generator().manual_seed(1)
    for i in range(2):
        noise = random_noise(a.config, a.shapes, "cpu", gen)
        alphas = torch.rand(3, generator=gen)
        plain_step(a, noise, alphas, i)
        train_step(b, noise, alphas, i)
        plain_step(exact, noise, alphas, i)
    _assert_same_networks(a, b)
    assert _max_rel_diff(exact.D, a.D) > 1e-4


@pytest.mark.parametrize("activation", ["lrelu", "elu"])
def test_discriminator_input_gradient_equals_autograd(activation, float64):
    """The penalty's input gradient and its weight gradients against autograd through torch's own
    convolutions: the explicit chain (leaky ReLU), and the double backward through networks.Conv2d's
    backward (other activations)."""
    torch.manual_seed(0)
    c = make_config("generation", nfc=8, activation=activation, lrelu_alpha=0.2)
    D1 = Discriminator(c)
    D2 = copy.deepcopy(D1)
    set_fast_kernels(D1, on=False)  # torch's own convolution backward and its double backward
    x = torch.randn(2, 3, 24, 30)
    xr = x.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(D1(xr).sum(), xr, create_graph=True)
    g2 = D2.input_gradient(x)
    assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-12)
    (g1 ** 2).sum().backward()
    (g2 ** 2).sum().backward()
    for (n, p), q in zip(D1.named_parameters(), D2.parameters()):
        a = p.grad if p.grad is not None else torch.zeros_like(p)
        b = q.grad if q.grad is not None else torch.zeros_like(q)
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), n
    assert D1.body[0][0].weight.grad.abs().max() > 0


def test_step_changes_weights():
    s, _ = _stage_state("generation", train_depth=2)
    before = [p.clone() for p in s.G.body[-1].parameters()] + [s.D.tail.weight.clone()]
    frozen = {name: p.clone() for name, p in s.G.named_parameters() if not p.requires_grad}
    assert frozen and any(name.startswith("body.0.") for name in frozen)  # stages below train_depth: frozen
    from consingan.core.noise import random_noise

    train_step(s, random_noise(s.config, s.shapes, "cpu"), torch.rand(3))
    after = list(s.G.body[-1].parameters()) + [s.D.tail.weight]
    assert all(not torch.equal(x, y) for x, y in zip(before, after))
    now = dict(s.G.named_parameters())
    assert all(torch.equal(now[name], p) for name, p in frozen.items())  # ... and not changed by the step


@pytest.mark.parametrize("mode", ["generation", "harmonization"])  # harmonization: batch norm, lrelu 0.3
def test_bf16_step_follows_the_float32_step(mode):
    """--precision bf16 changes the numbers but not the direction: from the same state and noise, its
    updates of G and D point where the float32 step's do, and the weights stay float32."""
    from consingan.core.noise import random_noise

    a, _ = _stage_state(mode)
    b, _ = _stage_state(mode, precision="bf16")
    start = {net: torch.cat([p.detach().flatten() for p in getattr(a, net).parameters()]) for net in "GD"}
    assert all(torch.equal(start[net], torch.cat([p.flatten() for p in getattr(b, net).parameters()])) for net in "GD")
    gen = torch.Generator().manual_seed(1)
    noise = random_noise(a.config, a.shapes, "cpu", gen)
    alphas = torch.rand(3, generator=gen)
    losses_a, losses_b = train_step(a, noise, alphas), train_step(b, noise, alphas)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses_b.values())
    for net in "GD":
        params_b = list(getattr(b, net).parameters())
        assert all(p.dtype == torch.float32 for p in params_b)
        da = torch.cat([p.detach().flatten() for p in getattr(a, net).parameters()]) - start[net]
        db = torch.cat([p.detach().flatten() for p in params_b]) - start[net]
        assert not torch.equal(da, db)  # bfloat16 did run
        assert torch.nn.functional.cosine_similarity(da, db, dim=0) > 0.9, net


def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch):
    import importlib

    from consingan.errors import ConSinGANWarning

    train = importlib.import_module("consingan.core.engine")  # the module (the package exports a function of that name)

    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    with pytest.warns(ConSinGANWarning, match="no bfloat16 instructions"):
        _stage_state("generation", precision="bf16")
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConSinGANWarning)
        _stage_state("generation", precision="bf16")


def test_precision_auto_is_bf16_exactly_where_the_device_has_it(monkeypatch):
    """--precision auto (the fast preset's): bf16 on a CPU with bfloat16 instructions, fp32 on one without;
    the trainer, its networks and so the model file get the concrete value; explicit values stay."""
    import importlib

    from consingan.core.runtime import resolve_precision

    runtime = importlib.import_module("consingan.core.runtime")
    cpu = torch.device("cpu")
    for has, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda has=has: has)
        assert resolve_precision(make_config("generation", precision="auto"), cpu).precision == expected
        assert resolve_precision(make_config("generation", precision="fp32"), cpu).precision == "fp32"
        assert resolve_precision(make_config("generation", precision="bf16"), cpu).precision == "bf16"
        _, t = _stage_state("generation", precision="auto")
        assert t.config.precision == t.G.config.precision == t.D.config.precision == expected


def test_fine_tuning_trains_the_top_stages_normal_groups(tmp_path, monkeypatch):
    """METHOD 4: fine-tuning's optimizer holds the top stage's normal groups (the top train_depth stages
    at lr_g, lr_g*lr_scale, lr_g*lr_scale^2, the head when top < train_depth, the tail), and runs 2000
    iterations unless told otherwise, whatever the model was trained with."""
    from consingan import api
    from consingan.tasks.harmonize import fine_tune_input

    c = make_config("harmonization", nfc=4, niter=1, train_stages=3, min_size=12, max_size=24, manualSeed=3,
                    lr_g=1e-3)
    real = torch.rand(1, 3, 24, 24) * 2 - 1
    model = api.train(real, c, device="cpu", out_dir=tmp_path / "m")
    trainer = Engine.fine_tune(model, fine_tune_input(real, model.config))
    lr_of = {id(p): g["lr"] for g in trainer.optim[1].param_groups for p in g["params"]}
    G = trainer.G
    expected = {**{i: 1e-3 * 0.01 for i in ids(G.body[0])}, **{i: 1e-3 * 0.1 for i in ids(G.body[1])},
                **{i: 1e-3 for i in ids(G.body[2])}, **{i: 1e-3 * 0.1 ** 2 for i in ids(G.head)},
                **{i: 1e-3 for i in ids(G.tail)}}
    assert lr_of.keys() == expected.keys()
    assert all(lr_of[i] == pytest.approx(expected[i]) for i in expected)

    seen = {}
    monkeypatch.setattr(api, "_run", lambda make, *a, **k: seen.setdefault("niter", make([]).config.stage_niter(2)))
    api.fine_tune(tmp_path / "m", real, out_dir=tmp_path / "ft", device="cpu")
    assert seen["niter"] == 2000
    seen.clear()
    api.fine_tune(tmp_path / "m", real, niter=7, out_dir=tmp_path / "ft7", device="cpu")
    assert seen["niter"] == 7


@pytest.mark.slow
def test_losses_are_logged_at_least_twenty_times_per_stage(tmp_path):
    from consingan.core.engine import log_interval

    assert [log_interval(n) for n in (100, 2000, 10000, 7)] == [5, 100, 250, 1]
    c = make_config("generation", nfc=4, niter=40, train_stages=2, min_size=12, max_size=24, manualSeed=1)
    consingan.train(torch.rand(1, 3, 20, 30) * 2 - 1, c, out_dir=tmp_path, device="cpu")
    import json

    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    for stage in (0, 1):
        iters = [r["iter"] for r in rows if r["stage"] == stage and "iter" in r]
        assert iters == [1, *range(2, 41, 2)], iters
