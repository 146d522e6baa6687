"""Real-vs-real subject fidelity of DreamBench photos: the ceiling to read generated-image scores against.

    python benchmarks/calibrate_real_photos.py /work/shared/dreambench/subjects [--encoders E ...]
    python benchmarks/calibrate_real_photos.py examples --object_crops   # the toy world's subjects

For each subject folder: mean cosine over ordered pairs of different photos ("same", the paper's
real-images row: DINO 0.774 with DINO ViT-S/16), and mean cosine to all other subjects' photos
("cross", what an unrelated subject scores). Also 1-NN same-subject accuracy and pair AUC, and for
encoders with feature maps the LPIPS-style DIV among each subject's real photos. `--object_crops`
also scores each encoder on the toy-world locator's object crops (toy-world photos only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dreambooth.evaluation.encoders import DEFAULT_ENCODERS, load_encoder
from dreambooth.evaluation.evaluate import image_files, open_images
from dreambooth.evaluation.metrics.div import div, metric_name
from dreambooth.evaluation.metrics.fidelity import self_similarity, subject_fidelity


def separation(e: torch.Tensor, labels: list[str]) -> tuple[float, float]:
    """1-NN same-subject accuracy and AUC of same-subject vs cross-subject pair cosines."""
    sims = e @ e.T
    same = torch.tensor([[a == b for b in labels] for a in labels])
    nn = (sims - 3 * torch.eye(len(labels))).argmax(dim=1)  # (N,) nearest other photo
    nn_acc = float(same[torch.arange(len(labels)), nn].float().mean())
    upper = torch.triu(torch.ones_like(sims, dtype=torch.bool), diagonal=1)
    pos, neg = sims[upper & same], sims[upper & ~same]
    return nn_acc, float((pos[:, None] > neg[None, :]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("subjects", type=Path)
    parser.add_argument("--encoders", nargs="+", default=list(DEFAULT_ENCODERS))
    parser.add_argument("--object_crops", action="store_true", help="also each encoder on the toy world's object crops")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folders = sorted(p for p in args.subjects.iterdir() if p.is_dir())
    photos = {f.name: open_images(image_files(f)) for f in folders}
    encoders = [load_encoder(name) for name in args.encoders]
    if args.object_crops:
        from dreambooth.toyworld import locator

        found = locator.load()
        encoders += [locator.ObjectCrops(e, found) for e in encoders]
    for encoder in encoders:
        emb = {s: encoder.embed(images) for s, images in photos.items()}
        print(f"\n## {encoder.name}\n\n| subject | photos | same | cross |\n|---|---|---|---|")
        same, cross = [], []
        for s, e in emb.items():
            others = torch.cat([o for t, o in emb.items() if t != s])
            same.append(self_similarity(e))
            cross.append(subject_fidelity(e, others))
            print(f"| {s} | {len(e)} | {same[-1]:.3f} | {cross[-1]:.3f} |")
        nn_acc, auc = separation(torch.cat(list(emb.values())), [s for s, e in emb.items() for _ in range(len(e))])
        print(f"| **mean** | {sum(map(len, emb.values()))} | **{sum(same) / len(same):.3f}** | "
              f"{sum(cross) / len(cross):.3f} |\n\n1-NN same-subject {nn_acc:.3f}, pair AUC {auc:.3f}")
        if hasattr(encoder, "feature_maps"):
            divs = [div(encoder, images) for images in photos.values()]
            print(f"DIV {metric_name(encoder)} of real photos: " + ", ".join(f"{d:.3f}" for d in divs)
                  + f"; mean {sum(divs) / len(divs):.3f}")


if __name__ == "__main__":
    main()
