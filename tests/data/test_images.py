"""Messy image folders: every odd file lands where it should, with a reason a user understands."""

import random
import shutil
import struct

import numpy as np
import pytest
import torch
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
    rgb(d / "._good.jpg")  # macOS AppleDouble companion: hidden even though it decodes
    (d / "__MACOSX").mkdir()
    (d / "caption.txt").write_text("a photo of my dog")
    (d / "empty.jpg").write_bytes(b"")
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "not-really.png").write_text("this is text")
    (d / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (d / "IMG_0002.DNG").write_bytes(b"II*\0")  # a camera's RAW
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
    assert [p.name for p, _ in scan.skipped] == sorted(reasons)  # deterministic: by name
    for hidden in (".DS_Store", "._good.jpg", "__MACOSX"):
        assert reasons[hidden] == "hidden or system file"
    assert reasons["caption.txt"] == "not an image file (by its extension)"
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["truncated.jpg"].startswith("cannot be decoded") and "truncated" in reasons["truncated.jpg"]
    assert reasons["not-really.png"].startswith("not an image (the content")
    assert "pillow-heif" in reasons["photo.heic"] and "convert" in reasons["photo.heic"]
    assert reasons["IMG_0002.DNG"] == "DNG (camera RAW, Photoshop, JPEG XL or SVG) is not read: export it to JPEG or PNG"
    assert reasons["good.jpg"] == "duplicate of copy of good.jpg (same content)"  # the first by name is kept
    assert reasons["sub"].startswith("sub-folder")
    assert any("tiny.png is only 40x40" in w for w in scan.warnings)
    assert any("panorama.png is 1200x300 (aspect > 3:1)" in w for w in scan.warnings)
    assert not any("instance image(s)" in w for w in scan.warnings)  # 4 is a good count
    summary = scan.summary()
    assert "4 usable instance image(s), 11 skipped" in summary and "skipped caption.txt" in summary
    # a skipped photo, like a size problem, is a warning (which train prints too), reported apart, once
    assert "truncated.jpg" not in summary and "tiny.png" not in summary
    assert any("skipped truncated.jpg: cannot be decoded" in w for w in scan.warnings)
    assert any("skipped IMG_0002.DNG: DNG (camera RAW" in w for w in scan.warnings)  # a photo, though not read
    assert not any("caption.txt" in w for w in scan.warnings)


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    rgb(tmp_path / "big.png", size=(2000, 2000))
    scan = scan_images(tmp_path, max_pixels=1_000_000)
    assert not scan.images and scan.skipped[0][1].startswith("2000x2000 is over 1 MP (refused as a possible "
                                                             "decompression bomb)")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # PIL's own hard limit (2x) trips first
    assert "decompression bomb" in scan_images(tmp_path).skipped[0][1]


def test_no_usable_image_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"no usable images \(2 skipped: empty.jpg: empty file .*; notes.txt: not "
                                        r"an image.*\); add .png/.jpg photos of the subject"):
        scan_images(tmp_path).require()
    rgb(tmp_path / "one.png")
    scan_images(tmp_path).require()
    with pytest.raises(DataError, match=r"only 1 usable image\(s\), need 2 \(2 skipped"):
        scan_images(tmp_path).require(min_count=2)
    with pytest.raises(DataError, match="instance_data_dir .*missing: no such folder"):
        scan_images(tmp_path / "missing")
    with pytest.raises(DataError, match="class_data_dir .*notes.txt: is a file"):
        scan_images(tmp_path / "notes.txt", role="class")


def test_count_warnings(tmp_path):
    rgb(tmp_path / "a.png")
    assert any("1 instance image" in w for w in scan_images(tmp_path).warnings)
    assert not any("instance image" in w for w in scan_images(tmp_path, role="class").warnings)
    for i in range(21):
        rgb(tmp_path / f"b{i}.png", color=(i, 0, 0))
    assert any("22 instance image" in w for w in scan_images(tmp_path).warnings)


def test_modes_convert_to_8bit_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert load_rgb(tmp_path / "cmyk.jpg").getpixel((4, 4))[0] > 200  # red stays red

    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
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

    Image.new("L", (8, 8), 77).save(tmp_path / "gray.png")
    assert load_rgb(tmp_path / "gray.png").getpixel((0, 0)) == (77, 77, 77)
    assert all(load_rgb(p).mode == "RGB" for p in tmp_path.iterdir())


def matrix_profile(red, green, blue, gamma=2.2) -> bytes:
    """A minimal ICC v2 RGB display profile: three primaries (XYZ under D50) and one gamma curve."""
    def s15(value):
        return struct.pack(">i", round(value * 65536))

    def xyz(v):
        return b"XYZ " + b"\0" * 4 + b"".join(s15(c) for c in v)

    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [(b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(red)), (b"gXYZ", xyz(green)),
            (b"bXYZ", xyz(blue)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (struct.pack(">I", offset + len(data)) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 28 + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + data


SRGB_PRIMARIES_D50 = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))


def test_a_photos_color_profile_is_converted_to_srgb(tmp_path):
    # a profile whose "red" is sRGB's green: read as sRGB the pixel stays red, converted it is green
    red, green, blue = SRGB_PRIMARIES_D50
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "wide.jpg", quality=95,
                                                 icc_profile=matrix_profile(green, red, blue))
    r, g, b = load_rgb(tmp_path / "wide.jpg").getpixel((4, 4))
    assert g > 200 and r < 60 and b < 60
    Image.new("RGB", (8, 8), (200, 100, 50)).save(tmp_path / "broken.png", icc_profile=b"not a profile")
    assert load_rgb(tmp_path / "broken.png").getpixel((0, 0)) == (200, 100, 50)  # taken as sRGB
    # with transparency too (an export with alpha, a PNG's transparent color): converted, and over white
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (255, 0, 0, 0))
    rgba.save(tmp_path / "wide-alpha.png", icc_profile=matrix_profile(green, red, blue))
    image = load_rgb(tmp_path / "wide-alpha.png")
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((4, 4))[1] > 200
    keyed = Image.new("RGB", (8, 8), (255, 0, 0))
    keyed.putpixel((0, 0), (0, 0, 0))
    keyed.save(tmp_path / "keyed.png", transparency=(0, 0, 0), icc_profile=matrix_profile(*SRGB_PRIMARIES_D50))
    assert load_rgb(tmp_path / "keyed.png").getpixel((0, 0)) == (255, 255, 255)


def test_deep_and_float_images_are_scaled_not_clipped(tmp_path):
    sixteen = np.array([[65535, 32768], [0, 1000]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "16bit.png")
    img = load_rgb(tmp_path / "16bit.png")
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255,) * 3 and abs(img.getpixel((1, 0))[0] - 128) <= 1
    Image.fromarray(np.array([[0, 30000]], np.uint16)).save(tmp_path / "16bit-transparent.png", transparency=0)
    assert load_rgb(tmp_path / "16bit-transparent.png").getpixel((0, 0)) == (255,) * 3  # over white, as 8-bit is
    assert img.getpixel((0, 1)) == (0, 0, 0) and img.getpixel((1, 1))[0] == 4  # 1000/65535*255, not clipped 255

    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)).save(tmp_path / "float.tif")
    img = load_rgb(tmp_path / "float.tif")
    assert [img.getpixel(xy)[0] for xy in [(0, 0), (1, 0), (0, 1)]] == [0, 128, 255]


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    assert load_rgb(tmp_path / "anim.gif").getpixel((4, 4)) == (255, 0, 0)


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
    rgb(tmp_path / "tall.jpg", size=(1000, 300), exif=exif)  # stored wide, shown tall
    assert any("tall.jpg is 300x1000" in w for w in scan_images(tmp_path, role="class").warnings)


def test_prepare_sizes_and_crops():
    for size in [(300, 200), (200, 300), (64, 64), (20, 50), (6000, 4000)]:
        assert prepare(Image.new("RGB", size), 64, center_crop=True, rng=None).size == (64, 64)
    wide = Image.linear_gradient("L").rotate(90).convert("RGB").resize((400, 200))  # varies along x
    a, b = (prepare(wide, 64, False, random.Random(3)) for _ in range(2))
    assert a.tobytes() == b.tobytes()  # same seed, same crop
    crops = {prepare(wide, 64, False, random.Random(seed)).tobytes() for seed in range(8)}
    assert len(crops) > 1  # the rng does move the crop
    centered = prepare(wide, 64, True, random.Random(3))
    assert centered.tobytes() == prepare(wide, 64, True, None).tobytes()  # center_crop ignores the rng


def test_to_tensor_range():
    t = to_tensor(prepare(Image.new("RGB", (300, 200), (255, 0, 128)), 32, True, None))
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    assert t[0].min() == 1 and t[1].max() == -1 and abs(t[2].mean().item()) < 0.01



def test_heic_is_decoded_when_pillow_heif_is_installed(tmp_path, monkeypatch):
    import dreambooth.data.images as images

    (tmp_path / "IMG_1.heic").write_bytes(b"\0\0\0\x18ftypheic")
    monkeypatch.setattr(images, "_heif_available", lambda: True)
    reason = scan_images(tmp_path).skipped[0][1]
    assert "pillow-heif" not in reason and reason.startswith("not an image")  # decoded, not skipped by name


def test_a_thin_strip_is_skipped_before_it_becomes_a_gigapixel_image(tmp_path):
    """Resized to the training size on its shorter side, a 3x3000 strip would be 512x512000 (262 MP)."""
    Image.new("RGB", (3, 3000), (10, 200, 30)).save(tmp_path / "strip.png")
    rgb(tmp_path / "ok.png")
    scan = scan_images(tmp_path, min_side=512)
    assert [p.name for p in scan.images] == ["ok.png"]
    assert "3x3000 is too thin" in dict((p.name, r) for p, r in scan.skipped)["strip.png"]


def test_browser_jpeg_names_are_images(tmp_path):
    rgb(tmp_path / "IMG_1.jfif", format="JPEG")
    assert [p.name for p in scan_images(tmp_path).images] == ["IMG_1.jfif"]


def test_sdxl_latents_follow_the_vaes_mean_and_std(tiny_sdxl, tmp_path):
    """SDXL's pipeline decodes latents * std / scaling_factor + mean when the VAE config has them."""
    from diffusers import AutoencoderKL

    from dreambooth.data.dataset import LatentImages

    rgb(tmp_path / "a.png", size=(32, 32))
    vae = AutoencoderKL.from_pretrained(tiny_sdxl / "vae")
    plain = LatentImages([tmp_path / "a.png"], vae, 32, True, False, cache=True, latents_mean_std=True)
    vae.register_to_config(latents_mean=[0.5, -0.5, 0.0, 1.0], latents_std=[2.0, 1.0, 0.5, 4.0])
    shifted = LatentImages([tmp_path / "a.png"], vae, 32, True, False, cache=True, latents_mean_std=True)
    z = plain.latents([0], torch.Generator().manual_seed(0))[0] / plain.scaling_factor
    expected = (z - torch.tensor([0.5, -0.5, 0.0, 1.0]).view(1, 4, 1, 1)) * plain.scaling_factor
    expected = expected / torch.tensor([2.0, 1.0, 0.5, 4.0]).view(1, 4, 1, 1)
    assert torch.allclose(shifted.latents([0], torch.Generator().manual_seed(0))[0], expected, atol=1e-6)


@pytest.mark.parametrize("cache", [True, False])
def test_each_latent_carries_its_photos_size_and_crop(tiny_sdxl, tmp_path, cache):
    """SDXL's micro-conditioning, as diffusers' SDXL script passes it: a 60x40 photo at 32 px is resized to
    48x32; its centre crop starts 8 px in, and a random crop anywhere from 0 to 16 (mirrored when flipped)."""
    from diffusers import AutoencoderKL

    from dreambooth.data.dataset import LatentImages

    rgb(tmp_path / "wide.png", size=(60, 40))
    vae = AutoencoderKL.from_pretrained(tiny_sdxl / "vae")
    centred = LatentImages([tmp_path / "wide.png"], vae, 32, center_crop=True, random_flip=True, cache=cache)
    for seed in range(4):  # flipped or not, a centred crop is symmetric
        _, sizes = centred.latents([0], torch.Generator().manual_seed(seed))
        assert sizes.tolist() == [[40, 60, 0, 8, 32, 32]]
    anywhere = LatentImages([tmp_path / "wide.png"], vae, 32, center_crop=False, random_flip=False, cache=cache)
    lefts = {anywhere.latents([0], torch.Generator().manual_seed(seed))[1][0, 3].item() for seed in range(12)}
    assert len(lefts) > 1 and lefts <= set(range(17))


def test_an_sdxl_step_conditions_each_row_on_its_own_size(tiny_sdxl, subject_dir, tmp_path):
    from dreambooth.trainer import Trainer
    from tests.test_trainer import config

    trainer = Trainer(config(tiny_sdxl, subject_dir, tmp_path, max_train_steps=1))
    trainer.setup()
    seen = []
    trainer.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"]),
                                           with_kwargs=True)
    trainer.training_step(0)
    expected = trainer.data.batch(0, torch.Generator().manual_seed(trainer.cfg.seed * 1_000_003)).sizes
    assert len(seen) == 1 and torch.equal(seen[0].cpu(), expected)
    originals = {tuple(Image.open(p).size[::-1]) for p in trainer.data.instance_paths}  # (height, width)
    assert {tuple(row[:2]) for row in expected[:1].int().tolist()} <= originals
