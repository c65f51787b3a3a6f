"""Paint-to-image (docs/method.md 5): the palette, paint mode's stage-0 input, inference, the command line."""
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import consingan
from consingan import api, cli
from consingan.config import make_config
from consingan.core.image import from_numpy, to_uint8
from consingan.errors import UserError
from consingan.model import ConSinGAN
from consingan.tasks import paint

runner = CliRunner()
FLAGS = ["--train_stages", "3", "--niter", "20", "--nfc", "8", "--min_size", "12", "--max_size", "40",
         "--manualSeed", "7", "--device", "cpu", "--progress", "none"]
TINY = dict(train_stages=3, niter=20, nfc=8, min_size=12, max_size=40, manualSeed=7)


def regions(h=30, w=45, seed=0):
    """Six flat regions of distinct colours with a little noise: a picture with a clear palette."""
    rng = np.random.default_rng(seed)
    colours = np.array([[20, 30, 200], [230, 220, 40], [30, 160, 50], [200, 40, 40], [240, 240, 240], [90, 60, 30]])
    img = np.zeros((h, w, 3))
    for i, c in enumerate(colours):
        img[:, i * w // 6:(i + 1) * w // 6] = c
    img[h // 2:, :] = img[h // 2:, ::-1]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def colours_of(t):
    return {tuple(v) for v in t[0].permute(1, 2, 0).reshape(-1, 3).tolist()}


@pytest.fixture(scope="module")
def paint_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("paint")
    iio.imwrite(root / "img.png", regions())
    result = runner.invoke(cli.app, ["train", "--train_mode", "paint", "--input_name", str(root / "img.png"),
                                     "--out_dir", str(root / "model"), *FLAGS])
    assert result.exit_code == 0, result.output
    return root / "model"


@pytest.fixture(scope="module")
def paint_model(paint_dir):
    return consingan.load(paint_dir)


# --- the palette ----------------------------------------------------------------------------------

def test_quantisation_maps_every_pixel_to_one_of_k_colours():
    img = from_numpy(regions())
    for k in (2, 5, 8):
        palette = paint.palette_of(img, k)
        assert palette.shape == (k, 3) and palette.abs().max() <= 1
        q = paint.quantise(img, palette)
        assert q.shape == img.shape
        assert colours_of(q) <= {tuple(c) for c in palette.tolist()}
        # each pixel took its nearest colour
        d = torch.cdist(img[0].permute(1, 2, 0).reshape(-1, 3), palette)
        assert torch.equal(palette[d.argmin(1)], q[0].permute(1, 2, 0).reshape(-1, 3))
    assert torch.equal(paint.palette_of(img, 5), paint.palette_of(img, 5))  # a fixed seed


def test_a_picture_of_fewer_colours_gives_those_colours():
    img = torch.tensor([[-1.0, 0.0, 1.0]]).view(1, 3, 1, 1).expand(1, 3, 8, 9).clone()
    img[..., 4:] = 0.5
    palette = paint.palette_of(img, 5)
    assert colours_of(img) == {tuple(c) for c in palette.tolist()}


def test_paint_mode_input_keeps_palette_colours_and_draws_only_from_the_run_generator():
    config = make_config("paint", manualSeed=1)
    real0 = from_numpy(regions(25, 37))
    palette = {tuple(c) for c in paint.palette_of(real0, 5).tolist()}
    hook = paint.stage0_paint_input(config)

    def rng(seed):
        g = torch.Generator().manual_seed(seed)
        return SimpleNamespace(cpu=g, device=g)

    state = torch.get_rng_state()
    a = [hook(real0, r) for r in [rng(3)] * 6]
    b = [hook(real0, r) for r in [rng(3)] * 6]
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    q = paint.quantise(real0, paint.palette_of(real0, 5))
    assert sum(not torch.equal(x, q) for x in a) >= 4  # holes (p 0.9) and shifts (p 0.5) vary it
    assert all(colours_of(x) <= palette for x in a)
    hook(real0)  # without rng: torch's default generator
    assert not torch.equal(torch.get_rng_state(), state)


# --- inference ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_palette_of_the_model_is_k_means_of_its_stage0_image(paint_model):
    palette = paint.model_palette(paint_model)
    assert palette.shape == (paint_model.config.paint_colors, 3) == (5, 3)
    # the colours paint mode trained with: its stage-0 input holds only these
    g = torch.Generator().manual_seed(0)
    x = paint.stage0_paint_input(paint_model.config)(paint_model.reals()[0], SimpleNamespace(cpu=g, device=g))
    assert colours_of(x) <= {tuple(c) for c in palette.tolist()}


@pytest.mark.slow
def test_a_flat_painting_becomes_that_colours_region(paint_model):
    palette = paint.model_palette(paint_model)
    h, w = paint_model.real.shape[-2:]
    outs = {}
    for i in (0, len(palette) - 1):  # the darkest and the brightest colour
        flat = palette[i].view(1, 3, 1, 1).expand(1, 3, h, w)
        z0 = paint.painting_stage0(paint_model, flat)
        assert colours_of(z0) == {tuple(palette[i].tolist())}  # stage 0 gets exactly that colour
        outs[i] = paint_model.paint(flat, num_samples=2, seed=0)
        assert outs[i].shape == (2, 3, h, w)
    lo, hi = palette[0], palette[-1]
    mean = {i: o.mean(dim=(0, 2, 3)) for i, o in outs.items()}
    # each output is nearer its own colour than the other output is
    assert (mean[0] - lo).norm() < (mean[len(palette) - 1] - lo).norm()
    assert (mean[len(palette) - 1] - hi).norm() < (mean[0] - hi).norm()


@pytest.mark.slow
def test_paint_seeds_reproduce_and_samples_differ(paint_model):
    painting = from_numpy(regions(20, 30, seed=1))
    a = paint_model.paint(painting, num_samples=3, seed=5)
    assert torch.equal(a, paint_model.paint(painting, num_samples=3, seed=5))
    assert torch.equal(a[:2], paint_model.paint(painting, num_samples=2, seed=5))  # sample i: (seed, i)
    assert not torch.equal(a[0], a[1])  # fresh noise above stage 0


@pytest.mark.slow
def test_generation_models_paint_too_and_animation_models_refuse(tmp_path):
    img = regions()
    gen = api.train(img, train_mode="generation", **TINY)
    out = gen.paint(img, num_samples=2, seed=0)
    assert out.shape == (2, 3, *gen.real.shape[-2:])
    anim = ConSinGAN(gen.config.replace(train_mode="animation"), gen.G, gen.fixed, gen.amps, gen.shapes,
                     gen.real, None, {})
    with pytest.raises(UserError, match="--train_mode paint"):
        anim.paint(img)


@pytest.mark.slow
def test_transparent_paintings_are_refused_and_opaque_alpha_is_fine(paint_model, tmp_path):
    rgba = np.dstack([regions(), np.full((30, 45), 255, np.uint8)])
    iio.imwrite(tmp_path / "opaque.png", rgba)
    assert paint_model.paint(tmp_path / "opaque.png", seed=0).shape[0] == 1
    rgba[:5, :5, 3] = 0
    iio.imwrite(tmp_path / "holes.png", rgba)
    with pytest.raises(UserError, match="transparent"):
        paint_model.paint(tmp_path / "holes.png")
    with pytest.raises(UserError, match="transparent"):
        paint_model.paint(rgba)


# --- the command line ---------------------------------------------------------------------------

@pytest.mark.slow
def test_generate_paint_writes_samples_and_never_overwrites(paint_dir, tmp_path):
    iio.imwrite(tmp_path / "p.png", regions(60, 90, seed=2))  # any size: resized like a naive image
    out = tmp_path / "o"
    args = ["generate", "--model_dir", str(paint_dir), "--paint", str(tmp_path / "p.png"), "--num_samples", "2",
            "--seed", "0", "--out", str(out), "--device", "cpu"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    model = consingan.load(paint_dir)
    shape = (*model.real.shape[-2:], 3)
    assert iio.imread(out / "painted_0.png").shape == iio.imread(out / "painted_1.png").shape == shape
    stage0 = from_numpy(iio.imread(out / "painting_stage0.png"))
    expected = paint.painting_stage0(model, from_numpy(regions(60, 90, seed=2)))
    assert np.array_equal(iio.imread(out / "painting_stage0.png"), to_uint8(expected))
    assert stage0.shape[-2:] == model.shapes[0]
    again = runner.invoke(cli.app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    both = runner.invoke(cli.app, args[:-4] + ["--sr_factor", "2", "--out", str(tmp_path / "b"), "--device", "cpu"])
    assert both.exit_code == 2 and "--sr_factor and --paint" in both.output


@pytest.mark.slow
def test_palette_command_writes_a_swatch(paint_dir, tmp_path):
    result = runner.invoke(cli.app, ["palette", "--model_dir", str(paint_dir), "--out", str(tmp_path / "pal.png"),
                                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    swatch = iio.imread(tmp_path / "pal.png")
    palette = paint.model_palette(consingan.load(paint_dir))
    assert swatch.shape == (48, 48 * len(palette), 3)
    for i, c in enumerate(palette):
        assert np.array_equal(swatch[24, 48 * i + 24], to_uint8(c.view(1, 3, 1, 1))[0, 0])
        assert paint.hex_colour(c) in result.output
    again = runner.invoke(cli.app, ["palette", "--model_dir", str(paint_dir), "--out", str(tmp_path / "pal.png")])
    assert again.exit_code == 2 and "already exists" in again.output


def test_train_refuses_paint_colors_outside_paint_mode(tmp_path):
    iio.imwrite(tmp_path / "a.png", regions())
    result = runner.invoke(cli.app, ["train", "--input_name", str(tmp_path / "a.png"), "--paint_colors", "4",
                                     "--out_dir", str(tmp_path / "m"), *FLAGS])
    assert result.exit_code == 2 and "--train_mode paint" in result.output
    with pytest.raises(UserError, match="--paint_colors"):
        make_config("paint", paint_colors=1, manualSeed=1)
