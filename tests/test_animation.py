"""Animation (random walks written as GIFs) and start_scale for generation, on tiny models."""
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence
from typer.testing import CliRunner

import consingan
from consingan import cli
from consingan.tasks.animate import Walk, reference_walks, walk_noise, write_animations
from consingan.config import make_config
from conftest import TINY, run_cli

pytestmark = pytest.mark.slow  # every test here uses a model trained for 20 or 10 iterations per stage


def _image():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:30, 0:45]
    img = np.stack([x / 45, y / 30, 0.5 + 0.5 * np.sin(x / 3.0)], axis=2) * 0.7 + 0.3 * rng.random((30, 45, 3))
    return (img * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def anim(tmp_path_factory):
    """A tiny animation model, saved (the command line reads it) and loaded."""
    out = tmp_path_factory.mktemp("anim") / "model"
    model = consingan.train(_image(), train_mode="animation", out_dir=out, device="cpu", **TINY)
    return out, model


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    """A tiny generation model; start_scale needs no well-trained model, so fewer iterations."""
    out = tmp_path_factory.mktemp("gen") / "model"
    model = consingan.train(_image(), train_mode="generation", out_dir=out, device="cpu", **{**TINY, "niter": 10})
    return out, model


def gif(path):
    """(frames as int arrays, size, frame duration in ms, loop) of a GIF, read back with Pillow."""
    with Image.open(path) as im:
        frames = [np.asarray(f.convert("RGB"), dtype=int) for f in ImageSequence.Iterator(im)]
        return frames, im.size, im.info["duration"], im.info.get("loop")


def test_animation_mode_trains_with_its_defaults(anim):
    _, model = anim
    assert make_config("animation").min_size == 20 and make_config("generation").min_size == 25
    assert model.config.mode.inference == "animation"
    # the stage-0 reconstruction noise is random, not the downscaled image as in generation
    assert not torch.allclose(model.fixed[0], model.reals()[0], atol=0.1)


def test_gif_has_the_requested_frames_size_and_rate(anim):
    out, model = anim
    ev = out.parent / "ev_one"
    proc = run_cli("main_generate.py", "--model_dir", out, "--start_scale", "0", "--alpha", "0.1", "--beta", "0.9",
                   "--num_frames", "6", "--fps", "20", "--seed", "3", "--out", ev)
    path = ev / "start_scale=0_alpha=0.1_beta=0.9.gif"
    assert proc.stdout.strip() == f"Animation saved to: {path}"
    assert sorted(p.name for p in ev.iterdir()) == [path.name]
    frames, size, duration, loop = gif(path)
    h, w = model.shapes[-1]
    assert len(frames) == 6 and size == (w, h) and duration == 50 and loop == 0
    assert all(np.abs(a - b).mean() > 0 for a, b in zip(frames, frames[1:]))
    assert np.abs(frames[0] - frames[-1]).mean() > 0.2


def test_default_set_is_the_references_twelve_gifs_and_never_overwritten(anim):
    out, _ = anim
    ev = out.parent / "ev_set"
    runner = CliRunner()
    result = runner.invoke(cli.app, ["generate", "--model_dir", str(out), "--num_frames", "2", "--seed", "0",
                                     "--out", str(ev)])
    assert result.exit_code == 0, result.output
    expected = {f"start_scale={s}_alpha=0.1_beta={b}.gif" for s in (0, 1, 2) for b in ("0.8", "0.85", "0.9", "0.95")}
    assert {p.name for p in ev.iterdir()} == expected
    assert len(result.output.strip().splitlines()) == 12
    frames, _, duration, _ = gif(ev / "start_scale=2_alpha=0.1_beta=0.95.gif")
    assert len(frames) == 2 and duration == 100  # 10 fps
    before = {p.name: p.read_bytes() for p in ev.iterdir()}
    again = runner.invoke(cli.app, ["generate", "--model_dir", str(out), "--num_frames", "2", "--out", str(ev)])
    assert again.exit_code == 2 and "start_scale=0_alpha=0.1_beta=0.8.gif already exists" in again.output
    assert {p.name: p.read_bytes() for p in ev.iterdir()} == before


def test_walk_is_reproducible_with_seed(anim, tmp_path):
    _, model = anim
    walk = Walk(start_scale=1, beta=0.85, num_frames=4)
    a = model.animate(walk, seed=5)
    assert torch.equal(a, model.animate(walk, seed=5))
    assert not torch.equal(a, model.animate(walk, seed=6))
    # one file of the set can be remade alone: each walk starts from the seed
    (one,) = write_animations(model, tmp_path / "one", [walk], seed=5)
    both = write_animations(model, tmp_path / "both", reference_walks(start_scale=1, num_frames=4)[:2], seed=5)
    assert one.read_bytes() == both[1].read_bytes() and both[1].name == one.name


def test_walk_follows_the_method(anim):
    _, model = anim
    fixed = model.fixed
    frames = list(walk_noise(model, Walk(start_scale=2, num_frames=3), torch.Generator().manual_seed(0)))
    assert all(torch.equal(f[k], fixed[k]) for f in frames for k in (0, 1))
    assert all(not torch.allclose(f[2], fixed[2]) for f in frames)
    # alpha 1: pulled all the way back, every frame is the fixed noise
    pinned = next(walk_noise(model, Walk(alpha=1.0, num_frames=1)))
    assert all(torch.equal(z, f) for z, f in zip(pinned, fixed))
    # alpha 0, beta 1: pure momentum, the walk goes on in a straight line: z_t - z_(t-1) = z_(t-1) - z_(t-2)
    z = list(walk_noise(model, Walk(alpha=0.0, beta=1.0, num_frames=3)))
    for k in range(model.num_stages):
        assert torch.allclose(z[2][k] - z[1][k], z[1][k] - z[0][k], atol=1e-5)
        assert not torch.allclose(z[1][k], z[0][k])


def test_bad_walk_settings_are_one_line_errors(anim):
    out, _ = anim
    runner = CliRunner()
    for flags, message in ((["--start_scale", "3"], "--start_scale 3 is out of range"),
                           (["--beta", "1.5"], "--beta 1.5 must be between 0 and 1"),
                           (["--num_frames", "0"], "--num_frames 0 must be at least 1"),
                           (["--format", "webm"], "unknown --format 'webm'"),
                           (["--scale_w", "2"], "leave out --scale_h/--scale_w")):
        result = runner.invoke(cli.app, ["generate", "--model_dir", str(out), *flags, "--out", str(out / "bad")])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), flags
        assert message in lines[0], (flags, lines)
    assert not (out / "bad").exists()


def test_mp4_without_imageio_ffmpeg_says_what_to_install(anim, monkeypatch):
    out, model = anim
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # makes `import imageio_ffmpeg` fail
    result = CliRunner().invoke(cli.app, ["generate", "--model_dir", str(out), "--format", "mp4",
                                          "--num_frames", "2", "--out", str(out / "mp4")])
    assert result.exit_code == 2 and "pip install imageio-ffmpeg" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (out / "mp4").exists()


def test_mp4_is_written_when_imageio_ffmpeg_is_installed(anim, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    _, model = anim
    (path,) = write_animations(model, tmp_path, [Walk(num_frames=5, fps=5)], seed=0, fmt="mp4")
    assert path.name == "start_scale=0_alpha=0.1_beta=0.9.mp4"
    assert len(iio.imread(path, plugin="FFMPEG", index=...)) == 5


def test_start_scale_samples_keep_the_layout(gen):
    _, model = gen
    rec = model.reconstruct()

    def distance(start_scale):
        # at the lowest stage's resolution, where the layout lives; averaged over seeds and samples
        low = lambda x: F.interpolate(x, size=model.shapes[0], mode="area")  # noqa: E731
        return np.mean([(low(model.sample(4, seed=s, start_scale=start_scale)) - low(rec)).abs().mean().item()
                        for s in range(4)])

    d0, d1, d2 = distance(0), distance(1), distance(2)
    assert d1 < 0.5 * d0 and d2 < 0.5 * d0


def test_generate_start_scale_flag(gen):
    out, model = gen
    ev = out.parent / "ev"
    runner = CliRunner()
    result = runner.invoke(cli.app, ["generate", "--model_dir", str(out), "--start_scale", "1", "--num_samples", "2",
                                     "--seed", "0", "--out", str(ev)])
    assert result.exit_code == 0, result.output
    h, w = model.shapes[-1]
    sample = iio.imread(ev / "random_samples_start_scale_1" / "gen_sample_1.png")
    assert sample.shape == (h, w, 3)
    assert np.array_equal(sample, consingan.core.image.to_uint8(model.sample(2, seed=0, start_scale=1)[1]))
    for flags, message in ((["--start_scale", "4"], "--start_scale 4 is out of range for a model with 3 stages"),
                           (["--start_scale", "1", "--scale_w", "2"], "--start_scale needs --scale_h 1 --scale_w 1"),
                           (["--beta", "0.9"], "--beta only apply to animation models")):
        result = runner.invoke(cli.app, ["generate", "--model_dir", str(out), *flags, "--out", str(ev)])
        assert result.exit_code == 2 and message in result.output, (flags, result.output)
