"""Masks as the reference reads them (METHOD 4): red channel > 0 after truncation to 8 bits,
resized with the images' resize first; the soft mask normalised min-max."""
import io

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from consingan.tasks.masks import _mask_tensor, mask_channel, mask_from_array, read_mask, soft_mask


def square_mask(h=40, w=60):
    m = np.zeros((h, w), np.uint8)
    m[10:26, 20:44] = 255
    return m


def test_rgba_mask_with_an_almost_opaque_alpha_is_read_from_its_colours(tmp_path):
    # The reference's example masks: black background, white object, alpha 225..255 all over.
    obj = square_mask()
    alpha = np.random.default_rng(0).integers(225, 256, obj.shape).astype(np.uint8)
    iio.imwrite(tmp_path / "m.png", np.dstack([obj, obj, obj, alpha]))
    mask = read_mask(tmp_path / "m.png")
    assert np.array_equal(mask, obj > 0)  # the object only, not the whole image


def test_the_alpha_channel_is_used_only_under_constant_colours():
    obj = square_mask()
    white = np.full(obj.shape, 255, np.uint8)
    assert np.array_equal(mask_from_array(np.dstack([white, white, white, obj])), obj > 0)
    black = np.zeros(obj.shape, np.uint8)
    assert np.array_equal(mask_from_array(np.dstack([black, black, black, obj])), obj > 0)
    assert np.array_equal(mask_from_array(np.dstack([black, obj])), obj > 0)  # gray + alpha
    # Colours that vary: red decides, whatever alpha says.
    red_only = np.dstack([obj, black, black, 255 - obj])
    assert np.array_equal(mask_from_array(red_only), obj > 0)
    green = np.dstack([black, obj, black, white])
    assert not mask_from_array(green).any()


def test_red_above_level_zero_after_truncation_is_the_object():
    red = np.array([[0, 1, 2, 3], [64, 127, 128, 255]], np.uint8)
    # Level 1 read as 1/255*2-1 in float32 truncates to 0 (quirk); 2 and above stay above 0.
    expected = np.array([[False, False, True, True], [True, True, True, True]])
    assert np.array_equal(mask_from_array(red), expected)
    rgb = np.dstack([red, np.full_like(red, 255), np.zeros_like(red)])
    assert np.array_equal(mask_from_array(rgb), expected)
    assert np.array_equal(mask_from_array(red.astype(np.uint16) * 257), expected)
    assert np.array_equal(mask_from_array(red > 127), red > 127)  # bool: True is the object


def test_a_jpeg_mask_counts_its_ringing_as_object(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(square_mask()).convert("RGB").save(buf, format="JPEG", quality=75)
    (tmp_path / "m.jpg").write_bytes(buf.getvalue())
    red = np.asarray(Image.open(tmp_path / "m.jpg"))[:, :, 0].astype(int)
    mask = read_mask(tmp_path / "m.jpg")
    assert np.array_equal(mask, red >= 2)
    assert ((red >= 2) & (red <= 10)).any()  # faint ringing pixels, object by the rule
    assert mask.sum() > (red >= 128).sum()  # larger than a 0.5 threshold would make it


def test_a_mask_of_another_size_is_resized_with_its_levels_then_thresholded():
    obj = square_mask(80, 120)
    channel = mask_channel(obj)
    small = _mask_tensor(channel, (40, 60), torch.device("cpu"))[0, 0].bool().numpy()
    # Bicubic ringing around the square puts levels above 0 beyond the area-averaged square.
    area = F.interpolate(torch.from_numpy(obj / 255.0)[None, None], size=(40, 60), mode="area")[0, 0].numpy() >= 0.5
    assert (small >= area).all() and small.sum() > area.sum()
    # The same size: no resize, just the rule at the file's size.
    same = _mask_tensor(channel, (80, 120), torch.device("cpu"))[0, 0].bool().numpy()
    assert np.array_equal(same, obj > 0)
    # Grey levels matter when resizing: a faint (level 40) square grows less than a white one.
    faint = _mask_tensor(mask_channel((obj > 0) * np.uint8(40)), (40, 60), torch.device("cpu"))[0, 0]
    assert 0 < faint.sum() < torch.from_numpy(small).sum()


def test_soft_mask_is_normalised_min_max():
    m = torch.ones(1, 1, 30, 30)
    m[0, 0, 14, 14] = 0  # the dilation fills the hole: a flat mask except for the blur at the border
    m[0, 0, :, :3] = 0
    soft = soft_mask(m, 2, sigma=2.0)
    assert soft.min() == 0 and soft.max() == 1
    # Far from the object the result is exactly 0 and the peak is 1.
    one = torch.zeros(1, 1, 60, 60)
    one[0, 0, 5:9, 5:9] = 1
    soft = soft_mask(one, 3)
    assert soft[0, 0, 50:, 50:].abs().max() == 0 and soft.max() == 1
    for flat in (torch.zeros(1, 1, 20, 20), torch.ones(1, 1, 20, 20)):  # no contrast: left as it is
        out = soft_mask(flat, 3)
        assert torch.allclose(out, flat, atol=1e-6)
