"""One preparation for every door (issue 25): the command line, the library, a batch job and the web app
make the same run from the same settings; a Config cannot be built invalid; --dry_run prints and writes
nothing; the cost model's structure; log.jsonl's clock; process tuning where training starts."""
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import consingan
from conftest import ROOT, run_cli
from consingan.config import Config
from consingan.core import cost
from consingan.errors import UserError

# Tiny settings every door can take (the web app's fields among them): a run of seconds.
SETTINGS = dict(train_stages=3, niter=2, nfc=4, max_size=40, manualSeed=7)
FIELDS = [f.name for f in dataclasses.fields(Config)]


def flags(settings):
    return [x for k, v in settings.items() for x in (f"--{k}", str(v))]


def settings_of(info):
    """The settings part of config.json (not where the image came from, nor the door's own notes)."""
    info = json.loads(json.dumps(info))  # as the file holds it
    return {k: info[k] for k in [*FIELDS, "preset"]}


@pytest.mark.parametrize("mode, extra", [("generation", {"min_size": 12}), ("superres", {"sr_factor": 2.0})])
def test_every_door_makes_the_same_run(tiny_image, tmp_path, mode, extra):
    from consingan import batch
    from consingan.webapp import actions

    settings = dict(SETTINGS, **extra)
    # the command line and the library train for real and write config.json
    cli_out, lib_out = tmp_path / "cli", tmp_path / "lib"
    run_cli("main_train.py", "--input_name", tiny_image, "--train_mode", mode, *flags(settings),
            "--device", "cpu", "--progress", "none", "--out_dir", cli_out)
    consingan.train(str(tiny_image), out_dir=lib_out, device="cpu", train_mode=mode, **settings)
    doors = {}
    for name, out in (("cli", cli_out), ("library", lib_out)):
        info = json.loads((out / "config.json").read_text())
        doors[name] = (settings_of(info), [tuple(s) for s in consingan.load(out).shapes])
    # a batch job and the web app, prepared as they train (no Ray, no server)
    job = batch.collect_jobs([str(tiny_image)], dict(settings, train_mode=mode))[0]
    plan = batch.job_plan(job, "cpu")
    doors["batch"] = (settings_of(plan.info()), list(plan.sizes))
    web = actions.make_settings(mode, "paper", settings["max_size"], settings["train_stages"], settings["niter"],
                                settings["nfc"], extra.get("min_size"), settings["manualSeed"], extra.get("sr_factor"))
    plan = actions.prepared(SimpleNamespace(torch_device=torch.device("cpu")), Path(tiny_image), web)
    doors["web app"] = (settings_of(plan.info()), list(plan.sizes))

    first = doors["cli"]
    for name, door in doors.items():
        assert door == first, (name, door, first)
    if mode == "superres":  # the pyramid's step is the upsampling step, not min_size 25, at every door
        assert first[0]["min_size"] != Config.min_size and first[1][0][0] == first[0]["min_size"]
    # log.jsonl: every line has its time since the run started, and every stage's end its wall time
    rows = [json.loads(line) for line in (lib_out / "log.jsonl").read_text().splitlines()]
    assert all(isinstance(r["t"], float) for r in rows)
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)
    ends = [r for r in rows if r.get("event") == "stage_end"]
    assert [r["stage"] for r in ends] == [0, 1, 2] and all(r["stage_s"] > 0 for r in ends)


def test_a_config_cannot_be_built_invalid_and_says_what_the_flag_says(tiny_image):
    with pytest.raises(UserError) as caught:
        Config(niter=0)
    proc = run_cli("main_train.py", "--input_name", tiny_image, "--niter", "0", "--device", "cpu", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {caught.value}"
    with pytest.raises(UserError, match="--train_depth 4 is larger than --train_stages 3"):
        Config(train_stages=3).replace(train_depth=4)
    with pytest.raises(UserError, match="--niter must be at least 1"):
        Config.from_dict({**Config().to_dict(), "niter": 0})


def tree(*folders):
    return {str(p) for folder in folders if folder.exists() for p in folder.rglob("*")}


def test_dry_run_prints_the_run_and_writes_nothing(tiny_image, tmp_path):
    before = tree(tmp_path, ROOT / "TrainedModels")
    proc = run_cli("main_train.py", "--input_name", tiny_image, "--train_mode", "superres", *flags(SETTINGS),
                   "--device", "cpu", "--dry_run")
    assert tree(tmp_path, ROOT / "TrainedModels") == before  # no model folder, not even an empty one
    text = proc.stdout
    printed = json.loads(text[text.index("{"): text.index("\n}") + 2])
    plan = consingan.prepare(str(tiny_image), device="cpu", train_mode="superres", **SETTINGS)
    assert printed == json.loads(json.dumps(plan.info()))  # what config.json would hold
    sizes = ", ".join(f"{h}x{w}" for h, w in plan.sizes)
    assert f"stages: 3 ({sizes};" in text and "estimate on cpu: about " in text and "peak memory about " in text
    # batch: every image's run, and no out_root, no Ray
    out_root = tmp_path / "runs"
    proc = run_cli("-m", "consingan", "batch", "--images", tiny_image.parent, "--out_root", out_root, "--dry_run",
                   *flags(SETTINGS), "--device", "cpu")
    assert not out_root.exists() and tree(tmp_path, ROOT / "TrainedModels") == before
    assert f"tiny ({tiny_image}) -> {out_root / 'tiny'}" in proc.stdout and "1 image(s), about " in proc.stdout
    # a batch job's threads are its --cpus_per_job, in the dry run as in the run (conftest pins 2 elsewhere)
    batch_text = proc.stdout
    assert json.loads(batch_text[batch_text.index("{"): batch_text.index("\n}") + 2])["threads"] == 1
    proc = run_cli("-m", "consingan", "batch", "--images", tiny_image.parent, "--out_root", out_root, "--dry_run",
                   *flags(SETTINGS), "--device", "cpu", "--threads", "3", check=False)
    assert proc.returncode == 2 and "pass --cpus_per_job 3" in proc.stderr and not out_root.exists()


MACHINE = cost.Machine("cpu", rate=1e11, latency=1e-5)


def seconds(image=(60, 90), **settings):
    config = consingan.make_config(**{**SETTINGS, "min_size": 16, **settings})
    return cost.estimate(config, cost.training_sizes(config, *image), MACHINE)


def test_the_cost_model_grows_with_the_work():
    base = seconds()
    assert base.seconds > 0 and base.peak_bytes > 0
    for more in (seconds(image=(120, 180), max_size=120), seconds(niter=20), seconds(nfc=16), seconds(Dsteps=5),
                 seconds(num_layer=4), seconds(train_stages=4)):
        assert more.seconds > base.seconds
    assert seconds(gp_every=3).seconds < base.seconds  # fewer penalties
    assert seconds(nfc=16).peak_bytes > base.peak_bytes
    assert seconds(image=(120, 180), max_size=120).peak_bytes > base.peak_bytes
    # the stage's iteration costs more at a larger stage, and the estimate is the sum over the stages
    assert list(base.stage_seconds) == sorted(base.stage_seconds)
    assert base.seconds == pytest.approx(sum(base.stage_totals))
    # the same machine gives the same numbers: nothing else is measured
    assert seconds().seconds == base.seconds
    faster = cost.estimate(consingan.make_config(**SETTINGS, min_size=16), cost.training_sizes(
        consingan.make_config(**SETTINGS, min_size=16), 60, 90), dataclasses.replace(MACHINE, rate=2e11))
    assert faster.seconds < base.seconds


def test_time_left_keeps_to_the_pace_so_far():
    now = [0.0]
    left = cost.TimeLeft([1.0, 2.0], [10, 10], clock=lambda: now[0])
    assert left.seconds(0, 0) == 30.0  # the prediction before anything was timed
    for i in range(3, 8):  # twice as slow as predicted
        left.update(0, i)
        now[0] += 2.0
    assert left.seconds(0, 7) == pytest.approx(2 * (3 * 1.0 + 10 * 2.0))


def test_log_lines_carry_the_time_and_a_resumed_run_goes_on_from_it(tmp_path):
    from consingan.storage.rundir import RunDir, RunDirWriter

    now = [100.0]
    writer = RunDirWriter(RunDir(tmp_path), clock=lambda: now[0])
    writer.on_run_start(2)
    writer.on_stage_start(0, 2, 5, 0)
    now[0] += 1.5
    writer.on_iteration(0, 1, {"loss_d": 1.0})
    now[0] += 0.25
    writer.on_stage_end(0, None)
    writer.close()
    later = RunDirWriter(RunDir(tmp_path), clock=lambda: now[0])  # a resume, much later
    now[0] += 1000.0
    later.on_run_start(2)
    later.on_stage_start(1, 2, 5, 0)
    now[0] += 2.0
    later.on_iteration(1, 1, {"loss_d": 2.0})
    later.close()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows == [{"t": 1.5, "stage": 0, "iter": 1, "loss_d": 1.0},
                    {"t": 1.75, "stage": 0, "event": "stage_end", "stage_s": 1.75},
                    {"t": 3.75, "stage": 1, "iter": 1, "loss_d": 2.0}]


def test_training_tunes_the_process_where_it_starts(monkeypatch):
    import consingan.process

    calls = []
    monkeypatch.setattr(consingan.process, "tune_cpu_allocator", lambda: calls.append("tuned"))
    consingan.train(torch.rand(1, 3, 20, 30) * 2 - 1, device="cpu", **dict(SETTINGS, train_stages=2, niter=1),
                    min_size=12)
    assert calls == ["tuned"]  # the library's own users get it, not only the command line


def test_a_setting_of_another_mode_is_refused_at_every_door(tiny_image):
    with pytest.raises(UserError, match="--sr_factor only applies to --train_mode superres"):
        consingan.prepare(str(tiny_image), device="cpu", sr_factor=2.0, **SETTINGS)
    proc = run_cli("main_train.py", "--input_name", tiny_image, "--paint_colors", "3", "--device", "cpu", check=False)
    assert proc.returncode == 2 and "--paint_colors only applies to --train_mode paint" in proc.stderr


def test_the_web_app_checks_settings_by_configs_rules():
    from consingan.webapp import actions

    assert actions.make_settings("generation", "paper", train_stages=50, seed=1)["train_stages"] == 50
    with pytest.raises(UserError) as caught:
        Config(train_stages=101)
    with pytest.raises(UserError) as web:
        actions.make_settings("generation", "paper", train_stages=101, seed=1)
    assert str(web.value) == str(caught.value)
    with pytest.raises(UserError, match="train_stages must be a whole number, not 'many'"):
        actions.make_settings("generation", "paper", train_stages="many")


def test_the_web_estimate_names_the_training_size(tmp_path):
    """The page's estimate speaks of the size the run trains at (the top stage), not the upload's."""
    import imageio.v3 as iio
    import numpy as np

    from consingan.webapp import actions

    iio.imwrite(tmp_path / "big.png", np.full((90, 120, 3), 128, np.uint8))
    web = actions.make_settings("generation", "paper", 40, 3, 20, 8, 12, 7, None, None)
    text = actions.estimate_text(SimpleNamespace(torch_device=torch.device("cpu")), tmp_path / "big.png", web)
    assert "training size of 30x40" in text and "90x120" not in text, text
