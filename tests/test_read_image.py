"""Images are read as a viewer shows them: CMYK converted to RGB, EXIF orientation applied."""
import numpy as np
import pytest
from PIL import Image

from consingan.errors import UserError
from consingan.storage.image_files import read_array, read_image


def halves(h=20, w=40):
    """Top half red, bottom half blue."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2, :, 0] = 255
    rgb[h // 2:, :, 2] = 255
    return rgb


def test_a_cmyk_jpeg_is_read_as_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(halves()).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    arr = read_array(path)
    assert arr.shape == (20, 40, 3)
    top, bottom = arr[2:8].reshape(-1, 3).mean(0), arr[12:18].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[1] < 60 and top[2] < 60  # red, not CMYK values taken as RGB
    assert bottom[2] > 200 and bottom[0] < 60 and bottom[1] < 60
    image = read_image(path)
    assert image.shape == (1, 3, 20, 40)


def test_exif_orientation_6_is_rotated_as_viewers_show_it(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    Image.fromarray(halves()).save(path, quality=95, exif=exif)
    arr = read_array(path)
    assert arr.shape == (40, 20, 3)
    # The stored top (red) is on the right once rotated clockwise, the bottom (blue) on the left.
    right, left = arr[:, 12:].reshape(-1, 3).mean(0), arr[:, :8].reshape(-1, 3).mean(0)
    assert right[0] > 200 and right[2] < 60
    assert left[2] > 200 and left[0] < 60
    assert read_image(path).shape == (1, 3, 40, 20)


def test_palette_and_gray_images_and_unreadable_files(tmp_path):
    rgb = halves()
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert np.array_equal(read_array(tmp_path / "p.png"), rgb)
    Image.fromarray(rgb).convert("P").save(tmp_path / "pt.png", transparency=0)
    assert read_array(tmp_path / "pt.png").shape == (20, 40, 4)
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (1, 3, 20, 40)
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError, match="cannot read image .*x.jpg"):
        read_array(tmp_path / "x.jpg")
