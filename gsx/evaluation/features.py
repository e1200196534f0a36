"""Per-latent statistics, top-latent rankings, top-activating contexts and the decoder logit lens.

`FeatureStats` accumulates, over the evaluation tokens, how often each latent
fires (activation ≠ 0), the sum of its activations, and the `n_contexts` tokens
where it is largest (only positive activations are kept as contexts).
`summarize_features` turns that into the report's `features` section:

- top latents by firing frequency (fraction of evaluated tokens where the latent
  is active; ties go to the lower index);
- top latents by mean activation when firing (sum of activations / firing
  tokens), among latents that fired on at least `min_firing_tokens` tokens, so
  a latent seen once cannot top the list on one large value;
- for each: its top-activating contexts, a window of tokens around each maximum
  with the activating token marked «like this», and the output tokens its
  decoder direction promotes and suppresses most (`logit_lens`).

Logit lens (the direct effect of a latent on the logits): the latent's decoder
row W_dec[j] is mapped into the residual stream, then through the linear part
of the final norm and the unembedding:

    scores_j = (r_j ⊙ w_final_norm) @ W_U

where r_j = W_dec[j] for SAEs whose output hook adds to or is the residual
stream (hook_resid_pre / mid / post, hook_mlp_out, hook_attn_out, hook_embed,
and transcoders writing hook_mlp_out), and r_j = Σ_h W_dec[j, h] @ W_O[h], times
the post-attention norm weight where the block has one (Gemma 2 and 3), for
`attn.hook_z` SAEs. The final RMSNorm also divides by the RMS of the whole
residual stream. That factor is positive and the same for every output token, so
it changes the scale of the scores but not which tokens rank highest, and it is
left out: scores are logits per unit of activation before that division.
The unembedding bias and Gemma 2's final logit soft-cap (a monotonic map) do not
change the ranking either and are left out. For a LayerNorm model the direction
is centred first, as LayerNorm centres its input.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

logger = logging.getLogger(__name__)

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")
# Output hooks whose activation is added to, or is, the residual stream.
_RESIDUAL_OUTPUTS = re.compile(r"^(hook_embed|blocks\.\d+\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_mlp_out|hook_attn_out))$")


class FeatureStats:
    """Accumulate per-latent firing counts, activation sums and top-activating token positions."""

    def __init__(self, d_sae: int, n_contexts: int = 3):
        self.d_sae = d_sae
        self.n_contexts = n_contexts
        self.n_tokens = 0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.float64)
        self.sum_activations = torch.zeros(d_sae, dtype=torch.float64)
        self.top_values = torch.full((d_sae, n_contexts), float("-inf"))
        """`[d_sae, n_contexts]` largest positive activations, descending; -inf where fewer were seen."""
        self.top_sequences = torch.full((d_sae, n_contexts), -1, dtype=torch.long)
        """Sequence index (row of the evaluated tokens) of each top activation; -1 where none."""
        self.top_positions = torch.full((d_sae, n_contexts), -1, dtype=torch.long)
        """Position within the sequence of each top activation; -1 where none."""

    @torch.no_grad()
    def update(self, features: torch.Tensor, sequences: torch.Tensor, positions: torch.Tensor) -> None:
        """Add `[n, d_sae]` latent activations of tokens at (`sequences[i]`, `positions[i]`)."""
        if features.shape[-1] != self.d_sae or features.dim() != 2:
            raise ValueError(f"features {tuple(features.shape)} must be [n, {self.d_sae}]")
        if sequences.shape != (features.shape[0],) or positions.shape != (features.shape[0],):
            raise ValueError("sequences and positions must be [n], one entry per row of features")
        features = features.detach().float().cpu()
        self.n_tokens += features.shape[0]
        self.fire_counts += (features != 0).sum(0).double()
        # Column sums in float32, then float64 across batches: .double() first would copy the whole batch.
        self.sum_activations += features.sum(0).double()
        if self.n_contexts == 0 or features.shape[0] == 0:
            return

        k = min(self.n_contexts, features.shape[0])
        values, rows = features.topk(k, dim=0)  # [k, d_sae]
        values = values.T.masked_fill(values.T <= 0, float("-inf"))
        rows = rows.T
        candidates = torch.cat([self.top_values, values], dim=1)
        candidate_sequences = torch.cat([self.top_sequences, sequences.cpu().long()[rows]], dim=1)
        candidate_positions = torch.cat([self.top_positions, positions.cpu().long()[rows]], dim=1)
        self.top_values, order = candidates.topk(self.n_contexts, dim=1)
        self.top_sequences = candidate_sequences.gather(1, order)
        self.top_positions = candidate_positions.gather(1, order)
        empty = torch.isinf(self.top_values)
        self.top_sequences[empty] = -1
        self.top_positions[empty] = -1

    @property
    def frequency(self) -> torch.Tensor:
        """Fraction of evaluated tokens on which each latent fired, `[d_sae]`."""
        return self.fire_counts / max(self.n_tokens, 1)

    @property
    def mean_activation_when_firing(self) -> torch.Tensor:
        """Sum of activations / firing tokens per latent, `[d_sae]`; NaN for latents that never fired."""
        return self.sum_activations / self.fire_counts.where(self.fire_counts > 0, torch.tensor(float("nan"), dtype=torch.float64))

    @property
    def max_activation(self) -> torch.Tensor:
        """Largest positive activation seen per latent, `[d_sae]`; -inf for latents that never had one."""
        return self.top_values[:, 0] if self.n_contexts > 0 else torch.full((self.d_sae,), float("-inf"))


def _rank(scores: torch.Tensor, eligible: torch.Tensor, n: int) -> list[int]:
    """Return up to `n` eligible indices by descending score; ties go to the lower index."""
    order = torch.argsort(-scores.double().nan_to_num(nan=float("-inf")), stable=True)
    return [int(i) for i in order[eligible[order]][:n]]


def top_by_frequency(stats: FeatureStats, n: int) -> list[int]:
    """Return the `n` latents that fired on the most tokens (latents that never fired are left out)."""
    return _rank(stats.fire_counts, stats.fire_counts > 0, n)


def top_by_mean_activation(stats: FeatureStats, n: int, min_firing_tokens: int = 5) -> list[int]:
    """Return the `n` latents with the largest mean activation when firing, among those firing on >= `min_firing_tokens` tokens."""
    eligible = stats.fire_counts >= max(1, min_firing_tokens)
    return _rank(stats.mean_activation_when_firing, eligible, n)


# ---------------------------------------------------------------------------
# Logit lens


def residual_directions(model: Any, sae: Any, hook_name_out: str, latents: list[int]) -> torch.Tensor | None:
    """Return the residual-stream directions `[len(latents), d_model]` that the latents' decoder rows write.

    Returns None when the SAE's output hook is not one the module docstring lists.
    """
    decoder = sae.W_dec.detach()[latents].float()
    d_model = int(model.cfg.d_model)
    if _RESIDUAL_OUTPUTS.match(hook_name_out):
        return decoder if decoder.shape[-1] == d_model else None
    match = _BLOCK_HOOK.match(hook_name_out)
    if match is not None and hook_name_out.endswith("attn.hook_z"):
        block = model.blocks[int(match.group(1))]
        W_O = block.attn.W_O.detach().float()  # [n_heads, d_head, d_model]
        if decoder.shape[-1] != W_O.shape[0] * W_O.shape[1]:
            return None
        directions = torch.einsum("khd,hdm->km", decoder.reshape(len(latents), W_O.shape[0], W_O.shape[1]), W_O)
        post_norm = getattr(block, "ln1_post", None)
        if post_norm is not None and hasattr(post_norm, "w"):
            directions = directions * post_norm.w.detach().float()
        return directions
    return None


def logit_lens_scores(directions: torch.Tensor, W_U: torch.Tensor, norm_weight: torch.Tensor | None = None,
                      center: bool = False) -> torch.Tensor:
    """Return `[k, d_vocab]` scores (directions ⊙ norm_weight) @ W_U, centring the directions first if `center`."""
    directions = directions.float()
    if center:
        directions = directions - directions.mean(-1, keepdim=True)
    if norm_weight is not None:
        directions = directions * norm_weight.detach().float()
    return directions @ W_U.detach().float()


def model_logit_lens(model: Any, directions: torch.Tensor) -> torch.Tensor:
    """Return `[k, d_vocab]` logit-lens scores of residual `directions` through `model`'s final norm and unembedding."""
    norm = getattr(model, "ln_final", None)
    norm_kind = type(norm).__name__ if norm is not None else ""
    weight = norm.w if norm is not None and hasattr(norm, "w") else None
    return logit_lens_scores(directions, model.W_U, weight, center=norm_kind.startswith("LayerNorm"))


def top_tokens(scores: torch.Tensor, n: int) -> tuple[list[list[tuple[int, float]]], list[list[tuple[int, float]]]]:
    """Return, per row of `[k, d_vocab]` scores, the `n` highest and the `n` lowest (token id, score), in order."""
    n = min(n, scores.shape[-1])
    high = scores.topk(n, dim=-1)
    low = scores.topk(n, dim=-1, largest=False)
    promoted = [[(int(i), float(v)) for i, v in zip(ids, vals)] for ids, vals in zip(high.indices, high.values)]
    suppressed = [[(int(i), float(v)) for i, v in zip(ids, vals)] for ids, vals in zip(low.indices, low.values)]
    return promoted, suppressed


# ---------------------------------------------------------------------------
# Contexts


def token_text(tokenizer: Any, token_id: int) -> str:
    """Decode one token, with newlines shown as ↵ so that it stays on one line."""
    return tokenizer.decode([token_id]).replace("\n", "↵")


def format_context(tokenizer: Any, token_ids: list[int], position: int, before: int = 10, after: int = 4) -> str:
    """Return the text of the tokens around `position`, the token there marked «like this».

    The window is `before` tokens to the left and `after` to the right. Text is
    decoded as a whole where the tokenizer allows, so spaces come out as in the
    original. Newlines are shown as ↵.
    """
    start = max(0, position - before)
    window = token_ids[start : position + after + 1]
    local = position - start
    prefix = tokenizer.decode(window[:local])
    through = tokenizer.decode(window[: local + 1])
    whole = tokenizer.decode(window)
    if through.startswith(prefix) and whole.startswith(through):
        text = f"{prefix}«{through[len(prefix):]}»{whole[len(through):]}"
    else:
        # Tokens that split a character: fall back to decoding token by token.
        pieces = [tokenizer.decode([t]) for t in window]
        pieces[local] = f"«{pieces[local]}»"
        text = "".join(pieces)
    return text.replace("\n", "↵")


# ---------------------------------------------------------------------------
# Summary for the report


def summarize_features(
    stats: FeatureStats,
    model: Any,
    sae: Any,
    hook_name_out: str,
    tokens: torch.Tensor,
    *,
    n_top: int = 10,
    n_logit_tokens: int = 8,
    min_firing_tokens: int = 5,
    context_before: int = 10,
    context_after: int = 4,
) -> dict[str, Any]:
    """Return the report's `features` section: top latents with contexts and logit-lens tokens.

    `tokens` are the `[n_seq, pos]` evaluation tokens whose rows the statistics'
    sequence indices refer to. Keys: `n_top`, `min_firing_tokens`, `logit_lens`
    (`applied` and `method`, or `reason` when not applied), `by_frequency` and
    `by_mean_activation`. Each is a list of latent entries with `latent`,
    `frequency`, `firing_tokens`, `mean_activation`, `max_activation`,
    `contexts` (`activation`, `sequence`, `position`, `text`) and, when the logit
    lens applies, `promoted` and `suppressed` (`token_id`, `token`, `score`).
    """
    by_frequency = top_by_frequency(stats, n_top)
    by_mean = top_by_mean_activation(stats, n_top, min_firing_tokens)
    latents = sorted(set(by_frequency) | set(by_mean))
    tokenizer = model.tokenizer

    lens: dict[str, Any] = {"applied": False}
    promoted: dict[int, list[tuple[int, float]]] = {}
    suppressed: dict[int, list[tuple[int, float]]] = {}
    if latents:
        directions = residual_directions(model, sae, hook_name_out, latents)
        if directions is None:
            lens["reason"] = f"the SAE's output hook {hook_name_out} does not write a residual-stream direction gsx can map"
        else:
            scores = model_logit_lens(model, directions.to(model.W_U.device))
            high, low = top_tokens(scores, n_logit_tokens)
            promoted = dict(zip(latents, high))
            suppressed = dict(zip(latents, low))
            lens = {"applied": True, "method": "(W_dec[j] mapped to the residual stream ⊙ final norm weight) @ W_U; "
                                              "see gsx.evaluation.features"}

    frequency = stats.frequency
    mean = stats.mean_activation_when_firing
    token_rows = tokens.cpu()

    def entry(latent: int) -> dict[str, Any]:
        contexts = []
        for value, sequence, position in zip(stats.top_values[latent], stats.top_sequences[latent],
                                             stats.top_positions[latent]):
            if sequence < 0:
                continue
            row = token_rows[int(sequence)].tolist()
            contexts.append({
                "activation": float(value),
                "sequence": int(sequence),
                "position": int(position),
                "text": format_context(tokenizer, row, int(position), context_before, context_after),
            })
        item: dict[str, Any] = {
            "latent": latent,
            "frequency": float(frequency[latent]),
            "firing_tokens": int(stats.fire_counts[latent]),
            "mean_activation": float(mean[latent]),
            "max_activation": float(stats.max_activation[latent]) if contexts else None,
            "contexts": contexts,
        }
        if latent in promoted:
            item["promoted"] = [{"token_id": i, "token": token_text(tokenizer, i), "score": s} for i, s in promoted[latent]]
            item["suppressed"] = [{"token_id": i, "token": token_text(tokenizer, i), "score": s} for i, s in suppressed[latent]]
        return item

    entries = {latent: entry(latent) for latent in latents}
    return {
        "n_top": n_top,
        "min_firing_tokens": min_firing_tokens,
        "logit_lens": lens,
        "by_frequency": [entries[j] for j in by_frequency],
        "by_mean_activation": [entries[j] for j in by_mean],
    }

