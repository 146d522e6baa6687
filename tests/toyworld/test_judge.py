"""The judge's weights carry their width, so a wider judge loads without being told."""

import torch

from dreambooth.toyworld import judge


def test_saved_judge_loads_with_its_width_and_reads_the_same(tmp_path):
    torch.manual_seed(0)
    wide = judge.Judge(width=8).eval()
    judge.save(wide, tmp_path, steps=1)
    loaded = judge.load(tmp_path)
    assert loaded.width == 8
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert all(torch.equal(wide(pixels)[k], loaded(pixels)[k]) for k in judge.HEADS)
    assert not (tmp_path / "judge.tmp").exists()

