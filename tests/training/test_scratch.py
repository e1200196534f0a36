"""Tests for the from-scratch JumpReLU trainer: STE gradients, SAELens parity, training runs, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.optim as optim
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens.training.optim import CoefficientScheduler, get_lr_scheduler
from sae_lens.training.sae_trainer import SAETrainer

from gsx.saes.convert import scratch_from_saelens, training_saelens_from_scratch
from gsx.saes.jumprelu import JumpReLUSAE
from gsx.training.scratch import (
    JumpReLUFunction,
    ScratchTrainConfig,
    StepFunction,
    compute_training_loss,
    initialize_like_saelens_,
    l0_coefficient_at_step,
    load_checkpoint,
    lr_at_step,
    train_scratch_sae,
)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # These matrices are tiny, so threads only add hand-off cost, which dominates on a busy machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------- straight-through estimators, by hand
#
# Two tokens, four latents, bandwidth eps = 0.25, threshold = [0.5, 0.5, 0.5, 1.0].
# (pre - threshold) / eps is exactly [-1, 0.25, -0.25, 0] for token 0 and [0.5, 6, 0, 0.5]
# for token 1. The rectangle kernel K is open, so 0.5 on its boundary does not count,
# and K is [0, 1, 1, 1] and [0, 0, 1, 0]. Latent 3 of token 0 and latent 2 of token 1
# equal their thresholds and do not fire.

STE_PRE = [[0.25, 0.5625, 0.4375, 1.0], [0.625, 2.0, 0.5, 1.125]]
STE_THRESHOLD = [0.5, 0.5, 0.5, 1.0]
STE_BANDWIDTH = 0.25
STE_GRAD_OUTPUT = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])


def ste_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    pre = torch.tensor(STE_PRE, requires_grad=True)
    threshold = torch.tensor(STE_THRESHOLD, requires_grad=True)
    return pre, threshold


def test_jumprelu_ste_forward():
    pre, threshold = ste_inputs()

    output = JumpReLUFunction.apply(pre, threshold, STE_BANDWIDTH, False)

    assert torch.equal(output, torch.tensor([[0.0, 0.5625, 0.0, 0.0], [0.625, 2.0, 0.0, 1.125]]))


def test_jumprelu_ste_threshold_gradient():
    pre, threshold = ste_inputs()

    JumpReLUFunction.apply(pre, threshold, STE_BANDWIDTH, False).backward(STE_GRAD_OUTPUT)

    # d/d threshold_i = -sum_t (threshold_i / eps) K_ti g_ti with threshold / eps = [2, 2, 2, 4]:
    # latent 1: -(2 * 2) = -4; latent 2: -2 * (3 + 7) = -20; latent 3: -(4 * 4) = -16.
    assert torch.equal(threshold.grad, torch.tensor([0.0, -4.0, -20.0, -16.0]))


def test_jumprelu_ste_pre_gradient_where_firing():
    pre, threshold = ste_inputs()

    JumpReLUFunction.apply(pre, threshold, STE_BANDWIDTH, False).backward(STE_GRAD_OUTPUT)

    # Only firing latents pass g on: H = [[0, 1, 0, 0], [1, 1, 0, 1]].
    assert torch.equal(pre.grad, torch.tensor([[0.0, 2.0, 0.0, 0.0], [5.0, 6.0, 0.0, 8.0]]))


def test_jumprelu_ste_to_input_gradient():
    pre, threshold = ste_inputs()

    JumpReLUFunction.apply(pre, threshold, STE_BANDWIDTH, True).backward(STE_GRAD_OUTPUT)

    # H * g plus (threshold / eps) K g = [[0, 4, 6, 16], [0, 0, 14, 0]].
    assert torch.equal(pre.grad, torch.tensor([[0.0, 6.0, 6.0, 16.0], [5.0, 6.0, 14.0, 8.0]]))
    assert torch.equal(threshold.grad, torch.tensor([0.0, -4.0, -20.0, -16.0]))


def test_step_ste_forward():
    pre, threshold = ste_inputs()

    output = StepFunction.apply(pre, threshold, STE_BANDWIDTH, False)

    assert torch.equal(output, torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]]))


def test_step_ste_threshold_gradient():
    pre, threshold = ste_inputs()

    StepFunction.apply(pre, threshold, STE_BANDWIDTH, False).backward(STE_GRAD_OUTPUT)

    # d/d threshold_i = -sum_t (1 / eps) K_ti g_ti with 1 / eps = 4:
    # latent 1: -4 * 2 = -8; latent 2: -4 * (3 + 7) = -40; latent 3: -4 * 4 = -16.
    assert torch.equal(threshold.grad, torch.tensor([0.0, -8.0, -40.0, -16.0]))
    assert pre.grad is None


def test_step_ste_to_input_gradient():
    pre, threshold = ste_inputs()

    StepFunction.apply(pre, threshold, STE_BANDWIDTH, True).backward(STE_GRAD_OUTPUT)

    # (1 / eps) K g = 4 * [[0, 2, 3, 4], [0, 0, 7, 0]].
    assert torch.equal(pre.grad, torch.tensor([[0.0, 8.0, 12.0, 16.0], [0.0, 0.0, 28.0, 0.0]]))


def test_step_loss_threshold_gradient_closed_form():
    # One latent, d_in = 1: pre = x * 1 + 0, threshold 0.5, eps 0.25. Tokens x = 0.5625
    # (inside the kernel, fires) and x = 2.0 (outside). W_dec = 0, so the reconstruction
    # is b_dec = 0 and mse does not depend on the threshold.
    # sparsity = coefficient * mean_t H_t, so d/d threshold = -coefficient * (1 / eps) * K_0 / 2
    # = -0.5 * 4 * 1 / 2 = -1.
    sae = JumpReLUSAE.from_tensors(
        {
            "W_enc": torch.ones(1, 1),
            "b_enc": torch.zeros(1),
            "W_dec": torch.zeros(1, 1),
            "b_dec": torch.zeros(1),
            "threshold": torch.tensor([0.5]),
        }
    )
    cfg = ScratchTrainConfig(d_in=1, d_sae=1, jumprelu_bandwidth=0.25)
    x = torch.tensor([[0.5625], [2.0]])

    output = compute_training_loss(sae, x, cfg, l0_coefficient=0.5)
    output.sparsity_loss.backward()

    assert output.sparsity_loss.item() == 0.5
    assert torch.equal(sae.threshold.grad, torch.tensor([-1.0]))
    assert sae.W_enc.grad is None or torch.equal(sae.W_enc.grad, torch.zeros(1, 1))


def test_quadratic_loss_closed_form():
    # d_in=1, three latents that all read x: pre = [x, x, x] and thresholds [0.5, 1.5, 2.5].
    # x = 1 gives L0 = 1, x = 2 gives L0 = 2. With target_l0 = 1.5 each token contributes
    # 2 / 1.5 * 0.5^2 = 1/3, so the sparsity loss is coefficient / 3.
    sae = JumpReLUSAE.from_tensors(
        {
            "W_enc": torch.ones(1, 3),
            "b_enc": torch.zeros(3),
            "W_dec": torch.zeros(3, 1),
            "b_dec": torch.zeros(1),
            "threshold": torch.tensor([0.5, 1.5, 2.5]),
        }
    )
    cfg = ScratchTrainConfig(d_in=1, d_sae=3, jumprelu_sparsity_loss_mode="quadratic", target_l0=1.5)

    output = compute_training_loss(sae, torch.tensor([[1.0], [2.0]]), cfg, l0_coefficient=0.6)

    torch.testing.assert_close(output.sparsity_loss, torch.tensor(0.2), rtol=0, atol=1e-7)


# ---------------------------------------------------------------------- SAELens parity, one forward and backward pass


def parity_sae(apply_b_dec_to_input: bool) -> JumpReLUSAE:
    # Thresholds and pre-activations of similar size with a wide kernel, so that many
    # pre-activations fall inside the kernel and every gradient path is exercised.
    generator = torch.Generator().manual_seed(3)
    tensors = {
        "W_enc": torch.randn(8, 24, generator=generator) / 8**0.5,
        "b_enc": 0.1 * torch.randn(24, generator=generator),
        "W_dec": torch.randn(24, 8, generator=generator) / 24**0.5,
        "b_dec": 0.1 * torch.randn(8, generator=generator),
        "threshold": 0.6 * torch.rand(24, generator=generator),
    }
    return JumpReLUSAE.from_tensors(tensors, apply_b_dec_to_input=apply_b_dec_to_input)


PARITY_CASES = [
    ("step", False, False),
    ("step", True, True),
    ("tanh", False, True),
    ("tanh", True, False),
    ("quadratic", False, False),
    ("quadratic", True, True),
]


@pytest.mark.parametrize(("mode", "ste_to_input", "apply_b_dec_to_input"), PARITY_CASES)
def test_loss_and_gradients_match_saelens(mode, ste_to_input, apply_b_dec_to_input):
    sae = parity_sae(apply_b_dec_to_input)
    cfg = ScratchTrainConfig(
        d_in=8,
        d_sae=24,
        apply_b_dec_to_input=apply_b_dec_to_input,
        jumprelu_bandwidth=0.5,
        jumprelu_sparsity_loss_mode=mode,
        target_l0=6,
        jumprelu_tanh_scale=2.0,
        pre_act_loss_coefficient=0.05,
        jumprelu_ste_to_input=ste_to_input,
    )
    reference = training_saelens_from_scratch(sae, cfg)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(64, 8, generator=generator)
    dead_latent_mask = torch.rand(24, generator=generator) < 0.5

    ours = compute_training_loss(sae, x, cfg, l0_coefficient=0.7, dead_latent_mask=dead_latent_mask)
    theirs = reference.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={"l0": 0.7},
            dead_neuron_mask=dead_latent_mask,
            n_training_steps=0,
            is_logging_step=False,
        )
    )
    ours.loss.backward()
    theirs.loss.backward()

    # Tolerance: both sides run the same float32 operations in the same order, so they
    # must agree to 1e-6 absolute / 1e-5 relative (in practice they are bit-identical).
    def check(actual, expected, name):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)

    inside_kernel = ((ours.pre_activations - sae.threshold).abs() < 0.25).sum()
    assert inside_kernel > 20
    assert ours.pre_act_loss is not None and ours.pre_act_loss.item() > 0
    check(ours.pre_activations, theirs.hidden_pre, "pre-activations")
    check(ours.features, theirs.feature_acts, "features")
    check(ours.reconstruction, theirs.sae_out, "reconstruction")
    check(ours.mse_loss, theirs.losses["mse_loss"], "mse_loss")
    check(ours.sparsity_loss, theirs.losses["l0_loss"], "l0_loss")
    check(ours.pre_act_loss, theirs.losses["pre_act_loss"], "pre_act_loss")
    check(ours.loss, theirs.loss, "loss")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        ours_grad = getattr(sae, name).grad
        theirs_grad = getattr(reference, name).grad
        assert ours_grad.abs().sum() > 0, name
        check(ours_grad, theirs_grad, f"d loss / d {name}")


# ---------------------------------------------------------------------- schedules and initialisation


@pytest.mark.parametrize(
    ("total_steps", "warm_up_steps", "decay_steps"),
    [(20, 5, 6), (10, 0, 0), (10, 1, 9), (10, 3, 0), (10, 0, 4), (7, 7, 0), (8, 4, 4)],
)
def test_lr_schedule_matches_saelens(total_steps, warm_up_steps, decay_steps):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = optim.Adam([parameter], lr=1e-3)
    scheduler = get_lr_scheduler("constant", optimizer, total_steps, 1e-3, warm_up_steps, decay_steps, 1e-3, 1)
    expected = []
    for _ in range(total_steps):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()

    actual = [
        lr_at_step(step, lr=1e-3, warm_up_steps=warm_up_steps, decay_steps=decay_steps, total_steps=total_steps)
        for step in range(total_steps)
    ]

    assert actual == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_l0_warm_up_matches_saelens():
    scheduler = CoefficientScheduler(warm_up_steps=4, final_value=2.0)
    expected = []
    for _ in range(8):
        expected.append(scheduler.value)
        scheduler.step()

    actual = [l0_coefficient_at_step(step, l0_coefficient=2.0, warm_up_steps=4) for step in range(8)]

    assert actual == expected == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0]


def test_initialisation_matches_saelens():
    sae = JumpReLUSAE(8, 24)
    initialize_like_saelens_(sae, jumprelu_init_threshold=0.02, generator=torch.Generator().manual_seed(11))
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    torch.manual_seed(11)
    reference = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=8, d_sae=24, jumprelu_init_threshold=0.02))

    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(sae, name), getattr(reference, name)), name
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.full((24,), 0.1), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------- whole training runs


def sparse_batches(n_batches: int, batch_size: int = 256, *, d_in: int = 16, seed: int = 0) -> list[torch.Tensor]:
    """Activations that are sums of k=3 out of 32 random unit directions, with weights in [1, 3]."""
    n_directions, k = 32, 3
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_directions, d_in, generator=generator)
    directions /= directions.norm(dim=1, keepdim=True)
    batches = []
    for _ in range(n_batches):
        chosen = torch.rand(batch_size, n_directions, generator=generator).argsort(dim=1)[:, :k]
        weights = 1.0 + 2.0 * torch.rand(batch_size, k, generator=generator)
        coefficients = torch.zeros(batch_size, n_directions).scatter_(1, chosen, weights)
        batches.append(coefficients @ directions)
    return batches


@pytest.mark.parametrize(("mode", "ste_to_input"), [("step", False), ("tanh", True), ("quadratic", False)])
def test_training_matches_saelens_trainer(mode, ste_to_input):
    d_in, d_sae, batch_size, total_steps = 8, 16, 32, 12
    generator = torch.Generator().manual_seed(1)
    batches = [3 * torch.randn(batch_size, d_in, generator=generator) for _ in range(total_steps)]
    cfg = ScratchTrainConfig(
        d_in=d_in,
        d_sae=d_sae,
        lr=1e-2,
        lr_warm_up_steps=3,
        lr_decay_steps=4,
        l0_coefficient=0.2,
        l0_warm_up_steps=5,
        jumprelu_bandwidth=0.3,
        jumprelu_init_threshold=0.2,
        jumprelu_sparsity_loss_mode=mode,
        jumprelu_ste_to_input=ste_to_input,
        target_l0=4,
        pre_act_loss_coefficient=0.05,
        dead_feature_window=1,
        normalize_activations="expected_average_only_in",
        n_batches_for_norm_estimate=2,
        show_progress=False,
    )

    result = train_scratch_sae(batches, cfg, total_steps)

    initial = JumpReLUSAE(d_in, d_sae)
    initialize_like_saelens_(initial, jumprelu_init_threshold=0.2, generator=torch.Generator().manual_seed(cfg.seed))
    reference = training_saelens_from_scratch(initial, cfg)
    reference.cfg.normalize_activations = "expected_average_only_in"
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total_steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr,
        lr_warm_up_steps=3,
        lr_decay_steps=4,
        dead_feature_window=1,
        n_batches_for_norm_estimate=2,
    )
    # SAELens draws the norm-estimate batches from the stream and then trains on fresh
    # ones, while gsx trains on the estimate batches too: feed SAELens those batches twice.
    trained_reference = SAETrainer(trainer_cfg, reference, iter(batches[:2] + batches)).fit()
    expected = scratch_from_saelens(trained_reference)

    assert max(record["dead_latents"] for record in result.history) > 0
    assert max(record["pre_act_loss"] for record in result.history) > 0
    assert result.history[-1]["l0"] > 0
    # Tolerance: the same float32 operations in the same order, 1e-6 absolute; in practice bit-identical.
    for name, tensor in expected.tensors().items():
        torch.testing.assert_close(result.sae.tensors()[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_training_on_sparse_data():
    total_steps = 200
    cfg = ScratchTrainConfig(
        d_in=16,
        d_sae=64,
        lr=1e-2,
        lr_warm_up_steps=10,
        lr_decay_steps=40,
        l0_coefficient=0.2,
        l0_warm_up_steps=50,
        jumprelu_init_threshold=0.3,
        normalize_activations="expected_average_only_in",
        show_progress=False,
    )

    result = train_scratch_sae(sparse_batches(total_steps), cfg, total_steps)

    history = result.history
    first_loss = sum(record["loss"] for record in history[:10]) / 10
    last = history[-20:]
    last_loss = sum(record["loss"] for record in last) / 20
    last_l0 = sum(record["l0"] for record in last) / 20
    last_fvu = sum(record["fvu"] for record in last) / 20
    peak_l0 = max(record["l0"] for record in history)
    # Measured with this seed: loss 16.2 -> 2.2, L0 peaks near 40 and ends near 6.5
    # (the data has 3 active directions per token), FVU ends near 0.06.
    assert last_loss < 0.3 * first_loss
    assert peak_l0 > 20
    assert last_l0 < 10
    assert last_fvu < 0.15
    assert [record["step"] for record in history] == list(range(1, total_steps + 1))
    assert history[0]["sparsity_coefficient"] == 0.0
    assert history[-1]["sparsity_coefficient"] == 0.2
    assert history[0]["lr"] == pytest.approx(1e-3)


def test_normalisation_folded_into_weights():
    raw_batches = [10 * batch for batch in sparse_batches(30, seed=1)]
    cfg = ScratchTrainConfig(
        d_in=16,
        d_sae=64,
        lr=1e-2,
        l0_coefficient=0.2,
        normalize_activations="expected_average_only_in",
        show_progress=False,
    )

    normalised_run = train_scratch_sae(raw_batches, cfg, 30)
    scale = normalised_run.activation_scaling_factor
    # The same training, with the batches scaled beforehand, gives the unfolded weights.
    prescaled_cfg = ScratchTrainConfig(**(cfg.to_dict() | {"normalize_activations": "none"}))
    prescaled_run = train_scratch_sae([scale * batch for batch in raw_batches], prescaled_cfg, 30)
    prescaled_run.sae.fold_activation_norm_scaling_factor_(scale)

    estimate_batches = torch.cat(raw_batches[: cfg.n_batches_for_norm_estimate])
    expected_scale = 16**0.5 / estimate_batches.norm(dim=-1).mean().item()
    assert scale == pytest.approx(expected_scale, rel=1e-5)
    assert prescaled_run.activation_scaling_factor is None
    assert normalised_run.history == prescaled_run.history
    for name, tensor in prescaled_run.sae.tensors().items():
        assert torch.equal(normalised_run.sae.tensors()[name], tensor), name


def test_training_deterministic():
    cfg = ScratchTrainConfig(d_in=16, d_sae=32, lr=1e-2, l0_coefficient=0.1, show_progress=False)
    batches = sparse_batches(10, batch_size=64)

    first = train_scratch_sae(batches, cfg, 10)
    second = train_scratch_sae(batches, cfg, 10)
    other_seed = train_scratch_sae(batches, ScratchTrainConfig(**(cfg.to_dict() | {"seed": 7})), 10)

    assert first.history == second.history
    for name, tensor in first.sae.tensors().items():
        assert torch.equal(second.sae.tensors()[name], tensor), name
    assert not torch.equal(other_seed.sae.W_enc, first.sae.W_enc)


def test_checkpoints_written_and_read_back(tmp_path):
    cfg = ScratchTrainConfig(
        d_in=16,
        d_sae=32,
        lr=1e-2,
        l0_coefficient=0.1,
        normalize_activations="expected_average_only_in",
        n_batches_for_norm_estimate=2,
        checkpoint_every_steps=2,
        checkpoint_dir=tmp_path / "checkpoints",
        show_progress=False,
        hook_name="blocks.5.hook_resid_post",
    )
    batches = sparse_batches(4, batch_size=64)

    result = train_scratch_sae(batches, cfg, 4)
    shorter = train_scratch_sae(batches[:2], ScratchTrainConfig(**(cfg.to_dict() | {"checkpoint_every_steps": 0})), 2)

    assert result.checkpoint_paths == [tmp_path / "checkpoints" / "step_2", tmp_path / "checkpoints" / "step_4"]
    last = load_checkpoint(result.checkpoint_paths[-1])
    for name, tensor in result.sae.tensors().items():
        assert torch.equal(last.sae.tensors()[name], tensor), name
    assert last.sae.hook_name == "blocks.5.hook_resid_post"
    assert last.sae.metadata["checkpoint_step"] == 4
    assert last.trainer_info["step"] == 4
    assert last.trainer_info["activation_scaling_factor"] == result.activation_scaling_factor
    assert last.trainer_tensors["W_enc.exp_avg"].shape == (16, 32)
    assert last.trainer_tensors["threshold.exp_avg_sq"].dtype == torch.float32
    assert last.trainer_tensors["W_dec.step"].item() == 4
    assert last.trainer_tensors["steps_since_fired"].shape == (32,)
    # With a constant learning rate, step 2 of the 4-step run is the end of a 2-step run.
    middle = load_checkpoint(result.checkpoint_paths[0])
    for name, tensor in shorter.sae.tensors().items():
        assert torch.equal(middle.sae.tensors()[name], tensor), name
    files = sorted(path.name for path in result.checkpoint_paths[0].iterdir())
    assert files == ["cfg.json", "sae_weights.safetensors", "trainer_state.json", "trainer_state.safetensors"]
    saved_cfg = json.loads((result.checkpoint_paths[0] / "cfg.json").read_text())
    assert saved_cfg["metadata"]["training"]["d_sae"] == 32


# ---------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("d_in", 0),
        ("d_sae", 2.5),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("lr_warm_up_steps", -1),
        ("lr_decay_steps", True),
        ("l0_coefficient", -0.1),
        ("l0_warm_up_steps", 1.5),
        ("jumprelu_init_threshold", -0.01),
        ("jumprelu_bandwidth", 0),
        ("jumprelu_sparsity_loss_mode", "l1"),
        ("jumprelu_tanh_scale", -4.0),
        ("pre_act_loss_coefficient", -1e-6),
        ("jumprelu_ste_to_input", "yes"),
        ("dead_feature_window", -5),
        ("decoder_init_norm", 0.0),
        ("apply_b_dec_to_input", 1),
        ("normalize_activations", "layer_norm"),
        ("n_batches_for_norm_estimate", 0),
        ("adam_beta1", 1.0),
        ("adam_beta2", -0.5),
        ("seed", -1),
        ("device", "nodevice"),
        ("dtype", "int8"),
        ("log_every_steps", 0),
        ("checkpoint_every_steps", -2),
    ],
)
def test_config_rejects_invalid(field, value):
    with pytest.raises(ValueError, match=rf"invalid {field}={value!r}"):
        ScratchTrainConfig(**{"d_in": 8, "d_sae": 16, field: value})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"jumprelu_sparsity_loss_mode": "quadratic"}, r"invalid target_l0=None"),
        (
            {"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": 17},
            r"invalid target_l0=17: expected a number in \(0, d_sae=16\]",
        ),
        ({"checkpoint_every_steps": 5}, r"invalid checkpoint_dir=None"),
    ],
)
def test_config_rejects_combination(options, message):
    with pytest.raises(ValueError, match=message):
        ScratchTrainConfig(d_in=8, d_sae=16, **options)


def test_train_rejects_short_stream():
    cfg = ScratchTrainConfig(d_in=16, d_sae=32, show_progress=False)

    with pytest.raises(ValueError, match=r"batches ran out after 3 of total_steps=5"):
        train_scratch_sae(sparse_batches(3, batch_size=8), cfg, 5)


def test_train_rejects_wrong_width():
    cfg = ScratchTrainConfig(d_in=8, d_sae=32, show_progress=False)

    with pytest.raises(ValueError, match=r"invalid batch 0: got \(4, 16\), expected a tensor \[n_tokens, d_in=8\]"):
        train_scratch_sae([torch.zeros(4, 16)], cfg, 1)


@pytest.mark.parametrize(("total_steps", "message"), [(0, r"invalid total_steps=0"), (5, r"exceeds total_steps=5")])
def test_train_rejects_total_steps(total_steps, message):
    cfg = ScratchTrainConfig(d_in=8, d_sae=16, lr_warm_up_steps=3, lr_decay_steps=3, show_progress=False)

    with pytest.raises(ValueError, match=message):
        train_scratch_sae([torch.zeros(4, 8)] * 6, cfg, total_steps)
