import pytest
import torch

from gsx.evaluation.metrics import ReconstructionStats, density_histogram, l0_histogram, log10_histogram, quantiles


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


def test_negative_activations_count_as_active():
    # SAELens counts f != 0 as active, so signed architectures are counted too.
    stats = ReconstructionStats(d_in=1, d_sae=3)
    stats.update(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([[-1.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))
    result = stats.result()
    assert result.l0 == pytest.approx(1.0)
    assert result.n_dead == 1
    assert stats.l0_values().tolist() == [2.0, 0.0]


def test_l0_histogram_closed_form():
    histogram = l0_histogram(torch.tensor([0.0, 1.0, 1.0, 3.0, 7.0]), max_bins=4)
    # max L0 7 -> width ceil(8 / 4) = 2 -> bins [0,2) [2,4) [4,6) [6,8)
    assert histogram.edges == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert histogram.counts == [3, 1, 0, 1]


def test_l0_histogram_unit_bins_when_small():
    histogram = l0_histogram(torch.tensor([2.0, 2.0, 0.0]), max_bins=50)
    assert histogram.edges == [0.0, 1.0, 2.0, 3.0]
    assert histogram.counts == [1, 0, 2]


def test_density_histogram_closed_form():
    # 100 tokens; frequencies 0 (dead), 0.01, 0.1, 1.0, 0.5.
    counts = torch.tensor([0.0, 1.0, 10.0, 100.0, 50.0])
    histogram, n_dead = density_histogram(counts, n_tokens=100, bins_per_decade=1)
    assert n_dead == 1
    assert histogram.edges == [-2.0, -1.0, 0.0]
    # log10: -2 -> bin 0; -1 -> bin 1 (left edge inclusive); 0 and -0.301 -> last bin.
    assert histogram.counts == [1, 3]


def test_density_histogram_finer_bins():
    counts = torch.tensor([1.0, 3.0, 10.0])  # frequencies 0.1, 0.3, 1.0 of 10 tokens
    histogram, n_dead = density_histogram(counts, n_tokens=10, bins_per_decade=2)
    assert n_dead == 0
    assert histogram.edges == pytest.approx([-1.0, -0.5, 0.0])
    # log10 0.3 = -0.52 -> bin 0 with log10 0.1 = -1; log10 1 = 0 -> last bin.
    assert histogram.counts == [2, 1]


def test_log10_histogram_counts_zeros_apart():
    histogram, n_zero = log10_histogram(torch.tensor([0.0, 1.0, 10.0, 100.0]), n_bins=2)
    assert n_zero == 1
    assert histogram.edges == pytest.approx([0.0, 1.0, 2.0])
    assert histogram.counts == [1, 2]


def test_quantiles_closed_form():
    q = quantiles(torch.arange(101, dtype=torch.float32))
    assert q["min"] == 0
    assert q["p5"] == pytest.approx(5)
    assert q["p50"] == pytest.approx(50)
    assert q["p95"] == pytest.approx(95)
    assert q["max"] == 100
    assert q["mean"] == pytest.approx(50)


def test_distributions_batching_invariance():
    torch.manual_seed(2)
    x = torch.randn(300, 8)
    x_hat = x + 0.1 * torch.randn(300, 8)
    features = torch.relu(torch.randn(300, 40) - 1.5)
    features[:, :3] = 0  # three dead latents
    whole = ReconstructionStats(8, 40)
    whole.update(x, x_hat, features)
    pieces = ReconstructionStats(8, 40)
    for start in range(0, 300, 23):
        pieces.update(x[start : start + 23], x_hat[start : start + 23], features[start : start + 23])
    assert torch.equal(whole.l0_values(), pieces.l0_values())
    assert torch.equal(whole.fire_counts, pieces.fire_counts)
    assert whole.result().n_dead == pieces.result().n_dead == 3
    assert whole.distributions() == pieces.distributions()


def test_distributions_keys():
    stats = ReconstructionStats(2, 3)
    stats.update(torch.ones(4, 2), torch.zeros(4, 2), torch.tensor([[1.0, 0.0, 0.0]] * 4))
    d = stats.distributions()
    assert d["l0"]["histogram"] == {"edges": [0.0, 1.0, 2.0], "counts": [0, 4]}
    assert d["feature_density"]["n_dead"] == 2
    assert d["squared_error"]["quantiles"]["p50"] == pytest.approx(2.0)
    assert d["squared_error"]["n_zero"] == 0
