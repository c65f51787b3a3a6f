"""Harmonization and editing: augmentations, masked blending, fine-tuning, and the command line."""
import json
import random
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import consingan
from consingan.core import augment
from consingan.api import fine_tune, train, write_harmonized
from consingan.tasks.compose import write_composite
from consingan.config import make_config
from consingan.errors import ConSinGANWarning, UserError
from consingan.tasks.harmonize import harmonize, write_results
from consingan.tasks.masks import blend_reach, mask_from_array
from consingan.core.image import to_uint8
from consingan.storage.image_files import read_image
from consingan.core.engine import Engine
from conftest import run_cli

# Tiny runs; the training image is 40x60 so that pixels beyond editing's blend reach (40) exist.
FLAGS = ["--train_stages", "3", "--niter", "4", "--nfc", "8", "--min_size", "12", "--max_size", "60",
         "--manualSeed", "3", "--device", "cpu", "--progress", "none"]


def structured(h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 3.0)], axis=2) * 0.7 + 0.3 * rng.random((h, w, 3))
    return (img * 255).round().astype(np.uint8)


# --- augmentations ----------------------------------------------------------------------------

def levels_image():
    return torch.from_numpy(structured(24, 32)).permute(2, 0, 1)[None].float()


@pytest.mark.parametrize("op", [augment.multiplicative_noise, augment.shared_gaussian_noise, augment.gaussian_noise,
                                augment.invert, augment.sepia, augment.drop_channel, augment.shuffle_channels,
                                augment.shift_hsv, augment.holes])
def test_each_harmonization_augmentation_keeps_shape_and_range_and_changes_the_image(op):
    torch.manual_seed(0)
    x = levels_image()
    y = op(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    top = 256 if op is augment.holes else 255  # a hole's colour may be level 256 (METHOD 4)
    assert y.min() >= 0 and y.max() <= top
    assert (y - x).abs().mean() > 1.0


def test_harmonization_augmentation_is_an_image_in_range_and_varies():
    torch.manual_seed(1)
    real0 = levels_image() / 127.5 - 1
    outs = [augment.harmonization_augment(real0) for _ in range(8)]
    assert all(o.shape == real0.shape and o.min() >= -1 and o.max() <= 1 for o in outs)
    assert sum(not torch.equal(o, real0) for o in outs) >= 6  # holes alone fire with p=0.9


def test_grid_shuffle_moves_content_and_keeps_shape():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 40, 60) * 2 - 1  # unique values: a changed pixel must come from elsewhere
    for tiles in range(1, 6):
        y = augment.grid_shuffle(x, tiles=tiles)
        assert y.shape == x.shape
        changed = (y != x).any(1)[0]
        assert changed.sum() > 0, tiles
        moved = y[0, 0][changed]
        assert torch.isin(moved, x[0, 0]).all()  # copied, not invented


@pytest.mark.parametrize("mode", ["harmonization", "editing"])
def test_stage0_augmentation_uses_only_torch_rng_and_ignores_memory_layout(mode):
    f = augment.stage0_augmentation(make_config(mode, manualSeed=1))
    real0 = torch.from_numpy(structured(30, 40)).permute(2, 0, 1)[None].float() / 127.5 - 1
    torch.manual_seed(5)
    random.seed(1)
    np.random.seed(1)
    a = f(real0)
    torch.manual_seed(5)
    random.seed(2)
    np.random.seed(2)
    b = f(real0.contiguous(memory_format=torch.channels_last))
    assert torch.equal(a, b) and a.shape == real0.shape
    torch.manual_seed(6)
    assert not torch.equal(a, f(real0))
    if mode == "editing":  # grid shuffle + 0.1 * N(0, 1)
        assert 0.05 < float((a - real0).std()) < 0.5


# --- masks and blending -----------------------------------------------------------------------

def test_masks_are_gray_rgb_or_alpha_with_the_object_above_level_zero():
    # The reference's rule (METHOD 4): the level truncated to 8 bits above 0; level 1 truncates to 0.
    gray = np.array([[0, 1], [2, 255]], np.uint8)
    expected = np.array([[False, False], [True, True]])
    assert np.array_equal(mask_from_array(gray), expected)
    assert np.array_equal(mask_from_array(np.dstack([gray] * 3)), expected)
    assert np.array_equal(mask_from_array(gray.astype(np.uint16) * 257), expected)
    alpha = np.zeros((2, 2, 4), np.uint8)
    alpha[..., 3] = gray  # colours all black: the alpha channel is the mask
    assert np.array_equal(mask_from_array(alpha), expected)
    opaque = np.dstack([gray] * 3 + [np.full((2, 2), 255, np.uint8)])
    assert np.array_equal(mask_from_array(opaque), expected)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A background, a naive image made by compose (its command is tested in test_compose.py), and tiny
    harmonization and editing models trained through the command line with --naive_img."""
    tmp = tmp_path_factory.mktemp("harmonization")
    iio.imwrite(tmp / "bg.png", structured())
    obj = np.zeros((10, 10, 4), np.uint8)
    obj[..., 0], obj[2:9, 2:9, 3] = 255, 255
    iio.imwrite(tmp / "obj.png", obj)
    write_composite(tmp / "bg.png", tmp / "obj.png", tmp / "naive.png", x=40, y=5)
    for mode in ("harmonization", "editing"):
        run_cli("main_train.py", "--train_mode", mode, "--input_name", tmp / "bg.png", "--naive_img",
                tmp / "naive.png", "--out_dir", tmp / mode, *FLAGS)
    return SimpleNamespace(tmp=tmp, bg=tmp / "bg.png", naive=tmp / "naive.png", harm=tmp / "harmonization",
                           edit=tmp / "editing")


@pytest.mark.parametrize("mode", ["harmonization", "editing"])
def test_blend_equals_training_image_beyond_dilation_and_blur(runs, mode):
    model = consingan.load(runs.tmp / mode)
    h, w = model.real.shape[-2:]
    assert (h, w) == (40, 60)
    mask = np.zeros((h, w), bool)
    mask[:4, :4] = True
    out, blended = harmonize(model, read_image(runs.naive), mask, seed=0)
    reach = blend_reach(model.config)
    assert reach == {"harmonization": 7 + 20, "editing": 20 + 20}[mode]
    rows, cols = np.mgrid[0:h, 0:w]
    far = np.maximum(rows - 3, cols - 3) > reach
    assert far.sum() > 100
    got, real, raw = (to_uint8(t).astype(int) for t in (blended, model.real, out))
    assert np.abs(got[far] - real[far]).max() <= 1
    # The mask region does change: it is the generator's output there, not the training image.
    assert np.abs(got[:4, :4] - real[:4, :4]).max() > 1
    assert np.abs(got[1, 1] - raw[1, 1]).max() <= 3


def test_training_writes_a_result_per_stage_with_naive_img(runs):
    for run, name in ((runs.harm, "harmonized.png"), (runs.edit, "edited.png")):
        model = consingan.load(run)
        for k, (h, w) in enumerate(model.shapes):
            assert iio.imread(run / str(k) / name).shape == (h, w, 3)
        assert json.loads((run / "config.json").read_text())["naive_img"] == runs.naive.as_posix()
    harm = json.loads((runs.harm / "config.json").read_text())
    assert harm["train_mode"] == "harmonization" and harm["batch_norm"] and harm["lrelu_alpha"] == 0.3


def test_generate_on_naive_image_of_another_size_with_rgba_mask(runs):
    naive = iio.imread(runs.naive)
    big = np.repeat(np.repeat(naive, 2, axis=0), 3, axis=1)  # 80x180: another size and aspect ratio
    mask = np.repeat(np.repeat(iio.imread(runs.tmp / "naive_mask.png"), 2, axis=0), 3, axis=1)
    rgba = np.zeros(mask.shape + (4,), np.uint8)
    rgba[..., 3] = mask
    iio.imwrite(runs.tmp / "big.png", big)
    iio.imwrite(runs.tmp / "big_alpha.png", rgba)
    proc = run_cli("main_generate.py", "--model_dir", runs.harm, "--naive_img", runs.tmp / "big.png",
                   "--mask", runs.tmp / "big_alpha.png")
    out = runs.harm / "Evaluation" / "big"  # the default: one folder per naive image
    assert "warning:" in proc.stderr and "aspect ratio" in proc.stderr and "Traceback" not in proc.stderr
    for name in ("harmonized_wo_mask.png", "harmonized_w_mask.png"):
        assert iio.imread(out / name).shape == (40, 60, 3)
    # An editing model; the mask is found beside the naive image.
    folder = runs.tmp / "edited"
    write_harmonized(consingan.load(runs.edit), runs.naive, folder, seed=0)
    blended, real = iio.imread(folder / "edited_w_mask.png").astype(int), structured().astype(int)
    assert iio.imread(folder / "edited_wo_mask.png").shape == (40, 60, 3)
    assert np.abs(blended[:, :2] - real[:, :2]).max() <= 1  # more than 40 px left of the pasted square


def test_without_mask_only_the_unmasked_result_and_nothing_is_overwritten(runs, tmp_path):
    model = consingan.load(runs.harm)
    iio.imwrite(tmp_path / "plain.png", iio.imread(runs.naive))
    with pytest.warns(ConSinGANWarning, match="no mask"):
        files = write_results(model, tmp_path / "plain.png", tmp_path / "o")
    assert [f.name for f in files] == ["harmonized_wo_mask.png"] and files[0].is_file()
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["harmonized_wo_mask.png"]
    with pytest.raises(UserError, match="harmonized_wo_mask.png already exists"), \
            pytest.warns(ConSinGANWarning, match="no mask"):
        write_results(model, tmp_path / "plain.png", tmp_path / "o")


def test_fine_tuning_trains_the_top_stage_groups_and_keeps_the_noise(runs):
    ft = runs.tmp / "fine_tuned"
    before = (runs.harm / "model.pt").read_bytes()
    proc = run_cli("main_train.py", "--train_mode", "harmonization", "--input_name", runs.bg, "--naive_img",
                   runs.naive, "--fine_tune", "--model_dir", runs.harm, "--niter", "2", "--out_dir", ft,
                   "--device", "cpu", "--progress", "none")
    assert proc.stdout.strip().endswith(f"Model saved to: {ft}")
    assert (runs.harm / "model.pt").read_bytes() == before
    a = torch.load(runs.harm / "model.pt", weights_only=True)
    b = torch.load(ft / "model.pt", weights_only=True)
    assert set(a["generator"]) == set(b["generator"])
    # the top stage's normal groups (METHOD 4): the top three body stages, the head (top 2 < train_depth
    # 3) and the tail all move; nothing else is in the generator of a 3-stage model
    groups = [f"body.{k}." for k in range(len(a["shapes"]))] + ["head.", "tail."]
    for prefix in groups:
        assert any(not torch.equal(v, b["generator"][k]) for k, v in a["generator"].items() if k.startswith(prefix)), prefix
    assert all(torch.equal(x, y) for x, y in zip(a["fixed_noise"], b["fixed_noise"]))
    assert a["noise_amp"] == b["noise_amp"] and a["shapes"] == b["shapes"] and b["config"]["niter"] == 2
    assert (ft / "2" / "harmonized.png").is_file()
    assert json.loads((ft / "config.json").read_text())["fine_tuned_from"] == runs.harm.as_posix()


def test_naive_image_needs_a_harmonization_or_editing_model(runs, tmp_path):
    image = read_image(runs.bg)
    with pytest.raises(UserError, match="harmonization or editing"):
        train(image, train_mode="generation", naive=runs.naive, out_dir=tmp_path / "m", niter=1)
    assert not (tmp_path / "m").exists()
    config = make_config("generation", train_stages=2, train_depth=2, min_size=12, max_size=40, nfc=8, manualSeed=0)
    trainer = Engine.start(image, config)
    for k in range(2):
        trainer.begin_stage(k)
    with pytest.raises(UserError, match="harmonization or editing"):
        harmonize(trainer.model(), image)
    consingan.ConSinGAN.of(trainer.model()).save(tmp_path / "gen")
    with pytest.raises(UserError, match="--fine_tune"):
        fine_tune(tmp_path / "gen", runs.naive, out_dir=tmp_path / "ft")
