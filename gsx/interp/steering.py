"""Steer a model with SAE features: add a decoder direction, clamp a feature, or ablate it.

Three interventions, applied by `FeatureHook` at the SAE's hook on every
position whose token is not special (BOS, EOS, PAD), as gsx's evaluation
splices SAEs:

- ``add``: ``x + alpha * W_dec[f]``. The SAE is not run, and alpha is in units
  of the feature's activation, because a feature with activation a writes
  ``a * W_dec[f]``.
- ``clamp``: the activations go through the SAE with the error term kept:
  ``x' = decode(f') + (x - decode(f))``, where ``f = encode(x)`` and ``f'`` is
  ``f`` with feature ``i`` set to the value. Everything the SAE does not
  change (its reconstruction error, the other features) stays as it was, so
  clamping a feature to its current value returns ``x`` up to rounding.
- ``ablate``: clamp to 0.

`generate` samples or greedily decodes a continuation with a hook in place.
It recomputes the whole sequence at each step (no KV cache), so the hook
applies to every position at every step. `promoted_tokens` and `steering_effect` measure
what steering does to the next-token distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

Mode = Literal["add", "clamp", "ablate"]
MODES: tuple[str, ...] = ("add", "clamp", "ablate")


@dataclass(frozen=True)
class FeatureIntervention:
    """One change to one SAE feature."""

    feature: int
    mode: Mode = "add"
    alpha: float = 0.0
    """For ``add``: the multiple of the decoder row ``W_dec[feature]`` added to the activations."""
    value: float = 0.0
    """For ``clamp``: the activation the feature is set to."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"invalid intervention mode {self.mode!r}; use one of {', '.join(MODES)}")

    @classmethod
    def add(cls, feature: int, alpha: float) -> FeatureIntervention:
        return cls(feature=feature, mode="add", alpha=alpha)

    @classmethod
    def clamp(cls, feature: int, value: float) -> FeatureIntervention:
        return cls(feature=feature, mode="clamp", value=value)

    @classmethod
    def ablate(cls, feature: int) -> FeatureIntervention:
        return cls(feature=feature, mode="ablate")

    def describe(self) -> str:
        if self.mode == "add":
            return f"add {self.alpha:g} x W_dec[{self.feature}]"
        if self.mode == "clamp":
            return f"clamp feature {self.feature} to {self.value:g}"
        return f"ablate feature {self.feature}"


def token_mask(tokens: torch.Tensor, special_ids: Sequence[int]) -> torch.Tensor:
    """Return `[batch, pos]` True where the token is not special."""
    if not special_ids:
        return torch.ones_like(tokens, dtype=torch.bool)
    return ~torch.isin(tokens, torch.tensor(list(special_ids), device=tokens.device))


class FeatureHook:
    """TransformerLens forward hook that applies feature interventions, or splices the SAE in.

    `splice` routes the activations through the SAE even without a clamp
    (None: only when a clamp or ablation needs it). `include_error` keeps the
    SAE's reconstruction error when splicing; without it the hook replaces the
    activations by the SAE's reconstruction, as gsx's CE evaluation does.

    Set `token_mask` (`[batch, pos]`, True where to intervene) before each
    forward pass; None applies the hook at every position.
    """

    def __init__(
        self,
        sae: Any,
        interventions: Sequence[FeatureIntervention] = (),
        *,
        splice: bool | None = None,
        include_error: bool = True,
    ) -> None:
        d_sae = int(sae.cfg.d_sae)
        for intervention in interventions:
            if not 0 <= intervention.feature < d_sae:
                raise ValueError(
                    f"feature {intervention.feature} is out of range; the SAE has {d_sae} features (0..{d_sae - 1})"
                )
        self.sae = sae
        self.interventions = list(interventions)
        self.clamps = [i for i in self.interventions if i.mode in ("clamp", "ablate")]
        self.adds = [i for i in self.interventions if i.mode == "add"]
        self.splice = bool(self.clamps) if splice is None else splice
        if self.clamps and not self.splice:
            raise ValueError("clamp and ablate need the SAE spliced in; leave splice at None or True")
        self.include_error = include_error
        self.token_mask: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        shape = act.shape
        flat = act.reshape(shape[0], shape[1], -1)
        mask = self.token_mask
        if mask is None:
            mask = torch.ones(shape[:2], dtype=torch.bool, device=act.device)
        if mask.shape != shape[:2]:
            raise ValueError(f"token_mask has shape {tuple(mask.shape)} but the activations have {tuple(shape[:2])}")
        if not mask.any():
            return act

        x = flat[mask].to(self.sae.W_dec.dtype)
        out = self._splice(x) if self.splice else x.clone()
        for intervention in self.adds:
            out = out + intervention.alpha * self.sae.W_dec[intervention.feature]

        result = flat.clone()
        result[mask] = out.to(flat.dtype)
        return result.reshape(shape)

    def _splice(self, x: torch.Tensor) -> torch.Tensor:
        features = self.sae.encode(x)
        reconstruction = self.sae.decode(features).reshape(x.shape)
        if self.clamps:
            features = features.clone()
            for intervention in self.clamps:
                features[:, intervention.feature] = intervention.value if intervention.mode == "clamp" else 0.0
            steered = self.sae.decode(features).reshape(x.shape)
        else:
            steered = reconstruction
        if not self.include_error:
            return steered
        return steered + (x - reconstruction)


# ---------------------------------------------------------------------------
# Running the model with a hook


def _logits_at(model: Any, tokens: torch.Tensor, fwd_hooks: list, positions: slice) -> torch.Tensor:
    """Return float32 logits at `positions` only, so the unembedding runs on few positions."""
    from transformer_lens.utilities import apply_softcap

    resid = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks, stop_at_layer=model.cfg.n_layers)
    resid = model.ln_final(resid[:, positions])
    # Not model.unembed: TransformerLens 3.9's Unembed copies W_U.T on every call
    # (671 MB for Gemma 3's 262k-token vocabulary, 1.2 s measured on 2 shared CPU cores).
    logits = resid @ model.W_U + model.b_U
    return apply_softcap(logits, model.cfg.output_logits_soft_cap).float()


@torch.no_grad()
def run_logits(
    model: Any,
    tokens: torch.Tensor,
    *,
    hook_name: str | None = None,
    hook: FeatureHook | None = None,
    special_ids: Sequence[int] = (),
    last_only: bool = False,
) -> torch.Tensor:
    """Return float32 logits `[batch, pos, d_vocab]` (or `[batch, 1, d_vocab]` with `last_only`), with `hook` at `hook_name`."""
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    fwd_hooks = []
    if hook is not None:
        if hook_name is None:
            raise ValueError("a hook needs its hook_name")
        hook.token_mask = token_mask(tokens, special_ids)
        fwd_hooks = [(hook_name, hook)]
    positions = slice(-1, None) if last_only else slice(None)
    return _logits_at(model, tokens, fwd_hooks, positions)


@dataclass
class Continuation:
    """A generated continuation of a prompt."""

    text: str
    """The generated text only, without the prompt."""
    token_ids: list[int]


@torch.no_grad()
def generate(
    model: Any,
    prompt: str | torch.Tensor,
    *,
    hook_name: str | None = None,
    hook: FeatureHook | None = None,
    special_ids: Sequence[int] = (),
    max_new_tokens: int = 30,
    seed: int | None = None,
    temperature: float = 1.0,
) -> Continuation:
    """Continue `prompt` with `hook` at `hook_name`: greedy when `seed` is None, else sampled at `temperature`.

    A text prompt gets a BOS in front. Generation stops after `max_new_tokens`
    or at EOS. The same seed gives the same random draws, so a baseline and a
    steered run with one seed differ only through the hook.
    """
    if max_new_tokens < 0:
        raise ValueError(f"invalid max_new_tokens {max_new_tokens}; pass 0 or more")
    if seed is not None and temperature <= 0:
        raise ValueError(f"invalid temperature {temperature}; sampling needs a positive temperature")
    device = next(model.parameters()).device
    if isinstance(prompt, str):
        tokens = model.to_tokens(prompt, prepend_bos=True)
    else:
        tokens = prompt.reshape(1, -1)
    tokens = tokens.to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    eos = model.tokenizer.eos_token_id if model.tokenizer is not None else None

    new_ids: list[int] = []
    for _ in range(max_new_tokens):
        logits = run_logits(model, tokens, hook_name=hook_name, hook=hook, special_ids=special_ids, last_only=True)[0, -1]
        if generator is None:
            next_id = int(logits.argmax())
        else:
            probs = torch.softmax(logits.cpu() / temperature, dim=-1)
            next_id = int(torch.multinomial(probs, 1, generator=generator))
        new_ids.append(next_id)
        tokens = torch.cat([tokens, torch.tensor([[next_id]], device=device)], dim=1)
        if eos is not None and next_id == eos:
            break
    text = model.tokenizer.decode(new_ids) if model.tokenizer is not None else " ".join(map(str, new_ids))
    return Continuation(text=text, token_ids=new_ids)


# ---------------------------------------------------------------------------
# Measuring effects


@torch.no_grad()
def direct_logit_effect(model: Any, sae: Any, feature: int) -> torch.Tensor:
    """Return `[d_vocab]` logits the decoder row writes directly: ``(W_dec[f] * w_final_norm) @ W_U``.

    The final RMSNorm divides by the residual's norm, which is one positive
    number per position, so the ranking of tokens does not depend on it. Only
    its elementwise weight (when the model has one) changes the direction.
    """
    direction = sae.W_dec[feature].to(model.W_U.dtype).to(model.W_U.device)
    weight = getattr(model.ln_final, "w", None)
    if weight is not None and weight.shape == direction.shape:
        direction = direction * weight
    return (direction @ model.W_U).float()


def promoted_tokens(model: Any, sae: Any, feature: int, k: int = 10) -> torch.Tensor:
    """Return the `k` token ids whose logits the decoder row of `feature` raises most (see direct_logit_effect)."""
    return torch.topk(direct_logit_effect(model, sae, feature), k).indices


@dataclass
class SteeringEffect:
    """Change of the next-token distribution that an intervention causes at the counted positions."""

    promoted_token_ids: list[int]
    """Tokens the feature's decoder row promotes most (direct logit effect)."""
    baseline_prob: float
    """Mean total probability of the promoted tokens, unsteered."""
    steered_prob: float
    """The same with the intervention."""
    baseline_logprob: float
    """Mean log-probability of the promoted tokens (averaged over tokens and positions), unsteered."""
    steered_logprob: float
    kl_divergence: float
    """Mean KL(baseline ‖ steered) of the next-token distributions (nats)."""
    max_abs_logit_diff: float
    """Largest change of any logit at any counted position."""
    n_positions: int


@torch.no_grad()
def steering_effect(
    model: Any,
    sae: Any,
    hook_name: str,
    tokens: torch.Tensor,
    intervention: FeatureIntervention,
    *,
    special_ids: Sequence[int] = (),
    k: int = 10,
) -> SteeringEffect:
    """Measure `intervention` on `tokens` `[batch, pos]`: probability of the feature's promoted tokens, KL, logit change.

    Positions count when their token is not special, because the hook only
    changes those. The promoted tokens are those of the intervention's feature.
    """
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    baseline = run_logits(model, tokens)
    hook = FeatureHook(sae, [intervention])
    steered = run_logits(model, tokens, hook_name=hook_name, hook=hook, special_ids=special_ids)

    mask = token_mask(tokens, special_ids)
    if not mask.any():
        raise ValueError("the tokens contain no non-special positions to measure")
    baseline_lp = torch.log_softmax(baseline[mask], dim=-1)
    steered_lp = torch.log_softmax(steered[mask], dim=-1)
    promoted = promoted_tokens(model, sae, intervention.feature, k).to(baseline_lp.device)

    kl = (baseline_lp.exp() * (baseline_lp - steered_lp)).sum(-1)
    return SteeringEffect(
        promoted_token_ids=[int(t) for t in promoted],
        baseline_prob=float(baseline_lp[:, promoted].exp().sum(-1).mean()),
        steered_prob=float(steered_lp[:, promoted].exp().sum(-1).mean()),
        baseline_logprob=float(baseline_lp[:, promoted].mean()),
        steered_logprob=float(steered_lp[:, promoted].mean()),
        kl_divergence=float(kl.mean()),
        max_abs_logit_diff=float((steered[mask] - baseline[mask]).abs().max()),
        n_positions=int(mask.sum()),
    )


@torch.no_grad()
def hook_activations(model: Any, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
    """Return the activations at `hook_name` for `tokens`, running the model only up to that block."""
    _, cache = model.run_with_cache(
        tokens.to(next(model.parameters()).device), names_filter=[hook_name], stop_at_layer=_stop_layer(model, hook_name)
    )
    return cache[hook_name]


def _stop_layer(model: Any, hook_name: str) -> int | None:
    """Return the block after the one `hook_name` belongs to (None for the last block or a non-block hook)."""
    parts = hook_name.split(".")
    if len(parts) >= 2 and parts[0] == "blocks" and parts[1].isdigit():
        layer = int(parts[1]) + 1
        return layer if layer < model.cfg.n_layers else None
    return None


@torch.no_grad()
def feature_activations(model: Any, sae: Any, hook_name: str, tokens: torch.Tensor, feature: int) -> torch.Tensor:
    """Return `[batch, pos]` activations of `feature` on `tokens` (special positions included)."""
    act = hook_activations(model, tokens, hook_name)
    flat = act.reshape(act.shape[0] * act.shape[1], -1).to(sae.W_dec.dtype)
    return sae.encode(flat)[:, feature].reshape(act.shape[0], act.shape[1]).float()
