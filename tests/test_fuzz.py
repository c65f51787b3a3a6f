"""Random numbers for the numeric flags of train and generate (NaN, inf, 0, negatives, huge; generate
on a generation and an animation model): every run ends with exit status 0 or 2, never a traceback,
and writes nothing outside its output folder.

Work-sized flags (--niter, --Gsteps, --Dsteps, --num_samples, --num_frames) are drawn small or
invalid, never huge: a huge valid count is a long run, not an error. Everything else may be huge.
"""
import math
import shutil
import string

import imageio.v3 as iio
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import consingan
from consingan.cli import app

runner = CliRunner()
# Bounded: about 10 s on a 2-core CPU without failures (a failure then shrinks, which takes longer).
TRAIN_FUZZ = settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
GENERATE_FUZZ = settings(TRAIN_FUZZ, max_examples=40)
ANIMATION_FUZZ = settings(TRAIN_FUZZ, max_examples=20)

SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e300, -1e300, 1e-300, 5e-324]
HUGE_INTS = [2**31, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1]
WILD_FLOAT = st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(allow_nan=True, allow_infinity=True))
WILD_INT = st.one_of(st.integers(-3, 0), st.sampled_from(HUGE_INTS), st.integers())
WILD_SMALL_INT = st.integers(-3, 0)  # work-sized flags: invalid, never a huge valid count


def real(*usual):
    return st.sampled_from(usual), WILD_FLOAT


def whole(*usual, huge=True):
    return st.sampled_from(usual), WILD_INT if huge else WILD_SMALL_INT


TRAIN_FLAGS = {
    "--lr_g": real(5e-4, 1e-3), "--lr_d": real(5e-4), "--lr_scale": real(0.1, 0.5),
    "--noise_amp": real(0.1, 1.0), "--beta1": real(0.5, 0.9), "--gamma": real(0.1),
    "--lambda_grad": real(0.1, 0.0), "--alpha": real(10.0, 0.0), "--lrelu_alpha": real(0.05, -0.2),
    "--nfc": whole(2, 4, 8), "--num_layer": whole(1, 2), "--ker_size": whole(1, 3),
    "--min_size": whole(10, 12), "--max_size": whole(16, 24), "--train_stages": whole(2, 3),
    "--train_depth": whole(1, 2), "--manualSeed": whole(0, 7), "--gp_every": whole(1, 2),
    "--niter_low": whole(0, 1, huge=False), "--niter": whole(1, 2, huge=False),
    "--Gsteps": whole(1, 2, huge=False), "--Dsteps": whole(1, 2, huge=False),
    "--checkpoint_every": whole(1, 250),
}
GENERATE_FLAGS = {
    "--scale_h": real(1.0, 0.5, 2.0, 0.01), "--scale_w": real(1.0, 1.5, 0.3),
    "--seed": whole(0, 3), "--start_scale": whole(0, 1, 2), "--num_samples": whole(1, 2, huge=False),
}
ANIMATION_FLAGS = {
    "--seed": whole(0, 3), "--start_scale": whole(0, 1), "--alpha": real(0.1, 0.5), "--beta": real(0.9, 0.8),
    "--fps": real(10.0, 25.0), "--num_frames": whole(1, 2, huge=False),
}
# The flags left out of a draw: a tiny, fast run.
TRAIN_BASE = {"--train_stages": 2, "--niter": 1, "--nfc": 4, "--min_size": 10, "--max_size": 16,
              "--manualSeed": 1}


@st.composite
def drawn(draw, flags: dict):
    """Some of ``flags`` at usual values, and up to three (often none) at wild ones: NaN, inf, 0,
    negatives, huge. Runs with no wild value get through to the real work."""
    values = draw(st.fixed_dictionaries({}, optional={f: usual for f, (usual, _) in flags.items()}))
    wild = draw(st.lists(st.sampled_from(sorted(flags)), max_size=3, unique=True))
    for flag in wild:
        values[flag] = draw(flags[flag][1])
    return values


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A folder with the training image and a tiny trained model: all a run may read; it writes into
    its own output folder in here."""
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    iio.imwrite(root / "img.png", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    for mode in ("generation", "animation"):
        consingan.train(str(root / "img.png"), out_dir=root / mode, device="cpu", train_mode=mode, train_stages=2,
                        niter=1, nfc=4, min_size=12, max_size=24, manualSeed=0)
    return root


def snapshot(root, skip):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if skip not in p.parents and p != skip)


def run_and_check(root, args, out):
    before = snapshot(root, out)
    try:
        result = runner.invoke(app, [str(a) for a in args])
        event(f"exit {result.exit_code}")  # pytest --hypothesis-show-statistics: how many runs got through
        assert result.exit_code in (0, 2), (args, result.exit_code, result.output, result.exception)
        assert "Traceback" not in result.output, (args, result.output)
        if result.exit_code == 2:  # our one line, or click's usage error for a value it parses (--checkpoint_every 0)
            errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error: ")]
            assert len(errors) == 1, (args, result.stderr)
        assert snapshot(root, out) == before, args
    finally:
        shutil.rmtree(out, ignore_errors=True)


@TRAIN_FUZZ
@given(flags=drawn(TRAIN_FLAGS), name=st.text(string.ascii_lowercase, min_size=6, max_size=6))
def test_fuzz_train_flags(sandbox, flags, name):
    values = {**TRAIN_BASE, **flags}
    out = sandbox / f"train_{name}"
    args = ["train", "--input_name", sandbox / "img.png", "--out_dir", out, "--device", "cpu", "--progress", "none"]
    for flag, value in values.items():
        args += [flag, repr(value) if isinstance(value, float) else value]
    run_and_check(sandbox, args, out)


@GENERATE_FUZZ
@given(flags=drawn(GENERATE_FLAGS), name=st.text(string.ascii_lowercase, min_size=6, max_size=6))
def test_fuzz_generate_flags(sandbox, flags, name):
    out = sandbox / f"gen_{name}"
    args = ["generate", "--model_dir", sandbox / "generation", "--out", out, "--device", "cpu", "--num_samples", 1]
    for flag, value in flags.items():
        args += [flag, repr(value) if isinstance(value, float) else value]
    run_and_check(sandbox, args, out)


@ANIMATION_FUZZ
@given(flags=drawn(ANIMATION_FLAGS), name=st.text(string.ascii_lowercase, min_size=6, max_size=6))
def test_fuzz_animation_flags(sandbox, flags, name):
    out = sandbox / f"gif_{name}"
    values = {"--start_scale": 1, "--beta": 0.9, "--num_frames": 2, **flags}  # one short walk
    args = ["generate", "--model_dir", sandbox / "animation", "--out", out, "--device", "cpu"]
    for flag, value in values.items():
        args += [flag, repr(value) if isinstance(value, float) else value]
    run_and_check(sandbox, args, out)
