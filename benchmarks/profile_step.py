"""Where a training step's time goes: one variant of benchmarks/train_cost.py, timed and profiled.

    python benchmarks/profile_step.py (--model FOLDER | --sd15) --variant "LoRA r=4 + text encoder"
                                      [--mixed_precision bf16] [--steps 10] [--trace FILE] [TRAIN FLAGS]

The trainer is built as `dreambooth train` builds it, with train_cost.py's data and flags for the
variant, plus any further `train` flags given (`--gradient_checkpointing`, say). Three warm-up steps
are timed apart, then --steps steps (the device synchronized before and after), then three more run
under torch.profiler: its table of the operators with the most self time on the device (on the CPU,
without one) is printed, and --trace writes the three steps as a Chrome trace. The last line is JSON:
seconds of warm-up, seconds per step, and seconds per step that the device was busy (running at least
one kernel). A step much longer than its busy time waits on Python launching kernels one at a time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType

from dreambooth.cli import build_parser, build_train_config
from dreambooth.trainer import Trainer
from dreambooth.models import native_resolution
from train_cost import NUM_CLASS_IMAGES, OURS, image_folders, sd15_sized_model, toy_sized_model

WARMUP_STEPS, PROFILED_STEPS = 3, 3


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def busy_seconds(events) -> float:
    """Time the device ran at least one kernel: the union of their intervals. Annotations (such as
    Optimizer.step) also span the gaps between kernels, so they are left out; on a CPU, top-level ops."""
    kind = DeviceType.CUDA if torch.cuda.is_available() else DeviceType.CPU
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == kind and not e.is_user_annotation and not e.cpu_parent)
    busy, reached = 0.0, float("-inf")
    for start, end in spans:
        busy += max(0.0, end - max(start, reached))
        reached = max(reached, end)
    return busy / 1e6  # the profiler counts microseconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_choice = parser.add_mutually_exclusive_group()
    model_choice.add_argument("--model", type=Path)
    model_choice.add_argument("--sd15", action="store_true", help="a random-weight model of SD 1.5's architecture")
    parser.add_argument("--variant", default="LoRA r=4 + text encoder", choices=list(OURS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--trace", type=Path, help="write the profiled steps as a Chrome trace (JSON) here")
    parser.add_argument("--rows", type=int, default=25, help="operators in the printed table")
    args, train_flags = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or (sd15_sized_model if args.sd15 else toy_sized_model)(tmp / "model")
        resolution = native_resolution(model)
        instance, classes = image_folders(tmp, resolution)
        argv = ["train", "--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(instance),
                "--class_data_dir", str(classes), "--num_class_images", str(NUM_CLASS_IMAGES), "--class_noun", "bag",
                "--resolution", str(resolution), "--train_batch_size", "1", "--center_crop", "--report_to", "none",
                "--mixed_precision", args.mixed_precision, "--output_dir", str(tmp / "out"), *OURS[args.variant],
                *train_flags]
        trainer = Trainer(build_train_config(build_parser().parse_args(argv)))
        trainer.setup()
        start = time.perf_counter()
        for step in range(WARMUP_STEPS):
            trainer.training_step(step)
        synchronize()
        warmup = time.perf_counter() - start
        start = time.perf_counter()
        for step in range(WARMUP_STEPS, WARMUP_STEPS + args.steps):
            trainer.training_step(step)
        synchronize()
        seconds = (time.perf_counter() - start) / args.steps
        print(f"warm-up {warmup:.1f} s, then {seconds:.4f} s per step; profiling", flush=True)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profile:
            for step in range(WARMUP_STEPS + args.steps, WARMUP_STEPS + args.steps + PROFILED_STEPS):
                trainer.training_step(step)
            synchronize()
        sort_by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        print(profile.key_averages().table(sort_by=sort_by, row_limit=args.rows))
        if args.trace:
            profile.export_chrome_trace(str(args.trace))
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        busy = busy_seconds(profile.events()) / PROFILED_STEPS
        print(json.dumps({"variant": args.variant, "mixed_precision": args.mixed_precision, "flags": train_flags,
                          "warmup_s": round(warmup, 1), "s_per_step": round(seconds, 4), "busy_s_per_step": round(busy, 4), "device": device}))


if __name__ == "__main__":
    main()
