"""Run an SAE inside the model: reconstruction metrics and CE / KL with the SAE spliced in.

For each batch of held-out sequences on which CE is measured, the model runs three times:

1. clean, keeping the activations at the SAE's hooks, the residual stream
   entering the SAE's block and the output of the final norm;
2. with the output hook's activations replaced by the SAE's reconstruction (at
   non-special positions unless special tokens are included);
3. with the output hook's activations zero-ablated at the same positions.

Runs 2 and 3 start at the SAE's block from the residual stream kept in run 1
(TransformerLens's `start_at_layer`), since nothing before it changes. Sequences
past `ce_sequences` get reconstruction metrics only, from a forward pass that
stops after the SAE's block.

Logits are never materialised for a whole batch. Only the counted predictions
are unembedded, `ce_chunk_tokens` at a time, and the log-softmax is taken in
place, so at most two `[ce_chunk_tokens, d_vocab]` float32 buffers exist at
once: 2 × 512 × 262,144 × 4 bytes = 1 GiB for Gemma 3 at the default chunk.
We measured this with `gsx.evaluation.resources` on Gemma 3 270M in float32 on
CPU, for one batch of 8 × 128 tokens. The peak RSS rose 1,106 MiB above that of
the loaded model at ce_chunk_tokens 512, 576 MiB at 256 and 349 MiB at 128.
Without CE it rose 39 MiB. Every report records the peak of its own evaluation
(`eval.resources`).

Loss positions: position t predicts token t+1. It counts when neither token t
nor token t+1 is a special token (BOS / EOS / PAD), so the first prediction after
BOS, whose input was never spliced, does not dilute the delta loss. KL(clean ‖
spliced) is averaged over the same predictions.

Transcoders: with `hook_name_out` set, the SAE reads `hook_name` and its output
replaces `hook_name_out`. The reconstruction metrics then compare the output with
the clean activation at `hook_name_out`. Skip transcoders add `x @ W_skip.T`, as
their `forward` does.

Differences from `sae_lens.evals.get_downstream_reconstruction_metrics` and
`get_recons_loss` (sae_lens 6.54.12), which agree otherwise (tests/evaluation/test_saelens_agreement.py):

- Special tokens: SAELens drops a prediction when its input token t is special;
  gsx also drops it when the target t+1 is. gsx corpora have one BOS at
  position 0 and no other special token, so both count the same predictions
  there. SAELens's special ids also include SEP and decoder-start where a
  tokenizer defines them.
- Zero ablation: SAELens zeroes the hook at every position, BOS included. gsx
  zeroes only the positions the SAE replaces, so that the zero-ablated run
  differs from the spliced run only in the SAE's output. So SAELens's CE loss
  with ablation and its `ce_loss_score` differ from gsx's.
- KL: SAELens averages KL over every non-special input position, the last
  position of each sequence included; gsx averages over the counted predictions.
- SAELens reports `ce_loss_score`, the same ratio as gsx's `ce_loss_recovered`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from gsx.evaluation.features import FeatureStats
from gsx.evaluation.metrics import ReconstructionMetrics, ReconstructionStats

logger = logging.getLogger(__name__)

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")
# The SAE's latent activations are computed this many values at a time (128 MiB in float32),
# so wide SAEs (Gemma Scope's 262k latents) do not hold [batch × pos, d_sae] at once.
_SAE_CHUNK_VALUES = 1 << 25
_LOGSUMEXP_ROWS = 64


@dataclass
class SpliceMetrics:
    """CE and KL of the model clean, with the SAE spliced in, and with the hook zero-ablated."""

    n_loss_tokens: int
    """Next-token predictions counted."""
    ce_loss_clean: float
    """Mean next-token cross-entropy (nats) of the unmodified model."""
    ce_loss_spliced: float
    """Mean cross-entropy with the SAE's reconstruction in place of the hook's activations."""
    ce_loss_zero_ablated: float
    """Mean cross-entropy with the hook's activations set to zero."""
    ce_loss_delta: float
    """ce_loss_spliced − ce_loss_clean."""
    ce_loss_recovered: float
    """(zero_ablated − spliced) / (zero_ablated − clean): 1 is a perfect SAE, 0 is no better than zeros."""
    kl_div_spliced: float
    """Mean KL(clean ‖ spliced) of the next-token distributions (nats)."""
    n_sequences: int = 0
    """Sequences on which CE and KL were computed."""


@dataclass
class EvalResult:
    """Everything `evaluate_sae` measured."""

    reconstruction: ReconstructionMetrics
    splice: SpliceMetrics | None
    stats: ReconstructionStats
    """The accumulator, for per-latent frequencies and per-token distributions."""
    features: FeatureStats | None = None
    """Per-latent firing counts, activation sums and top-activating positions."""
    n_sequences: int = 0
    """Sequences on which the reconstruction metrics were computed."""

    def to_dict(self) -> dict[str, Any]:
        out = {"reconstruction": asdict(self.reconstruction)}
        out["splice"] = asdict(self.splice) if self.splice is not None else None
        return out


def _sae_forward(sae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (features, reconstruction) for `[n, d_in]` inputs, for SAELens or gsx scratch SAEs."""
    features = sae.encode(x)
    output = sae.decode(features)
    skip = getattr(sae, "W_skip", None)
    if skip is not None:
        output = output + x.to(skip.dtype) @ skip.T
    return features, output


@contextlib.contextmanager
def _flat_inputs(sae: Any) -> Iterator[None]:
    """Make a SAELens hook_z SAE take and return flat `[n, n_heads * d_head]` activations while inside."""
    reshaping = bool(getattr(sae, "hook_z_reshaping_mode", False))
    if reshaping:
        sae.turn_off_forward_pass_hook_z_reshaping()
    try:
        yield
    finally:
        if reshaping:
            sae.turn_on_forward_pass_hook_z_reshaping()


def token_mask(tokens: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    """Return `[batch, pos]` True where the token is not special."""
    if not special_ids:
        return torch.ones_like(tokens, dtype=torch.bool)
    return ~torch.isin(tokens, torch.tensor(special_ids, device=tokens.device))


def loss_mask(tokens: torch.Tensor, special_ids: list[int], include_special: bool = False) -> torch.Tensor:
    """Return `[batch, pos - 1]` True where the prediction at t of token t+1 counts."""
    if include_special:
        return torch.ones((tokens.shape[0], tokens.shape[1] - 1), dtype=torch.bool, device=tokens.device)
    keep = token_mask(tokens, special_ids)
    return keep[:, :-1] & keep[:, 1:]


def _unembed(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """Return float32 logits `[n, d_vocab]` of final-norm outputs `[n, d_model]`, soft-capped as the model does.

    `torch.addmm` with W_U as stored avoids the transposed copy of W_U (670 MB for
    Gemma 3) that TransformerLens's `Unembed.forward` makes on every call.
    """
    logits = torch.addmm(model.b_U, resid.to(model.W_U.dtype), model.W_U).float()
    cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    if cap > 0:
        logits.div_(cap).tanh_().mul_(cap)
    return logits


def _logsumexp_rows(logits: torch.Tensor) -> torch.Tensor:
    """Return logsumexp over the last axis `[n, 1]`, `_LOGSUMEXP_ROWS` rows at a time.

    torch.logsumexp holds a temporary as large as its input; blocks of rows keep
    that temporary at `_LOGSUMEXP_ROWS × d_vocab` values.
    """
    blocks = [torch.logsumexp(logits[start : start + _LOGSUMEXP_ROWS], dim=-1, keepdim=True)
              for start in range(0, logits.shape[0], _LOGSUMEXP_ROWS)]
    return torch.cat(blocks) if blocks else logits.new_zeros((0, 1))


def _log_softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Turn `logits` into log-probabilities in place and return them."""
    return logits.sub_(_logsumexp_rows(logits))


def _final_residual(model: Any, tokens: torch.Tensor, fwd_hooks: list, **forward_kwargs: Any) -> torch.Tensor:
    """Run the model without unembedding and return the output of the final norm `[batch, pos, d_model]`.

    `forward_kwargs` go to the model's forward, e.g. `start_at_layer` with a
    residual stream in place of `tokens`.
    """
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
        captured["resid"] = output.detach()

    handle = model.ln_final.register_forward_hook(keep)
    try:
        model.run_with_hooks(tokens, return_type=None, fwd_hooks=fwd_hooks, **forward_kwargs)
    finally:
        handle.remove()
    return captured["resid"]


def _block_index(hook_name: str) -> int | None:
    match = _BLOCK_HOOK.match(hook_name)
    return int(match.group(1)) if match else None


def _attention_mask(model: Any, tokens: torch.Tensor) -> torch.Tensor | None:
    """Return the attention mask TransformerLens would build for `tokens` (None for right padding)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or tokenizer.padding_side != "left":
        return None
    from transformer_lens import utils

    return utils.get_attention_mask(tokenizer, tokens, model.cfg.default_prepend_bos)


class _CrossEntropySums:
    """Sums of CE clean / spliced / zero-ablated and KL over counted predictions, in float64."""

    def __init__(self) -> None:
        self.clean = self.spliced = self.zero = self.kl = 0.0
        self.n = 0
        self.n_sequences = 0

    @torch.no_grad()
    def add(self, model: Any, clean: torch.Tensor, spliced: torch.Tensor, zero: torch.Tensor,
            targets: torch.Tensor, chunk: int) -> None:
        """Add predictions from final-norm outputs `[n, d_model]` of the three runs and their targets `[n]`."""
        for start in range(0, targets.shape[0], chunk):
            end = min(start + chunk, targets.shape[0])
            target = targets[start:end, None]

            lp_clean = _log_softmax_(_unembed(model, clean[start:end]))
            self.clean -= float(lp_clean.gather(-1, target).sum(dtype=torch.float64))
            lp_spliced = _log_softmax_(_unembed(model, spliced[start:end]))
            self.spliced -= float(lp_spliced.gather(-1, target).sum(dtype=torch.float64))
            # KL(clean ‖ spliced) = Σ p_clean (log p_clean − log p_spliced), in the two buffers already held.
            difference = lp_spliced.neg_().add_(lp_clean)
            # Row sums in float32, then float64 across rows: sum(dtype=float64) would copy the buffer to float64.
            self.kl += float(lp_clean.exp_().mul_(difference).sum(-1).double().sum())
            del lp_clean, lp_spliced, difference

            logits_zero = _unembed(model, zero[start:end])
            target_logit = logits_zero.gather(-1, target)
            self.zero += float((_logsumexp_rows(logits_zero) - target_logit).sum(dtype=torch.float64))
            del logits_zero
            self.n += end - start

    def result(self) -> SpliceMetrics | None:
        if self.n == 0:
            return None
        clean, spliced, zero = self.clean / self.n, self.spliced / self.n, self.zero / self.n
        recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
        return SpliceMetrics(
            n_loss_tokens=self.n,
            ce_loss_clean=clean,
            ce_loss_spliced=spliced,
            ce_loss_zero_ablated=zero,
            ce_loss_delta=spliced - clean,
            ce_loss_recovered=recovered,
            kl_div_spliced=self.kl / self.n,
            n_sequences=self.n_sequences,
        )


@torch.no_grad()
def evaluate_sae(
    model: Any,
    sae: Any,
    hook_name: str,
    tokens: torch.Tensor,
    *,
    special_ids: list[int],
    batch_size: int = 8,
    ce_chunk_tokens: int = 512,
    dense_threshold: float = 0.1,
    include_special_tokens: bool = False,
    compute_ce: bool = True,
    progress: bool = True,
    hook_name_out: str | None = None,
    ce_sequences: int | None = None,
    n_contexts: int = 3,
) -> EvalResult:
    """Evaluate `sae` at `hook_name` on `tokens` `[n_seq, pos]`: reconstruction metrics and CE/KL.

    `sae` is anything with `encode` / `decode` on `[n, d_in]` (SAELens SAEs, gsx scratch
    SAEs) and `cfg.d_in` / `cfg.d_sae`. Hooks with a head axis (`hook_z`) are flattened
    to `[batch, pos, n_heads * d_head]` for the SAE and reshaped back. A SAELens SAE in
    hook_z reshaping mode is switched to flat inputs for the call.

    `hook_name_out` (transcoders): the hook the SAE's output replaces, default `hook_name`.
    `ce_sequences`: CE and KL on the first this many sequences only (None: all),
    reconstruction metrics on all. `n_contexts`: top-activating positions kept per latent.
    """
    hook_out = hook_name_out or hook_name
    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
    d_out = int(getattr(sae.cfg, "d_out", d_in))
    stats = ReconstructionStats(d_out, d_sae, dense_threshold)
    feature_stats = FeatureStats(d_sae, n_contexts)
    sums = _CrossEntropySums()
    n_sequences = int(tokens.shape[0])
    if not compute_ce:
        n_ce = 0
    elif ce_sequences is None:
        n_ce = n_sequences
    else:
        n_ce = min(ce_sequences, n_sequences)
    batches = [(start, min(start + batch_size, n_ce), True) for start in range(0, n_ce, batch_size)]
    batches += [(start, min(start + batch_size, n_sequences), False) for start in range(n_ce, n_sequences, batch_size)]
    device = next(model.parameters()).device
    ignored = [] if include_special_tokens else special_ids

    with _flat_inputs(sae):
        for start, end, with_ce in tqdm(batches, desc="Evaluating SAE", disable=not progress, leave=False):
            batch = tokens[start:end].to(device)
            positions = token_mask(batch, ignored)
            if with_ce:
                _evaluate_batch_with_ce(model, sae, hook_name, hook_out, batch, positions, start, stats, feature_stats,
                                        sums, special_ids, include_special_tokens, ce_chunk_tokens)
            else:
                captured = _capture(model, batch, hook_name, hook_out)
                _reconstruct(sae, captured, batch, positions, start, stats, feature_stats)

    if n_ce > 0 and sums.n == 0:
        logger.warning("no next-token prediction is left after excluding special tokens; CE and KL are not computed")
    return EvalResult(reconstruction=stats.result(), splice=sums.result(), stats=stats, features=feature_stats,
                      n_sequences=n_sequences)


def _capture_hooks(hook_name: str, hook_out: str, extra: str | None = None) -> tuple[dict[str, torch.Tensor], list]:
    captured: dict[str, torch.Tensor] = {}

    def keep_as(key: str) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
            captured[key] = act.detach().clone()
            return act

        return keep

    hooks = [(hook_name, keep_as("in"))]
    if hook_out != hook_name:
        hooks.append((hook_out, keep_as("out")))
    if extra is not None:
        hooks.append((extra, keep_as("resid_pre")))
    return captured, hooks


def _capture(model: Any, batch: torch.Tensor, hook_name: str, hook_out: str) -> dict[str, torch.Tensor]:
    """Run the model only as far as the SAE's hooks and return their activations."""
    captured, hooks = _capture_hooks(hook_name, hook_out)
    layers = [i for i in (_block_index(hook_name), _block_index(hook_out)) if i is not None]
    if layers:
        model.run_with_hooks(batch, return_type=None, fwd_hooks=hooks, stop_at_layer=max(layers) + 1)
    else:
        model.run_with_hooks(batch, return_type=None, fwd_hooks=hooks, stop_at_layer=0)
    return captured


def _reconstruct(sae: Any, captured: dict[str, torch.Tensor], batch: torch.Tensor, positions: torch.Tensor,
                 first_sequence: int, stats: ReconstructionStats, feature_stats: FeatureStats) -> torch.Tensor:
    """Run the SAE on the captured activations at `positions`, add to the statistics, return the reconstruction."""
    n_batch, n_pos = batch.shape
    x_in = captured["in"].reshape(n_batch, n_pos, -1)[positions].to(sae.W_dec.dtype)
    target = captured["out"].reshape(n_batch, n_pos, -1)[positions] if "out" in captured else x_in
    rows, cols = positions.nonzero(as_tuple=True)
    sequences = rows + first_sequence
    chunk = max(1, _SAE_CHUNK_VALUES // int(sae.cfg.d_sae))
    outputs = []
    for s in range(0, x_in.shape[0], chunk):
        features, x_hat = _sae_forward(sae, x_in[s : s + chunk])
        stats.update(target[s : s + chunk].to(x_hat.dtype), x_hat, features)
        feature_stats.update(features, sequences[s : s + chunk], cols[s : s + chunk])
        outputs.append(x_hat)
    return torch.cat(outputs) if outputs else x_in.new_zeros((0, stats.d_in))


def _evaluate_batch_with_ce(
    model: Any, sae: Any, hook_name: str, hook_out: str, batch: torch.Tensor, positions: torch.Tensor,
    first_sequence: int, stats: ReconstructionStats, feature_stats: FeatureStats, sums: _CrossEntropySums,
    special_ids: list[int], include_special_tokens: bool, ce_chunk_tokens: int,
) -> None:
    layer = _block_index(hook_name)
    resid_pre_hook = f"blocks.{layer}.hook_resid_pre" if layer is not None else None

    # 1. Clean run: the SAE's activations, the residual stream entering its block, the final-norm output.
    captured, hooks = _capture_hooks(hook_name, hook_out, resid_pre_hook)
    clean_resid = _final_residual(model, batch, hooks)
    reconstruction = _reconstruct(sae, captured, batch, positions, first_sequence, stats, feature_stats)

    def splice(act: torch.Tensor, hook: Any) -> torch.Tensor:
        flat = act.reshape(act.shape[0], act.shape[1], -1).clone()
        flat[positions] = reconstruction.to(flat.dtype)
        return flat.reshape(act.shape)

    def zero_ablate(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act = act.clone()
        act[positions] = 0.0
        return act

    # 2. and 3. Spliced and zero-ablated runs from the SAE's block on.
    if layer is not None:
        start = {"start_at_layer": layer, "attention_mask": _attention_mask(model, batch)}
        spliced_resid = _final_residual(model, captured["resid_pre"], [(hook_out, splice)], **start)
        zero_resid = _final_residual(model, captured["resid_pre"], [(hook_out, zero_ablate)], **start)
    else:
        spliced_resid = _final_residual(model, batch, [(hook_out, splice)])
        zero_resid = _final_residual(model, batch, [(hook_out, zero_ablate)])

    mask = loss_mask(batch, special_ids, include_special_tokens)
    rows, cols = mask.nonzero(as_tuple=True)
    targets = batch[rows, cols + 1]
    d_model = clean_resid.shape[-1]
    flat_index = rows * batch.shape[1] + cols
    sums.add(
        model,
        clean_resid.reshape(-1, d_model)[flat_index],
        spliced_resid.reshape(-1, d_model)[flat_index],
        zero_resid.reshape(-1, d_model)[flat_index],
        targets,
        ce_chunk_tokens,
    )
    sums.n_sequences += batch.shape[0]
