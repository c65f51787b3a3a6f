"""The GPU path: what training runs on CUDA computes what the straightforward loop computes.

Skipped without a CUDA GPU (CI has none); run on one with ``python -m pytest tests/test_cuda.py``.
"""
import copy
import signal

import pytest
import torch

from consingan.core.graphs import GraphedSteps, make_step
from consingan.core.networks import set_fast_kernels
from consingan.core.noise import random_noise
from consingan.core.step import StageState, plain_step, train_step

from conftest import run_cli
from test_robustness import start_training, wait_for
from test_training import _assert_same_networks, _clone_state, _max_rel_diff, _stage_state, float64  # noqa: F401

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _inputs(s: StageState, n: int):
    gen = torch.Generator(device=CUDA).manual_seed(1)
    fmt = torch.channels_last
    return [([z.contiguous(memory_format=fmt) for z in random_noise(s.config, s.shapes, CUDA, gen)],
             torch.rand(s.config.Dsteps, device=CUDA, generator=gen)) for _ in range(n)]


@pytest.mark.parametrize("mode", ["generation", "harmonization"])
def test_cuda_train_step_equals_plain_computation(mode, float64):
    a, _ = _stage_state(mode, device="cuda", channels_last=True)
    b = _clone_state(a)
    set_fast_kernels(a.G, a.D, on=False)
    before = copy.deepcopy(a.G)
    for noise, alphas in _inputs(a, 2):
        la, lb = plain_step(a, noise, alphas), train_step(b, noise, alphas)
        for name in la:
            assert torch.allclose(la[name], lb[name], rtol=1e-5, atol=1e-8), name
    _assert_same_networks(a, b)
    assert _max_rel_diff(before.body[-1], a.G.body[-1]) > 1e-3


@pytest.mark.parametrize("mode, gp_every", [("generation", 1), ("generation", 2), ("harmonization", 1)])
def test_graph_replays_equal_eager_iterations(mode, gp_every, float64):
    """Nine iterations with a learning-rate decay after the fourth: eager, and from CUDA graphs
    (recorded anew after the decay; with a lazy penalty, one recording per penalty pattern)."""
    a, _ = _stage_state(mode, device="cuda", channels_last=True, gp_every=gp_every)
    b = _clone_state(a)
    eager, graphed = make_step(a, CUDA, cuda_graphs=False), make_step(b, CUDA, cuda_graphs=True)
    assert isinstance(graphed, GraphedSteps) and not isinstance(eager, GraphedSteps)
    scheds = [torch.optim.lr_scheduler.MultiStepLR(o, milestones=[4], gamma=0.1)
              for o in (a.opt_d, a.opt_g, b.opt_d, b.opt_g)]
    before = copy.deepcopy(a.G)
    for i, (noise, alphas) in enumerate(_inputs(a, 9)):
        la, lb = eager(noise, alphas, i), graphed(noise, alphas, i)
        for name in la:
            assert torch.allclose(la[name], lb[name], rtol=1e-6, atol=1e-10), (i, name)
        for sched in scheds:
            sched.step()
    assert graphed.replays > 0 and graphed.graphs  # iterations really ran from graphs
    assert all(key[0] == graphed.settings(9)[0] for key in graphed.graphs)  # the pre-decay ones are gone
    _assert_same_networks(a, b, rtol=1e-6, atol=1e-10)
    assert _max_rel_diff(before.body[-1], a.G.body[-1]) > 1e-3


def test_a_gpu_checkpoint_resumes_on_the_cpu(tiny_image, tmp_path):
    """The optimizers of a GPU run are in their CUDA-graph form (step counts on the GPU) when a
    checkpoint is written; training goes on from it on the CPU."""
    out = tmp_path / "run"
    proc = start_training(tiny_image, out, "--device", "cuda")
    wait_for(out / "checkpoint.pt", proc, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists(), "the run finished before it was killed: the test proves nothing"
    record = torch.load(out / "checkpoint.pt", weights_only=True)
    assert any(g.get("capturable") for g in record["train"]["opt_d"]["param_groups"])
    run_cli("main_train.py", "--resume", out, "--device", "cpu")
    assert (out / "model.pt").exists() and not (out / "checkpoint.pt").exists()
