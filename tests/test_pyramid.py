import math

import numpy as np
import pytest
import torch

from consingan.config import make_config
from consingan.errors import UserError
from consingan.core.image import pyramid, stage_sizes, training_image


def test_dense_pyramid_matches_method_example():
    # METHOD 1: a 250x167 image with paper defaults.
    sizes = stage_sizes(167, 250, make_config("generation"))
    assert sizes == [(25, 38), (31, 47), (41, 61), (60, 89), (115, 171), (167, 250)]


@pytest.mark.parametrize("mode", ["generation", "retarget", "animation", "editing"])
def test_every_non_harmonization_mode_uses_the_dense_pyramid(mode):
    c = make_config(mode, min_size=25, train_stages=6)
    assert stage_sizes(167, 250, c) == [(25, 38), (31, 47), (41, 61), (60, 89), (115, 171), (167, 250)]


def test_geometric_pyramid_for_harmonization():
    c = make_config("harmonization", train_stages=6, min_size=25)
    sizes = stage_sizes(167, 250, c)
    f = (25 / 167) ** (1 / 5)
    expected = [(math.ceil(167 * f ** (5 - i)), math.ceil(250 * f ** (5 - i))) for i in range(5)] + [(167, 250)]
    assert sizes == expected
    assert sizes[0] == (25, 38)
    # geometric: consecutive ratios are equal (up to rounding)
    ratios = [sizes[i + 1][1] / sizes[i][1] for i in range(4)]
    assert max(ratios) - min(ratios) < 0.05


def test_harmonization_defaults_give_three_stages():
    c = make_config("harmonization")
    assert (c.train_stages, c.min_size, c.niter, c.batch_norm, c.lrelu_alpha) == (3, 120, 1000, True, 0.3)
    assert len(stage_sizes(167, 250, c)) == 3


def test_user_value_beats_mode_default():
    assert make_config("harmonization", niter=5).niter == 5
    assert make_config("animation").min_size == 20
    assert make_config("animation", min_size=30).min_size == 30


def test_training_image_is_resized_to_max_size_never_enlarged():
    c = make_config("generation")
    big = torch.zeros(1, 3, 334, 500)
    assert training_image(big, c).shape[-2:] == (167, 250)
    small = torch.zeros(1, 3, 100, 120)
    assert training_image(small, c).shape[-2:] == (100, 120)


def test_pyramid_images_have_stage_sizes_and_range():
    c = make_config("generation", train_stages=4, min_size=12)  # 11 px: the discriminator's receptive field
    real = torch.rand(1, 3, 40, 60) * 2 - 1
    reals = pyramid(real, c)
    assert [tuple(r.shape[-2:]) for r in reals] == stage_sizes(40, 60, c)
    assert all(r.min() >= -1 and r.max() <= 1 for r in reals)
    assert torch.equal(reals[-1], real)


def test_image_smaller_than_min_size_is_a_user_error():
    with pytest.raises(UserError, match="min_size"):
        stage_sizes(20, 30, make_config("generation", min_size=25))


def test_presets_apply_over_mode_defaults_and_under_user_flags():
    from consingan.config import make_config
    from consingan.errors import UserError

    paper = make_config("generation", manualSeed=1)
    assert (paper.niter, paper.gp_every) == (2000, 1)
    fast = make_config("generation", preset="fast", manualSeed=1)
    assert (fast.niter, fast.niter_low, fast.gp_every, fast.precision) == (2000, 2000, 1, "auto")
    assert [fast.stage_niter(k) for k in range(6)] == [2000, 2000, 2000, 1300, 780, 500]
    assert [fast.stage_Dsteps(k) for k in range(6)] == [3, 3, 3, 2, 2, 2]
    assert [paper.stage_niter(k) for k in range(6)] == [2000] * 6
    assert fast.replace(niter_stages=(), niter_low=0, precision="fp32", Dsteps_stages=()) == paper  # nothing else
    # the top three stages get the shares, whatever the number of stages and the mode's niter
    assert make_config("generation", preset="fast", train_stages=4, manualSeed=1).niter_stages == (2000, 1300, 780, 500)
    assert make_config("generation", preset="fast", train_stages=4, manualSeed=1).Dsteps_stages == (3, 2, 2, 2)
    two = make_config("generation", preset="fast", train_stages=2, train_depth=2, manualSeed=1)
    assert (two.niter_stages, two.Dsteps_stages) == ((780, 500), (2, 2))
    harm = make_config("harmonization", preset="fast", manualSeed=1)
    assert (harm.niter_stages, harm.Dsteps_stages) == ((650, 390, 250), (2, 2, 2))
    # the user's --niter is every top stage's, over the preset's shares; the first stages keep theirs
    mine = make_config("generation", preset="fast", niter=700, manualSeed=1)
    assert [mine.stage_niter(k) for k in range(6)] == [2000, 2000, 2000, 700, 700, 700]
    counts = (1, 2, 3, 4, 5, 6)
    assert [make_config("generation", niter_stages=counts, niter=9).stage_niter(k) for k in range(6)] == list(counts)
    with pytest.raises(UserError, match="--niter_stages has 2 values for 6 stages"):
        make_config("generation", niter_stages=(5, 5))
    with pytest.raises(UserError, match="at least 1"):
        make_config("generation", niter_stages=(5, 5, 0, 5, 5, 5))
    with pytest.raises(UserError, match="--preset"):
        make_config("generation", preset="quickest")


# --- the reference's resize in the pyramid and the training image (METHOD 1) --------------------

def nominal_scales(h, w, c):
    """The stage factors from METHOD 1's formulas, written out here."""
    stop = c.train_stages - 1
    f = (c.min_size / min(h, w)) ** (1 / stop)
    if c.train_mode == "harmonization":
        exps = [stop - i for i in range(stop)]
    else:
        exps = [(stop - 1) / math.log(stop) * math.log(stop - i) + 1 for i in range(stop)]
    return [f ** e for e in exps]


@pytest.mark.parametrize("mode, h, w, stages, min_size", [
    ("generation", 40, 60, 4, 12), ("harmonization", 37, 52, 3, 12), ("editing", 50, 33, 5, 11)])
def test_each_lower_stage_is_the_training_image_rescaled_by_its_nominal_factor(mode, h, w, stages, min_size):
    from consingan.core.image import rescale, resize, stage_scales

    c = make_config(mode, train_stages=stages, min_size=min_size)
    real = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (1, 3, h, w)).astype(np.float32))
    reals = pyramid(real, c)
    scales = nominal_scales(h, w, c)
    assert stage_scales(h, w, c) == pytest.approx(scales + [1.0], rel=1e-12)
    assert [(math.ceil(h * s), math.ceil(w * s)) for s in scales] == stage_sizes(h, w, c)[:-1]
    shifted = 0
    for k, s in enumerate(scales):
        assert torch.equal(reals[k], rescale(real, s))
        out_h, out_w = reals[k].shape[-2:]
        if (out_h / h, out_w / w) != (s, s):  # not the realised ratio out/in: the reference samples at s
            assert not torch.allclose(reals[k], resize(real, (out_h, out_w)), atol=1e-3)
            shifted += 1
    assert shifted >= 1
    assert torch.equal(reals[-1], real)


def test_stage_scales_give_stage_sizes_in_every_mode():
    from consingan.core.image import scaled_size, stage_scales

    for mode in ("generation", "retarget", "animation", "harmonization", "editing"):
        for h, w in ((167, 250), (250, 167), (120, 121), (60, 250)):
            for stages, min_size in ((6, 25), (3, 20), (2, 25)):
                c = make_config(mode, train_stages=stages, min_size=min_size, train_depth=min(stages, 3))
                scales = stage_scales(h, w, c)
                assert [scaled_size(h, w, s) for s in scales] == stage_sizes(h, w, c), (mode, h, w, stages)


def test_training_image_truncates_to_levels_even_at_scale_one_and_resizes_by_scale1():
    from consingan.core.image import rescale

    c = make_config("generation", max_size=50)
    levels = np.random.default_rng(2).integers(0, 256, (1, 3, 30, 40))
    small = torch.from_numpy((levels + 0.7) / 127.5 - 1).float()  # 0.7 above each level
    expected = ((torch.from_numpy(levels / 255).float() - 0.5) * 2).clamp(-1, 1)
    assert torch.allclose(training_image(small, c), expected, atol=1e-6, rtol=0)
    assert not torch.allclose(small, expected, atol=1e-3)
    big = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, (1, 3, 70, 100)).astype(np.float32))
    assert torch.equal(training_image(big, c), rescale(big, 0.5))


def test_going_on_from_a_model_keeps_its_training_image():
    # model.real has been through training_image once; truncating it again would change the data.
    import consingan
    from consingan.core.engine import Engine
    from consingan.tasks.harmonize import fine_tune_input

    img = (np.random.default_rng(4).random((30, 45, 3)) * 255).astype(np.uint8)
    model = consingan.train(img, device="cpu", train_stages=2, train_depth=2, niter=1, nfc=4, min_size=12,
                            max_size=40, manualSeed=0)
    trainer = Engine.fine_tune(model, fine_tune_input(model.real, model.config))
    assert torch.equal(trainer.real_full, model.real)
    assert all(torch.equal(a, b) for a, b in zip(trainer.reals, pyramid(model.real, model.config)))
