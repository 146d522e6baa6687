"""Regenerate the command table of docs/reliability.md from real runs: python scripts/reliability_table.py"""

import subprocess
import sys
import tempfile
from pathlib import Path


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dreambooth.cli", *args], capture_output=True, text=True)
    lines = [line.strip() for line in (result.stderr or result.stdout).strip().splitlines()]
    return f"exit {result.returncode}: " + "<br>".join(f"`{line}`" for line in lines)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "photos"
        d.mkdir()
        (d / "caption.txt").write_text("a photo of my dog")
        print("| command | what the user sees |\n|---|---|")
        empty = Path(tmp) / "empty"
        empty.mkdir()
        single_file = Path(tmp) / "model.safetensors"
        single_file.write_bytes(b"")
        cases = [
            "train --pretrained_model_name_or_path nowhere --instance_data_dir nowhere --class_noun dog --check",
            "train --pretrained_model_name_or_path m --instance_data_dir d --max_train_steps many",
            "train --pretrained_model_name_or_path m --instance_data_dir d",
            f"train --config {d / 'caption.txt'}",
            "train --pretrained_model_name_or_path m --instance_data_dir d --class_noun dog --mixed_precision fp8",
            f"train --pretrained_model_name_or_path {empty} --instance_data_dir {empty} --class_noun dog",
            "generate --model nowhere --prompt x",
            "generate --model m --prompt x -n 0",
            "class-images --model m --prompt x --batch_size -1",
            f"train --pretrained_model_name_or_path {single_file} --instance_data_dir {d} --class_noun dog",
            f"import {single_file} --output {empty}",
            f"import {d / 'caption.txt'} --output {empty}",
        ]
        for command in cases:
            shown = command.replace(tmp, "/tmp/x")
            print(f"| `dreambooth {shown}` | {cli(*command.split()).replace(tmp, '/tmp/x')} |")

if __name__ == "__main__":
    main()
