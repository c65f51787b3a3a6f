import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(2)
# Trainings in tests use 2 threads whatever the machine's load (the thread rule would pick by load,
# and runs that are compared with each other must use the same count); tests of the rule unset it.
os.environ.setdefault("CONSINGAN_THREADS", "2")

# A tiny configuration that trains in seconds on a 2-core CPU.
TINY = dict(train_stages=3, niter=20, nfc=8, min_size=12, max_size=40, manualSeed=7)
TINY_FLAGS = ["--train_stages", "3", "--niter", "20", "--nfc", "8", "--min_size", "12", "--max_size", "40",
              "--manualSeed", "7", "--device", "cpu", "--progress", "plain"]


# The project's scripts and the commands they stand for (conftest runs them in-process).
SCRIPTS = {"main_train.py": "train", "main_generate.py": "generate", "evaluate_model.py": "generate"}


def run_cli(*args, check=True, subprocess_=False):
    """Run a command-line program of the project ('main_train.py ...', '-m consingan ...') and return
    (returncode, stdout, stderr) like subprocess.run. The project's commands run in-process (typer's
    test runner, in the repository root): much faster than a fresh Python each. An exception that
    escapes a command is written to stderr as the traceback Python would print, so a test that looks
    for 'Traceback' still sees it. ``subprocess_``: a real process (what a script's own entry does)."""
    import os
    import traceback
    from types import SimpleNamespace

    args = [str(a) for a in args]
    argv = None
    if not subprocess_ and args and args[0] in SCRIPTS:
        argv = [SCRIPTS[args[0]], *args[1:]]
    elif not subprocess_ and args[:2] == ["-m", "consingan"]:
        argv = args[2:]
    if argv is None:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    else:
        from typer.testing import CliRunner

        from consingan.cli import app

        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            result = CliRunner().invoke(app, argv)
        finally:
            os.chdir(cwd)
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(*result.exc_info))
        code = result.exit_code if result.exception is None or isinstance(result.exception, SystemExit) else 1
        proc = SimpleNamespace(returncode=code, stdout=result.stdout, stderr=stderr, args=args)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def tiny_image(tmp_path):
    """A 30x45 PNG with structure (gradients and a few blocks), written to a temporary folder."""
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    h, w = 30, 45
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 3.0)], axis=2)
    for _ in range(6):
        r, c = rng.integers(0, h - 6), rng.integers(0, w - 6)
        img[r:r + 6, c:c + 6] = rng.random(3)
    path = tmp_path / "tiny.png"
    iio.imwrite(path, (img * 255).round().astype(np.uint8))
    return path
