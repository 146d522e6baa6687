"""Regenerate the "Image folders" tables of docs/reliability.md: python scripts/reliability_images.py"""
import shutil, sys, tempfile
from pathlib import Path
import numpy as np
from PIL import Image
from dreambooth.data.images import load_rgb, scan_images
from dreambooth.errors import DataError
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.data.test_images import SRGB_PRIMARIES_D50, matrix_profile  # a color profile made in code

def rgb(path, size=(600, 600), color=(10, 200, 30), **kw):
    Image.new("RGB", size, color).save(path, **kw)

tmp = Path(tempfile.mkdtemp())
d = tmp / "photos"; d.mkdir()
rgb(d / "IMG_0001.jpg")
shutil.copy(d / "IMG_0001.jpg", d / "IMG_0001 (1).jpg")
rgb(d / "Émile à la plage.png", color=(1, 2, 3))
(d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
rgb(d / "._IMG_0001.jpg")
(d / "__MACOSX").mkdir()
(d / "raw").mkdir(); rgb(d / "raw" / "x.png")
(d / "IMG_0001.txt").write_text("a photo of sks dog")
(d / "empty.jpg").write_bytes(b"")
data = (d / "IMG_0001.jpg").read_bytes(); (d / "half-download.jpg").write_bytes(data[: len(data) // 2])
(d / "text-named.png").write_text("this is text")
(d / "IMG_0002.heic").write_bytes(b"\0\0\0\x18ftypheic")
(d / "IMG_0003.DNG").write_bytes(b"II*\0")
rgb(d / "huge.png", size=(12000, 9000))
rgb(d / "thumbnail.png", size=(40, 40), color=(9, 9, 9))
rgb(d / "panorama.jpg", size=(1800, 500), color=(7, 7, 7))
exif = Image.Exif(); exif[0x0112] = 6
rgb(d / "portrait-rotated.jpg", size=(1000, 300), color=(5, 5, 5), exif=exif)
scan = scan_images(d)
print("Scan of a folder holding every odd file (`scan_images(photos)`):\n")
print("| file in the folder | what happens |\n|---|---|")
rows = [(p.name, "used") for p in scan.images] + [(p.name, f"skipped: {why}") for p, why in scan.skipped]
for name, what in sorted(rows):
    print(f"| `{name}` | {what} |")
print("\nWarnings for the same folder, then for folders of 1 and of 25 photos (training goes on):\n")
for w in scan.warnings:
    print(f"- `` {w.replace(str(tmp) + '/', '')} ``")
one = tmp / "one"; one.mkdir(); rgb(one / "a.jpg")
print(f"- `` {scan_images(one).warnings[0].replace(str(tmp) + '/', '')} ``")
many = tmp / "many"; many.mkdir()
for i in range(25): rgb(many / f"{i:02d}.png", color=(i * 10, 0, 0))
print(f"- `` {scan_images(many).warnings[0].replace(str(tmp) + '/', '')} ``")

print("\nErrors (the CLI prints the line and exits; nothing is trained):\n")
print("| situation | message |\n|---|---|")
bad = tmp / "bad"; bad.mkdir(); (bad / "notes.txt").write_text("x"); (bad / "empty.jpg").write_bytes(b"")
(bad / "IMG_9.heic").write_bytes(b"x"); (bad / "photos").mkdir()
cases = [("folder does not exist", lambda: scan_images(tmp / "missing")),
         ("a file passed instead of a folder", lambda: scan_images(bad / "notes.txt", role="class")),
         ("empty folder", lambda: scan_images(tmp / "one" / ".." / "emptydir").require()),
         ("no usable image", lambda: scan_images(bad).require()),
         ("too few for `require(min_count=2)`", lambda: scan_images(one).require(2))]
(tmp / "emptydir").mkdir()
for what, fn in cases:
    try:
        fn(); msg = "(no error)"
    except DataError as e:
        msg = str(e).replace(str(tmp) + "/", "").replace("one/../", "")
    print(f"| {what} | `` {msg} `` |")

print("\nPixel formats `load_rgb` converts to 8-bit RGB (as training sees them):\n")
print("| input | result |\n|---|---|")
m = tmp / "modes"; m.mkdir()
Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(m / "cmyk.jpg")
pal = Image.new("P", (8, 8), 1); pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762); pal.putpixel((0, 0), 0)
pal.save(m / "palette.png", transparency=0)
Image.new("LA", (8, 8), (100, 0)).save(m / "la.png")
rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 255)); rgba.putpixel((0, 0), (0, 0, 0, 0)); rgba.save(m / "rgba.png")
Image.fromarray(np.array([[65535, 32768], [0, 1000]], np.uint16)).save(m / "16bit.png")
Image.fromarray(np.array([[0, 30000]], np.uint16)).save(m / "16bit-clear.png", transparency=0)
red, green, blue = SRGB_PRIMARIES_D50
Image.new("RGB", (8, 8), (255, 0, 0)).save(m / "icc.jpg", quality=95, icc_profile=matrix_profile(green, red, blue))
Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)).save(m / "float.tif")
fr = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
fr[0].save(m / "anim.gif", save_all=True, append_images=fr[1:])
img = Image.new("RGB", (40, 20)); img.paste((255, 0, 0), (0, 0, 8, 8)); img.save(m / "rot.jpg", exif=exif, quality=100)
def px(p, xy): return load_rgb(m / p).getpixel(xy)
print(f"| CMYK JPEG, pure red ink | RGB {px('cmyk.jpg', (4, 4))} |")
print(f"| palette PNG, transparent index at (0,0), red elsewhere | (0,0) → {px('palette.png', (0, 0))}, rest → {px('palette.png', (4, 4))} |")
print(f"| LA (gray + alpha), fully transparent | {px('la.png', (1, 1))} (white) |")
print(f"| RGBA, transparent pixel / opaque blue | {px('rgba.png', (0, 0))} / {px('rgba.png', (5, 5))} |")
print(f"| 16-bit gray PNG 65535 / 32768 / 1000 / 0 | {px('16bit.png', (0, 0))} / {px('16bit.png', (1, 0))} / {px('16bit.png', (1, 1))} / {px('16bit.png', (0, 1))} (scaled, not clipped) |")
print(f"| 16-bit gray PNG whose gray 0 is transparent: 0 / 30000 | {px('16bit-clear.png', (0, 0))} / {px('16bit-clear.png', (1, 0))} |")
print(f"| JPEG (255, 0, 0) with a color profile whose red is sRGB's green | {px('icc.jpg', (4, 4))} (converted to sRGB) |")
print(f"| 32-bit float TIFF 0.0 / 0.5 / 1.0 | {px('float.tif', (0, 0))} / {px('float.tif', (1, 0))} / {px('float.tif', (0, 1))} |")
print(f"| animated GIF, red then blue frame | {px('anim.gif', (4, 4))} (first frame) |")
r = load_rgb(m / "rot.jpg")
print(f"| JPEG 40x20 with EXIF orientation 6, red marker top-left | {r.size[0]}x{r.size[1]}, marker now top-right: {r.getpixel((17, 2))} |")
shutil.rmtree(tmp)
