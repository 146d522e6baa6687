"""Several processes (torchrun / `accelerate launch`, here on the CPU with gloo): `train` runs as one
job across them; `batch` gives each process its own runs."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dreambooth import checkpoints, runlog
from dreambooth.cli import main
from tests.test_batch import write_runs

CHECKED_CLI = Path(__file__).parent / "cli_with_teardown_check.py"


def finished(launcher: subprocess.Popen) -> tuple[str, str]:
    """The launcher's stdout and stderr once it exits. At the timeout it is stopped with SIGTERM, which its agent passes
    on to the workers: they run in sessions of their own, and a SIGKILL to the launcher alone leaves them running."""
    try:
        return launcher.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        launcher.terminate()
        launcher.communicate(timeout=60)
        raise


def launch(argv, tmp_path, cpu=True):
    """`dreambooth <argv>` in two processes, each checking that no DDP-wrapped model outlives its process group."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true" if cpu else "false", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                 str(CHECKED_CLI), *argv], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    stdout, stderr = finished(launcher)
    assert not re.search(r"destroyed with [1-9]\d* DDP models alive", stderr)
    return subprocess.CompletedProcess(launcher.args, launcher.returncode, stdout, stderr)


def train_args(tiny_sd, subject_dir, tmp_path, *extra):
    return ["train", "--pretrained_model_name_or_path", str(tiny_sd), "--instance_data_dir", str(subject_dir),
            "--class_noun", "dog", "--output_dir", str(tmp_path / "out"), "--class_cache_dir", str(tmp_path / "cache"),
            "--num_class_images", "2", "--class_inference_steps", "2", "--max_train_steps", "3",
            "--checkpointing_steps", "2", "--learning_rate", "1e-3", "--report_to", "none", "--center_crop", *extra]


def test_two_processes_train_one_run_and_stop_together_on_a_bad_loss(tiny_sd, subject_dir, tmp_path):
    done = launch(train_args(tiny_sd, subject_dir, tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    assert [row["step"] for row in runlog.read(out)] == [1, 2, 3]  # one writer: the main process
    assert [p.name for p in checkpoints.complete_checkpoints(out)] == ["checkpoint-2"]
    assert (out / "model_index.json").is_file()
    assert done.stderr.count("process group destroyed with 0 DDP models alive") == 2  # freed first: no hang
    diverging = launch(train_args(tiny_sd, subject_dir, tmp_path / "nan", "--learning_rate", "1e30",
                                  "--max_grad_norm", "1e30", "--max_train_steps", "20"), tmp_path)
    assert diverging.returncode != 0 and diverging.stderr.count("the loss is not finite") == 2  # both, no hang


def test_processes_that_cannot_form_a_group_never_train_apart(tiny_sd, subject_dir, tmp_path):
    """Launched on a CPU machine without ACCELERATE_USE_CPU, accelerate 1.13 forms no process group: the run
    is refused, not trained by each process alone into one folder. Older accelerate forms a gloo group."""
    done = launch(train_args(tiny_sd, subject_dir, tmp_path), tmp_path, cpu=False)
    if done.returncode != 0:
        assert "2 processes were launched, but accelerate found no process group" in done.stderr
        assert not (tmp_path / "out" / "model_index.json").exists()
    else:
        assert [row["step"] for row in runlog.read(tmp_path / "out")] == [1, 2, 3]  # one job, one writer


def test_a_launched_batch_gives_each_process_its_own_runs(tiny_sd, subject_dir, tmp_path):
    runs = write_runs(tmp_path, tiny_sd, subject_dir, ("a", {}), ("b", {}), ("c", {}))
    done = launch(["batch", str(runs)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in "abc":  # each run trained once, by one process alone
        assert [row["step"] for row in runlog.read(tmp_path / name)] == [1, 2]
        assert yaml.safe_load((tmp_path / name / "dreambooth_config.yaml").read_text())["output_dir"].endswith(name)
    assert "[1/2] run 1" in done.stderr and "[2/2] run 3" in done.stderr and "[1/1] run 2" in done.stderr
    twice = launch(["batch", str(runs), "--shard", "1/2"], tmp_path)
    assert twice.returncode != 0 and "--shard: each of the launched processes already takes its own share" in twice.stderr


def test_two_processes_train_sdxl_with_its_text_encoders(tiny_sdxl, subject_dir, tmp_path):
    # SDXL reads its first text encoder's penultimate layer: the last one gets no gradient, which DDP
    # must be told about, or the second step fails in every process
    done = launch(train_args(tiny_sdxl, subject_dir, tmp_path, "--train_text_encoder", "--max_train_steps", "2",
                             "--checkpointing_steps", "5"), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [row["step"] for row in runlog.read(tmp_path / "out")] == [1, 2]


GENERATE_LOGGED = """
import os, sys
from dreambooth import class_images, cli

generate = class_images._generate


def logged(*args, **kwargs):
    with open(os.environ["GENERATE_LOG"], "a") as log:
        log.write(os.environ["RANK"] + ":" + ",".join(map(str, args[2])) + "\\n")  # (spec, pipe, indices, ...)
    return generate(*args, **kwargs)


class_images._generate = logged
sys.exit(cli.main())
"""


def test_processes_share_the_class_images_and_each_node_gets_all(tiny_sd, subject_dir, tmp_path):
    # two nodes of two processes on this machine, each node with a cache of its own (a node-local disk)
    script = tmp_path / "train_logged.py"
    script.write_text(GENERATE_LOGGED)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "GENERATE_LOG": str(tmp_path / "log"),
           "PYTHONPATH": os.getcwd()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
                               "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               str(script), *train_args(tiny_sd, subject_dir, tmp_path, "--max_train_steps", "1",
                                                        "--num_class_images", "4",
                                                        "--class_cache_dir", str(tmp_path / f"cache-{node}"))],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in (0, 1)]
    for node in nodes:
        _, stderr = finished(node)
        assert node.returncode == 0, stderr[-2000:]
    # each process drew image k (of 4) into its node's cache; then the processes of each node drew in
    # shares what the other node's processes had drawn (none waited while one drew the rest)
    assert sorted((tmp_path / "log").read_text().split()) == ["0:0", "0:2", "1:1", "1:3", "2:0", "2:2", "3:1", "3:3"]


def test_a_resume_on_another_number_of_processes_keeps_the_learning_rate_schedule(tiny_sd, subject_dir, tmp_path):
    args = train_args(tiny_sd, subject_dir, tmp_path, "--max_train_steps", "4", "--lr_scheduler", "linear")
    done = launch(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    uninterrupted = [row["lr"] for row in runlog.read(tmp_path / "out")]
    assert main([*args, "--resume_from_checkpoint", "checkpoint-2"]) == 0  # one process now, not two
    assert [row["lr"] for row in runlog.read(tmp_path / "out")] == pytest.approx(uninterrupted)
