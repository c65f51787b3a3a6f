"""The numbers of a tiny run of every mode, stored: a refactor must not change a single one.

tests/data/digests.pt holds, for each mode, the generator's weights, the fixed noise and amplitudes,
seeded samples and the reconstruction (and the mode's own output: a harmonized image after a short
fine-tune, animation frames, an enlargement, paintings) of a tiny CPU training with a fixed seed, and
the machine that wrote them. On that machine (same CPU model, CPU capability, torch and thread
count) they must be bit-identical. Elsewhere the CPU kernels may sum in another order, so they must
agree to 1e-4; the biases of convolutions followed by batch norm are left out there: batch norm
removes them, so their gradient is rounding noise, which Adam turns into steps of the learning
rate's size (they do not change any output). The first five modes were stored before the CPU model
was recorded: they are compared with the tolerance on every machine.

Regenerate only for an intended change of the numbers: CONSINGAN_WRITE_DIGESTS=1 pytest tests/test_digests.py
(every mode), or add a mode without touching the others: CONSINGAN_WRITE_DIGESTS=superres,paint.
"""
import os
import platform
from pathlib import Path

import pytest
import torch

import consingan
from consingan.tasks.animate import Walk

DATA = Path(__file__).parent / "data" / "digests.pt"
MODES = ("generation", "retarget", "harmonization", "editing", "animation", "superres", "paint")
SETTINGS = dict(train_stages=3, niter=4, nfc=4, min_size=12, max_size=40, manualSeed=11)
THREADS = 2  # the torch threads the stored numbers were trained with (whatever the thread rule would pick)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return {"torch": str(torch.__version__), "cpu": torch.backends.cpu.get_cpu_capability(),
            "cpu_model": cpu_model(), "threads": torch.get_num_threads()}


def image(h=30, w=45, phase=0.0):
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([torch.sin(3 * x + phase), torch.cos(4 * y), x * y]).unsqueeze(0).clamp(-1, 1)


def painting(h=30, w=45):
    """Three flat colours in bands: a painting of the image's size."""
    out = torch.empty(1, 3, h, w)
    out[..., : h // 3, :] = torch.tensor([0.8, -0.2, -0.6]).view(1, 3, 1, 1)
    out[..., h // 3: 2 * h // 3, :] = torch.tensor([-0.5, 0.4, 0.1]).view(1, 3, 1, 1)
    out[..., 2 * h // 3:, :] = torch.tensor([0.1, 0.1, 0.9]).view(1, 3, 1, 1)
    return out


def run(mode: str, tmp: Path) -> dict[str, torch.Tensor]:
    fine_tunes = mode in ("harmonization", "editing")
    model = consingan.train(image(), train_mode=mode, device="cpu", out_dir=tmp / mode if fine_tunes else None,
                            threads=THREADS, **SETTINGS)
    out = {"generator": torch.cat([p.detach().flatten() for p in model.G.state_dict().values()]),
           "fixed": torch.cat([z.flatten() for z in model.fixed]),
           "amps": torch.tensor(model.amps, dtype=torch.float64),
           "samples": model.sample(2, seed=3),
           "reconstruction": model.reconstruct()}
    if mode == "retarget":
        out["wide"] = model.sample(1, scale_w=1.5, seed=4)
    if fine_tunes:
        naive = image(phase=0.7)
        out["harmonized"] = torch.cat(consingan.api.harmonize(model, naive, mask=naive[0, 0] > 0, seed=5))  # raw and blended
        tuned = consingan.api.fine_tune(tmp / mode, naive, niter=3, device="cpu", out_dir=tmp / f"{mode}_tuned",
                                      threads=THREADS)
        out["tuned"] = torch.cat(consingan.api.harmonize(tuned, naive, mask=naive[0, 0] > 0, seed=5))
    if mode == "animation":
        out["frames"] = model.animate(Walk(start_scale=1, alpha=0.1, beta=0.9, num_frames=3), seed=6)
    if mode == "superres":
        out["enlarged"] = model.super_resolve(2.0, seed=7)
    if mode == "paint":
        out["painted"] = model.paint(painting(), num_samples=2, seed=8)
    return out


def noise_only(G: torch.nn.Module) -> set[str]:
    """The generator's conv biases that batch norm removes again (a conv followed by its norm)."""
    names = set()
    for prefix, module in G.named_modules():
        children = list(module.named_children())
        for (name, conv), (_, norm) in zip(children, children[1:]):
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d) and conv.bias is not None:
                names.add(f"{prefix}.{name}.bias" if prefix else f"{name}.bias")
    return names


def tiny_generator(mode: str):
    from consingan.config import make_config
    from consingan.core.networks import Generator

    return Generator.of_stages(make_config(mode, **SETTINGS), SETTINGS["train_stages"])


def generator_parts(mode: str, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stored flat generator as {name: tensor} (the names and sizes of a model of the settings)."""
    state = tiny_generator(mode).state_dict()
    sizes = [t.numel() for t in state.values()]
    assert sum(sizes) == flat.numel(), f"{mode}: the stored generator has another size"
    return dict(zip(state, flat.split(sizes)))


def write(modes: list[str], tmp: Path) -> None:
    old = torch.load(DATA, weights_only=True) if DATA.exists() else {"runs": {}}
    runs = {mode: run(mode, tmp) for mode in modes}
    machines = {**old.get("machines", {}), **{mode: machine() for mode in modes}}
    DATA.parent.mkdir(exist_ok=True)
    torch.save({**old, "runs": {**old["runs"], **runs}, "machines": machines}, DATA)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    which = os.environ.get("CONSINGAN_WRITE_DIGESTS")
    if which:
        write(list(MODES) if which == "1" else which.split(","), tmp_path_factory.mktemp("write"))
    return torch.load(DATA, weights_only=True)


@pytest.mark.parametrize("mode", MODES)
def test_a_tiny_run_gives_the_stored_numbers(stored, mode, tmp_path):
    # the machine that wrote this mode's numbers (the first five: recorded without the CPU model)
    exact = stored.get("machines", {}).get(mode, stored["machine"]) == machine()
    got, want = run(mode, tmp_path), stored["runs"][mode]
    assert sorted(got) == sorted(want)
    for key in want:
        if exact:
            assert torch.equal(got[key], want[key]), f"{mode}: {key} differs"
        elif key == "generator":
            got_parts, want_parts = generator_parts(mode, got[key]), generator_parts(mode, want[key])
            for name in set(want_parts) - noise_only(tiny_generator(mode)):
                torch.testing.assert_close(got_parts[name], want_parts[name], atol=1e-4, rtol=1e-4,
                                           msg=f"{mode}: generator {name}")
        else:
            torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-4, msg=f"{mode}: {key}")


def test_the_tolerance_leaves_out_only_the_biases_batch_norm_removes():
    left_out = noise_only(tiny_generator("harmonization"))  # batch norm in G
    assert {"head.0.bias", "body.2.1.0.bias"} <= left_out and all(n.endswith(".0.bias") for n in left_out)
    assert "tail.0.bias" not in left_out  # no norm after it
    assert not noise_only(tiny_generator("generation"))
