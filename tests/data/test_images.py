"""Messy image folders: every odd file lands where it should, with a reason a user understands."""

import random
import shutil

import numpy as np
import pytest
from PIL import Image

from dreambooth.data.images import load_rgb, prepare, scan_images, to_tensor
from dreambooth.errors import DataError


def rgb(path, size=(300, 300), color=(10, 200, 30), **save):
    Image.new("RGB", size, color).save(path, **save)
    return path


@pytest.fixture
def messy(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    rgb(d / "good.jpg")
    rgb(d / "ünïcode name with spaces.png", color=(1, 2, 3))
    (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (d / "caption.txt").write_text("a photo of my dog")
    (d / "empty.jpg").write_bytes(b"")
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "not-really.png").write_text("this is text")
    (d / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic")
    shutil.copy(d / "good.jpg", d / "copy of good.jpg")
    (d / "sub").mkdir()
    rgb(d / "sub" / "nested.png")
    rgb(d / "tiny.png", size=(40, 40), color=(9, 9, 9))
    rgb(d / "panorama.png", size=(1200, 300), color=(7, 7, 7))
    return d


def test_scan_sorts_every_odd_file(messy):
    scan = scan_images(messy)
    assert [p.name for p in scan.images] == ["copy of good.jpg", "panorama.png", "tiny.png",
                                             "ünïcode name with spaces.png"]
    reasons = {p.name: why for p, why in scan.skipped}
    assert reasons[".DS_Store"] == "hidden file"
    assert reasons["caption.txt"].startswith("not an image")
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["truncated.jpg"].startswith("cannot be decoded")
    assert reasons["not-really.png"].startswith("cannot be decoded")
    assert "pillow-heif" in reasons["photo.heic"]
    assert reasons["good.jpg"] == "duplicate of copy of good.jpg (same content)"  # the first by name is kept
    assert reasons["sub"].startswith("sub-folder")
    assert any("tiny.png is only 40x40" in w for w in scan.warnings)
    assert any("panorama.png is 1200x300" in w for w in scan.warnings)
    assert "skipped truncated.jpg" in scan.summary()


def test_decompression_bombs_are_refused(tmp_path):
    rgb(tmp_path / "big.png", size=(2000, 2000))
    scan = scan_images(tmp_path, max_pixels=1_000_000)
    assert not scan.images and "decompression bomb" in scan.skipped[0][1]


def test_no_usable_image_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no usable images.*notes.txt: not an image"):
        scan_images(tmp_path).require()
    with pytest.raises(DataError, match="no such folder"):
        scan_images(tmp_path / "missing")
    with pytest.raises(DataError, match="is a file"):
        scan_images(tmp_path / "notes.txt")


def test_count_warnings(tmp_path):
    rgb(tmp_path / "a.png")
    assert any("1 instance image" in w for w in scan_images(tmp_path).warnings)
    assert not any("instance image" in w for w in scan_images(tmp_path, role="class").warnings)


def test_modes_convert_to_8bit_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert load_rgb(tmp_path / "cmyk.jpg").getpixel((4, 4))[0] > 200  # red stays red

    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.info["transparency"] = 0
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "palette.png", transparency=0)
    img = load_rgb(tmp_path / "palette.png")
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((4, 4)) == (255, 0, 0)

    Image.new("LA", (8, 8), (100, 0)).save(tmp_path / "la.png")
    assert load_rgb(tmp_path / "la.png").getpixel((1, 1)) == (255, 255, 255)

    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(tmp_path / "rgba.png")
    img = load_rgb(tmp_path / "rgba.png")
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((5, 5)) == (0, 0, 255)

    sixteen = np.array([[65535, 32768], [0, 1000]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "16bit.png")
    img = load_rgb(tmp_path / "16bit.png")
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255,) * 3 and abs(img.getpixel((1, 0))[0] - 128) <= 1
    assert img.getpixel((0, 1)) == (0, 0, 0)

    Image.new("L", (8, 8), 77).save(tmp_path / "gray.png")
    assert load_rgb(tmp_path / "gray.png").getpixel((0, 0)) == (77, 77, 77)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 8, 8))  # top-left marker
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    loaded = load_rgb(tmp_path / "rot.jpg")
    assert loaded.size == (20, 40)
    r, g, b = loaded.getpixel((17, 2))  # the top-left corner moved to the top-right
    assert r > 150 and g < 100


def test_prepare_and_tensor():
    image = Image.new("RGB", (300, 200), (255, 0, 0))
    assert prepare(image, 64, center_crop=True, rng=None).size == (64, 64)
    a = prepare(Image.linear_gradient("L").convert("RGB").resize((400, 200)), 64, False, random.Random(3))
    b = prepare(Image.linear_gradient("L").convert("RGB").resize((400, 200)), 64, False, random.Random(3))
    assert a.tobytes() == b.tobytes()
    t = to_tensor(prepare(image, 32, True, None))
    assert t.shape == (3, 32, 32) and t.min() >= -1 and t.max() <= 1 and t[0].mean() == 1
