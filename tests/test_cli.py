"""End to end through the command line, on a tiny image and a tiny configuration."""
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import consingan
from conftest import ROOT, TINY, TINY_FLAGS, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import shutil

    tmp = tmp_path_factory.mktemp("cli")
    src = tmp / "tiny.png"
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:30, 0:45]
    img = np.stack([x / 45, y / 30, 0.5 + 0.5 * np.sin(x / 3.0)], axis=2) * 0.7 + 0.3 * rng.random((30, 45, 3))
    iio.imwrite(src, (img * 255).round().astype(np.uint8))
    out = tmp / "model"
    proc = run_cli("main_train.py", "--train_mode", "generation", "--input_name", src, "--out_dir", out, *TINY_FLAGS)
    return src, out, proc


@pytest.mark.slow
def test_train_writes_the_model_directory(trained):
    src, out, proc = trained
    assert proc.stdout.strip().splitlines()[-1] == f"Model saved to: {out}"
    assert "stage 3/3" in proc.stdout  # progress lines when output is not a terminal
    for name in ("model.pt", "config.json", "log.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.pt").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["niter"] == 20 and config["nfc"] == 8 and config["manualSeed"] == 7
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [row for row in log if "iter" in row]  # besides one stage_end line per stage
    assert {row["stage"] for row in losses} == {0, 1, 2} and all(np.isfinite(row["loss_d"]) for row in losses)
    record = torch.load(out / "model.pt", weights_only=True)
    assert record["format_version"] == 1
    for key in ("config", "generator", "discriminator", "fixed_noise", "noise_amp", "shapes", "real"):
        assert key in record, key
    shapes = [tuple(s) for s in record["shapes"]]
    for k, (h, w) in enumerate(shapes):
        stage = out / str(k)
        assert iio.imread(stage / "real.png").shape == (h, w, 3)
        assert iio.imread(stage / "reconstruction.png").shape == (h, w, 3)
        assert (stage / "samples_grid.png").is_file() and (stage / "fake_iter_20.png").is_file()


@pytest.mark.slow
def test_generate_writes_samples_of_the_right_size_that_differ(trained):
    _, out, _ = trained
    ev = out / "ev1"
    proc = run_cli("main_generate.py", "--model_dir", out, "--num_samples", "4", "--seed", "1", "--out", ev)
    assert "random_samples" in proc.stdout
    model = consingan.load(out)
    h, w = model.shapes[-1]
    samples = [iio.imread(ev / "random_samples" / f"gen_sample_{i}.png") for i in range(4)]
    assert all(s.shape == (h, w, 3) for s in samples)
    assert all(np.abs(samples[0].astype(int) - s).mean() > 1 for s in samples[1:])
    assert iio.imread(ev / "reconstruction.png").shape == (h, w, 3)
    assert iio.imread(ev / "real_image.png").shape == (h, w, 3)
    # arbitrary sizes: every stage scaled
    run_cli("-m", "consingan", "generate", "--model-dir", out, "--num-samples", "2", "--scale_h", "1",
            "--scale_w", "2", "--out", ev)
    wide = iio.imread(ev / "random_samples_scale_h_1_scale_w_2" / "gen_sample_0.png")
    assert wide.shape == (h, int(2 * w), 3)
    # the samples folder is never overwritten: a second run writes a numbered one beside it and says so
    before = sorted(p.name for p in (ev / "random_samples").iterdir())
    again = run_cli("main_generate.py", "--model_dir", out, "--num_samples", "1", "--out", ev)
    assert again.stdout.strip().splitlines()[-1] == f"Samples saved to: {ev / 'random_samples_1'}"
    assert sorted(p.name for p in (ev / "random_samples").iterdir()) == before
    assert sorted(p.name for p in (ev / "random_samples_1").iterdir()) == ["gen_sample_0.png"]


@pytest.mark.slow
def test_default_output_is_model_dir_evaluation(trained):
    _, out, _ = trained
    run_cli("main_generate.py", "--model_dir", out, "--num_samples", "2")
    assert (out / "Evaluation" / "random_samples" / "gen_sample_1.png").is_file()


@pytest.mark.slow
def test_save_load_round_trip_gives_identical_samples(trained, tmp_path):
    _, out, _ = trained
    model = consingan.load(out)
    a = model.sample(3, seed=5)
    model.save(tmp_path / "copy")
    b = consingan.load(tmp_path / "copy").sample(3, seed=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, model.sample(3, seed=6))
    assert torch.equal(a[1:2], model.sample(2, seed=5)[1:2])  # sample i does not depend on n


@pytest.mark.slow
def test_same_seed_gives_same_model(trained, tmp_path):
    src, out, _ = trained
    again = tmp_path / "again"
    run_cli("main_train.py", "--input_name", src, "--out_dir", again, *TINY_FLAGS)
    a, b = torch.load(out / "model.pt", weights_only=True), torch.load(again / "model.pt", weights_only=True)
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])
    assert all(torch.equal(x, y) for x, y in zip(a["fixed_noise"], b["fixed_noise"]))


@pytest.mark.slow
def test_existing_out_dir_is_not_overwritten(trained):
    src, out, _ = trained
    before = (out / "model.pt").read_bytes()
    proc = run_cli("main_train.py", "--input_name", src, "--out_dir", out, *TINY_FLAGS, check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "model.pt").read_bytes() == before


@pytest.mark.parametrize("content", [None, b"this is not a png", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_missing_or_unreadable_input_is_one_line_and_nonzero(tmp_path, content):
    path = tmp_path / "input.png"
    if content is not None:
        path.write_bytes(content)
    proc = run_cli("main_train.py", "--input_name", path, "--out_dir", tmp_path / "m", *TINY_FLAGS, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_library_api_trains_and_samples_any_scale(tiny_image, tmp_path):
    model = consingan.train(str(tiny_image), out_dir=tmp_path / "lib", device="cpu", **TINY)
    assert (tmp_path / "lib" / "model.pt").is_file()
    h, w = model.shapes[-1]
    out = model.sample(2, scale_h=1.5, scale_w=0.5, seed=0)
    assert out.shape == (2, 3, int(h * 1.5), int(w * 0.5)) and out.abs().max() <= 1
    assert torch.allclose(model.reconstruct(), consingan.load(tmp_path / "lib").reconstruct(), atol=1e-5)


def test_console_entry_point_is_installed_or_module_runs():
    proc = run_cli("-m", "consingan", "train", "--help")
    assert "--train_mode" in proc.stdout and "--input_name" in proc.stdout
