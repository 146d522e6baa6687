"""The readers' training loop takes its batches to the device it trains on, whatever their shape."""

import torch

from dreambooth.toyworld.readers import on_device


def test_every_tensor_of_a_batch_goes_to_the_device_in_tuples_and_dicts_alike():
    batch = (torch.zeros(2, 3), {"class": torch.zeros(2), "color": torch.ones(2)})
    moved = on_device(batch, "meta")
    assert isinstance(moved, tuple) and moved[0].is_meta and all(t.is_meta for t in moved[1].values())
    assert not batch[0].is_meta  # the batch itself is left as it was
