"""Harvest hook activations into memory so two trainers can see identical batches.

`trainer: both` trains SAELens's and the scratch JumpReLU SAE on the same
activations in the same order. The activations are harvested once (the model
stops after the hook's block), special-token positions are dropped, the rows are
shuffled with the run's seed, and each trainer iterates over the same tensor.

Memory: `training_tokens × d_in × 4` bytes (300k tokens × 640 ≈ 0.8 GB for the
default recipe). Recipes far beyond that should use `trainer: saelens`, which
streams activations through SAELens's activation store instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@torch.no_grad()
def harvest_activations(
    model,
    tokens: torch.Tensor,
    hook_name: str,
    n_tokens: int,
    *,
    special_ids: list[int],
    batch_size_prompts: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """Return `[n_tokens, d_in]` float32 activations at `hook_name`, special tokens dropped, rows shuffled.

    Sequences of `tokens` are used in order and reused from the start if the
    corpus has fewer than `n_tokens` non-special positions.
    """
    layer = int(hook_name.split(".")[1])
    special = torch.tensor(special_ids, dtype=torch.long)
    chunks: list[torch.Tensor] = []
    collected = 0
    progress = tqdm(total=n_tokens, desc="Harvesting activations", unit="tok")
    start = 0
    while collected < n_tokens:
        if start >= tokens.shape[0]:
            logger.warning("corpus exhausted after %d tokens; reusing sequences from the start", collected)
            start = 0
        batch = tokens[start : start + batch_size_prompts]
        start += batch_size_prompts
        _, cache = model.run_with_cache(batch, names_filter=[hook_name], stop_at_layer=layer + 1)
        acts = cache[hook_name]
        acts = acts.reshape(acts.shape[0], acts.shape[1], -1)
        keep = ~torch.isin(batch, special)
        rows = acts[keep.to(acts.device)].float().cpu()
        rows = rows[: n_tokens - collected]
        chunks.append(rows)
        collected += rows.shape[0]
        progress.update(rows.shape[0])
    progress.close()
    activations = torch.cat(chunks)
    generator = torch.Generator().manual_seed(seed)
    return activations[torch.randperm(activations.shape[0], generator=generator)]


def iterate_batches(activations: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield `[batch_size, d_in]` batches in order, wrapping around the end forever.

    Both trainers stop after their step count, so the iterator never needs to end.
    """
    n = activations.shape[0]
    position = 0
    while True:
        if position + batch_size <= n:
            yield activations[position : position + batch_size]
            position += batch_size
        else:
            tail = activations[position:]
            position = batch_size - tail.shape[0]
            yield torch.cat([tail, activations[:position]])
