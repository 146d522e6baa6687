"""Peak memory and seconds per step of a DreamBooth run: full fine-tune vs LoRA, and diffusers' example
scripts side by side with the same settings.

    python benchmarks/train_cost.py [--model FOLDER | --sd15 | --sdxl] [--steps 20] [--resolution R]
                                    [--mixed_precision bf16] [--variants NAME ...] [--diffusers_examples DIR]
                                    [TRAIN FLAGS]

Each run is its own process. Its peak is torch.cuda.max_memory_allocated (GPU) or the process's maximum
resident set (CPU); its speed is the median gap between consecutive steps' TensorBoard events, which
both trainers write once per optimizer step, so loading, class images and saving are not counted.
Without --model, a random-weight model of the toy world's architecture is used; --sd15 builds one of
Stable Diffusion 1.5's architecture (860M-parameter UNet, CLIP ViT-L/14 text encoder) in code, --sdxl
one of SDXL base's (2.6B-parameter UNet, two text encoders). Memory and speed depend on the
architecture, not on the weights. --diffusers_examples DIR (a diffusers checkout's
examples/dreambooth) adds its train_dreambooth.py and train_dreambooth_lora.py. --variants runs only
the named rows of ours; any further `train` flags (`--gradient_checkpointing`, say) go to each of ours.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from dreambooth.errors import ModelError
from dreambooth.models import check_model_folder, native_resolution

SUBJECT = Path(__file__).resolve().parents[1] / "examples" / "striped-bag"
NUM_CLASS_IMAGES = 8
OURS = {"full fine-tune": [], "full + text encoder": ["--train_text_encoder"],
        "LoRA r=4": ["--lora", "--lora_rank", "4", "--learning_rate", "1e-4"],
        "LoRA r=4 + text encoder": ["--lora", "--lora_rank", "4", "--learning_rate", "1e-4", "--train_text_encoder"]}
DIFFUSERS = {"full fine-tune": ("train_dreambooth.py", []),
             "LoRA r=4": ("train_dreambooth_lora.py", ["--rank", "4", "--learning_rate", "1e-4"])}
PEAK = ("peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() "
        "else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "print(json.dumps({'peak_bytes': peak, 'device': torch.cuda.get_device_name() "
        "if torch.cuda.is_available() else 'cpu'}))\n")
OURS_CHILD = ("import json, resource, sys, torch\nfrom dreambooth.cli import main\n"
              "code = main(sys.argv[1:])\nif code:\n    sys.exit(code)\n" + PEAK)  # its one-line error is the last
DIFFUSERS_CHILD = ("import json, resource, runpy, sys, torch\nsys.argv = sys.argv[1:]\n"
                   "runpy.run_path(sys.argv[0], run_name='__main__')\n" + PEAK)


def toy_sized_model(folder: Path) -> Path:
    from dreambooth.toyworld import pretrain

    cfg = pretrain.PretrainConfig()
    pretrain.save_pipeline(cfg, *pretrain.build_models(cfg), folder)
    return folder


def sd15_sized_model(folder: Path) -> Path:
    """Stable Diffusion 1.5's published architecture at random weights, with the real CLIP tokenizer."""
    from dreambooth.toyworld.random_model import build_random_published

    return build_random_published("sd1", folder)


def sdxl_sized_model(folder: Path) -> Path:
    """SDXL base's published architecture at random weights (2.6B-parameter UNet, two text encoders)."""
    from dreambooth.toyworld.random_model import build_random_published

    return build_random_published("sdxl", folder)


def image_folders(tmp: Path, resolution: int) -> tuple[Path, Path]:
    """The subject's photos alone (diffusers' scripts read every file as an image) and a fixed set of class
    images that both trainers use as given, so neither generates any."""
    instance, classes = tmp / "instance", tmp / "class"
    instance.mkdir()
    classes.mkdir()
    for photo in sorted(SUBJECT.glob("*.png")):
        shutil.copy(photo, instance)
    rng = np.random.default_rng(0)
    for i in range(NUM_CLASS_IMAGES):
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), np.uint8)).save(classes / f"{i}.png")
    return instance, classes


def seconds_per_step(output_dir: Path) -> float:
    """Median gap between consecutive steps' logged losses; the first three steps (warm-up) are not timed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in output_dir.rglob("events.out.tfevents.*"):  # accelerate also writes an hparams-only file
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if "loss" in accumulator.Tags()["scalars"]:
            times = [e.wall_time for e in accumulator.Scalars("loss")][2:]
            return statistics.median(b - a for a, b in zip(times, times[1:]))
    raise FileNotFoundError(f"no TensorBoard loss events under {output_dir}")


def run(child: str, argv: list[str], output_dir: Path) -> dict:
    """One training process; a failure becomes a row holding its last line of output."""
    try:
        result = subprocess.run([sys.executable, "-c", child, *argv], capture_output=True, text=True)
        if result.returncode:
            lines = result.stderr.strip().splitlines()
            return {"error": lines[-1] if lines else f"exit {result.returncode}"}
        return {**json.loads(result.stdout.strip().splitlines()[-1]), "s_per_step": seconds_per_step(output_dir)}
    except Exception as error:  # noqa: BLE001 - a benchmark reports every row it can
        return {"error": f"{type(error).__name__}: {error}"}
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)


def table(rows: list[tuple[str, dict]]) -> str:
    base = next((r for _, r in rows if "error" not in r), {"device": "no run finished"})
    device = base["device"]
    lines = [f"| run | peak memory ({device}) | vs first | s per step | vs first |", "|---|---|---|---|---|"]
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:120]} | | | |")
            continue
        memory, speed = r["peak_bytes"], r["s_per_step"]
        lines.append(f"| {name} | {memory / 2**20:,.0f} MiB | {memory / base['peak_bytes']:.2f}x "
                     f"| {speed:.3f} | {speed / base['s_per_step']:.2f}x |")
    return "\n".join(lines)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, resolution and precision options, shared with profile_step.py."""
    model_choice = parser.add_mutually_exclusive_group()
    model_choice.add_argument("--model", type=Path)
    model_choice.add_argument("--sd15", action="store_true", help="a random-weight model of SD 1.5's architecture")
    model_choice.add_argument("--sdxl", action="store_true", help="a random-weight model of SDXL base's architecture")
    parser.add_argument("--resolution", type=int, help="default: the model's native size")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])


def model_and_data(args: argparse.Namespace, parser: argparse.ArgumentParser, tmp: Path) -> list[str]:
    """The model (given, or built in `tmp`) and the images, as the flags every trainer here shares."""
    if args.model:
        try:
            check_model_folder(args.model, option="--model")
        except ModelError as error:
            parser.error(str(error))
    build = sd15_sized_model if args.sd15 else sdxl_sized_model if args.sdxl else toy_sized_model
    model = args.model or build(tmp / "model")
    resolution = args.resolution or native_resolution(model)
    instance, classes = image_folders(tmp, resolution)
    return ["--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(instance),
            "--class_data_dir", str(classes), "--num_class_images", str(NUM_CLASS_IMAGES),
            "--resolution", str(resolution), "--train_batch_size", "1", "--center_crop",
            "--mixed_precision", args.mixed_precision]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--variants", nargs="+", choices=list(OURS), default=list(OURS), help="which of ours to run")
    parser.add_argument("--diffusers_examples", type=Path, help="a diffusers checkout's examples/dreambooth")
    args, train_flags = parser.parse_known_args()
    if args.steps < 4:
        parser.error(f"--steps must be at least 4 (three warm-up steps, then timed ones), got {args.steps}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = [*model_and_data(args, parser, tmp), "--max_train_steps", str(args.steps),
                  "--report_to", "tensorboard"]
        rows = []
        for i, name in enumerate(args.variants):
            out = tmp / f"out-{i}"
            argv = ["train", *common, "--class_noun", "bag", "--output_dir", str(out), *OURS[name], *train_flags]
            rows.append((f"dreambooth: {name}", run(OURS_CHILD, argv, out)))
            print(rows[-1], flush=True)
        for i, (name, (script, extra)) in enumerate(DIFFUSERS.items() if args.diffusers_examples else ()):
            out = tmp / f"out-diffusers-{i}"
            argv = [str(args.diffusers_examples / script), *common, "--output_dir", str(out),
                    "--with_prior_preservation", "--instance_prompt", "a sks bag", "--class_prompt", "a bag", *extra]
            rows.append((f"diffusers {script}: {name}", run(DIFFUSERS_CHILD, argv, out)))
            print(rows[-1], flush=True)
        print(table(rows))


if __name__ == "__main__":
    main()
