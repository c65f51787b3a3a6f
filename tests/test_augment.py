"""The stage-0 augmentations of harmonization and editing draw what the reference draws (METHOD 4).

Frequencies are checked over a few thousand draws against the binomial spread (5 sigma), so a
wrong weight fails while a correct one passes for any seed.
"""
import math
from collections import Counter

import pytest
import torch

from consingan.core import augment


def assert_frequency(count, n, p, sigmas=5.0):
    spread = sigmas * math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= spread, f"{count} of {n}, expected {n * p:.1f} +- {spread:.1f}"


def members(group_index):
    return [f for _, f in augment.HARMONIZATION_GROUPS[group_index][1]]


# --- harmonization: the outer choice ----------------------------------------------------------

def test_outer_choice_applies_one_transform_a_quarter_of_the_time_by_the_reference_weights():
    torch.manual_seed(0)
    n = 24000
    picks = Counter(augment.colour_transform() for _ in range(n))
    fired = n - picks[None]
    assert_frequency(picks[None], n, 0.75)

    group_of = {f: g for g in range(4) for f in members(g)}
    per_group = Counter(group_of[f] for f in picks.elements() if f is not None)
    for group, weight in enumerate([5 / 16, 5 / 16, 5 / 16, 1 / 16]):
        assert_frequency(per_group[group], fired, weight)

    noise = per_group[0]  # multiplicative, shared Gaussian, per-channel Gaussian
    for f, weight in zip([augment.multiplicative_noise, augment.shared_gaussian_noise, augment.gaussian_noise],
                         [1 / 6, 5 / 12, 5 / 12]):
        assert_frequency(picks[f], noise, weight)
    for a, b in [(augment.invert, augment.sepia), (augment.drop_channel, augment.shuffle_channels)]:
        assert_frequency(picks[a], picks[a] + picks[b], 0.5)


def test_harmonization_applies_at_most_one_transform_and_holes_independently(monkeypatch):
    calls = []

    def recorder(name):
        def f(x, rng=None, **kw):
            calls.append(name)
            return x
        return f

    groups = tuple((w, tuple((mw, recorder(f.__name__)) for mw, f in group))
                   for w, group in augment.HARMONIZATION_GROUPS)
    monkeypatch.setattr(augment, "HARMONIZATION_GROUPS", groups)
    monkeypatch.setattr(augment, "holes", recorder("holes"))
    torch.manual_seed(1)
    x = torch.rand(1, 3, 2, 2) * 2 - 1
    n, per_call = 3000, []
    for _ in range(n):
        calls.clear()
        y = augment.harmonization_augment(x)
        per_call.append(list(calls))
    assert torch.allclose(y, x, atol=1e-6)  # recorders change nothing; the levels round trip is lossless
    transforms = [sum(c != "holes" for c in call) for call in per_call]
    assert max(transforms) == 1
    assert_frequency(sum(transforms), n, 0.25)
    # holes at most once, and after the colour transform
    assert all(call.count("holes") <= 1 and ("holes" not in call or call[-1] == "holes") for call in per_call)
    holes = sum("holes" in call for call in per_call)
    assert_frequency(holes, n, 0.9)
    assert_frequency(sum(t == 1 and "holes" in call for t, call in zip(transforms, per_call)), n, 0.25 * 0.9)


def test_harmonization_sees_float_levels_and_clamps_its_result(monkeypatch):
    monkeypatch.setattr(augment, "colour_transform", lambda rng=None: None)
    monkeypatch.setattr(augment, "holes", lambda x, **kw: x)
    x = torch.rand(1, 3, 5, 6) * 2 - 1  # levels between whole numbers
    seen = []
    monkeypatch.setattr(augment, "_from_levels", lambda v, f=augment._from_levels: seen.append(v) or f(v))
    torch.manual_seed(0)
    y = augment.harmonization_augment(x)
    assert not torch.equal(seen[0], seen[0].round())  # not rounded to whole levels
    assert (y - x).abs().max() < 1e-5

    monkeypatch.setattr(augment, "holes", lambda v, **kw: torch.full_like(v, 256.0))  # a hole of colour 256
    outs = [augment.harmonization_augment(x) for _ in range(20)]
    assert any(torch.equal(o, torch.ones_like(o)) for o in outs) and all(o.max() <= 1 for o in outs)


# --- harmonization: the transforms -----------------------------------------------------------

def test_shared_gaussian_noise_is_one_truncated_map_for_all_channels():
    torch.manual_seed(3)
    x = torch.full((1, 3, 128, 128), 100.7)
    y = augment.shared_gaussian_noise(x)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 0], y[:, 2])  # one map: gray stays gray
    assert torch.equal(y, y.round())  # whole levels
    steps = Counter((y[0, 0] - 100).flatten().tolist())
    # The image is truncated to 100 (not rounded to 101), and the noise toward zero: values in
    # (-1, 1) all become 0, so 0 is about twice as frequent as +1 or -1 (floor would make them even).
    assert steps.most_common(1)[0][0] == 0
    assert steps[0] > 1.6 * steps[1] and steps[0] > 1.6 * steps[-1]
    spread = (y[0, 0] - 100).std()
    assert 2.0 < spread < 13.5  # sigma drawn in [2.55, 12.75]
    for level in (0.5, 254.9):
        z = augment.shared_gaussian_noise(torch.full((1, 3, 32, 32), level))
        assert z.min() >= 0 and z.max() <= 255 and ((z == 0) | (z == 255)).any()  # clipped, not wrapped


@pytest.mark.parametrize("op", [augment.multiplicative_noise, augment.gaussian_noise, augment.sepia, augment.shift_hsv])
def test_transforms_clip_to_255_not_to_1(op):
    """The reference's library clips these to 1.0 on its float image; this project does not."""
    torch.manual_seed(0)
    x = torch.full((1, 3, 16, 16), 128.0)
    y = op(x)
    assert y.min() >= 0 and y.max() <= 255
    assert y.mean() > 60  # a near-black image would be below 1


def test_sepia_uses_the_sepia_matrix_and_clips():
    y = augment.sepia(torch.full((1, 3, 1, 1), 200.0))
    expected = torch.tensor([0.393 + 0.769 + 0.189, 0.349 + 0.686 + 0.168, 0.272 + 0.534 + 0.131]) * 200
    assert torch.allclose(y.flatten(), expected.clamp(max=255))


def test_channel_shuffle_draws_every_order_including_the_same():
    torch.manual_seed(0)
    x = torch.arange(3.0).view(1, 3, 1, 1)
    orders = Counter(tuple(augment.shuffle_channels(x).flatten().tolist()) for _ in range(1200))
    assert len(orders) == 6
    for order in orders:
        assert_frequency(orders[order], 1200, 1 / 6)


# --- harmonization: holes --------------------------------------------------------------------

def test_holes_share_one_even_height_and_width_drawn_in_range():
    torch.manual_seed(0)
    size, n = 400, 1500
    counts, sides, unequal = Counter(), {1: set(), 2: set()}, 0
    for _ in range(n):
        boxes = augment.hole_boxes(size, size)
        counts[len(boxes)] += 1
        inside = [(b - t, r - l) for t, b, l, r in boxes if t > 0 and l > 0 and b < size and r < size]
        assert len(set(inside)) <= 1  # both holes have the same height and the same width
        for h, w in inside:
            lo, hi = augment.HOLE_SIDES[len(boxes)]
            assert h % 2 == 0 and w % 2 == 0 and 2 * (lo // 2) <= min(h, w) and max(h, w) <= 2 * (hi // 2)
            sides[len(boxes)].update((h, w))
            unequal += h != w
    assert_frequency(counts[1], n, 0.5)
    assert sides[1] == set(range(30, 61, 2)) and sides[2] == set(range(14, 31, 2))
    assert unequal > 0  # height and width are separate draws


def test_holes_are_clipped_at_the_border():
    torch.manual_seed(1)
    height, width = 20, 24
    edges = Counter()
    for _ in range(800):
        for top, bottom, left, right in augment.hole_boxes(height, width, count=2):
            assert 0 <= top < bottom <= height and 0 <= left < right <= width
            assert bottom - top <= 30 and right - left <= 30
            edges.update(["top"] * (top == 0) + ["bottom"] * (bottom == height) + ["left"] * (left == 0)
                         + ["right"] * (right == width) + ["inside"] * (0 < top and bottom < height))
    assert min(edges[e] for e in ("top", "bottom", "left", "right", "inside")) > 0


def test_holes_fill_their_boxes_with_one_colour_in_0_to_256():
    x = torch.rand(1, 3, 50, 60) * 255
    for seed in range(20):
        torch.manual_seed(seed)
        boxes = augment.hole_boxes(50, 60)
        colour = torch.randint(0, 257, (3,)).float()
        torch.manual_seed(seed)
        y = augment.holes(x)
        expected = x.clone()
        for top, bottom, left, right in boxes:
            expected[:, :, top:bottom, left:right] = colour.view(1, 3, 1, 1)
        assert torch.equal(y, expected)

    torch.manual_seed(2)
    tiny = torch.zeros(1, 3, 2, 2)  # every hole covers a 2x2 image whole
    colours = torch.stack([augment.holes(tiny)[0, :, 0, 0] for _ in range(1500)])
    assert torch.equal(colours, colours.round())
    assert colours.min() == 0 and colours.max() == 256  # both ends included


# --- editing: grid shuffle -------------------------------------------------------------------

def test_grid_shuffle_tiles_count_sign_cut_and_clamp():
    torch.manual_seed(0)
    height, width, n = 40, 60, 1500
    counts, signs, empty, zero_moves, clamped = Counter(), Counter(), 0, 0, 0
    for _ in range(n):
        layout = augment.tile_layout(height, width)
        counts[len(layout)] += 1
        size_range, move_range = augment.TILE_TABLE.get(len(layout), augment.MANY_TILES)
        for top, left, th, tw, dst_top, dst_left in layout:
            assert all(isinstance(v, int) for v in (top, left, th, tw, dst_top, dst_left))
            assert 0 <= top <= height and 0 <= left <= width
            for side, origin, length, dst in ((height, top, th, dst_top), (width, left, tw, dst_left)):
                assert origin + length <= side  # cut off at the far border
                assert length <= int(side * size_range[1])
                assert length >= int(side * size_range[0]) or origin + length == side
                assert 0 <= dst <= side - length  # the tile fits where it lands
                move = abs(dst - origin)
                assert move <= int(side * move_range[1])
                if 0 < dst < side - length:  # not clamped
                    assert move >= int(side * move_range[0])
                else:
                    clamped += 1
            dy, dx = dst_top - top, dst_left - left
            assert dy * dx >= 0  # one sign for both axes
            signs[(dy > 0) - (dy < 0), (dx > 0) - (dx < 0)] += 1
            empty += th == 0 or tw == 0
            zero_moves += dy == 0 or dx == 0
    for tiles in range(1, 6):
        assert_frequency(counts[tiles], n, 1 / 5)
    assert signs[1, 1] > 0 and signs[-1, -1] > 0
    assert empty > 0 and zero_moves > 0 and clamped > 0


def test_grid_shuffle_sizes_are_whole_pixels_between_the_int_bounds():
    torch.manual_seed(0)
    layouts = [augment.tile_layout(25, 25, tiles=1) for _ in range(2000)]
    lengths = Counter(th for layout in layouts for top, _, th, *_ in layout if top + th < 25)  # not cut
    # 25 px, one tile: int(25 * 0.2) = 5 .. int(25 * 0.5) = 12, every length equally likely
    assert set(lengths) == set(range(5, 13))
    for length in range(5, 13):
        assert_frequency(lengths[length], sum(lengths.values()), 1 / 8)
    moves = Counter(abs(dl - left) for layout in layouts for _, left, _, tw, _, dl in layout if 0 < dl < 25 - tw)
    assert set(moves) == {1, 2, 3}  # int(25 * 0.05) = 1 .. int(25 * 0.15) = 3
    four = [tw for _ in range(300) for *_, tw, _, _ in augment.tile_layout(100, 100, tiles=4)]
    three = [tw for _ in range(300) for *_, tw, _, _ in augment.tile_layout(100, 100, tiles=3)]
    assert max(four) == 15 and max(three) == 20  # four or more tiles are smaller than three


def test_grid_shuffle_copies_the_layout_from_the_unaltered_image():
    x = torch.rand(1, 3, 30, 40) * 2 - 1
    overlapping = 0
    for seed in range(40):
        torch.manual_seed(seed)
        layout = augment.tile_layout(30, 40)
        torch.manual_seed(seed)
        y = augment.grid_shuffle(x)
        expected = x.clone()
        for top, left, th, tw, dst_top, dst_left in layout:
            expected[:, :, dst_top:dst_top + th, dst_left:dst_left + tw] = x[:, :, top:top + th, left:left + tw]
        assert torch.equal(y, expected)
        chained = x.clone()  # a copy made from the image as altered so far
        for top, left, th, tw, dst_top, dst_left in layout:
            chained[:, :, dst_top:dst_top + th, dst_left:dst_left + tw] = \
                chained[:, :, top:top + th, left:left + tw].clone()
        overlapping += not torch.equal(chained, expected)
    assert overlapping > 0  # some layouts tell the two apart
