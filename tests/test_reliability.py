"""No lost or mixed work (issue 18): claimed output directories, a full disk, SIGTERM, NaN + Ctrl-C,
and outputs written as they are made (bounded memory), each file atomically."""
import errno
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence
from typer.testing import CliRunner

import consingan
from conftest import ROOT, TINY, TINY_FLAGS
from consingan import cli
from consingan.errors import UserError
from consingan.core.image import to_uint8
from consingan.storage.outputs import LOCK_FILE, NoSpace, claim_dir, clean_temp_files, writing

train_mod = importlib.import_module("consingan.core.engine")  # the module, not the consingan.train function
graphs_mod = importlib.import_module("consingan.core.graphs")


def no_junk(folder):
    """Neither a lock file nor a temporary file left anywhere under ``folder``."""
    left = [p for p in Path(folder).rglob("*") if p.name == LOCK_FILE or ".tmp" in p.name]
    assert not left, left


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 3, 30, 45), dtype=np.float32)) * 2 - 1
    return consingan.train(image, device="cpu", **{**TINY, "niter": 10})


# --- 1. claimed output directories ----------------------------------------------------------------

def test_claim_is_atomic_one_of_many_simultaneous_claims_wins(tmp_path):
    folder, n = tmp_path / "out", 8
    barrier, results = threading.Barrier(n), []

    def claim():
        barrier.wait()
        try:
            results.append(claim_dir(folder))
        except UserError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claims = [r for r in results if not isinstance(r, str)]
    refused = [r for r in results if isinstance(r, str)]
    assert len(claims) == 1, results
    assert all(f"{folder} is in use by another run (pid {os.getpid()})" in r for r in refused), refused
    assert (folder / LOCK_FILE).read_text().strip() == str(os.getpid())
    claims[0].release()
    assert list(folder.iterdir()) == []  # the lock file goes with the claim
    claim_dir(folder).release()  # and the folder can be claimed again


def test_a_stale_lock_of_a_killed_run_does_not_block(tmp_path):
    (tmp_path / LOCK_FILE).write_text("999999\n")  # what a killed run leaves: the file, no lock held
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    claim = claim_dir(tmp_path, fresh=False)
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    claim.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    # a fresh claim of a folder with files is refused, and leaves no lock file behind
    with pytest.raises(UserError, match="already exists and is not empty"):
        claim_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_train_into_a_directory_in_use_is_refused(tiny_image, tmp_path):
    out = tmp_path / "run"
    with claim_dir(out):  # another training holds it
        result = CliRunner().invoke(cli.app, ["train", "--input_name", str(tiny_image), "--out_dir", str(out),
                                              *TINY_FLAGS])
        assert result.exit_code == 2, result.output
        assert f"error: {out} is in use by another run (pid {os.getpid()})" in result.output
        assert "Traceback" not in result.output
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing written by the second run
        with pytest.raises(UserError, match="in use by another run"):
            consingan.api.resume(out)  # nor resumed under the running one
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_generate_evaluate_compose_never_write_over_a_concurrent_run(model, tmp_path, tiny_image, monkeypatch):
    # generate: the samples folder is claimed
    with claim_dir(tmp_path / "ev" / "random_samples", "--out folder"):
        with pytest.raises(UserError, match=r"random_samples is in use by another run \(pid \d+\)"):
            consingan.write_samples(model, tmp_path / "ev", num_samples=2, seed=0)
    # evaluate: a metrics.json that appears while this run computes stays as it is
    metrics_mod = importlib.import_module("consingan.metrics")
    target = tmp_path / "metrics"
    real_evaluate = metrics_mod.evaluate

    def evaluate_while_another_run_writes(*a, **k):
        result = real_evaluate(*a, **k)
        target.mkdir(parents=True, exist_ok=True)
        (target / "metrics.json").write_text("the other run's\n")
        return result

    monkeypatch.setattr(metrics_mod, "evaluate", evaluate_while_another_run_writes)
    with pytest.raises(UserError, match="already exists"):
        consingan.api.write_metrics(model, target, num_samples=2, seed=0)
    assert (target / "metrics.json").read_text() == "the other run's\n"
    no_junk(target)
    # compose: the pair of the run that wrote first stays
    compose_mod = importlib.import_module("consingan.tasks.compose")
    out = tmp_path / "naive.png"
    real_compose = compose_mod.compose

    def compose_while_another_run_writes(*a, **k):
        naive, mask = real_compose(*a, **k)
        iio.imwrite(out, np.zeros_like(naive))
        return naive, mask

    monkeypatch.setattr(compose_mod, "compose", compose_while_another_run_writes)
    with pytest.raises(UserError, match="already exists"):
        compose_mod.write_composite(tiny_image, tiny_image, out, 0, 0, scale=0.5)
    assert not iio.imread(out).any() and not (tmp_path / "naive_mask.png").exists()
    no_junk(tmp_path)


# --- 2. a full disk -------------------------------------------------------------------------------

def disk_full_after(monkeypatch, good_saves, only=None):
    """torch.save writes some bytes and then fails with ENOSPC, after ``good_saves`` good ones
    (``only``: count only saves whose temporary file starts with that name)."""
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *a, **k):
        if only is None or Path(str(getattr(f, "name", ""))).name.startswith(only):
            calls["n"] += 1
            if calls["n"] > good_saves:
                f.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.slow
def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(tiny_image, tmp_path, monkeypatch):
    out = tmp_path / "run"
    disk_full_after(monkeypatch, good_saves=2)
    result = CliRunner().invoke(cli.app, ["train", "--input_name", str(tiny_image), "--out_dir", str(out),
                                          *TINY_FLAGS, "--niter", "10", "--checkpoint_every", "5"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: no space left on {errors[0][len('error: no space left on '):]}"]
    # saved: stage 1 (folder 0) iteration 5, the start of stage 2; failed: stage 2 iteration 5
    assert "; kept the checkpoint of stage 2 (folder 1), iteration 0" in errors[0]
    assert errors[0].endswith(f"free space and resume with: python main_train.py --resume {out}")
    record = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (record["train"]["stage"], record["train"]["stage_ready"]) == (1, False)  # the start of stage 1
    no_junk(out)  # neither the partial temporary file nor the lock
    monkeypatch.undo()
    consingan.api.resume(out, device="cpu")
    assert (out / "model.pt").exists() and not (out / "checkpoint.pt").exists()


@pytest.mark.slow
def test_disk_full_while_writing_model_pt_keeps_the_checkpoint(tiny_image, tmp_path, monkeypatch):
    out = tmp_path / "run"
    disk_full_after(monkeypatch, good_saves=0, only="model.pt")
    with pytest.raises(train_mod.TrainingStopped, match=r"no space left on .*; kept the last checkpoint") as stop:
        consingan.train(tiny_image, out_dir=out, device="cpu", checkpoint_every=5, **{**TINY, "niter": 10})
    assert f"resume with: python main_train.py --resume {out}" in str(stop.value)
    assert not (out / "model.pt").exists()
    torch.load(out / "checkpoint.pt", weights_only=True)  # whole, loadable
    no_junk(out)


def test_writing_is_atomic_and_a_full_disk_is_named(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):  # killed mid-write
        with writing(target) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    with pytest.raises(NoSpace, match=r"no space left on /\S* \(.* free, writing .*f.bin\)") as exc:
        with writing(target) as f:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert exc.value.device.is_dir() and os.path.ismount(exc.value.device)
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    # a temporary file that a killed write left is recognised; other files are not touched
    stale = [tmp_path / "model.pt.k1ll3d_0.tmp", tmp_path / "0" / "real.png.abcdefgh.tmp.png"]
    keep = [tmp_path / "notes.tmp", tmp_path / "x.tmp.txt"]
    for p in stale + keep:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"")
    assert sorted(clean_temp_files(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep)


# --- 3. SIGTERM ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_143_then_resume_finishes(tiny_image, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "main_train.py", "--input_name", str(tiny_image), "--out_dir", str(out),
                             *TINY_FLAGS, "--niter", "20", "--checkpoint_every", "2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t = time.time()
        while not (out / "checkpoint.pt").exists():  # progress: the first checkpoint
            assert proc.poll() is None, proc.communicate()
            assert time.time() - t < 60, "no checkpoint appeared"
            time.sleep(0.01)
        # another run cannot take the directory while this one runs (the command line's message for it:
        # test_train_into_a_directory_in_use_is_refused)
        with pytest.raises(UserError, match=rf"{out} is in use by another run \(pid {proc.pid}\)"):
            claim_dir(out, fresh=False)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "interrupted by SIGTERM at stage" in stderr
    assert f"python main_train.py --resume {out}" in stderr
    assert (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()
    record = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (record["train"]["stage"], record["train"]["iteration"]) != (2, 20)
    no_junk(out)
    # what a kill in the middle of a write leaves: removed when the resumed run finishes
    (out / "checkpoint.pt.k1ll3d00.tmp").write_bytes(b"")
    (out / "0" / "fake_iter_5.png.abcdefgh.tmp").write_bytes(b"")
    resumed = CliRunner().invoke(cli.app, ["train", "--resume", str(out), "--progress", "none"])
    assert resumed.exit_code == 0 and resumed.output.strip().splitlines()[-1] == f"Model saved to: {out}", resumed.output
    assert (out / "model.pt").exists() and not (out / "checkpoint.pt").exists()
    no_junk(out)


# --- 4. NaN + Ctrl-C -----------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_after_a_nan_loss_keeps_the_last_good_checkpoint(tiny_image, tmp_path, monkeypatch):
    real_step, calls = graphs_mod.train_step, {"n": 0}

    def step(state, noise, alphas, iteration=0):
        losses = real_step(state, noise, alphas, iteration)
        calls["n"] += 1
        if calls["n"] >= 7:  # the loss goes bad in iteration 7 ...
            losses = {k: v * float("nan") for k, v in losses.items()}
        if calls["n"] == 8:  # ... and the user presses Ctrl-C in iteration 8
            os.kill(os.getpid(), signal.SIGINT)
        return losses

    monkeypatch.setattr(graphs_mod, "train_step", step)
    out = tmp_path / "run"
    config = consingan.make_config(**{**TINY, "niter": 200})  # log points every 10 iterations: none at 7 or 8
    original = signal.getsignal(signal.SIGINT)
    with pytest.raises(train_mod.TrainingStopped, match=r"NaN or infinite at stage 1/3 \(folder 0\), by iteration 8/200") as stop:
        consingan.train(consingan.read_image(tiny_image), config, out_dir=out, checkpoint_every=5, device="cpu")
    assert signal.getsignal(signal.SIGINT) is original and calls["n"] == 8
    assert stop.value.exit_code == 1 and not stop.value.interrupted
    record = torch.load(out / "checkpoint.pt", weights_only=True)
    assert record["train"]["iteration"] == 5  # the checkpoint before the bad loss, not overwritten
    assert all(torch.isfinite(v).all() for v in record["generator"].values())


# --- 5. outputs written as they are made --------------------------------------------------------

@pytest.mark.slow
def test_samples_are_written_batch_by_batch(model, tmp_path, monkeypatch):
    out, n = tmp_path / "ev", 30
    folder = out / "random_samples"
    seen = []  # (batch size, sample files on disk) at each call of the generator
    real_forward = model.G.forward

    def forward(noise, *a, **k):
        seen.append((noise[0].shape[0], len(list(folder.glob("gen_sample_*.png"))) if folder.exists() else 0))
        return real_forward(noise, *a, **k)

    monkeypatch.setattr(model.G, "forward", forward)
    assert consingan.write_samples(model, out, num_samples=n, seed=3) == folder
    monkeypatch.undo()
    assert max(size for size, _ in seen) <= 8
    # each batch is on disk before the next one is computed
    sample_calls = seen[:4]
    assert [size for size, _ in sample_calls] == [8, 8, 8, 6]
    assert [files for _, files in sample_calls] == [0, 8, 16, 24]
    expected = model.sample(n, seed=3)  # the same pictures as all at once
    for i in range(n):
        assert np.array_equal(iio.imread(folder / f"gen_sample_{i}.png"), to_uint8(expected[i]))
    assert len(list(folder.iterdir())) == n
    no_junk(out)


@pytest.mark.slow
def test_animation_frames_are_streamed_to_the_file(model, tmp_path, monkeypatch):
    from consingan.tasks.animate import Walk, uint8_frames, write_animations

    walk = Walk(num_frames=40, fps=8)
    sizes = []  # size of the file being written at each call of the generator
    real_forward = model.G.forward

    def forward(noise, *a, **k):
        sizes.append(sum(p.stat().st_size for p in tmp_path.glob("*.tmp*")))
        return real_forward(noise, *a, **k)

    monkeypatch.setattr(model.G, "forward", forward)
    (path,) = write_animations(model, tmp_path, [walk], seed=0)
    monkeypatch.undo()
    assert len(sizes) == 5 and sizes[0] == 0 and all(b > a for a, b in zip(sizes[1:], sizes[2:]))
    with Image.open(path) as im:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
        assert im.info["duration"] == 120 and im.info["loop"] == 0
    expected = uint8_frames(model, walk, seed=0)
    assert len(frames) == 40
    # the palette of each frame is its own adaptive one, as Pillow's writer makes it: compare with that
    for frame, exp in zip(frames, expected):
        quantized = np.asarray(Image.fromarray(exp).convert("P", palette=Image.Palette.ADAPTIVE).convert("RGB"))
        assert np.array_equal(frame, quantized)
    no_junk(tmp_path)
