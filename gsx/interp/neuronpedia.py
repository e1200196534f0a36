"""Export sae-dashboard data in Neuronpedia's dashboard batch format.

The JSON is what sae-dashboard 0.8.0's `NeuronpediaRunner` writes per batch
(``batch-N.json``, built by `NeuronpediaConverter.convert_to_np_json` and the
classes in ``sae_dashboard/neuronpedia/neuronpedia_dashboard.py``)::

    {
      "model_id": "gemma-3-270m", "layer": 5, "sae_set": "...", "sae_id_suffix": null,
      "features": [
        {
          "feature_index": 123,
          "neuron_alignment_indices" / "_values" / "_l1": residual dimensions most aligned with the decoder row,
          "correlated_neurons_indices" / "_l1" / "_pearson": residual dimensions most correlated with the activation,
          "correlated_features_indices" / "_l1" / "_pearson": (listed features only) most correlated features,
          "pos_str", "pos_values", "neg_str", "neg_values": tokens whose logits the decoder row raises / lowers most,
          "frac_nonzero": fraction of counted positions where the feature fires,
          "freq_hist_data_bar_values" / "_heights": histogram of the non-zero activations (bin centres, counts),
          "logits_hist_data_bar_values" / "_heights": histogram of the decoder row's logit effects,
          "n_prompts_total", "n_tokens_in_prompt", "dataset": the token sample,
          "decoder_weights_dist": [] (filled only for attention SAEs),
          "activations": [
            {"bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"}, ...
          ],
          "vector": []
        }, ...
      ]
    }

Each activation is one example window: "TOP ACTIVATIONS" examples have
``bin_min`` -1 and ``bin_max`` the feature's max; quantile ("INTERVAL")
examples carry the interval and the fraction of activations in it.

gsx differs from `convert_to_np_json` in one field. sae-dashboard's runner
shows whole prompts, and the converter sets ``qualifying_token_index`` to the
qualifying position minus 1. gsx exports the windows the HTML page shows
(5 tokens either side by default), so it sets ``qualifying_token_index`` to the
index of the qualifying token within ``tokens``.

Token strings are the tokenizer's vocabulary entries with sae-dashboard's
`HTML_ANOMALIES` replacements, as `NeuronpediaRunner.get_vocab_dict` makes
them, plus SentencePiece's "▁" written like GPT-2's "Ġ" (as ``&nbsp;``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gsx.interp.dashboard import SENTENCEPIECE_SPACE
from gsx.io import write_json_atomic

if TYPE_CHECKING:
    from sae_dashboard.sae_vis_data import SaeVisData

logger = logging.getLogger(__name__)

OUT_OF_RANGE_TOKEN = "<|outofrange|>"


def neuronpedia_vocab(tokenizer: Any, d_vocab: int) -> dict[int, str]:
    """Map token ids to display strings the way sae-dashboard's NeuronpediaRunner does, plus "▁"."""
    from sae_dashboard.utils_fns import HTML_ANOMALIES

    replacements = {**HTML_ANOMALIES, SENTENCEPIECE_SPACE: "&nbsp;"}
    vocab: dict[int, str] = {}
    for text, token_id in tokenizer.get_vocab().items():
        for old, new in replacements.items():
            text = text.replace(old, new)
        vocab[int(token_id)] = text
    # The model's vocabulary can be larger than the tokenizer's (padding rows).
    for token_id in range(d_vocab):
        vocab.setdefault(token_id, OUT_OF_RANGE_TOKEN)
    return vocab


def model_id_for(model_name: str) -> str:
    """Return Neuronpedia's model id for a Hugging Face name: the part after the owner, lower case."""
    return model_name.split("/")[-1].lower()


def to_neuronpedia(
    vis_data: SaeVisData,
    model: Any,
    *,
    model_id: str,
    layer: int,
    sae_set: str,
    dataset: str = "",
    n_prompts_total: int = 0,
    n_tokens_in_prompt: int = 0,
) -> dict[str, Any]:
    """Convert `vis_data` to a Neuronpedia batch (a JSON-ready dict, format in the module docstring)."""
    from sae_dashboard.neuronpedia.neuronpedia_converter import NeuronpediaConverter
    from sae_dashboard.neuronpedia.neuronpedia_runner_config import NeuronpediaRunnerConfig

    np_cfg = NeuronpediaRunnerConfig(
        sae_set=sae_set,
        sae_path="",
        outputs_dir="",
        huggingface_dataset_path=dataset,
        n_prompts_total=n_prompts_total,
        n_tokens_in_prompt=n_tokens_in_prompt,
        model_id=model_id,
        layer=layer,
    )
    vocab = neuronpedia_vocab(model.tokenizer, int(model.cfg.d_vocab))
    batch = json.loads(NeuronpediaConverter.convert_to_np_json(model, vis_data, np_cfg, vocab))

    buffer = vis_data.cfg.feature_centric_layout.seq_cfg.buffer
    for feature in batch["features"]:
        sequences = _exported_sequences(vis_data.feature_data_dict[feature["feature_index"]])
        if len(sequences) != len(feature["activations"]):
            raise RuntimeError(
                f"feature {feature['feature_index']}: {len(feature['activations'])} exported activations but "
                f"{len(sequences)} sequences; the installed sae-dashboard's converter differs from 0.8.0"
            )
        for activation, sequence in zip(feature["activations"], sequences):
            activation["qualifying_token_index"] = _index_in_window(sequence, buffer)
    return batch


def _exported_sequences(feature_data: Any) -> list[Any]:
    """Return the sequences NeuronpediaConverter exports for a feature, in its order."""
    return [
        sequence
        for group in feature_data.sequence_data.seq_group_data
        for sequence in group.seq_data
        if sequence.top_token_ids is not None
        and sequence.bottom_token_ids is not None
        and sequence.top_logits is not None
        and sequence.bottom_logits is not None
    ]


def _index_in_window(sequence: Any, buffer: tuple[int, int] | None) -> int:
    """Return the qualifying token's index within the example's tokens.

    With a buffer (before, after) the example is the window from `before`
    tokens ahead of the qualifying token, so the index is `before`. Without a
    buffer the example is the whole sequence.
    """
    if buffer is None:
        return int(sequence.qualifying_token_index)
    return int(buffer[0])


def write_neuronpedia_json(
    vis_data: SaeVisData,
    model: Any,
    path: str | Path,
    **fields: Any,
) -> Path:
    """Write `to_neuronpedia(vis_data, model, **fields)` to `path` and return the path."""
    batch = to_neuronpedia(vis_data, model, **fields)
    write_json_atomic(path, batch)
    logger.info("wrote %s (%d features)", path, len(batch["features"]))
    return Path(path)
