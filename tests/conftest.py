import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(2)

# A tiny configuration that trains in seconds on a 2-core CPU.
TINY = dict(train_stages=3, niter=20, nfc=8, min_size=12, max_size=40, manualSeed=7)
TINY_FLAGS = ["--train_stages", "3", "--niter", "20", "--nfc", "8", "--min_size", "12", "--max_size", "40",
              "--manualSeed", "7", "--device", "cpu", "--progress", "plain"]


def run_cli(*args, check=True):
    """Run a command-line program of the project (e.g. 'main_train.py', ...) and return the result."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
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
