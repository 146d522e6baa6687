"""Regenerate the tables of docs/reliability.md from real runs: python scripts/reliability_table.py"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from dreambooth.data.images import scan_images


def messy_folder(d: Path) -> None:
    Image.new("RGB", (300, 300), (10, 200, 30)).save(d / "good.jpg")
    (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (d / "caption.txt").write_text("a photo of my dog")
    (d / "empty.jpg").write_bytes(b"")
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "text-named.png").write_text("this is text")
    (d / "IMG_0001.heic").write_bytes(b"\0\0\0\x18ftypheic")
    shutil.copy(d / "good.jpg", d / "good (1).jpg")
    (d / "__MACOSX").mkdir()
    (d / "raw").mkdir()
    Image.new("RGB", (40, 40)).save(d / "thumbnail.png")
    Image.new("RGB", (1500, 300)).save(d / "panorama.png")
    Image.new("RGB", (12000, 9000)).save(d / "huge.png")
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(d / "16-bit gray.png")
    Image.new("CMYK", (300, 300)).save(d / "cmyk.jpg")
    Image.new("RGBA", (300, 300), (0, 0, 0, 0)).save(d / "transparent.png")


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dreambooth.cli", *args], capture_output=True, text=True)
    lines = [line.strip() for line in (result.stderr or result.stdout).strip().splitlines()]
    return f"exit {result.returncode}: " + "<br>".join(f"`{line}`" for line in lines)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "photos"
        d.mkdir()
        messy_folder(d)
        scan = scan_images(d)
        print("| file | what happens |\n|---|---|")
        for path in scan.images:
            print(f"| `{path.name}` | used |")
        for path, why in scan.skipped:
            print(f"| `{path.name}` | skipped: {why} |")
        for line in scan.warnings:
            print(f"| (warning) | {line} |")
        print("\n| command | what the user sees |\n|---|---|")
        empty = Path(tmp) / "empty"
        empty.mkdir()
        cases = [
            ("train --pretrained_model_name_or_path nowhere --instance_data_dir nowhere --class_noun dog --check", ()),
            ("train --pretrained_model_name_or_path m --instance_data_dir d --max_train_steps many", ()),
            ("train --pretrained_model_name_or_path m --instance_data_dir d", ()),
            (f"train --config {d / 'caption.txt'}", ()),
            ("train --pretrained_model_name_or_path m --instance_data_dir d --class_noun dog --mixed_precision fp8", ()),
            (f"train --pretrained_model_name_or_path {empty} --instance_data_dir {empty} --class_noun dog", ()),
        ]
        for command, _ in cases:
            shown = command.replace(tmp, "/tmp/x")
            print(f"| `dreambooth {shown}` | {cli(*command.split()).replace(tmp, '/tmp/x')} |")


if __name__ == "__main__":
    main()
