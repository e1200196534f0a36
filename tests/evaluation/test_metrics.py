import pytest
import torch

from gsx.evaluation.metrics import ReconstructionStats


def test_closed_form_values():
    # Two tokens in d_in = 2. Mean x̄ = (1, 1); Σ‖x − x̄‖² = 1 + 1 + 1 + 1 = 4.
    x = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    x_hat = torch.tensor([[0.0, 1.0], [2.0, 2.0]])  # squared errors 1 and 0
    features = torch.tensor([[0.0, 3.0, 0.0], [1.0, 2.0, 0.0]])  # L0 1 and 2
    stats = ReconstructionStats(d_in=2, d_sae=3, dense_threshold=0.6)
    stats.update(x, x_hat, features)
    result = stats.result()
    assert result.n_tokens == 2
    assert result.fvu == pytest.approx(1 / 4)
    assert result.explained_variance == pytest.approx(3 / 4)
    assert result.mse == pytest.approx(0.5)
    assert result.l0 == pytest.approx(1.5)
    assert result.n_dead == 1  # latent 2 never fires
    assert result.n_dense == 1  # latent 1 fires on 100% > 60%
    # Token 0: cos((0,0), (0,1)) is 0 (zero vector); token 1: 1.
    assert result.cosine_similarity == pytest.approx(0.5)
    # Σx̂·x̂ = 1 + 8 = 9, Σx̂·x = 0 + 8 = 8.
    assert result.relative_reconstruction_bias == pytest.approx(9 / 8)


def test_batching_invariance():
    torch.manual_seed(0)
    x = torch.randn(1000, 16) * 3 + 5
    x_hat = x + 0.5 * torch.randn(1000, 16)
    features = torch.relu(torch.randn(1000, 32))
    whole = ReconstructionStats(16, 32)
    whole.update(x, x_hat, features)
    pieces = ReconstructionStats(16, 32)
    for start in range(0, 1000, 37):
        pieces.update(x[start : start + 37], x_hat[start : start + 37], features[start : start + 37])
    a, b = whole.result(), pieces.result()
    assert a.fvu == pytest.approx(b.fvu, rel=1e-12)
    assert a.l0 == pytest.approx(b.l0, rel=1e-12)
    assert a.mse == pytest.approx(b.mse, rel=1e-12)
    # The FVU of the whole set is not the mean of per-batch FVUs.
    per_batch = []
    for start in range(0, 1000, 50):
        s = ReconstructionStats(16, 32)
        s.update(x[start : start + 50], x_hat[start : start + 50], features[start : start + 50])
        per_batch.append(s.result().fvu)
    assert abs(sum(per_batch) / len(per_batch) - a.fvu) > 1e-4


def test_fvu_against_direct_formula():
    torch.manual_seed(1)
    x = torch.randn(200, 8, dtype=torch.float64)
    x_hat = 0.8 * x
    stats = ReconstructionStats(8, 4)
    stats.update(x, x_hat, torch.zeros(200, 4))
    expected = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert stats.result().fvu == pytest.approx(expected, rel=1e-12)


def test_shape_mismatch_rejected():
    stats = ReconstructionStats(4, 8)
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        stats.update(torch.zeros(3, 5), torch.zeros(3, 5), torch.zeros(3, 8))


def test_empty_evaluation_is_an_error():
    with pytest.raises(ValueError, match="no tokens"):
        ReconstructionStats(4, 8).result()
