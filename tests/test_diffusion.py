import pytest
import torch

from dreambooth.diffusion import dreambooth_loss, loss_weights, min_snr_weights, sample_noise, snr, training_target


def test_loss_matches_hand_computation_for_both_terms_and_lambda():
    # 2 instance rows, 1 prior row, 2 elements each: errors chosen so squares are easy to add by hand.
    prediction = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 3.0]])
    # instance rows: mean(1, 4) = 2.5 and mean(1, 1) = 1 -> 1.75; prior row: mean(4, 0) = 2
    for lam, total in [(0.0, 1.75), (1.0, 3.75), (0.5, 2.75)]:
        parts = dreambooth_loss(prediction, target, num_instance=2, prior_loss_weight=lam)
        assert parts.instance.item() == pytest.approx(1.75)
        assert parts.prior.item() == pytest.approx(2.0)
        assert parts.total.item() == pytest.approx(total)


def test_loss_without_prior_rows_is_the_instance_term():
    parts = dreambooth_loss(torch.ones(3, 4), torch.zeros(3, 4), num_instance=3, prior_loss_weight=1.0)
    assert parts.prior is None and parts.total.item() == pytest.approx(1.0)


def test_per_row_weights_scale_each_row():
    prediction, target = torch.tensor([[2.0], [2.0]]), torch.zeros(2, 1)
    parts = dreambooth_loss(prediction, target, 1, 1.0, weights=torch.tensor([0.5, 0.25]))
    assert parts.instance.item() == pytest.approx(2.0) and parts.prior.item() == pytest.approx(1.0)


def test_targets_for_epsilon_and_v_prediction():
    abar = torch.tensor([0.64, 0.36])  # alpha = 0.8 / 0.6, sigma = 0.6 / 0.8
    x, eps, t = torch.full((2, 1), 2.0), torch.full((2, 1), 1.0), torch.tensor([0, 1])
    assert torch.equal(training_target("epsilon", x, eps, abar, t), eps)
    v = training_target("v_prediction", x, eps, abar, t)
    assert v.flatten().tolist() == pytest.approx([0.8 * 1 - 0.6 * 2, 0.6 * 1 - 0.8 * 2])
    with pytest.raises(ValueError, match="sample"):
        training_target("sample", x, eps, abar, t)


def test_min_snr_weights():
    abar = torch.tensor([0.9, 0.5, 0.1])  # SNR 9, 1, 1/9
    s = snr(abar, torch.arange(3))
    assert s.tolist() == pytest.approx([9.0, 1.0, 1 / 9], rel=1e-5)
    assert min_snr_weights(s, 5.0, "epsilon").tolist() == pytest.approx([5 / 9, 1.0, 1.0], rel=1e-5)
    assert min_snr_weights(s, 5.0, "v_prediction").tolist() == pytest.approx([0.5, 0.5, 0.1], rel=1e-5)


def test_min_snr_weights_at_zero_snr_are_their_limit_not_nan():
    """A zero-terminal-SNR schedule (rescale_betas_zero_snr) reaches SNR 0 at its last step: 1 for an eps
    target (min(s, gamma) / s -> 1), 0 for a v target."""
    s = torch.tensor([0.0, 1.0])
    assert min_snr_weights(s, 5.0, "epsilon").tolist() == [1.0, 1.0]
    assert min_snr_weights(s, 5.0, "v_prediction").tolist() == [0.0, 0.5]


def test_loss_weights_are_min_snr_with_a_gamma_and_none_without():
    abar, t = torch.tensor([0.9, 0.5, 0.1]), torch.arange(3)
    assert loss_weights(None, abar, t, "epsilon") is None
    assert loss_weights(5.0, abar, t, "epsilon").tolist() == pytest.approx([5 / 9, 1.0, 1.0], rel=1e-5)


def test_offset_noise_shifts_channel_means_reproducibly():
    latents = torch.zeros(64, 4, 8, 8)
    plain = sample_noise(latents, 0.0, torch.Generator().manual_seed(0))
    offset = sample_noise(latents, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(plain, sample_noise(latents, 0.0, torch.Generator().manual_seed(0)))
    # per-(example, channel) means vary far more with offset noise than the ~1/8 of plain noise
    assert offset.mean((2, 3)).std() > 3 * plain.mean((2, 3)).std()
