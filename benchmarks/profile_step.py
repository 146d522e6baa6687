"""Where a training step's time goes: one variant of benchmarks/train_cost.py, timed and profiled.

    python benchmarks/profile_step.py (--model FOLDER | --sd15 | --sdxl) --variant "LoRA r=4 + text encoder"
                                      [--resolution R] [--mixed_precision bf16] [--steps 10]
                                      [--trace FILE] [TRAIN FLAGS]

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
from train_cost import OURS, add_model_arguments, model_and_data

WARMUP_STEPS, PROFILED_STEPS = 3, 3


CUDA = torch.cuda.is_available()


def synchronize() -> None:
    if CUDA:
        torch.cuda.synchronize()


def busy_seconds(events) -> float:
    """Time the device ran at least one kernel: the union of their intervals. Annotations (such as
    Optimizer.step) also span the gaps between kernels, so they are left out; on a CPU, top-level ops."""
    kind = DeviceType.CUDA if CUDA else DeviceType.CPU
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == kind and not e.is_user_annotation and not e.cpu_parent)
    busy, reached = 0.0, float("-inf")
    for start, end in spans:
        busy += max(0.0, end - max(start, reached))
        reached = max(reached, end)
    return busy / 1e6  # the profiler counts microseconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--variant", default="LoRA r=4 + text encoder", choices=list(OURS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--trace", type=Path, help="write the profiled steps as a Chrome trace (JSON) here")
    parser.add_argument("--rows", type=int, default=25, help="operators in the printed table")
    args, train_flags = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        argv = ["train", *model_and_data(args, parser, tmp), "--class_noun", "bag", "--report_to", "none",
                "--output_dir", str(tmp / "out"), *OURS[args.variant], *train_flags]
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
        if CUDA:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profile:
            for step in range(WARMUP_STEPS + args.steps, WARMUP_STEPS + args.steps + PROFILED_STEPS):
                trainer.training_step(step)
            synchronize()
        sort_by = "self_cuda_time_total" if CUDA else "self_cpu_time_total"
        print(profile.key_averages().table(sort_by=sort_by, row_limit=args.rows))
        if args.trace:
            profile.export_chrome_trace(str(args.trace))
        device = torch.cuda.get_device_name() if CUDA else "cpu"
        busy = busy_seconds(profile.events()) / PROFILED_STEPS
        print(json.dumps({"variant": args.variant, "mixed_precision": args.mixed_precision, "flags": train_flags,
                          "warmup_s": round(warmup, 1), "s_per_step": round(seconds, 4),
                          "busy_s_per_step": round(busy, 4), "device": device}))


if __name__ == "__main__":
    main()
