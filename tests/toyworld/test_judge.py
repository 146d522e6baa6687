"""A judge of any width loads back from its weights alone."""

import torch

from dreambooth.toyworld import judge


def test_saved_judge_loads_at_its_own_width_and_reads_the_same(tmp_path):
    torch.manual_seed(0)
    narrow = judge.Judge(width=8).eval()
    judge.save(narrow, tmp_path, steps=1)
    loaded = judge.load(tmp_path)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert all(torch.equal(narrow(pixels)[k], loaded(pixels)[k]) for k in judge.HEADS)
    assert not list(tmp_path.glob("*.tmp"))
