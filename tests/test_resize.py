"""The reference's resize (METHOD 1): checked against a per-pixel loop written here from the
formulas, hand-computed values, and properties."""
import math

import numpy as np
import pytest
import torch

from consingan.core.image import rescale, resize, to_levels


# --- an independent oracle: one output pixel at a time ----------------------------------------

def cubic(t):
    a = abs(t)
    if a <= 1:
        return 1.5 * a ** 3 - 2.5 * a ** 2 + 1
    if a <= 2:
        return -0.5 * a ** 3 + 2.5 * a ** 2 - 4 * a + 2
    return 0.0


def resample_line(values, out_len, s, antialias):
    n = len(values)
    width = 4 / s if antialias else 4
    out = []
    for i in range(1, out_len + 1):
        centre = i / s + 0.5 * (1 - 1 / s)
        left = math.floor(centre - width / 2)
        taps = [left + t - 1 for t in range(math.ceil(width) + 2)]
        weights = []
        for j in taps:
            if j < 0:  # the reference's unsigned index: far outside the kernel
                weights.append(0.0)
            elif antialias:
                weights.append(s * cubic(s * (centre - (j + 1))))
            else:
                weights.append(cubic(centre - (j + 1)))
        total = sum(weights) or 1.0
        acc = 0.0
        for j, wt in zip(taps, weights):
            k = j % (2 * n)
            k = k if k < n else 2 * n - 1 - k  # mirrored, the edge pixel repeated
            acc += wt / total * values[k]
        out.append(acc)
    return out


def oracle(x, out_h, out_w, sh, sw):
    """x: 1xCxHxW float32 in [-1, 1]."""
    a = x[0].numpy().astype(np.float32)
    u = (np.float32(255) * np.clip((a + np.float32(1)) / np.float32(2), 0, 1)).astype(np.uint8).astype(float)
    antialias = sh < 1
    c, h, w = u.shape
    if sh != 1.0:
        u = np.array([[resample_line(list(u[k, :, col]), out_h, sh, antialias) for col in range(w)]
                      for k in range(c)]).transpose(0, 2, 1)
    if sw != 1.0:
        u = np.array([[resample_line(list(u[k, row]), out_w, sw, antialias) for row in range(u.shape[1])]
                      for k in range(c)])
    y = (u / 255).astype(np.float32)
    return torch.from_numpy(np.clip((y - np.float32(0.5)) * np.float32(2), -1, 1))[None]


def random_image(h, w, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (1, 3, h, w)).astype(np.float32))


@pytest.mark.parametrize("h, w, s", [(13, 17, 0.37), (9, 6, 0.5), (7, 9, 1.6), (10, 10, 0.81)])
def test_rescale_equals_the_per_pixel_oracle_at_the_nominal_scale(h, w, s):
    x = random_image(h, w)
    got = rescale(x, s)
    out_h, out_w = math.ceil(h * s), math.ceil(w * s)
    assert got.shape == (1, 3, out_h, out_w) and got.dtype == torch.float32
    assert torch.allclose(got, oracle(x, out_h, out_w, s, s), atol=1e-6, rtol=0)
    # The realised ratio out/in would sample elsewhere: the nominal scale is what makes these values.
    if out_h / h != s:
        assert not torch.allclose(got, oracle(x, out_h, out_w, out_h / h, out_w / w), atol=1e-3)


@pytest.mark.parametrize("h, w, out_h, out_w", [
    (11, 19, 5, 23),  # height shrinks: antialiasing for both axes, also the enlarged width (quirk)
    (9, 12, 14, 5),  # height grows: no antialiasing, also not for the shrunk width (quirk)
    (10, 12, 10, 7),  # height unchanged: not resampled, and the width shrinks without antialiasing
    (12, 8, 6, 8),  # width unchanged
    (8, 8, 8, 8),  # same size: only the truncation to levels
])
def test_resize_to_a_shape_equals_the_oracle_with_per_axis_ratios(h, w, out_h, out_w):
    x = random_image(h, w, seed=h * w)
    got = resize(x, (out_h, out_w))
    assert got.shape == (1, 3, out_h, out_w)
    assert torch.allclose(got, oracle(x, out_h, out_w, out_h / h, out_w / w), atol=1e-6, rtol=0)


def levels_to_image(levels):
    """Float32 values that truncate to exactly these levels (half a level above each)."""
    return torch.tensor((np.asarray(levels, np.float64) + 0.5) / 127.5 - 1, dtype=torch.float32)


def test_hand_computed_halving_of_a_row():
    # One row a, b, c, d at s = 0.5 (antialiased: kernel 0.5*k(t/2), width 8). Output 1 sits at input
    # position 1.5: taps at positions 1, 2, 3, 4, 5 weigh 111, 111, 29, -9, -3 (/256) and those before
    # position 1 are dropped, so the row renormalises by 239/256. Output 2 sits at 3.5: taps 1..4 weigh
    # -9, 29, 111, 111 and the mirrored ones past the end 29, -9, -3 land on positions 4, 3, 2: in all
    # -9, 26, 102, 140, summing to 259. The single row (height 1) is left as it is.
    a, b, c, d = 100, 200, 50, 150
    x = levels_to_image([a, b, c, d]).view(1, 1, 1, 4).repeat(1, 3, 1, 1)
    got = rescale(x, 0.5)
    assert got.shape == (1, 3, 1, 2)
    first = (111 * a + 111 * b + 29 * c - 12 * d) / 239  # 137.87 levels
    second = (-9 * a + 26 * b + 102 * c + 140 * d) / 259  # 117.37 levels
    expected = torch.tensor([first, second], dtype=torch.float64) / 255
    expected = (expected.float() - 0.5) * 2
    assert torch.allclose(got[0, :, 0], expected.expand(3, 2), atol=1e-6, rtol=0)


def test_values_are_truncated_to_levels_before_resizing_even_at_scale_one():
    x = torch.full((1, 3, 4, 5), 100.7 / 127.5 - 1)
    level100 = (torch.tensor(100 / 255, dtype=torch.float64).float() - 0.5) * 2
    for out in (rescale(x, 1.0), resize(x, (4, 5)), resize(x, (8, 3)), rescale(x, 0.5)):
        assert torch.allclose(out, level100.expand_as(out), atol=1e-6, rtol=0)
    assert not torch.allclose(x, level100.expand_as(x), atol=1e-3)
    # An 8-bit level read as v/255*2-1 in float32 lands just below the integer for 1..63 (quirk).
    read = torch.arange(256, dtype=torch.float32) / 255.0 * 2.0 - 1.0
    levels = to_levels(read).long()
    assert torch.equal(levels[1:64], torch.arange(0, 63)) and torch.equal(levels[64:], torch.arange(64, 256))
    assert levels[0] == 0


def test_properties_on_a_larger_image():
    x = random_image(64, 80, seed=3)
    for s in (0.31, 0.5, 1.7):
        assert rescale(x, s).shape[-2:] == (math.ceil(64 * s), math.ceil(80 * s))
    assert resize(x, (23, 101)).shape[-2:] == (23, 101)
    constant = torch.full((1, 3, 64, 80), 200.5 / 127.5 - 1)
    level = (200 / 255 - 0.5) * 2
    for out in (rescale(constant, 0.31), rescale(constant, 1.7), resize(constant, (23, 101))):
        assert (out - level).abs().max() < 1e-6
    # Borders: a bright first row and a bright last row, halved (the grid is symmetric at 64 -> 32).
    # At the top the taps before the image (29, -9, -3) are dropped and the rest renormalised: 111/239
    # of the row reaches the first output row; at the bottom they are mirrored onto the image, so the
    # edge row gets 111 + 29 of the full 256: 140/256. A symmetric border would give 140/256 twice.
    top, bottom = torch.full((1, 3, 64, 80), -1.0), torch.full((1, 3, 64, 80), -1.0)
    top[:, :, 0], bottom[:, :, -1] = 1.0, 1.0
    first = (rescale(top, 0.5)[0, 0, 0, 10] + 1) / 2 * 255
    last = (rescale(bottom, 0.5)[0, 0, -1, 10] + 1) / 2 * 255
    assert abs(first - 255 * 111 / 239) < 1e-3 and abs(last - 255 * 140 / 256) < 1e-3
    # The same on the width axis.
    left, right = torch.full((1, 3, 64, 80), -1.0), torch.full((1, 3, 64, 80), -1.0)
    left[..., 0], right[..., -1] = 1.0, 1.0
    assert abs((rescale(left, 0.5)[0, 0, 10, 0] + 1) / 2 * 255 - 255 * 111 / 239) < 1e-3
    assert abs((rescale(right, 0.5)[0, 0, 10, -1] + 1) / 2 * 255 - 255 * 140 / 256) < 1e-3


def test_resize_keeps_the_device_and_channel_count():
    x = random_image(12, 10)[:, :2]
    out = resize(x, (6, 5))
    assert out.shape == (1, 2, 6, 5) and out.device == x.device
