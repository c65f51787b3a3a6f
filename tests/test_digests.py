"""The numbers of a tiny run of every mode, stored: a refactor must not change a single one.

tests/data/digests.pt holds, for each mode, the generator's weights, the fixed noise and amplitudes,
seeded samples and the reconstruction (and the mode's own output: a harmonized image after a short
fine-tune, animation frames) of a tiny CPU training with a fixed seed. On the machine kind that wrote
them (same torch, same CPU capability, same thread count) they must be bit-identical; elsewhere the
float summation order of the CPU kernels may differ, so they must agree to 1e-4.

Regenerate only for an intended change of the numbers: CONSINGAN_WRITE_DIGESTS=1 pytest tests/test_digests.py
"""
import os
from pathlib import Path

import pytest
import torch

import consingan
from consingan.tasks.animate import Walk

DATA = Path(__file__).parent / "data" / "digests.pt"
MODES = ("generation", "retarget", "harmonization", "editing", "animation")
SETTINGS = dict(train_stages=3, niter=4, nfc=4, min_size=12, max_size=40, manualSeed=11)
THREADS = 2  # the torch threads the stored numbers were trained with (whatever the thread rule would pick)


def machine() -> dict:
    return {"torch": str(torch.__version__), "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


def image(h=30, w=45, phase=0.0):
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([torch.sin(3 * x + phase), torch.cos(4 * y), x * y]).unsqueeze(0).clamp(-1, 1)


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
    return out


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    if os.environ.get("CONSINGAN_WRITE_DIGESTS"):
        DATA.parent.mkdir(exist_ok=True)
        tmp = tmp_path_factory.mktemp("write")
        torch.save({"machine": machine(), "runs": {mode: run(mode, tmp) for mode in MODES}}, DATA)
    return torch.load(DATA, weights_only=True)


@pytest.mark.parametrize("mode", MODES)
def test_a_tiny_run_gives_the_stored_numbers(stored, mode, tmp_path):
    exact = stored["machine"] == machine()
    got, want = run(mode, tmp_path), stored["runs"][mode]
    assert sorted(got) == sorted(want)
    for key in want:
        if exact:
            assert torch.equal(got[key], want[key]), f"{mode}: {key} differs"
        else:
            torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-4, msg=f"{mode}: {key}")
