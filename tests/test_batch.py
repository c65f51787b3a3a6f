"""The batch runner (consingan.batch, ``consingan batch``) on a local Ray of 2 CPUs: a bad image fails
alone, a rerun skips finished work, a worker killed mid-job is retried and resumes to the same weights
as an uninterrupted job, a stop request leaves checkpoints a rerun resumes, manifest settings apply
per image. Ray starts once for the module; without Ray these tests are skipped, except the one that
checks the error a user without Ray gets."""
from __future__ import annotations

import csv
import json
import os
import signal
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from consingan import batch
from consingan.cli import app
from consingan.storage.model_file import load_model

# Tiny runs: 30x45 images, 4 channels, 3 stages, a few iterations.
TINY = dict(train_stages=3, nfc=4, min_size=12, max_size=45, manualSeed=3, progress="none")


def write_image(path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:30, 0:45]
    img = np.stack([x / 45, y / 30, 0.5 + 0.5 * np.sin(x / (3.0 + seed))], axis=2)
    for _ in range(6):
        r, c = rng.integers(0, 24), rng.integers(0, 39)
        img[r:r + 6, c:c + 6] = rng.random(3)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, (img * 255).round().astype(np.uint8))
    return str(path)


@pytest.fixture(autouse=True, scope="module")
def _environment_as_it_was():
    """Ray's driver sets variables of its own in os.environ (RAY_AUTH_MODE, PYTHONBREAKPOINT, ...), which
    every later test's subprocess (the web app's) would inherit: put the environment back after this module."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 CPUs for the whole module (it takes seconds to start); batch.run uses it and
    leaves it running."""
    ray = pytest.importorskip("ray")
    batch.start_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def by_name(results):
    return {r.name: r for r in results}


@pytest.mark.slow
def test_bad_image_fails_alone_and_a_rerun_skips_finished_work(tmp_path, local_ray):
    images = tmp_path / "images"
    for i in range(3):
        write_image(images / f"img{i}.png", i)
    (images / "bad.png").write_bytes(b"this is not a PNG")
    root = tmp_path / "runs"

    results = by_name(batch.run(images, root, niter=8, samples=2, **TINY))
    assert {n: r.status for n, r in results.items()} == {"bad": "failed", "img0": "done", "img1": "done",
                                                          "img2": "done"}
    assert "cannot read input image" in results["bad"].error
    for i in range(3):
        out = root / f"img{i}"
        assert (out / "model.pt").exists() and not (out / "checkpoint.pt").exists()
        assert len(list((out / "Evaluation" / "random_samples").glob("gen_sample_*.png"))) == 2
        assert results[f"img{i}"].seed == 3 and results[f"img{i}"].device == "cpu"
    with open(root / "summary.csv", newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    assert rows["bad"]["status"] == "failed" and "cannot read input image" in rows["bad"]["error"]
    assert rows["img1"]["status"] == "done" and rows["img1"]["error"] == ""
    assert rows["img1"]["model_dir"] == str(root.resolve() / "img1")
    summary = json.loads((root / "summary.json").read_text())
    assert summary["total"] == {"done": 3, "skipped": 0, "failed": 1, "interrupted": 0}

    # Again: nothing trains (the models are the same files), the failure is kept and says how to retry.
    stamps = {i: (root / f"img{i}" / "model.pt").stat().st_mtime_ns for i in range(3)}
    again = by_name(batch.run(images, root, niter=8, samples=2, **TINY))
    assert {n: r.status for n, r in again.items()} == {"bad": "failed", "img0": "skipped", "img1": "skipped",
                                                        "img2": "skipped"}
    assert "--retry_failed" in again["bad"].error and again["bad"].attempts == 1
    assert stamps == {i: (root / f"img{i}" / "model.pt").stat().st_mtime_ns for i in range(3)}
    assert again["img0"].seconds == results["img0"].seconds > 0
    # --retry_failed tries the bad image once more (and only it)
    retried = by_name(batch.run(images, root, niter=8, samples=2, retry_failed=True, **TINY))
    assert retried["bad"].status == "failed" and retried["bad"].attempts == 2
    assert retried["img2"].status == "skipped"


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_resumes_to_the_same_weights(tmp_path, local_ray):
    """Two jobs on the same image and seed run side by side; the worker of one is SIGKILLed after its
    first checkpoint inside a stage. Ray runs its task again, the task resumes from the checkpoint,
    and the result is bit-identical to the job that was never interrupted."""
    image = write_image(tmp_path / "rock.png", 5)
    root = tmp_path / "runs"
    killed = {}

    def kill_once(states):
        state = states.get("rock", {})
        at = state.get("checkpoint_at")
        if not killed and at is not None and at[1] > 0 and state.get("phase") == "train":
            os.kill(state["pid"], signal.SIGKILL)
            killed.update(pid=state["pid"], at=at, stage=state["stage"], iteration=state["iteration"])

    results = by_name(batch.run([image, image], root, niter_stages=(10, 10, 50), checkpoint_every=4, retries=2,
                                on_update=kill_once, **TINY))
    assert killed, "the job ended before the test could kill its worker"
    assert results["rock"].status == results["rock_2"].status == "done"
    assert results["rock"].attempts == 2 and results["rock"].resumed
    assert results["rock_2"].attempts == 1 and not results["rock_2"].resumed
    a, b = load_model(root / "rock"), load_model(root / "rock_2")
    sa, sb = a.G.state_dict(), b.G.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    for key in a.D_state:
        assert torch.equal(a.D_state[key], b.D_state[key]), key
    assert a.amps == b.amps and all(torch.equal(x, y) for x, y in zip(a.fixed, b.fixed))


@pytest.mark.slow
def test_a_stop_request_leaves_checkpoints_that_a_rerun_resumes(tmp_path, local_ray):
    """Ctrl-C on the driver (here raised from the progress hook, where the driver's loop catches it as it
    catches a real one) stops the running job at a checkpoint; run raises KeyboardInterrupt after
    writing the summary; running the batch again goes on from the checkpoint."""
    image = write_image(tmp_path / "leaf.png", 6)
    root = tmp_path / "runs"
    pressed = []

    def ctrl_c(states):
        state = states.get("leaf", {})
        if not pressed and state.get("stage") is not None and state.get("iteration", 0) > 0:
            pressed.append(dict(state))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.run([image], root, niter_stages=(20, 20, 80), checkpoint_every=1000, on_update=ctrl_c, **TINY)
    assert pressed
    assert (root / "leaf" / "checkpoint.pt").exists() and not (root / "leaf" / "model.pt").exists()
    summary = json.loads((root / "summary.json").read_text())
    assert summary["jobs"][0]["status"] == "interrupted" and "interrupted" in summary["jobs"][0]["error"]

    results = batch.run([image], root, niter_stages=(20, 20, 80), checkpoint_every=1000, **TINY)
    assert results[0].status == "done" and results[0].resumed and results[0].attempts == 2
    assert (root / "leaf" / "model.pt").exists() and not (root / "leaf" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_manifest_settings_apply_per_image(tmp_path, local_ray):
    images = tmp_path / "images"
    write_image(images / "a.png", 1)
    write_image(images / "b.png", 2)
    manifest = tmp_path / "list.csv"
    manifest.write_text("image,name,niter,manualSeed,train_stages,niter_stages\n"
                        "images/a.png,first,3,11,2,\n"
                        "images/b.png,,,12,,\"2,3,4\"\n")
    root = tmp_path / "runs"
    results = by_name(batch.run(manifest, root, niter=5, **TINY))
    assert {n: r.status for n, r in results.items()} == {"first": "done", "b": "done"}
    first = json.loads((root / "first" / "config.json").read_text())
    b = json.loads((root / "b" / "config.json").read_text())
    assert (first["niter"], first["manualSeed"], first["train_stages"]) == (3, 11, 2)
    assert (b["niter"], b["manualSeed"], b["train_stages"], b["niter_stages"]) == (5, 12, 3, [2, 3, 4])
    assert results["b"].seed == 12 and results["first"].image == str(images.resolve() / "a.png")


def test_without_ray_the_command_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    write_image(tmp_path / "images" / "a.png", 1)
    result = CliRunner().invoke(app, ["batch", "--images", str(tmp_path / "images"), "--out_root",
                                      str(tmp_path / "runs"), "--niter", "2"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == 'error: the batch runner needs Ray: pip install -e ".[ray]"'
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_unknown_manifest_column_and_train_only_flags_are_refused(tmp_path, monkeypatch):
    write_image(tmp_path / "a.png", 1)
    (tmp_path / "m.csv").write_text("image,nitter\na.png,3\n")
    runner = CliRunner()
    result = runner.invoke(app, ["batch", "--images", str(tmp_path / "m.csv"), "--out_root", str(tmp_path / "r")])
    assert result.exit_code == 2 and "unknown column(s) nitter" in result.stderr, result.output
    result = runner.invoke(app, ["batch", "--images", str(tmp_path), "--out_root", str(tmp_path / "r"),
                                 "--input_name", "x.png"])
    assert result.exit_code == 2 and "--input_name cannot be given to batch" in result.stderr, result.output
    result = runner.invoke(app, ["batch", "--images", str(tmp_path), "--out_root", str(tmp_path / "r"),
                                 "--niter", "many"])
    assert result.exit_code == 2 and result.stderr.startswith("error: Invalid value for '--niter'"), result.output


def test_output_names_are_unique_and_the_probe_names_what_a_worker_cannot_see(tmp_path):
    a, b = write_image(tmp_path / "x" / "rock.png", 1), write_image(tmp_path / "y" / "rock.png", 2)
    assert [j.name for j in batch.collect_jobs([a, b, a])] == ["rock", "rock_2", "rock_3"]
    folder = tmp_path / "probe"
    folder.mkdir()
    assert "cannot read the driver's probe file" in batch.probe_shared(str(folder), "t0k", "n1")
    (folder / "driver").write_text("t0k")
    assert batch.probe_shared(str(folder), "t0k", "n1") is None and (folder / "node-n1").read_text() == "t0k"
    assert "another probe file" in batch.probe_shared(str(folder), "other", "n1")


def test_a_folder_the_batch_did_not_write_is_never_touched(tmp_path):
    image = write_image(tmp_path / "rock.png", 1)
    root = tmp_path / "runs"
    (root / "rock").mkdir(parents=True)
    (root / "rock" / "notes.txt").write_text("mine")
    for force in (False, True):
        done, todo = batch.plan(batch.collect_jobs([image]), root, 0, False, retry_failed=False, force=force)
        assert todo == [] and done["rock"].status == "failed"
        assert "already holds files that no batch wrote" in done["rock"].error
    assert (root / "rock" / "notes.txt").read_text() == "mine"
