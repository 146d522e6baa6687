"""A judge of any width loads back from its weights alone, is scored on the split asked for, and
learns from renders that differ from one rendering worker to the next."""

import math

import numpy as np
import torch
from safetensors import safe_open

from dreambooth.toyworld import fashion_mnist, judge


def test_saved_judge_loads_at_its_own_width_and_reads_the_same(tmp_path):
    torch.manual_seed(0)
    narrow = judge.Judge(width=8).eval()
    judge.save(narrow, tmp_path, steps=1)
    loaded = judge.load(tmp_path)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert all(torch.equal(narrow(pixels)[k], loaded(pixels)[k]) for k in judge.HEADS)
    assert not list(tmp_path.glob("*.tmp"))


def test_accuracy_scores_renders_of_the_split_asked_for(monkeypatch):
    items = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    labels = {"train": np.full(4, 9, np.uint8), "test": np.zeros(4, np.uint8)}  # boots to learn from, t-shirts held out
    monkeypatch.setattr(fashion_mnist, "load", lambda split: (items, labels[split]))
    narrow = judge.Judge(width=8).eval()
    for split, scored in (("train", "boot"), ("test", "t-shirt")):
        by_class = judge.accuracy(narrow, n=4, split=split)["class, by class"]
        assert [noun for noun, value in by_class.items() if not math.isnan(value)] == [scored]


def test_each_rendering_worker_draws_its_own_batches_and_the_first_those_of_one_process(monkeypatch):
    """Workers seeded alike would hand the judge the same renders several times over; the first keeps
    the stream a single process draws, so the shipped judge's recipe (one worker) is unchanged."""
    items = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(fashion_mnist, "load", lambda split: (items, np.arange(8, dtype=np.uint8)))
    data = judge.RenderedBatches(batch=2, seed=0, two_tone_fraction=0.5)
    alone = next(iter(data))[0]
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2, multiprocessing_context="fork")
    batches = iter(loader)
    first, second = next(batches)[0], next(batches)[0]  # workers take turns: worker 0, then worker 1
    assert torch.equal(first, alone) and not torch.equal(first, second)


def test_the_recipe_saved_with_a_judge_names_its_rendering_workers(tmp_path, monkeypatch):
    """Several workers draw other renders than one: the recipe must say how many to be reproduced."""
    items = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(fashion_mnist, "load", lambda split: (items, np.arange(8, dtype=np.uint8)))
    judge.train(tmp_path, steps=1, batch=2, width=4, workers=1)
    with safe_open(tmp_path / "judge.safetensors", "pt") as weights:
        assert weights.metadata()["workers"] == "1" and weights.metadata()["batch"] == "2"
