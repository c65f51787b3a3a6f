"""Never lose a run, never load code, and clear messages for bad input (issue: resume/safe files/bad input)."""
import os
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import consingan
from conftest import ROOT, TINY_FLAGS, run_cli
from consingan.errors import UserError

RESUME_FLAGS = ["--train_stages", "3", "--niter", "60", "--nfc", "8", "--min_size", "12", "--max_size", "40",
                "--manualSeed", "3", "--device", "cpu", "--progress", "plain", "--checkpoint_every", "10"]


def weights(path):
    record = torch.load(path, weights_only=True)
    return record["generator"], record["discriminator"]


def assert_same_weights(a, b):
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def start_training(image, out, *extra):
    return subprocess.Popen([sys.executable, "main_train.py", "--input_name", str(image), "--out_dir", str(out),
                             *RESUME_FLAGS, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(path, proc, timeout=60.0):
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t < timeout, "no checkpoint appeared"
        time.sleep(0.005)


def test_sigkill_mid_stage_then_resume_gives_the_uninterrupted_weights(tiny_image, tmp_path):
    full = tmp_path / "full"
    run_cli("main_train.py", "--input_name", tiny_image, "--out_dir", full, *RESUME_FLAGS)
    killed = tmp_path / "killed"
    proc = start_training(tiny_image, killed)
    wait_for(killed / "checkpoint.pt", proc)
    first = (killed / "checkpoint.pt").stat().st_ino
    t = time.time()
    while (killed / "checkpoint.pt").stat().st_ino == first:  # run on past a later checkpoint (a new file) ...
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t < 60, "no second checkpoint appeared"
        time.sleep(0.005)  # polling, as wait_for: the test waits for an event, not for a time
    proc.send_signal(signal.SIGKILL)  # ... then kill it without warning
    proc.wait()
    assert not (killed / "model.pt").exists(), "the run finished before it was killed: the test proves nothing"
    record = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert (record["train"]["stage"], record["train"]["iteration"]) != (2, 60)
    proc = run_cli("main_train.py", "--resume", killed, "--checkpoint_every", "10")
    assert proc.stdout.strip().splitlines()[-1] == f"Model saved to: {killed}"
    assert not (killed / "checkpoint.pt").exists()
    assert_same_weights(weights(full / "model.pt"), weights(killed / "model.pt"))


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tiny_image, tmp_path):
    out = tmp_path / "run"
    proc = start_training(tiny_image, out)
    wait_for(out / "0" / "real.png", proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"--resume {out}" in stderr and "Traceback" not in stderr
    assert (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()
    run_cli("main_train.py", "--resume", out)
    assert (out / "model.pt").exists()


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_image, tmp_path, monkeypatch):
    import importlib

    train_mod = importlib.import_module("consingan.core.engine")  # the module, not the consingan.train function
    graphs_mod = importlib.import_module("consingan.core.graphs")  # where the trainer's step comes from

    real_step = graphs_mod.train_step
    calls = {"n": 0}

    def failing_step(state, noise, alphas, iteration=0):
        losses = real_step(state, noise, alphas, iteration)
        calls["n"] += 1
        if calls["n"] >= 7:  # the loss goes bad in iteration 7
            losses["loss_d"] = losses["loss_d"] * float("nan")
        return losses

    monkeypatch.setattr(graphs_mod, "train_step", failing_step)
    config = consingan.make_config(train_stages=3, niter=20, nfc=8, min_size=12, max_size=40, manualSeed=1)
    with pytest.raises(train_mod.TrainingStopped, match="NaN"):
        consingan.train(consingan.read_image(tiny_image), config, out_dir=tmp_path / "nan", checkpoint_every=3,
                        device="cpu")
    record = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert record["train"]["iteration"] == 6  # the last checkpoint before the bad loss
    assert all(torch.isfinite(v).all() for v in record["generator"].values())


def test_saturated_generator_stops_training_with_advice(tiny_image, tmp_path):
    """A generator whose every output pixel sits at tanh's limit gets no gradient and never recovers
    (a real failure on dark images such as hubble_deep_field): stop at the next log point and say what to do."""
    from consingan.core.engine import Engine, TrainingStopped

    class Saturating(Engine):
        def begin_stage(self, k):
            super().begin_stage(k)
            with torch.no_grad():
                self.G.tail[0].weight.zero_()
                self.G.tail[0].bias.fill_(-4.0)  # tanh(-4) = -0.99933: not exactly -1, but no way back

    config = consingan.make_config(train_stages=3, niter=300, nfc=8, min_size=12, max_size=40, manualSeed=1)
    with pytest.raises(TrainingStopped, match=r"saturated at stage 1/3 \(folder 0\), iteration 1/300.*--lr_g 1e-4") as stop:
        Saturating.start(consingan.read_image(tiny_image), config).run()
    assert stop.value.checkpoint is None  # nothing worth resuming
    # an ordinary run is not stopped by the check, nor is a training image that is itself all black
    Engine.start(consingan.read_image(tiny_image), config.replace(niter=2)).run()
    Saturating.start(-torch.ones(1, 3, 30, 45), config.replace(niter=2)).run()


def bad(*args):
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def train_args(image, out, *extra):
    return ("main_train.py", "--input_name", image, "--out_dir", out, *TINY_FLAGS, *extra)


def test_missing_input(tmp_path):
    assert "not found" in bad(*train_args(tmp_path / "none.png", tmp_path / "m"))


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    assert "cannot read" in bad(*train_args(path, tmp_path / "m"))


def test_truncated_image(tmp_path):
    data = (ROOT / "Images" / "Generation" / "rocket.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in bad(*train_args(path, tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_image_smaller_than_min_size(tmp_path):
    path = tmp_path / "small.png"
    iio.imwrite(path, np.zeros((10, 14, 3), np.uint8))
    assert "--min_size" in bad(*train_args(path, tmp_path / "m"))
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("extra, words", [
    (["--train_mode", "painting"], "--train_mode"),  # Config's rules (tests/test_validation.py has them all)
    (["--niter_stages", "5,x"], "not a comma-separated list of whole numbers"),  # the flag's own parsing
])
def test_bad_settings(tiny_image, tmp_path, extra, words):
    assert words in bad(*train_args(tiny_image, tmp_path / "m", *extra))
    assert not (tmp_path / "m").exists()


def test_model_dir_without_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "model" in bad("main_generate.py", "--model_dir", tmp_path / "empty")


def test_resume_refuses_training_flags_it_would_ignore(tmp_path):
    message = bad("main_train.py", "--resume", tmp_path / "run", "--niter", "5", "--preset", "fast")
    assert "--preset, --niter would be ignored" in message and "config.json" in message


def test_resume_without_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "checkpoint" in bad("main_train.py", "--resume", tmp_path / "empty")


def test_existing_output_path_is_refused_and_kept(tiny_image, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert "already exists" in bad(*train_args(tiny_image, out))
    assert (out / "precious.txt").read_text() == "keep me"


def test_grayscale_rgba_and_16_bit_images_are_read(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "gray.png", rgb[:, :, 0])
    iio.imwrite(tmp_path / "rgba.png", np.dstack([rgb, np.full((20, 30), 128, np.uint8)]))
    iio.imwrite(tmp_path / "rgb16.tif", rgb.astype(np.uint16) * 257)  # PNG writers here do not do 16-bit RGB
    iio.imwrite(tmp_path / "gray16.png", rgb[:, :, 0].astype(np.uint16) * 257)
    ref = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    gray = consingan.read_image(tmp_path / "gray.png")
    assert gray.shape == (1, 3, 20, 30) and torch.allclose(gray[0, 1], ref[0, 0]) and torch.equal(gray[0, 0], gray[0, 2])
    assert torch.allclose(consingan.read_image(tmp_path / "rgba.png"), ref)  # alpha dropped
    assert torch.allclose(consingan.read_image(tmp_path / "rgb16.tif"), ref, atol=1e-6)
    assert torch.allclose(consingan.read_image(tmp_path / "gray16.png"), gray, atol=1e-6)


# --- safe model files ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("safe") / "m"
    img = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    consingan.train(img, out_dir=out, device="cpu", train_stages=2, train_depth=2, niter=2, nfc=4,
                    min_size=12, max_size=40, manualSeed=0)
    return out


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_model_file_with_a_pickled_object_is_refused(model_dir, tmp_path):
    record = torch.load(model_dir / "model.pt", weights_only=True)
    record["meta"] = {"x": Payload()}
    bad_dir = tmp_path / "pickled"
    bad_dir.mkdir()
    torch.save(record, bad_dir / "model.pt")
    with pytest.raises(UserError, match="pickled"):
        consingan.load(bad_dir)
    assert "pickled" in bad("main_generate.py", "--model_dir", bad_dir)


@pytest.mark.parametrize("damage, words", [
    ("truncate", "truncated"),
    ("foreign", "not a consingan model"),
    ("version", "format version 99"),
])
def test_damaged_foreign_or_newer_model_files(model_dir, tmp_path, damage, words):
    target = tmp_path / damage
    target.mkdir()
    data = (model_dir / "model.pt").read_bytes()
    if damage == "truncate":
        (target / "model.pt").write_bytes(data[: len(data) // 3])
    elif damage == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, target / "model.pt")
    else:
        record = torch.load(model_dir / "model.pt", weights_only=True)
        record["format_version"] = 99
        torch.save(record, target / "model.pt")
    with pytest.raises(UserError, match=words):
        consingan.load(target)
    assert words in bad("main_generate.py", "--model_dir", target)


# --- harmonization inputs ------------------------------------------------------------------
@pytest.fixture(scope="module")
def harmonization_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("harm")
    rng = np.random.default_rng(2)
    bg = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    iio.imwrite(tmp / "bg.png", bg)
    naive = bg.copy()
    naive[8:16, 10:20] = 255
    iio.imwrite(tmp / "naive.png", naive)
    consingan.train(str(tmp / "bg.png"), out_dir=tmp / "m", device="cpu", train_mode="harmonization",
                    train_stages=2, train_depth=2, niter=2, nfc=4, min_size=12, max_size=40, manualSeed=0)
    return tmp


def test_fine_tune_without_model_dir(harmonization_model):
    t = harmonization_model
    assert "--model_dir" in bad("main_train.py", "--train_mode", "harmonization", "--input_name", t / "bg.png",
                                "--naive_img", t / "naive.png", "--fine_tune")


def test_missing_naive_image(harmonization_model, tmp_path):
    t = harmonization_model
    assert "not found" in bad("main_generate.py", "--model_dir", t / "m", "--naive_img", t / "nope.png",
                              "--out", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_all_zero_mask(harmonization_model, tmp_path):
    t = harmonization_model
    iio.imwrite(tmp_path / "zero_mask.png", np.zeros((30, 40), np.uint8))
    assert "all zero" in bad("main_generate.py", "--model_dir", t / "m", "--naive_img", t / "naive.png",
                             "--mask", tmp_path / "zero_mask.png", "--out", tmp_path / "o")


def test_mask_of_another_size_is_resized_with_a_warning(harmonization_model, tmp_path):
    t = harmonization_model
    mask = np.zeros((60, 80), np.uint8)
    mask[16:32, 20:40] = 255
    iio.imwrite(tmp_path / "big_mask.png", mask)
    proc = run_cli("main_generate.py", "--model_dir", t / "m", "--naive_img", t / "naive.png",
                   "--mask", tmp_path / "big_mask.png", "--out", tmp_path / "o")
    assert "warning:" in proc.stderr and "resizing the mask" in proc.stderr and "Traceback" not in proc.stderr
    assert iio.imread(tmp_path / "o" / "harmonized_w_mask.png").shape[-1] == 3
