"""Super-resolution (docs/method.md 5): output sizes, agreement with the input, seeds, the command line."""
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import consingan
from consingan import cli
from consingan.config import make_config
from consingan.core.image import from_numpy, resize, stage_scales
from consingan.errors import UserError
from consingan.model import ConSinGAN
from consingan.tasks import superres

runner = CliRunner()
FLAGS = ["--train_stages", "3", "--niter", "20", "--nfc", "8", "--max_size", "40", "--manualSeed", "7",
         "--device", "cpu", "--progress", "none"]


def structured(h=30, w=45, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 3.0)], axis=2)
    for _ in range(6):
        r, c = rng.integers(0, h - 6), rng.integers(0, w - 6)
        img[r:r + 6, c:c + 6] = rng.random(3)
    return (img * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def sr_dir(tmp_path_factory):
    """A tiny superres model trained through the command line (sr_factor 4)."""
    root = tmp_path_factory.mktemp("sr")
    iio.imwrite(root / "lr.png", structured())
    result = runner.invoke(cli.app, ["train", "--train_mode", "superres", "--input_name", str(root / "lr.png"),
                                     "--out_dir", str(root / "model"), *FLAGS])
    assert result.exit_code == 0, result.output
    return root / "model"


@pytest.fixture(scope="module")
def sr_model(sr_dir):
    return consingan.load(sr_dir)


def rmse(a, b):
    return float((a - b).pow(2).mean().sqrt())


def test_sr_steps_multiply_to_the_factor_near_singans_step():
    for factor, n in ((2, 3), (4, 6), (8, 9)):
        steps, r = superres.sr_steps(factor)
        assert steps == n and math.isclose(r ** steps, factor) and abs(r - 2 ** (1 / 3)) < 0.02
    assert superres.sr_steps(1.1)[0] == 1  # at least one step


@pytest.mark.slow
def test_the_trained_pyramid_step_is_the_upsampling_step(sr_model):
    c = sr_model.config
    assert c.train_mode == "superres" and c.alpha == 100.0 and c.sr_factor == 4.0
    h, w = sr_model.real.shape[-2:]
    step = 1 / stage_scales(h, w, c)[-2]
    assert abs(step - superres.sr_steps(4)[1]) < 0.03  # min_size was chosen for it (rounded to a pixel)
    # a user's --min_size wins
    config = make_config("superres", train_stages=3, min_size=12, max_size=40, manualSeed=1)
    assert superres.superres_config(torch.zeros(1, 3, 30, 45), config, min_size_given=True).min_size == 12
    assert superres.superres_config(torch.zeros(1, 3, 30, 45), config).min_size == round(27 / 1.26 ** 2)  # 27x40 after --max_size 40


@pytest.mark.slow
@pytest.mark.parametrize("factor", [2, 3.5, 4, 8])
def test_output_is_exactly_factor_times_the_training_size(sr_model, factor):
    h, w = sr_model.real.shape[-2:]
    out = sr_model.super_resolve(factor, seed=0)
    assert out.shape == (1, 3, round(h * factor), round(w * factor))
    assert torch.isfinite(out).all() and out.abs().max() <= 1


@pytest.mark.slow
def test_shrunk_back_the_result_stays_close_to_the_input(sr_model):
    real = sr_model.real
    out = sr_model.super_resolve(4, seed=0)
    raw = superres.super_resolve(sr_model, 4, seed=0, back_projection=0)
    err, raw_err = rmse(resize(out, real.shape[-2:]), real), rmse(resize(raw, real.shape[-2:]), real)
    assert err < 0.03  # about 4 of 255 levels
    assert err < raw_err / 3  # the back-projection does it: the generator alone drifts further
    # and it changes what the generator made, not replaces it with the bicubic enlargement
    assert rmse(out, superres.bicubic(real, 4)) > 0.01


@pytest.mark.slow
def test_seeds_reproduce_and_differ(sr_model):
    a = sr_model.super_resolve(2, seed=3)
    assert torch.equal(a, sr_model.super_resolve(2, seed=3))
    assert not torch.equal(a, sr_model.super_resolve(2, seed=4))


def test_linear_resize_is_the_projects_resize_without_truncation():
    img = from_numpy(structured())
    for size in ((15, 22), (60, 90)):
        # the resize truncates to 8-bit levels first and clamps the cubic's overshoot: clamped, the two
        # are at most a level (2/255) apart, plus float rounding
        assert (superres.linear_resize(img, size).clamp(-1, 1) - resize(img, size)).abs().max() < 2.5 / 255 * 2
    diff = torch.full((1, 3, 10, 10), -0.5)  # differences below -1..1 resize as they are (linear)
    assert torch.allclose(superres.linear_resize(diff, (20, 20)), torch.full((1, 3, 20, 20), -0.5), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1.0, 0.5, -2])
def test_bad_factors_are_refused(sr_model, bad):
    with pytest.raises(UserError, match="sr_factor|factor"):
        superres.check_factor(bad)
    with pytest.raises(UserError):
        sr_model.super_resolve(bad)


def test_config_refuses_a_non_finite_sr_factor():
    for bad in (float("nan"), float("inf"), 1.0):
        with pytest.raises(UserError, match="--sr_factor"):
            make_config("superres", sr_factor=bad, manualSeed=1)


@pytest.mark.slow
def test_generate_writes_sr_and_bicubic_and_never_overwrites(sr_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["generate", "--model_dir", str(sr_dir), "--sr_factor", "4", "--seed", "0", "--out", str(out),
            "--device", "cpu"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    real = consingan.load(sr_dir).real
    h, w = real.shape[-2:]
    sr, bic = iio.imread(out / "sr_x4.png"), iio.imread(out / "bicubic_x4.png")
    assert sr.shape == bic.shape == (4 * h, 4 * w, 3)
    assert not np.array_equal(sr, bic)
    before = (out / "sr_x4.png").read_bytes()
    again = runner.invoke(cli.app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert (out / "sr_x4.png").read_bytes() == before
    # a superres model without --sr_factor enlarges by its own factor
    result = runner.invoke(cli.app, ["generate", "--model_dir", str(sr_dir), "--out", str(tmp_path / "own"),
                                     "--seed", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert iio.imread(tmp_path / "own" / "sr_x4.png").shape == (4 * h, 4 * w, 3)


@pytest.mark.slow
@pytest.mark.parametrize("value", ["nan", "inf", "1", "-3"])
def test_generate_refuses_bad_factors_in_one_line(sr_dir, tmp_path, value):
    result = runner.invoke(cli.app, ["generate", "--model_dir", str(sr_dir), "--sr_factor", value,
                                     "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert result.exit_code == 2 and result.output.startswith("error:") and "--sr_factor" in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_sr_factor_on_another_model_says_what_to_train(sr_model, tmp_path):
    m = sr_model
    other = ConSinGAN(m.config.replace(train_mode="retarget"), m.G, m.fixed, m.amps, m.shapes, m.real, m.D_state, {})
    other.save(tmp_path / "m")
    result = runner.invoke(cli.app, ["generate", "--model_dir", str(tmp_path / "m"), "--sr_factor", "4",
                                     "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert result.exit_code == 2 and "--train_mode superres" in result.output
    with pytest.raises(UserError, match="--train_mode superres"):
        other.super_resolve(4)


def test_train_refuses_sr_factor_without_superres(tmp_path):
    iio.imwrite(tmp_path / "a.png", structured())
    result = runner.invoke(cli.app, ["train", "--input_name", str(tmp_path / "a.png"), "--sr_factor", "4",
                                     "--out_dir", str(tmp_path / "m"), *FLAGS])
    assert result.exit_code == 2 and "--train_mode superres" in result.output
    assert not (tmp_path / "m").exists()
