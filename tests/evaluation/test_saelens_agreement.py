"""gsx's metrics against sae_lens.evals.run_evals on the same SAE and tokens.

Where the definitions coincide the numbers must agree to float32 rounding
(tolerances below). Where they differ (zero ablation, KL positions,
relative reconstruction bias over several batches; see gsx.evaluation.splice and
gsx.evaluation.metrics), the tests check the documented difference instead.
"""

import pytest
import torch
from sae_lens import ActivationsStore
from sae_lens.evals import EvalConfig, get_recons_loss, run_evals
from sae_lens.training.activation_scaler import ActivationScaler

from gsx.data import special_token_ids, to_hf_dataset
from gsx.evaluation.splice import evaluate_sae, loss_mask, token_mask
from tests.evaluation.helpers import make_sae

# Block 0 of 2, so that ablating BOS there changes later positions through attention.
HOOK = "blocks.0.hook_resid_post"
N_SEQ, POS = 6, 40


@pytest.fixture(scope="module")
def tokens():
    # The layout of gsx corpora: one BOS at position 0, no other special token.
    generator = torch.Generator().manual_seed(5)
    body = torch.randint(3, 259, (N_SEQ, POS - 1), generator=generator)
    return torch.cat([torch.full((N_SEQ, 1), 2), body], dim=1)


@pytest.fixture(scope="module")
def sae():
    sae = make_sae()
    sae.cfg.metadata.hook_name = HOOK
    return sae


def saelens_store(model, tokens):
    """An ActivationsStore that yields `tokens` in order, N_SEQ per batch."""
    return ActivationsStore(
        model=model,
        dataset=to_hf_dataset(tokens),
        streaming=False,
        hook_name=HOOK,
        hook_head_index=None,
        context_size=tokens.shape[1],
        d_in=64,
        n_batches_in_buffer=2,
        total_training_tokens=tokens.numel(),
        store_batch_size_prompts=tokens.shape[0],
        train_batch_size_tokens=tokens.shape[1],
        prepend_bos=True,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
    )


def saelens_metrics(model, sae, tokens, exclude_special_tokens):
    """run_evals on one batch of all `tokens`, with every metric group on."""
    store = saelens_store(model, tokens)
    assert torch.equal(store.get_batch_tokens(), tokens)  # the store yields exactly these sequences
    store = saelens_store(model, tokens)
    config = EvalConfig(
        batch_size_prompts=tokens.shape[0],
        n_eval_reconstruction_batches=1,
        compute_kl=True,
        compute_ce_loss=True,
        n_eval_sparsity_variance_batches=1,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
    )
    # NOTE: run_evals's reset_input_dataset does not rewind the sequence iterator
    # (sae_lens 6.54.12), so the sparsity pass reads the store's next batch. With
    # one batch of the whole set the iterator wraps around to the same tokens.
    return run_evals(sae, store, model, ActivationScaler(), config, exclude_special_tokens=exclude_special_tokens)


def test_store_wraps_to_same_tokens(tiny_model, tokens):
    store = saelens_store(tiny_model, tokens)
    assert torch.equal(store.get_batch_tokens(), tokens)
    assert torch.equal(store.get_batch_tokens(), tokens)


def test_agreement_excluding_special_tokens(tiny_model, tokens, sae):
    metrics, feature_metrics = saelens_metrics(tiny_model, sae, tokens, exclude_special_tokens=True)
    # Several batches on the gsx side: its sums do not depend on batching.
    ours = evaluate_sae(tiny_model, sae, HOOK, tokens, special_ids=special_token_ids(tiny_model.tokenizer),
                        batch_size=4, ce_chunk_tokens=50, progress=False)
    rec, splice = ours.reconstruction, ours.splice

    assert rec.explained_variance == pytest.approx(metrics["reconstruction_quality"]["explained_variance"], abs=1e-5)
    assert rec.mse == pytest.approx(metrics["reconstruction_quality"]["mse"], rel=1e-5)
    assert rec.cosine_similarity == pytest.approx(metrics["reconstruction_quality"]["cossim"], abs=1e-5)
    assert rec.l0 == pytest.approx(metrics["sparsity"]["l0"], rel=1e-6)
    # One SAELens batch: its per-batch ratio equals gsx's ratio of sums.
    assert rec.relative_reconstruction_bias == pytest.approx(metrics["shrinkage"]["relative_reconstruction_bias"], rel=1e-5)
    density = torch.tensor(feature_metrics["feature_density"], dtype=torch.float64)
    assert torch.allclose(ours.stats.feature_frequency, density, atol=1e-7)
    assert rec.n_dead == int((density == 0).sum())

    # With one BOS at position 0, both count the same predictions for CE.
    performance = metrics["model_performance_preservation"]
    assert splice.ce_loss_clean == pytest.approx(performance["ce_loss_without_sae"], abs=1e-5)
    assert splice.ce_loss_spliced == pytest.approx(performance["ce_loss_with_sae"], abs=1e-5)
    # SAELens also zero-ablates the BOS position; gsx only the positions the SAE replaces.
    assert abs(splice.ce_loss_zero_ablated - performance["ce_loss_with_ablation"]) > 1e-3


def test_agreement_including_special_tokens(tiny_model, tokens, sae):
    # With no position excluded, zero ablation covers the same positions and every CE key agrees.
    metrics, _ = saelens_metrics(tiny_model, sae, tokens, exclude_special_tokens=False)
    ours = evaluate_sae(tiny_model, sae, HOOK, tokens, special_ids=special_token_ids(tiny_model.tokenizer),
                        include_special_tokens=True, batch_size=4, progress=False)
    performance = metrics["model_performance_preservation"]
    assert ours.splice.ce_loss_clean == pytest.approx(performance["ce_loss_without_sae"], abs=1e-5)
    assert ours.splice.ce_loss_spliced == pytest.approx(performance["ce_loss_with_sae"], abs=1e-5)
    assert ours.splice.ce_loss_zero_ablated == pytest.approx(performance["ce_loss_with_ablation"], abs=1e-5)
    assert ours.splice.ce_loss_recovered == pytest.approx(performance["ce_loss_score"], abs=1e-4)
    assert ours.reconstruction.explained_variance == pytest.approx(
        metrics["reconstruction_quality"]["explained_variance"], abs=1e-5)
    assert ours.reconstruction.l0 == pytest.approx(metrics["sparsity"]["l0"], rel=1e-6)


def test_kl_over_prediction_positions(tiny_model, tokens, sae):
    special = special_token_ids(tiny_model.tokenizer)
    metrics, _ = saelens_metrics(tiny_model, sae, tokens, exclude_special_tokens=True)
    ours = evaluate_sae(tiny_model, sae, HOOK, tokens, special_ids=special, progress=False)
    per_position = get_recons_loss(sae, tiny_model, ActivationScaler(), tokens, compute_kl=True,
                                   compute_ce_loss=False, ignore_tokens=special)["kl_div_with_sae"]
    # SAELens averages over every non-special position, the last one of each sequence included.
    saelens_kl = metrics["model_behavior_preservation"]["kl_div_with_sae"]
    assert saelens_kl == pytest.approx(float(per_position[token_mask(tokens, special)].mean()), abs=1e-6)
    # gsx averages the same per-position KL over the predictions that have a target.
    ours_kl = float(per_position[:, :-1][loss_mask(tokens, special)].mean())
    assert ours.splice.kl_div_spliced == pytest.approx(ours_kl, abs=1e-5)
