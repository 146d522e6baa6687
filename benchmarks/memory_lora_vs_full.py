"""Peak memory of a DreamBooth run: full fine-tune vs LoRA, side by side, on the toy-world model size.

    python benchmarks/memory_lora_vs_full.py [--model FOLDER] [--steps 20]

Each variant runs `dreambooth train` in its own process; the peak is that process's maximum
resident set (CPU) or `torch.cuda.max_memory_allocated` (GPU). Without --model, a random-weight
model of the toy world's architecture (dreambooth.toyworld.pretrain.build_models) is used: memory
depends on the architecture, not on the weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {"full fine-tune": [], "full + text encoder": ["--train_text_encoder"],
            "LoRA r=4": ["--lora", "--lora_rank", "4"], "LoRA r=4 + text encoder": ["--lora", "--train_text_encoder"]}
CHILD = """
import json, resource, sys, torch
from dreambooth.cli import main
code = main(sys.argv[1:])
peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"code": code, "peak_bytes": peak, "device": "cuda" if torch.cuda.is_available() else "cpu"}))
"""


def toy_sized_model(folder: Path) -> Path:
    from transformers import CLIPTokenizer

    from dreambooth.models import CLIP_TOKENIZER_DIR
    from dreambooth.toyworld import pretrain

    cfg = pretrain.PretrainConfig()
    vae, text_encoder, unet = pretrain.build_models(cfg)
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR, model_max_length=cfg.context_length)
    pretrain.save_pipeline(cfg, vae, text_encoder, unet, tokenizer, folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or toy_sized_model(tmp / "model")
        photos = Path(__file__).resolve().parents[1] / "examples" / "striped-bag"
        rows = []
        for name, extra in VARIANTS.items():
            argv = ["train", "--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(photos),
                    "--class_noun", "bag", "--output_dir", str(tmp / name.replace(" ", "-")), "--class_cache_dir",
                    str(tmp / "cache"), "--num_class_images", "8", "--class_inference_steps", "2",
                    "--max_train_steps", str(args.steps), "--train_batch_size", "2", "--report_to", "none",
                    "--center_crop", "--learning_rate", "1e-4", *extra]
            result = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
            rows.append((name, json.loads(result.stdout.strip().splitlines()[-1])))
        base = rows[0][1]["peak_bytes"]
        print(f"| variant | peak memory ({rows[0][1]['device']}) | vs full fine-tune |\n|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {r['peak_bytes'] / 2**20:.0f} MiB | {r['peak_bytes'] / base:.2f}x |")


if __name__ == "__main__":
    main()
