"""Run recipes: the typed schema, YAML loading, `--set` overrides and validation.

A recipe is a YAML file with the sections `run`, `model`, `data`, `sae`,
`training` and `eval`. Every key maps to a dataclass field below. Unknown keys,
wrong types and out-of-range values are rejected before any model loads, with one
`RecipeError` that names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gsx.models import PACKAGED_MODEL_NAME, ModelSpec


class RecipeError(ValueError):
    """A recipe key has an invalid value; the message names the key and the fix."""


# Layer count and residual width of models built into gsx, so a
# recipe's hook can be checked before minutes of loading. Other models are
# checked against their config.json when it is local, else after loading.
KNOWN_MODELS: dict[str, tuple[int, int]] = {
    "google/gemma-3-270m": (18, 640),
    "google/gemma-3-270m-it": (18, 640),
    "google/gemma-3-1b-pt": (26, 1152),
    "google/gemma-3-1b-it": (26, 1152),
    "gsx/random-tiny": (2, 64),
}

HOOK_PATTERN = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_mlp_out|hook_attn_out)$")


@dataclass
class RunConfig:
    """Output location and name of the run."""

    name: str = "gemma3-270m-l5"
    """Run name; outputs go to `<output_dir>/<name>/`."""
    output_dir: str = "runs"
    """Parent folder of run folders (relative paths are relative to the working directory)."""
    seed: int = 42
    """Seed for SAE initialisation, data shuffling and the held-out split."""
    overwrite: bool = False
    """Replace an existing run folder of the same name instead of stopping."""


@dataclass
class DataConfig:
    """The text corpus, its tokenization and the held-out split."""

    corpus: str = "bbc-news"
    """Packaged corpus name (`bbc-news`), `files` (local text files) or `hf` (a Hugging Face dataset)."""
    path: str | None = None
    """For `files`: a file, folder or glob of .txt / .jsonl / .parquet files. For `hf`: the dataset name."""
    text_column: str = "text"
    """Column holding the text in .jsonl / .parquet files and Hugging Face datasets."""
    hf_split: str = "train"
    """Split to stream for `hf` corpora."""
    max_documents: int | None = None
    """Use at most this many documents after deduplication (None: all)."""
    min_words: int = 20
    """Drop documents with fewer words (near-empty texts)."""
    context_size: int = 128
    """Tokens per sequence, the single BOS included."""
    eval_fraction: float = 0.05
    """Fraction of documents held out for evaluation and never trained on."""


@dataclass
class SAEConfig:
    """The JumpReLU SAE and the hook it reads."""

    hook_name: str = "blocks.5.hook_resid_post"
    """TransformerLens hook whose activations the SAE reconstructs."""
    d_sae: int = 2048
    """Number of latents."""
    jumprelu_init_threshold: float = 0.1
    """Initial threshold of every latent (in normalised activation units when normalisation is on)."""
    jumprelu_bandwidth: float = 0.05
    """Width ε of the rectangle kernel in the straight-through estimator."""
    jumprelu_sparsity_loss_mode: Literal["step", "tanh", "quadratic"] = "step"
    """Sparsity penalty: `step` (L0 with straight-through gradients), `tanh`, or `quadratic` (towards `target_l0`)."""
    jumprelu_tanh_scale: float = 4.0
    """Scale inside tanh for the `tanh` sparsity mode."""
    target_l0: float | None = None
    """Target L0 for the `quadratic` sparsity mode (required there)."""
    l0_coefficient: float = 0.5
    """Weight of the sparsity penalty."""
    l0_warm_up_steps: int = 0
    """Steps over which the sparsity coefficient ramps linearly from 0."""
    pre_act_loss_coefficient: float | None = None
    """Weight of SAELens's pre-activation loss for dead latents (None: off)."""
    normalize_activations: Literal["none", "expected_average_only_in"] = "expected_average_only_in"
    """Scale inputs so their mean squared norm is d_in during training; folded into the weights at the end."""
    apply_b_dec_to_input: bool = False
    """Subtract b_dec from the input before encoding (Gemma Scope does not)."""
    dtype: str = "float32"
    """Dtype of the SAE weights."""


@dataclass
class TrainingConfig:
    """The optimisation: tokens, batch sizes, schedule, checkpoints and logging."""

    trainer: Literal["saelens", "scratch", "both"] = "saelens"
    """`saelens` (SAELens's runner), `scratch` (gsx's reference trainer) or `both` on identical activations."""
    training_tokens: int = 300_000
    """Activation vectors (tokens, special tokens excluded) to train on."""
    train_batch_size_tokens: int = 1024
    """Tokens per optimiser step."""
    lr: float = 5e-3
    """Adam learning rate."""
    adam_beta1: float = 0.9
    """Adam β1."""
    adam_beta2: float = 0.999
    """Adam β2."""
    lr_warm_up_steps: int = 20
    """Steps of linear learning-rate warm-up."""
    lr_decay_steps: int = 60
    """Final steps of linear learning-rate decay to zero (0: constant after warm-up)."""
    checkpoint_every_steps: int = 100
    """Save a checkpoint every this many steps (0: only the final SAE)."""
    log_every_steps: int = 10
    """Refresh the progress bar's loss, L0 and FVU every this many steps."""
    store_batch_size_prompts: int = 16
    """Sequences per model forward pass when harvesting activations."""
    n_batches_in_buffer: int = 64
    """Shuffling-buffer size in units of `data.context_size` tokens (SAELens's `n_batches_in_buffer`)."""
    n_batches_for_norm_estimate: int = 20
    """Training batches used to estimate the activation-normalisation scale."""
    dead_feature_window: int = 200
    """Steps without firing after which a latent counts as dead during training."""
    wandb: bool = False
    """Log to Weights & Biases (needs the network and `wandb login`)."""
    wandb_project: str = "gsx"
    """Weights & Biases project name, when `wandb` is on."""

    @property
    def total_steps(self) -> int:
        return self.training_tokens // self.train_batch_size_tokens


@dataclass
class EvalConfig:
    """The held-out evaluation that ends every run."""

    n_sequences: int = 64
    """Held-out sequences to evaluate on (fewer if the split is smaller)."""
    batch_size: int = 8
    """Sequences per forward pass during evaluation."""
    ce_chunk_tokens: int = 512
    """Positions per chunk when computing CE and KL over the full vocabulary (bounds peak memory)."""
    dense_threshold: float = 0.1
    """A latent firing on more than this fraction of tokens counts as dense."""
    include_special_tokens: bool = False
    """Count BOS / EOS / pad positions in metrics and splice the SAE there too."""
    ce_sequences: int | None = 32
    """Held-out sequences (the first ones) on which CE and KL are computed; None: all `n_sequences`.

    CE and KL cost three forward passes and three unembeddings over the 262,144-token
    vocabulary: about 2.7 s per 128-token sequence on Gemma 3 270M on 2 busy CPU
    cores, against about 0.1 s for the reconstruction metrics.
    """
    top_features: int = 10
    """Latents in each top-feature table of the report (by frequency and by mean activation)."""


@dataclass
class Recipe:
    """A whole run recipe."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def layer(self) -> int:
        return hook_layer(self.sae.hook_name)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------
# Loading


def hook_layer(hook_name: str) -> int:
    """Return the block index of a `blocks.{L}.hook_*` hook name."""
    match = HOOK_PATTERN.match(hook_name)
    if match is None:
        raise RecipeError(
            f"sae.hook_name: {hook_name!r} is not a supported hook; use blocks.{{L}}.hook_resid_post "
            "(or hook_resid_pre, hook_resid_mid, hook_mlp_out, hook_attn_out)"
        )
    return int(match.group(1))


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` checked against the annotation `tp`, or raise RecipeError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except RecipeError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # YAML reads 1e6 as a float; accept whole floats for token counts.
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        # inf and nan would train a NaN SAE and still exit 0.
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise RecipeError(f"{key}: {value!r} is not a valid value; expected a finite {_type_name(tp)}"
                      if tp is float else f"{key}: {value!r} is not a valid value; expected {_type_name(tp)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{prefix or 'recipe'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full_key = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RecipeError(f"{full_key}: unknown key{hint} Allowed keys: {', '.join(fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, full_key)
        else:
            kwargs[key] = _coerce(value, tp, full_key)
    return cls(**kwargs)


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected SECTION.KEY=VALUE, e.g. training.lr=1e-3")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise RecipeError(f"--set {assignment!r}: expected SECTION.KEY=VALUE, e.g. training.lr=1e-3")
    section, key = parts
    value = yaml.safe_load(raw) if raw.strip() else None
    # "1e-3" is a string to YAML 1.1; read it as the number a user means.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    node = data.setdefault(section, {})
    if not isinstance(node, dict):
        raise RecipeError(f"--set {assignment!r}: {section!r} is not a section")
    node[key] = value


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe YAML (or the built-in defaults when `path` is None), apply `--set` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file {str(path)!r} not found; the recipes/ folder has examples")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise RecipeError(f"recipe file {str(path)!r} is not valid YAML: {err}") from err
        if loaded is not None:
            if not isinstance(loaded, dict):
                raise RecipeError(f"recipe file {str(path)!r} must be a mapping of sections, got {type(loaded).__name__}")
            data = loaded
    for assignment in overrides:
        _apply_override(data, assignment)
    recipe = _build(Recipe, data, "")
    validate_recipe(recipe)
    return recipe


# ---------------------------------------------------------------------------
# Validation


def _model_shape(spec: ModelSpec) -> tuple[int, int] | None:
    if spec.source == "random":
        return KNOWN_MODELS["gsx/random-tiny"]
    if spec.name in KNOWN_MODELS:
        return KNOWN_MODELS[spec.name]
    if spec.path and (Path(spec.path) / "config.json").is_file():
        config = json.loads((Path(spec.path) / "config.json").read_text())
        config = config.get("text_config", config)
        if "num_hidden_layers" in config and "hidden_size" in config:
            return int(config["num_hidden_layers"]), int(config["hidden_size"])
    return None


def _require(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise RecipeError(f"{key}: {value!r} is out of range; {allowed}")


def validate_recipe(recipe: Recipe) -> None:
    """Raise RecipeError for the first invalid value; touches no model or data."""
    run, model, data, sae, training, ev = recipe.run, recipe.model, recipe.data, recipe.sae, recipe.training, recipe.eval

    _require(bool(re.fullmatch(r"[A-Za-z0-9._-]+", run.name)), "run.name", run.name, "use letters, digits, '.', '_' and '-'")
    _require(model.source in ("auto", "packaged", "local", "hub", "random"), "model.source", model.source,
             "allowed: auto, packaged, local, hub, random")
    _require(model.dtype in ("float32", "bfloat16", "float16"), "model.dtype", model.dtype, "allowed: float32, bfloat16, float16")
    _require(sae.dtype in ("float32", "bfloat16"), "sae.dtype", sae.dtype, "allowed: float32, bfloat16")
    if model.source == "packaged" and model.name != PACKAGED_MODEL_NAME:
        raise RecipeError(f"model.name: {model.name!r} is not packaged; source 'packaged' provides {PACKAGED_MODEL_NAME} only")

    _require(data.corpus in ("bbc-news", "files", "hf"), "data.corpus", data.corpus, "allowed: bbc-news, files, hf")
    if data.corpus in ("files", "hf") and not data.path:
        raise RecipeError(f"data.path: required when data.corpus is {data.corpus!r} (a file, folder or glob for 'files'; a dataset name for 'hf')")
    _require(data.context_size >= 8, "data.context_size", data.context_size, "must be at least 8 tokens")
    _require(0.0 < data.eval_fraction < 1.0, "data.eval_fraction", data.eval_fraction, "must be between 0 and 1 (exclusive)")
    _require(data.min_words >= 0, "data.min_words", data.min_words, "must be >= 0")
    _require(data.max_documents is None or data.max_documents >= 2, "data.max_documents", data.max_documents, "must be >= 2 or null")

    layer = hook_layer(sae.hook_name)
    shape = _model_shape(model)
    if shape is not None:
        n_layers, _ = shape
        _require(layer < n_layers, "sae.hook_name", sae.hook_name,
                 f"{model.name} has {n_layers} layers, so the block index must be 0..{n_layers - 1}")
    _require(sae.d_sae > 0, "sae.d_sae", sae.d_sae, "must be a positive number of latents")
    _require(sae.jumprelu_init_threshold > 0, "sae.jumprelu_init_threshold", sae.jumprelu_init_threshold, "must be > 0")
    _require(sae.jumprelu_bandwidth > 0, "sae.jumprelu_bandwidth", sae.jumprelu_bandwidth, "must be > 0")
    _require(sae.l0_coefficient >= 0, "sae.l0_coefficient", sae.l0_coefficient, "must be >= 0")
    _require(sae.l0_warm_up_steps >= 0, "sae.l0_warm_up_steps", sae.l0_warm_up_steps, "must be >= 0")
    if sae.jumprelu_sparsity_loss_mode == "quadratic":
        _require(sae.target_l0 is not None and sae.target_l0 > 0, "sae.target_l0", sae.target_l0,
                 "the quadratic sparsity mode needs a positive target_l0")

    _require(training.lr > 0, "training.lr", training.lr, "must be a positive learning rate")
    _require(training.train_batch_size_tokens > 0, "training.train_batch_size_tokens", training.train_batch_size_tokens, "must be > 0")
    _require(training.training_tokens >= training.train_batch_size_tokens, "training.training_tokens", training.training_tokens,
             f"must be at least one batch ({training.train_batch_size_tokens} tokens)")
    steps = training.total_steps
    _require(training.lr_warm_up_steps + training.lr_decay_steps <= steps, "training.lr_warm_up_steps",
             training.lr_warm_up_steps, f"warm-up plus decay steps ({training.lr_warm_up_steps} + {training.lr_decay_steps}) "
             f"must fit in the run's {steps} steps")
    _require(0 <= training.checkpoint_every_steps <= steps, "training.checkpoint_every_steps", training.checkpoint_every_steps,
             f"must be between 0 (off) and the run's {steps} steps")
    _require(training.log_every_steps > 0, "training.log_every_steps", training.log_every_steps, "must be > 0")
    _require(training.store_batch_size_prompts > 0, "training.store_batch_size_prompts", training.store_batch_size_prompts, "must be > 0")
    _require(training.n_batches_in_buffer >= 2, "training.n_batches_in_buffer", training.n_batches_in_buffer, "must be >= 2")
    buffer_tokens = training.n_batches_in_buffer * data.context_size
    _require(buffer_tokens >= training.train_batch_size_tokens, "training.n_batches_in_buffer", training.n_batches_in_buffer,
             f"the shuffling buffer ({training.n_batches_in_buffer} x data.context_size {data.context_size} = {buffer_tokens} "
             f"tokens) must hold one training batch ({training.train_batch_size_tokens} tokens); raise it to at least "
             f"{-(-training.train_batch_size_tokens // data.context_size)}")
    _require(training.n_batches_for_norm_estimate > 0, "training.n_batches_for_norm_estimate",
             training.n_batches_for_norm_estimate, "must be > 0")
    _require(training.dead_feature_window > 0, "training.dead_feature_window", training.dead_feature_window, "must be > 0")

    _require(ev.n_sequences > 0, "eval.n_sequences", ev.n_sequences, "must be > 0")
    _require(ev.batch_size > 0, "eval.batch_size", ev.batch_size, "must be > 0")
    _require(ev.ce_chunk_tokens > 0, "eval.ce_chunk_tokens", ev.ce_chunk_tokens, "must be > 0")
    _require(ev.ce_sequences is None or ev.ce_sequences > 0, "eval.ce_sequences", ev.ce_sequences, "must be > 0 or null")
    _require(ev.top_features >= 0, "eval.top_features", ev.top_features, "must be >= 0")
    _require(0 < ev.dense_threshold <= 1, "eval.dense_threshold", ev.dense_threshold, "must be in (0, 1]")


def check_recipe_against_model(recipe: Recipe, n_layers: int) -> None:
    """Validate the hook against a loaded model (for models gsx could not check earlier)."""
    layer = recipe.layer
    if layer >= n_layers:
        raise RecipeError(f"sae.hook_name: {recipe.sae.hook_name!r} is out of range; the model has {n_layers} layers (0..{n_layers - 1})")


def dump_recipe_yaml(recipe: Recipe) -> str:
    """Return the resolved recipe as YAML (every key, defaults included)."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
