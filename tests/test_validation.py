"""Bad numbers, unwritable outputs, damaged model files and first-run rough edges give one line
``error: <problem>; <fix>`` and exit 2 before any work (issue 18); in-process through the CLI, except
Config's rules: each is tested once where it lives (make_config), and one case shows a flag reaching them."""
import errno
import json
import math
import os
import runpy
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import consingan
from conftest import ROOT, TINY
from consingan import cli
from consingan.cli import app
from consingan.config import MAX_SEED, make_config
from consingan.errors import UserError
from consingan.core.image import min_stage_side, stage_sizes
from consingan.core.networks import Discriminator, Generator

# A run that takes about a second: TINY's image sizes, two stages, two iterations.
FAST = dict(TINY, train_stages=2, niter=2, nfc=4)
FAST_FLAGS = ["--train_stages", "2", "--niter", "2", "--nfc", "4", "--min_size", "12", "--max_size", "40",
              "--manualSeed", "7", "--progress", "none"]
runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_line_error(result) -> str:
    """The single ``error:`` line of a refused command (exit 2, no traceback)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A trained tiny generation model and its training image (trained once for the module)."""
    tmp = tmp_path_factory.mktemp("validation")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:30, 0:40]
    img = np.stack([x / 40, y / 30, 0.5 + 0.5 * np.sin(x / 3.0)], axis=2) * 0.7 + 0.3 * rng.random((30, 40, 3))
    iio.imwrite(tmp / "img.png", (img * 255).round().astype(np.uint8))
    consingan.train(str(tmp / "img.png"), out_dir=tmp / "model", device="cpu", **FAST)
    return tmp


def listing(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*"))


# --- 1. outputs that cannot be written ------------------------------------------------------------
def command_writing_to(kind, target, tiny):
    """The arguments of ``kind`` (train, generate, evaluate, compose) writing to ``target``."""
    if kind == "train":
        return ["train", "--input_name", tiny / "img.png", "--out_dir", target, "--device", "cpu", *FAST_FLAGS]
    if kind == "generate":
        return ["generate", "--model_dir", tiny / "model", "--num_samples", "1", "--out", target]
    if kind == "evaluate":
        return ["evaluate", "--model_dir", tiny / "model", "--num_samples", "2", "--out", target]
    return ["compose", "--background", tiny / "img.png", "--object", tiny / "img.png", "--x", "0", "--y", "0",
            "--scale", "0.2", "--out", target / "naive.png"]


COMMANDS = ["train", "generate", "evaluate", "compose"]
FIXES = {"train": "--out_dir", "generate": "--out", "evaluate": "--out", "compose": "--out"}


@pytest.mark.parametrize("kind", COMMANDS)
def test_output_under_a_regular_file_is_one_line(tiny, kind):
    before = listing(tiny)
    message = one_line_error(invoke(*command_writing_to(kind, tiny / "img.png" / "sub", tiny)))
    assert str(tiny / "img.png") in message and "is a file, not a folder" in message and FIXES[kind] in message
    assert listing(tiny) == before


@pytest.mark.parametrize("kind", COMMANDS)
def test_output_under_proc_is_one_line(tiny, kind):
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc on this system")
    message = one_line_error(invoke(*command_writing_to(kind, Path("/proc/self/consingan_out"), tiny)))
    assert "/proc/self/consingan_out" in message and FIXES[kind] in message


@pytest.mark.parametrize("kind", COMMANDS)
def test_output_in_a_read_only_folder_is_one_line(tiny, tmp_path, kind, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes into any folder: let the folder refuse as a read-only mount would
        real_mkdir = os.mkdir

        def read_only_mkdir(path, *args, **kwargs):
            if str(path).startswith(str(locked)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    try:
        message = one_line_error(invoke(*command_writing_to(kind, locked / "out", tiny)))
    finally:
        locked.chmod(0o755)
    assert str(locked / "out") in message and FIXES[kind] in message
    assert list(locked.iterdir()) == []


def test_an_os_error_while_writing_is_one_line_naming_the_file(tiny, tmp_path, monkeypatch):
    """Past the up-front check (a disk that turns read-only mid-way, say): still one line, no traceback."""
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "o" / "gen_sample_0.png"))

    monkeypatch.setattr(cli.api, "write_samples", refuse)
    message = one_line_error(invoke("generate", "--model_dir", tiny / "model", "--num_samples", "1",
                                    "--out", tmp_path / "o"))
    assert "gen_sample_0.png" in message and "Permission denied" in message


def test_output_folder_check_leaves_nothing_behind(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    assert cli.output_folder(target, "fix") == target
    assert list(tmp_path.iterdir()) == []


# --- 2. numbers out of range or not finite ---------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--scale_h", "nan"], "--scale_h must be a finite positive number"),
    (["--scale_w", "inf"], "--scale_w must be a finite positive number"),
    (["--scale_h", "0"], "--scale_h must be a finite positive number"),
    (["--scale_w", "-2"], "--scale_w must be a finite positive number"),
    (["--num_samples", "0"], "--num_samples must be at least 1"),
    (["--num_samples", "-3"], "--num_samples must be at least 1"),
    (["--seed", "-1"], "--seed -1 is out of range"),
    (["--seed", str(2**63)], f"use 0 to {MAX_SEED}"),
    (["--manualSeed", str(2**64)], "is out of range"),
    (["--fps", "nan"], "--fps must be a finite positive number"),
    (["--fps", "1e-12"], "--fps must be from 0.1 to 100"),
    (["--fps", "1000"], "--fps must be from 0.1 to 100"),
    (["--alpha", "nan"], "--alpha must be a finite number"),
    (["--beta", "nan"], "--beta must be a finite number"),
])
def test_generate_refuses_bad_numbers_before_any_work(tiny, tmp_path, args, words):
    assert words in one_line_error(invoke("generate", "--model_dir", tiny / "model", "--out", tmp_path / "o", *args))
    assert not (tmp_path / "o").exists()


def test_generate_refuses_samples_too_large_for_memory_with_the_figure(tiny, tmp_path):
    message = one_line_error(invoke("generate", "--model_dir", tiny / "model", "--num_samples", "1",
                                    "--scale_h", "3000", "--scale_w", "3000", "--out", tmp_path / "o"))
    assert "90000x120000 pixels" in message and " GB of memory" in message and "--scale_h/--scale_w" in message
    assert not (tmp_path / "o").exists()
    # the estimate does not refuse what fits: a 2x wide sample is made
    result = invoke("generate", "--model_dir", tiny / "model", "--num_samples", "1", "--scale_w", "2",
                    "--out", tmp_path / "wide")
    assert result.exit_code == 0, result.output
    assert iio.imread(tmp_path / "wide" / "random_samples_scale_h_1_scale_w_2" / "gen_sample_0.png").shape == (30, 80, 3)


def test_a_bad_setting_given_as_a_flag_is_one_line_and_exit_2_before_any_work(tiny, tmp_path):
    """The train flags reach Config's rules (each tested once below, through the library): one line,
    exit 2, nothing written."""
    message = one_line_error(invoke("train", "--input_name", tiny / "img.png", "--out_dir", tmp_path / "m",
                                    "--device", "cpu", *FAST_FLAGS, "--lr_g", "nan"))
    assert message.startswith("error: --lr_g must be") and "lower --lr_g" not in message
    assert not (tmp_path / "m").exists()


def test_train_refuses_networks_too_large_for_memory(tiny, tmp_path):
    message = one_line_error(invoke("train", "--input_name", tiny / "img.png", "--out_dir", tmp_path / "m",
                                    "--device", "cpu", *FAST_FLAGS, "--nfc", "1000000"))
    assert " GB of memory" in message and "--nfc" in message
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("given, words", [
    (dict(lr_g=0), "--lr_g must be a number above 0 and at most 1"),
    (dict(lr_d=1e300), "--lr_d must be a number above 0 and at most 1"),
    (dict(beta1=1), "--beta1 must be a number from 0 up to, not including, 1"),
    (dict(lambda_grad=-1), "--lambda_grad must be a number from 0 to 1000"),
    (dict(gamma=1.5), "--gamma must be a factor from 0 to 1"),
    (dict(lrelu_alpha=1e30), "--lrelu_alpha must be a slope from -1 to 1"),
    (dict(manualSeed=-1), "--manualSeed -1 is out of range"),
    (dict(manualSeed=2**63), "--manualSeed 9223372036854775808 is out of range"),
    (dict(train_stages=1000000000), "--train_stages must be 2 to 100"),
    (dict(train_mode="painting"), "unknown --train_mode 'painting'"),
    (dict(train_stages=3, train_depth=5), "--train_depth 5 is larger than --train_stages 3"),
    (dict(min_size=50, max_size=40), "--min_size 50 is above --max_size 40"),
    (dict(precision="fp16"), "use one of: fp32, bf16"),
    (dict(train_stages=3, niter_stages=(5, 5)), "give one per stage"),
])
def test_config_refuses_out_of_range_settings(given, words):
    with pytest.raises(UserError) as info:
        make_config(**given)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["lr_g", "lr_d", "lambda_grad", "alpha", "noise_amp", "lr_scale", "gamma",
                                  "beta1", "lrelu_alpha"])
def test_config_names_the_setting_that_is_not_finite(name):
    with pytest.raises(UserError, match=f"--{name} must be"):
        make_config(**{name: math.nan})
    with pytest.raises(UserError, match=f"--{name} must be"):
        make_config(train_stages=3, **{name: math.inf}).replace()
    with pytest.raises(UserError, match=f"--{name} must be"):
        make_config(**{name: -math.inf})
    with pytest.raises(UserError, match=f"setting {name} is 'x', not a number"):
        make_config(**{name: "x"})


@pytest.mark.parametrize("args, words", [
    (["--scale", "inf"], "--scale must be a finite positive number"),
    (["--scale", "nan"], "--scale must be a finite positive number"),
    (["--scale", "0"], "--scale must be a finite positive number"),
    (["--scale", "1e9"], " GB of memory"),
])
def test_compose_refuses_bad_scales(tiny, tmp_path, args, words):
    message = one_line_error(invoke("compose", "--background", tiny / "img.png", "--object", tiny / "img.png",
                                    "--x", "0", "--y", "0", "--out", tmp_path / "naive.png", *args))
    assert words in message
    assert list(tmp_path.iterdir()) == []


def test_compose_output_without_an_image_extension(tiny, tmp_path):
    message = one_line_error(invoke("compose", "--background", tiny / "img.png", "--object", tiny / "img.png",
                                    "--x", "0", "--y", "0", "--out", tmp_path / "naive"))
    assert "has no image extension" in message and ".png" in message
    assert list(tmp_path.iterdir()) == []


# --- 3. stages too small for the networks ------------------------------------------------------------
@pytest.mark.parametrize("num_layer, ker_size", [(3, 3), (3, 5), (1, 7), (6, 3)])
def test_min_stage_side_is_the_discriminators_real_limit(num_layer, ker_size):
    """At the limit the networks run (a 1x1 score map); one pixel less and torch refuses."""
    c = make_config(num_layer=num_layer, ker_size=ker_size, nfc=4, manualSeed=0)
    need = min_stage_side(c)
    D = Discriminator(c)
    assert D(torch.zeros(1, 3, need, need + 5)).shape[-2:] == (1, 6)
    with pytest.raises(RuntimeError):
        D(torch.zeros(1, 3, need - 1, need + 5))
    G = Generator(c)  # the generator pads its input: any stage size comes out as it went in
    out = G([torch.zeros(1, 3, need - 1, need + 5)], [(need - 1, need + 5)], [1.0])
    assert out.shape[-2:] == (need - 1, need + 5)


def test_stage_too_small_for_the_networks_names_the_flag_to_change(tiny):
    c = make_config(num_layer=3, ker_size=5, min_size=20, max_size=40, nfc=4, train_stages=2, niter=1,
                    manualSeed=0)
    with pytest.raises(UserError, match="need at least 21 pixels per side; raise --min_size to 21"):
        stage_sizes(30, 40, c)
    # at the limit a model trains
    model = consingan.train(str(tiny / "img.png"), c.replace(min_size=21), device="cpu")
    assert min(model.shapes[0]) == 21


def test_long_thin_image_with_deep_networks_is_refused_before_anything_is_written(tmp_path):
    iio.imwrite(tmp_path / "thin.png", np.full((20, 2000, 3), 128, np.uint8))
    message = one_line_error(invoke("train", "--input_name", tmp_path / "thin.png", "--out_dir", tmp_path / "m",
                                    "--num_layer", "10", "--ker_size", "5", "--min_size", "4", "--max_size", "2000",
                                    "--device", "cpu", "--niter", "1"))
    assert "stage 0 would be 4x400 pixels" in message and "--num_layer" in message and "--ker_size" in message
    assert not (tmp_path / "m").exists()


# --- 4. damaged or crafted model files -------------------------------------------------------------
def crafted(record):
    record = {**record, "config": dict(record["config"]), "generator": dict(record["generator"]),
              "fixed_noise": list(record["fixed_noise"]), "noise_amp": list(record["noise_amp"]),
              "shapes": [list(s) for s in record["shapes"]]}
    return record


def drop_last_noise(r):
    r["fixed_noise"] = r["fixed_noise"][:-1]


def nan_amplitude(r):
    r["noise_amp"][1] = math.nan


def absurd_shapes(r):
    r["shapes"][-1] = [100000, 100000]


def negative_shape(r):
    r["shapes"][0] = [-3, 16]


def real_of_wrong_rank(r):
    r["real"] = r["real"][0]


def real_in_float64(r):
    r["real"] = r["real"].double()


def noise_of_wrong_shape(r):
    r["fixed_noise"][1] = torch.zeros(1, 4, 5, 5)


def nan_weights(r):
    name = next(iter(r["generator"]))
    r["generator"][name] = r["generator"][name] * math.nan


def missing_stage_weights(r):
    r["generator"] = {k: v for k, v in r["generator"].items() if not k.startswith("body.1.")}


def settings_of_wrong_type(r):
    r["config"]["nfc"] = "many"


def more_stages_than_settings(r):
    r["config"]["train_stages"] = 2
    r["shapes"].append([30, 40])
    r["noise_amp"].append(0.1)
    r["fixed_noise"].append(r["fixed_noise"][-1])


@pytest.mark.parametrize("damage, words", [
    (drop_last_noise, "1 fixed noise maps for 2 stages"),
    (nan_amplitude, "noise amplitude of stage 1 is nan"),
    (absurd_shapes, "stage shapes"),
    (negative_shape, "not pairs of positive whole numbers"),
    (real_of_wrong_rank, "not a 1x3xHxW float32 tensor"),
    (real_in_float64, "torch.float64 tensor"),
    (noise_of_wrong_shape, "fixed noise of stage 1"),
    (nan_weights, "generator weight"),
    (missing_stage_weights, "generator weights do not fit"),
    (settings_of_wrong_type, "setting nfc is 'many'"),
    (more_stages_than_settings, "3 stage shapes for 2 stages"),
])
def test_crafted_model_files_are_refused_naming_what_is_wrong(tiny, tmp_path, damage, words):
    record = crafted(torch.load(tiny / "model" / "model.pt", weights_only=True))
    damage(record)
    (tmp_path / "m").mkdir()
    torch.save(record, tmp_path / "m" / "model.pt")
    with pytest.raises(UserError, match="damaged or was not written by consingan") as info:
        consingan.load(tmp_path / "m")
    assert words in str(info.value)
    assert words in one_line_error(invoke("generate", "--model_dir", tmp_path / "m", "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_the_untouched_record_passes_the_checks(tiny):
    """The checks above fail on the damage, not on the record itself."""
    record = crafted(torch.load(tiny / "model" / "model.pt", weights_only=True))
    from consingan.storage.model_file import check_record

    assert check_record(record).nfc == FAST["nfc"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", b"\xff\xfe\x00"])
def test_resume_with_a_corrupted_config_json(tiny, tmp_path, content):
    from consingan.storage.rundir import CHECKPOINT_FILE, CHECKPOINT_FORMAT

    run = tmp_path / "run"
    run.mkdir()
    record = torch.load(tiny / "model" / "model.pt", weights_only=True)
    torch.save({**record, "format": CHECKPOINT_FORMAT}, run / CHECKPOINT_FILE)
    if isinstance(content, bytes):
        (run / "config.json").write_bytes(content)
    else:
        (run / "config.json").write_text(content)
    message = one_line_error(invoke("train", "--resume", run, "--device", "cpu"))
    assert str(run / "config.json") in message and "damaged" in message


def test_resume_of_a_checkpoint_with_nan_amplitudes(tiny, tmp_path):
    from consingan.storage.rundir import CHECKPOINT_FILE, CHECKPOINT_FORMAT

    run = tmp_path / "run"
    run.mkdir()
    record = crafted(torch.load(tiny / "model" / "model.pt", weights_only=True))
    nan_amplitude(record)
    torch.save({**record, "format": CHECKPOINT_FORMAT}, run / CHECKPOINT_FILE)
    assert "noise amplitude of stage 1 is nan" in one_line_error(invoke("train", "--resume", run, "--device", "cpu"))


# --- 5. no wrong advice for non-finite input --------------------------------------------------------
def test_nan_pixel_in_an_array_is_named_not_blamed_on_the_learning_rate(tmp_path):
    img = np.random.default_rng(0).random((30, 40, 3)).astype(np.float32)
    img[5, 7, 1] = np.nan
    with pytest.raises(UserError, match="NaN or infinite pixel values") as info:
        consingan.train(img, out_dir=tmp_path / "m", device="cpu", **FAST)
    assert "--lr_g" not in str(info.value)
    assert not (tmp_path / "m").exists()
    with pytest.raises(UserError, match="NaN or infinite"):
        consingan.train(torch.full((1, 3, 30, 40), math.inf), device="cpu", **FAST)


def test_nan_pixel_in_a_float_tiff_through_the_cli(tmp_path):
    img = np.random.default_rng(0).random((30, 40, 3)).astype(np.float32)
    img[2, 3] = np.nan
    iio.imwrite(tmp_path / "float.tif", img)
    message = one_line_error(invoke("train", "--input_name", tmp_path / "float.tif", "--out_dir", tmp_path / "m",
                                    "--device", "cpu", *FAST_FLAGS))
    assert "NaN or infinite pixel values" in message and "--lr_g" not in message
    assert not (tmp_path / "m").exists()


# --- 6. --train_depth follows --train_stages when not given -----------------------------------------
def test_train_depth_defaults_to_at_most_train_stages():
    assert make_config(train_stages=2).train_depth == 2
    assert make_config(train_stages=5).train_depth == 3
    assert make_config().train_depth == 3
    assert make_config("harmonization", train_stages=2).train_depth == 2
    assert make_config(train_stages=2, preset="fast").train_depth == 2
    assert make_config(train_stages=4, train_depth=4).train_depth == 4
    with pytest.raises(UserError, match="--train_depth 3 is larger than --train_stages 2"):
        make_config(train_stages=2, train_depth=3)


def test_train_stages_2_alone_trains(tiny, tmp_path):
    result = invoke("train", "--input_name", tiny / "img.png", "--out_dir", tmp_path / "m", "--device", "cpu",
                    *FAST_FLAGS)  # FAST_FLAGS: --train_stages 2, no --train_depth
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m" / "config.json").read_text())["train_depth"] == 2


# --- 7. first run ------------------------------------------------------------------------------------
def test_train_says_which_device_and_warns_about_a_gpu_flag_it_cannot_honour(tiny, tmp_path):
    result = invoke("train", "--input_name", tiny / "img.png", "--out_dir", tmp_path / "m", "--gpu", "0",
                    *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    if torch.cuda.is_available():
        assert "Device: cuda:0" in result.stdout
    else:
        assert result.stdout.splitlines()[0].startswith("Device: cpu, computing in ")
        assert "warning: --gpu 0 cannot be used: this machine has no CUDA GPU" in result.stderr
    # a GPU flag with --device cpu
    result = invoke("generate", "--model_dir", tiny / "model", "--num_samples", "1", "--gpu", "1",
                    "--device", "cpu", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "warning: --gpu 1 is ignored: --device cpu runs on the CPU" in result.stderr


@pytest.mark.parametrize("command", ["train", "generate", "evaluate", "compose"])
def test_help_at_80_columns_keeps_flag_names_whole(command):
    result = invoke(command, "--help", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    text = result.output
    assert max(len(line) for line in text.splitlines()) <= 80
    click_command = __import__("typer").main.get_command(app).commands[command]
    for param in click_command.params:
        for name in param.opts + param.secondary_opts:
            assert any(name in line.replace(",", " ").split() for line in text.splitlines()), name
    assert "benchmarks/" not in text and "METHOD" not in text


def run_script(path, *args, monkeypatch, capsys):
    """A script at the repository root (main_train.py, evaluate_model.py) run in-process as __main__."""
    monkeypatch.setattr(sys, "argv", [str(path), *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.mark.parametrize("script", ["main_train.py", "main_generate.py", "evaluate_model.py"])
def test_script_usage_line_works_as_printed(script, monkeypatch, capsys):
    code, out, _ = run_script(ROOT / script, "--help", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    usage = out.splitlines()[0]
    assert usage == f"Usage: {script} [OPTIONS]"
    # what the usage line says: the script and options, nothing in between
    code, _, err = run_script(ROOT / script, "--model_dir" if script != "main_train.py" else "--input_name",
                              "/nonexistent/x", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and err.startswith("error: ") and "not found" in err


def test_evaluate_model_takes_the_references_flags(tiny, tmp_path, monkeypatch, capsys):
    code, out, err = run_script(ROOT / "evaluate_model.py", "--model_dir", tiny / "model", "--num_samples", "2",
                                "--manualSeed", "3", "--gpu", "0", "--out", tmp_path / "ref",
                                monkeypatch=monkeypatch, capsys=capsys)
    assert code in (0, None), err
    assert invoke("generate", "--model_dir", tiny / "model", "--num_samples", "2", "--seed", "3",
                  "--out", tmp_path / "gen").exit_code == 0
    for i in range(2):
        a = iio.imread(tmp_path / "ref" / "random_samples" / f"gen_sample_{i}.png")
        b = iio.imread(tmp_path / "gen" / "random_samples" / f"gen_sample_{i}.png")
        assert np.array_equal(a, b)  # --manualSeed is the seed of the samples
