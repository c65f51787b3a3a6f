"""The compose command: pasting an object into a background gives the naive image and its mask."""
import imageio.v3 as iio
import numpy as np
import pytest

from consingan.tasks.compose import compose, write_composite
from consingan.errors import UserError
from conftest import run_cli


def background(h=30, w=40):
    y, x = np.mgrid[0:h, 0:w]
    return (np.stack([x / w, y / h, np.full((h, w), 0.3)], axis=2) * 255).round().astype(np.uint8)


def rgba_object(h=8, w=6):
    obj = np.zeros((h, w, 4), np.uint8)
    obj[..., 0], obj[..., 2] = 250, 10  # red-ish, unlike the background's blue 0.3
    obj[:, w // 2:, 3] = 255  # left half transparent, right half opaque
    return obj


def test_output_has_background_size_and_mask_where_the_object_is():
    bg, obj = background(), rgba_object()
    naive, mask = compose(bg, obj, x=5, y=7)
    assert naive.shape == bg.shape and naive.dtype == np.uint8
    assert mask.shape == bg.shape[:2] and set(np.unique(mask)) == {0, 255}
    expected = np.zeros(bg.shape[:2], bool)
    expected[7:15, 8:11] = True  # rows y..y+8, the opaque columns x+3..x+6
    assert np.array_equal(mask == 255, expected)
    assert np.array_equal(naive[expected], np.broadcast_to(obj[0, 3, :3], naive[expected].shape))
    # alpha 0: the background shows through, inside the object's rectangle too
    assert np.array_equal(naive[~expected], bg[~expected])


def test_soft_alpha_mixes_and_binarises_the_mask_at_half():
    bg = background()
    obj = rgba_object(4, 4)
    obj[..., 3] = [[0, 100, 128, 255]] * 4
    naive, mask = compose(bg, obj, x=0, y=0)
    assert list(mask[0, :4]) == [0, 0, 255, 255]
    mixed = 100 / 255 * obj[0, 1, :3] + (1 - 100 / 255) * bg[0, 1]
    assert np.abs(naive[0, 1].astype(float) - mixed).max() <= 1


def test_object_mask_then_whole_rectangle_when_there_is_no_alpha():
    bg = background()
    obj = np.full((6, 6, 3), 200, np.uint8)
    shape = np.zeros((6, 6), bool)
    shape[2:4, 1:5] = True
    _, mask = compose(bg, obj, x=10, y=10, object_mask=shape)
    assert np.argwhere(mask).min(0).tolist() == [12, 11] and (mask > 0).sum() == 8
    _, mask = compose(bg, obj, x=10, y=10)
    assert (mask > 0).sum() == 36 and mask[10:16, 10:16].all()


def test_scale_resizes_the_object():
    _, mask = compose(background(), np.full((5, 4, 3), 200, np.uint8), x=3, y=2, scale=2.0)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 11, 3, 10)


def test_objects_partly_outside_are_clipped_fully_outside_is_an_error():
    bg = background(30, 40)
    obj = np.full((10, 10, 3), 200, np.uint8)
    naive, mask = compose(bg, obj, x=-4, y=25)
    assert naive.shape == bg.shape
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (25, 29, 0, 5)
    for x, y in ((40, 0), (0, -10), (-10, 5)):
        with pytest.raises(UserError, match="outside"):
            compose(bg, obj, x=x, y=y)


def test_command_writes_naive_and_mask_and_never_overwrites(tmp_path):
    iio.imwrite(tmp_path / "bg.png", background())
    iio.imwrite(tmp_path / "obj.png", rgba_object())
    out = tmp_path / "naive.png"
    proc = run_cli("-m", "consingan", "compose", "--background", tmp_path / "bg.png", "--object", tmp_path / "obj.png",
                   "--x", "5", "--y", "7", "--out", out)
    assert str(out) in proc.stdout
    assert iio.imread(out).shape == (30, 40, 3)
    mask = iio.imread(tmp_path / "naive_mask.png")
    assert mask.shape == (30, 40) and (mask > 0).sum() == 8 * 3
    before = out.read_bytes()
    with pytest.raises(UserError, match="naive.png already exists"):
        write_composite(tmp_path / "bg.png", tmp_path / "obj.png", out, 0, 0)
    assert out.read_bytes() == before
