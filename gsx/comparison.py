"""Compare two SAEs that read the same hook: held-out metrics side by side, and decoder-direction matching.

`compare_saes` evaluates both SAEs with `gsx.evaluation.splice.evaluate_sae` on the
same tokens (L0, FVU, MSE, dead latents, CE loss clean and with each SAE spliced
in) and matches their decoder directions with `match_decoders`.
`write_comparison_report` writes the result as Markdown and JSON.

Decoder matching: for each latent i of A, its max cosine is
max_j cos(W_dec_A[i], W_dec_B[j]) over the latents j of B, and the same the other
way. The cosine is signed, so an opposite direction does not count as a match. A
latent counts as matched at threshold t when its max cosine is strictly greater
than t. A latent whose decoder row has zero norm has no direction: its max cosine
is NaN, it counts as unmatched, and the rows of the other SAE never match it.
The cosines are computed in float32 on unit-normalised rows, `block_size` rows
of each SAE at a time. Beyond the two normalised decoder copies, two 16k-latent
SAEs then need one 1024 x 1024 block of cosines (4 MiB), not a 16k x 16k matrix.

`ComparisonResult.to_dict()` keys (version 1):

- `gsx_comparison_version`: 1.
- `model`: model name. `hook_name`: the hook both SAEs read.
- `a`, `b`: `name`, `source` (path or release id, null when not known), `kind`
  ("saelens", "gsx-scratch", a Gemma Scope site such as "resid_post", or the
  class name), `hook_name`, `d_in`, `d_sae`, and `metrics`: `n_tokens`, `l0`,
  `fvu`, `explained_variance`, `mse`, `cosine_similarity`,
  `relative_reconstruction_bias`, `n_dead`, `dead_fraction`, `n_dense`,
  `n_loss_tokens`, `ce_loss_clean`, `ce_loss_spliced`, `ce_loss_zero_ablated`,
  `ce_loss_delta`, `ce_loss_recovered`, `kl_div_spliced` (defined in
  `gsx.evaluation.metrics` and `gsx.evaluation.splice`; the CE keys are null
  when no next-token prediction was counted).
- `difference_b_minus_a`: B's value minus A's for `l0`, `fvu`,
  `explained_variance`, `mse`, `cosine_similarity`, `dead_fraction`, `ce_loss_clean` (0, as both run
  the same model on the same tokens), `ce_loss_spliced`, `ce_loss_delta`,
  `ce_loss_recovered` and `kl_div_spliced`.
- `decoder_matching`: `block_size`, `thresholds`, and `a_to_b` / `b_to_a`, each
  with `n_latents`, `n_zero_norm`, `mean_max_cosine`, `median_max_cosine` (both
  over the latents whose max cosine is defined) and `fraction_above` (threshold
  as a string, such as "0.9", to the fraction of all `n_latents` matched above it).
- `tokens`: `n_sequences`, `context_size`, `n_tokens` (positions evaluated),
  `n_loss_tokens` (next-token predictions counted), `include_special_tokens`.
- `versions`: `gsx.io.library_versions()`.

Every NaN or infinite float is written as null, so the JSON file is strict JSON.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gsx.evaluation.splice import EvalResult, evaluate_sae
from gsx.io import library_versions, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

COMPARISON_VERSION = 1
MATCH_THRESHOLDS = (0.7, 0.9)
DEFAULT_BLOCK_SIZE = 1024

DIFFERENCE_KEYS = (
    "l0",
    "fvu",
    "explained_variance",
    "mse",
    "cosine_similarity",
    "dead_fraction",
    "ce_loss_clean",
    "ce_loss_spliced",
    "ce_loss_delta",
    "ce_loss_recovered",
    "kl_div_spliced",
)
RECONSTRUCTION_KEYS = (
    "n_tokens",
    "l0",
    "fvu",
    "explained_variance",
    "mse",
    "cosine_similarity",
    "relative_reconstruction_bias",
    "n_dead",
    "n_dense",
)
SPLICE_KEYS = (
    "n_loss_tokens",
    "ce_loss_clean",
    "ce_loss_spliced",
    "ce_loss_zero_ablated",
    "ce_loss_delta",
    "ce_loss_recovered",
    "kl_div_spliced",
)


class ComparisonError(ValueError):
    """Raised when two SAEs cannot be compared: different hooks or widths, a transcoder, or a hook the model lacks."""


# ---------------------------------------------------------------------------
# Decoder matching


@dataclass
class MatchDirection:
    """Max-cosine matches of one SAE's decoder directions (the source) among the other SAE's (the target)."""

    max_cosine: Tensor
    """[n_latents] float32 max cosine of each source row to the target rows. It is NaN for a zero-norm
    row, and for every row when all target rows have zero norm."""
    best_match: Tensor
    """[n_latents] int64: the target latent reaching the max cosine (the lowest index on ties), -1 where NaN."""
    n_zero_norm: int
    """Source latents whose decoder row has zero norm."""
    thresholds: tuple[float, ...] = MATCH_THRESHOLDS

    @property
    def n_latents(self) -> int:
        return int(self.max_cosine.shape[0])

    @property
    def mean_max_cosine(self) -> float:
        """Mean max cosine over the latents where it is defined (NaN if none)."""
        defined = self._defined()
        return float(defined.mean()) if defined.numel() else float("nan")

    @property
    def median_max_cosine(self) -> float:
        """Median max cosine over the latents where it is defined: the mean of the two middle values for an even count."""
        defined = self._defined()
        return float(torch.quantile(defined, 0.5)) if defined.numel() else float("nan")

    @property
    def fraction_above(self) -> dict[float, float]:
        """Threshold to the fraction of all latents whose max cosine is strictly above it (NaN counts as unmatched)."""
        if self.n_latents == 0:
            return {threshold: float("nan") for threshold in self.thresholds}
        return {
            threshold: float((self.max_cosine > threshold).sum()) / self.n_latents for threshold in self.thresholds
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_latents": self.n_latents,
            "n_zero_norm": self.n_zero_norm,
            "mean_max_cosine": _finite_or_none(self.mean_max_cosine),
            "median_max_cosine": _finite_or_none(self.median_max_cosine),
            "fraction_above": {
                _threshold_key(threshold): _finite_or_none(value) for threshold, value in self.fraction_above.items()
            },
        }

    def _defined(self) -> Tensor:
        values = self.max_cosine.detach().double().cpu()
        return values[~torch.isnan(values)]


@dataclass
class DecoderMatching:
    """Decoder-direction matching between SAEs A and B, in both directions."""

    a_to_b: MatchDirection
    b_to_a: MatchDirection
    block_size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "block_size": self.block_size,
            "thresholds": list(self.a_to_b.thresholds),
            "a_to_b": self.a_to_b.to_dict(),
            "b_to_a": self.b_to_a.to_dict(),
        }


@torch.no_grad()
def match_decoders(
    w_dec_a: Tensor,
    w_dec_b: Tensor,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    thresholds: tuple[float, ...] = MATCH_THRESHOLDS,
) -> DecoderMatching:
    """Match the decoder rows `w_dec_a [d_sae_a, d_in]` and `w_dec_b [d_sae_b, d_in]` by max cosine, both ways.

    Runs on the device of `w_dec_a`. Peak extra memory is one float32 copy of each
    matrix plus a `block_size x block_size` block of cosines and a float64 block of
    `block_size` rows. Raises ComparisonError
    when the widths differ, and ValueError for a non-2-D or non-finite matrix or a
    block_size below 1.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"invalid block_size={block_size!r}: expected a positive int")
    for name, weights in (("A", w_dec_a), ("B", w_dec_b)):
        if weights.ndim != 2:
            raise ValueError(f"invalid W_dec of {name}: expected [d_sae, d_in], got shape {tuple(weights.shape)}")
    if w_dec_a.shape[1] != w_dec_b.shape[1]:
        raise ComparisonError(
            f"cannot match decoders: W_dec of A is {tuple(w_dec_a.shape)} and W_dec of B is "
            f"{tuple(w_dec_b.shape)}, so their d_in differ ({w_dec_a.shape[1]} vs {w_dec_b.shape[1]})"
        )

    device = w_dec_a.device
    unit_a, zero_a = _unit_rows(w_dec_a.to(device), block_size, "A")
    unit_b, zero_b = _unit_rows(w_dec_b.to(device), block_size, "B")
    n_a, n_b = unit_a.shape[0], unit_b.shape[0]

    best_a = torch.full((n_a,), -math.inf, dtype=torch.float32, device=device)
    index_a = torch.full((n_a,), -1, dtype=torch.int64, device=device)
    best_b = torch.full((n_b,), -math.inf, dtype=torch.float32, device=device)
    index_b = torch.full((n_b,), -1, dtype=torch.int64, device=device)

    for start_a in range(0, n_a, block_size):
        end_a = min(start_a + block_size, n_a)
        block_a = unit_a[start_a:end_a]
        zero_rows = zero_a[start_a:end_a]
        for start_b in range(0, n_b, block_size):
            end_b = min(start_b + block_size, n_b)
            cosines = block_a @ unit_b[start_b:end_b].T
            # A zero-norm row has cosine 0 to everything, so it is masked to never win a max.
            zero_columns = zero_b[start_b:end_b]
            if zero_columns.any():
                cosines[:, zero_columns] = -math.inf
            if zero_rows.any():
                cosines[zero_rows, :] = -math.inf

            # Strict ">" keeps the earlier block on ties, and torch.max returns the first
            # maximum within a block, so ties go to the lowest index for any block size.
            row_max, row_arg = cosines.max(dim=1)
            better = row_max > best_a[start_a:end_a]
            best_a[start_a:end_a] = torch.where(better, row_max, best_a[start_a:end_a])
            index_a[start_a:end_a] = torch.where(better, row_arg + start_b, index_a[start_a:end_a])

            column_max, column_arg = cosines.max(dim=0)
            better = column_max > best_b[start_b:end_b]
            best_b[start_b:end_b] = torch.where(better, column_max, best_b[start_b:end_b])
            index_b[start_b:end_b] = torch.where(better, column_arg + start_a, index_b[start_b:end_b])

    return DecoderMatching(
        a_to_b=_direction(best_a, index_a, zero_a, thresholds),
        b_to_a=_direction(best_b, index_b, zero_b, thresholds),
        block_size=block_size,
    )


def _unit_rows(weights: Tensor, block_size: int, name: str) -> tuple[Tensor, Tensor]:
    """Return float32 unit-norm rows (zero rows stay zero) and a bool mask of the zero-norm rows.

    Norms and the division are done in float64, so tiny float32 rows neither underflow
    to zero norm nor lose precision.
    """
    weights = weights.detach()
    unit = torch.zeros(weights.shape, dtype=torch.float32, device=weights.device)
    zero = torch.zeros(weights.shape[0], dtype=torch.bool, device=weights.device)
    for start in range(0, weights.shape[0], block_size):
        rows = weights[start : start + block_size].double()
        if not bool(torch.isfinite(rows).all()):
            raise ValueError(f"invalid W_dec of {name}: rows {start}..{start + rows.shape[0] - 1} contain NaN or inf")
        norms = torch.linalg.vector_norm(rows, dim=1)
        is_zero = norms == 0
        zero[start : start + rows.shape[0]] = is_zero
        unit[start : start + rows.shape[0]] = (rows / norms.masked_fill(is_zero, 1.0).unsqueeze(1)).float()
    return unit, zero


def _direction(best: Tensor, index: Tensor, zero: Tensor, thresholds: tuple[float, ...]) -> MatchDirection:
    # -inf is left where every candidate was masked: a zero-norm source row, or a target with no non-zero row.
    undefined = torch.isinf(best)
    max_cosine = best.masked_fill(undefined, math.nan).cpu()
    best_match = index.masked_fill(undefined, -1).cpu()
    return MatchDirection(
        max_cosine=max_cosine,
        best_match=best_match,
        n_zero_norm=int(zero.sum()),
        thresholds=tuple(thresholds),
    )


# ---------------------------------------------------------------------------
# The two SAEs


@dataclass
class ComparedSAE:
    """One side of a comparison: the SAE's identity and its held-out evaluation."""

    name: str
    source: str | None
    """Path or release id the SAE was loaded from, or None when not known."""
    kind: str
    hook_name: str | None
    """The hook the SAE records in its own config, or None when it records none."""
    d_in: int
    d_sae: int
    evaluation: EvalResult | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        """Flat metrics: RECONSTRUCTION_KEYS, `dead_fraction` and SPLICE_KEYS (None without CE), in that order.

        Only these keys are copied from the evaluation, so fields that
        `evaluate_sae` adds later do not change the report's keys.
        """
        if self.evaluation is None:
            raise ValueError(f"SAE {self.name} has not been evaluated")
        reconstruction = dataclasses.asdict(self.evaluation.reconstruction)
        metrics: dict[str, Any] = {key: reconstruction[key] for key in RECONSTRUCTION_KEYS}
        metrics["dead_fraction"] = reconstruction["n_dead"] / self.d_sae
        splice = self.evaluation.splice
        splice_values = dataclasses.asdict(splice) if splice is not None else {}
        for key in SPLICE_KEYS:
            metrics[key] = splice_values.get(key)
        return metrics

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "kind": self.kind,
            "hook_name": self.hook_name,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "metrics": {key: _finite_or_none(value) for key, value in self.metrics.items()},
        }


@dataclass
class _SAEHandle:
    """An SAE module with what the comparison needs to know about it."""

    module: Any
    summary: ComparedSAE
    hook_name_out: str | None
    d_out: int


def _inspect_sae(sae: Any, name: str, source: str | None) -> _SAEHandle:
    """Read the hooks and sizes of a LoadedSAE, a SAELens SAE or a gsx scratch JumpReLUSAE."""
    from gsx.loading import LoadedSAE

    if isinstance(sae, LoadedSAE):
        loaded_source = f"{sae.release}/{sae.sae_id}" if sae.release else str(sae.path)
        summary = ComparedSAE(
            name=name,
            source=source or loaded_source,
            kind=sae.kind,
            hook_name=sae.hook_name or None,
            d_in=sae.d_in,
            d_sae=sae.d_sae,
        )
        return _SAEHandle(sae.sae, summary, sae.hook_name_out or None, sae.d_out)

    from gsx.saes.jumprelu import JumpReLUSAE

    if isinstance(sae, JumpReLUSAE):
        kind, hook_name, hook_name_out, d_out = "gsx-scratch", sae.hook_name, sae.hook_name_out, sae.d_out
    else:
        cfg = getattr(sae, "cfg", None)
        if cfg is None or not hasattr(sae, "W_dec") or not hasattr(sae, "encode") or not hasattr(sae, "decode"):
            raise TypeError(
                f"unsupported SAE type {type(sae).__name__} for {name}: expected a gsx.loading.LoadedSAE, "
                "a SAELens SAE or a gsx.saes.jumprelu.JumpReLUSAE"
            )
        metadata = getattr(cfg, "metadata", None)
        hook_name = getattr(metadata, "hook_name", None)
        hook_name_out = getattr(metadata, "hook_name_out", None)
        d_out = int(getattr(cfg, "d_out", cfg.d_in))
        kind = "saelens" if type(sae).__module__.startswith("sae_lens") else type(sae).__name__
    summary = ComparedSAE(
        name=name,
        source=source,
        kind=kind,
        hook_name=hook_name or None,
        d_in=int(sae.cfg.d_in),
        d_sae=int(sae.cfg.d_sae),
    )
    return _SAEHandle(sae, summary, hook_name_out or None, d_out)


def _inspect_pair(
    sae_a: Any, sae_b: Any, names: tuple[str, str], sources: tuple[str | None, str | None]
) -> tuple[_SAEHandle, _SAEHandle]:
    if len(names) != 2 or len(sources) != 2:
        raise ValueError(f"invalid names={names!r} or sources={sources!r}: expected two of each")
    return _inspect_sae(sae_a, names[0], sources[0]), _inspect_sae(sae_b, names[1], sources[1])


def _check_handles(a: _SAEHandle, b: _SAEHandle, hook_name: str | None) -> str:
    """Return the hook both SAEs read, or raise ComparisonError naming the conflict."""
    for handle in (a, b):
        summary = handle.summary
        if handle.d_out != summary.d_in or (
            handle.hook_name_out is not None and handle.hook_name_out != summary.hook_name
        ):
            raise ComparisonError(
                f"cannot compare {summary.name}: it is a transcoder (reads {summary.hook_name} with d_in "
                f"{summary.d_in}, writes {handle.hook_name_out} with d_out {handle.d_out}); compare_saes splices "
                "the reconstruction back into the hook it reads, so it supports SAEs only"
            )

    hook_a, hook_b = a.summary.hook_name, b.summary.hook_name
    if hook_a is not None and hook_b is not None and hook_a != hook_b:
        raise ComparisonError(
            f"cannot compare SAEs on different hooks: {a.summary.name} reads {hook_a!r} but "
            f"{b.summary.name} reads {hook_b!r}; compare two SAEs trained on the same hook"
        )
    if hook_name is not None:
        for summary in (a.summary, b.summary):
            if summary.hook_name is not None and summary.hook_name != hook_name:
                raise ComparisonError(
                    f"invalid hook_name={hook_name!r}: {summary.name} reads {summary.hook_name!r}; "
                    "pass the hook the SAEs were trained on, or hook_name=None to use it"
                )
    resolved = hook_name or hook_a or hook_b
    if resolved is None:
        raise ComparisonError(
            f"missing hook: neither {a.summary.name} nor {b.summary.name} records the hook it reads; pass hook_name"
        )

    if a.summary.d_in != b.summary.d_in:
        raise ComparisonError(
            f"cannot compare SAEs of different input sizes at {resolved!r}: {a.summary.name} has d_in "
            f"{a.summary.d_in} but {b.summary.name} has d_in {b.summary.d_in}"
        )
    return resolved


def check_comparable(
    sae_a: Any,
    sae_b: Any,
    hook_name: str | None = None,
    *,
    names: tuple[str, str] = ("A", "B"),
) -> str:
    """Return the hook both SAEs read, without running a model.

    Each SAE is a `gsx.loading.LoadedSAE`, a SAELens SAE or a gsx scratch
    `JumpReLUSAE`. An SAE that records no hook takes `hook_name` (or the other
    SAE's hook). Raises ComparisonError when the SAEs read different hooks, a
    recorded hook differs from `hook_name`, no hook is known, their d_in differ,
    or one of them is a transcoder.
    """
    a, b = _inspect_pair(sae_a, sae_b, names, (None, None))
    return _check_handles(a, b, hook_name)


def _check_model_hook(model: Any, hook_name: str, d_in: int) -> None:
    from gsx.loading import hook_size

    model_name = getattr(model.cfg, "model_name", "the model")
    if hook_name not in model.hook_dict:
        raise ComparisonError(f"model {model_name} has no hook {hook_name!r}; the SAEs cannot run on it")
    width = hook_size(model, hook_name)
    if width is not None and width != d_in:
        raise ComparisonError(
            f"the SAEs take d_in {d_in} at {hook_name!r}, but model {model_name} has {width} dimensions there; "
            "load the model the SAEs were trained on"
        )


# ---------------------------------------------------------------------------
# The comparison


@dataclass
class ComparisonResult:
    """Everything `compare_saes` measured; `to_dict` gives the stable keys listed in the module docstring."""

    a: ComparedSAE
    b: ComparedSAE
    hook_name: str
    model_name: str | None
    decoder_matching: DecoderMatching
    n_sequences: int
    context_size: int
    include_special_tokens: bool
    versions: dict[str, str] = field(default_factory=library_versions)

    @property
    def names(self) -> tuple[str, str]:
        return self.a.name, self.b.name

    def differences(self) -> dict[str, float | None]:
        """B's value minus A's for each of DIFFERENCE_KEYS (None where either is missing)."""
        metrics_a, metrics_b = self.a.metrics, self.b.metrics
        out: dict[str, float | None] = {}
        for key in DIFFERENCE_KEYS:
            value_a, value_b = metrics_a.get(key), metrics_b.get(key)
            out[key] = None if value_a is None or value_b is None else float(value_b) - float(value_a)
        return out

    def to_dict(self) -> dict[str, Any]:
        metrics_a = self.a.metrics
        return {
            "gsx_comparison_version": COMPARISON_VERSION,
            "model": self.model_name,
            "hook_name": self.hook_name,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "difference_b_minus_a": {key: _finite_or_none(value) for key, value in self.differences().items()},
            "decoder_matching": self.decoder_matching.to_dict(),
            "tokens": {
                "n_sequences": self.n_sequences,
                "context_size": self.context_size,
                "n_tokens": metrics_a["n_tokens"],
                "n_loss_tokens": metrics_a["n_loss_tokens"],
                "include_special_tokens": self.include_special_tokens,
            },
            "versions": dict(self.versions),
        }


@torch.no_grad()
def compare_saes(
    model: Any,
    sae_a: Any,
    sae_b: Any,
    hook_name: str | None,
    tokens: Tensor,
    *,
    special_ids: list[int],
    names: tuple[str, str] = ("A", "B"),
    sources: tuple[str | None, str | None] = (None, None),
    batch_size: int = 8,
    ce_chunk_tokens: int = 512,
    dense_threshold: float = 0.1,
    include_special_tokens: bool = False,
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: bool = False,
) -> ComparisonResult:
    """Evaluate SAEs A and B at `hook_name` on the same `tokens [n_seq, pos]` and match their decoders.

    Each SAE is a `gsx.loading.LoadedSAE`, a SAELens SAE or a gsx scratch
    `JumpReLUSAE`, on the model's device. `hook_name=None` takes the hook the SAEs
    record. `sources` labels where each SAE came from in the report (a LoadedSAE
    supplies its own). The evaluation options are those of `evaluate_sae`, and
    `block_size` is that of `match_decoders`.

    Raises ComparisonError (a ValueError) when the SAEs read different hooks or
    d_in, a hook differs from `hook_name`, one is a transcoder, or the model lacks
    the hook or has another width there. Both checks run before any model pass.
    """
    a, b = _inspect_pair(sae_a, sae_b, names, sources)
    resolved_hook = _check_handles(a, b, hook_name)
    _check_model_hook(model, resolved_hook, a.summary.d_in)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(f"invalid tokens of shape {tuple(tokens.shape)}: expected [n_sequences >= 1, positions >= 2]")

    for handle in (a, b):
        logger.info("evaluating %s (%s) at %s on %d sequences", handle.summary.name, handle.summary.kind,
                    resolved_hook, tokens.shape[0])
        # evaluate_sae switches a SAELens hook_z SAE to flat inputs for the call.
        handle.summary.evaluation = evaluate_sae(
            model,
            handle.module,
            resolved_hook,
            tokens,
            special_ids=special_ids,
            batch_size=batch_size,
            ce_chunk_tokens=ce_chunk_tokens,
            dense_threshold=dense_threshold,
            include_special_tokens=include_special_tokens,
            compute_ce=True,
            progress=progress,
        )

    logger.info("matching decoder directions (%d x %d latents)", a.summary.d_sae, b.summary.d_sae)
    matching = match_decoders(a.module.W_dec, b.module.W_dec, block_size=block_size)
    return ComparisonResult(
        a=a.summary,
        b=b.summary,
        hook_name=resolved_hook,
        model_name=getattr(model.cfg, "model_name", None),
        decoder_matching=matching,
        n_sequences=int(tokens.shape[0]),
        context_size=int(tokens.shape[1]),
        include_special_tokens=include_special_tokens,
    )


# ---------------------------------------------------------------------------
# Reports

# (label, metrics key, digits) of the side-by-side rows.
_TABLE_ROWS = (
    ("L0 (active latents per token)", "l0", 4),
    ("explained variance (1 - FVU)", "explained_variance", 4),
    ("FVU", "fvu", 4),
    ("MSE (sum over d_in, mean over tokens)", "mse", 4),
    ("cosine similarity x, x_hat", "cosine_similarity", 4),
    ("dead fraction (never fired)", "dead_fraction", 4),
    ("CE loss clean (nats)", "ce_loss_clean", 5),
    ("CE loss with SAE spliced in", "ce_loss_spliced", 5),
    ("delta CE loss (spliced - clean)", "ce_loss_delta", 4),
    ("fraction of CE loss recovered", "ce_loss_recovered", 4),
    ("KL(clean ‖ spliced)", "kl_div_spliced", 4),
)


def _format_value(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _format_difference(value: float | None, digits: int = 4) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.{digits}g}"


def comparison_rows(result: ComparisonResult) -> list[tuple[str, str, str, str]]:
    """Return the side-by-side rows (metric, A, B, B - A) shown by the CLI and the Markdown report."""
    metrics_a, metrics_b = result.a.metrics, result.b.metrics
    differences = result.differences()
    rows = []
    for label, key, digits in _TABLE_ROWS:
        rows.append(
            (label, _format_value(metrics_a[key], digits), _format_value(metrics_b[key], digits),
             _format_difference(differences[key], digits))
        )
    rows.append(
        ("dead latents", f"{metrics_a['n_dead']} of {result.a.d_sae}", f"{metrics_b['n_dead']} of {result.b.d_sae}", "")
    )
    return rows


def matching_rows(result: ComparisonResult) -> list[tuple[str, str, str, str, str, str]]:
    """Return the decoder-matching rows (direction, mean, median, above 0.7, above 0.9, zero-norm rows)."""
    name_a, name_b = result.names
    rows = []
    for label, direction in (
        (f"{name_a} -> {name_b}", result.decoder_matching.a_to_b),
        (f"{name_b} -> {name_a}", result.decoder_matching.b_to_a),
    ):
        fractions = direction.fraction_above
        rows.append(
            (
                label,
                _format_value(direction.mean_max_cosine),
                _format_value(direction.median_max_cosine),
                *(_format_value(fractions[threshold]) for threshold in direction.thresholds),
                f"{direction.n_zero_norm} of {direction.n_latents}",
            )
        )
    return rows


def format_comparison_table(result: ComparisonResult) -> str:
    """Return a plain-text side-by-side table of the metrics and the decoder matching, for a terminal."""
    name_a, name_b = result.names
    header = ("metric", name_a, name_b, f"{name_b} - {name_a}")
    lines = [
        f"hook {result.hook_name} of {result.model_name}, {result.a.metrics['n_tokens']} tokens "
        f"from {result.n_sequences} held-out sequences",
        "",
        *_aligned([header, *comparison_rows(result)]),
        "",
        "decoder directions: max cosine of each latent to the other SAE's latents",
        *_aligned([_matching_header(result), *matching_rows(result)]),
    ]
    return "\n".join(lines)


def _matching_header(result: ComparisonResult) -> tuple[str, ...]:
    thresholds = result.decoder_matching.a_to_b.thresholds
    return ("direction", "mean", "median", *(f"above {t:g}" for t in thresholds), "zero-norm rows")


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def render_comparison_markdown(result: ComparisonResult) -> str:
    """Render a comparison as Markdown."""
    name_a, name_b = result.names
    lines = [
        f"# SAE comparison: {name_a} vs {name_b}",
        "",
        f"Both SAEs read `{result.hook_name}` of {result.model_name}. They are evaluated on the same "
        f"{result.a.metrics['n_tokens']:,} tokens of {result.n_sequences} held-out sequences of "
        f"{result.context_size} tokens"
        + ("." if result.include_special_tokens else ", BOS / EOS / PAD positions excluded."),
        "",
        "| | source | kind | d_in | d_sae |",
        "|---|---|---|---|---|",
    ]
    for sae in (result.a, result.b):
        lines.append(f"| {sae.name} | `{sae.source or 'in memory'}` | {sae.kind} | {sae.d_in} | {sae.d_sae} |")

    lines += [
        "",
        "## Held-out metrics",
        "",
        f"| metric | {name_a} | {name_b} | {name_b} − {name_a} |",
        "|---|---|---|---|",
    ]
    for label, value_a, value_b, difference in comparison_rows(result):
        lines.append(f"| {label} | {value_a} | {value_b} | {difference} |")

    header = _matching_header(result)
    lines += [
        "",
        "## Decoder directions",
        "",
        "For each latent, the max cosine similarity of its decoder row to the decoder rows of the other SAE. "
        "A latent is matched above a threshold when that max cosine is strictly greater. Mean and median "
        "cover the latents with a non-zero decoder row, and latents whose decoder row has zero norm count as unmatched.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in matching_rows(result)]

    lines += ["", "## Library versions", ""]
    lines += [f"- {name} {version}" for name, version in result.versions.items()]
    return "\n".join(lines) + "\n"


def write_comparison_report(result: ComparisonResult, out_dir: str | Path, stem: str = "comparison") -> tuple[Path, Path]:
    """Write `<stem>.md` and `<stem>.json` into `out_dir` (created if needed), each atomically.

    Returns (md_path, json_path).
    """
    out_dir = Path(out_dir)
    # Both texts are built before either file is written, so a rendering error writes nothing.
    report = result.to_dict()
    markdown = render_comparison_markdown(result)
    json_path = write_json_atomic(out_dir / f"{stem}.json", report)
    md_path = write_text_atomic(out_dir / f"{stem}.md", markdown)
    return md_path, json_path


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _threshold_key(threshold: float) -> str:
    return f"{threshold:g}"
