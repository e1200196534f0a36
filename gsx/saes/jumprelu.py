"""Reference JumpReLU sparse autoencoder in plain PyTorch, the model behind Gemma Scope.

The model is written out step by step so that it can be read next to the JumpReLU
paper (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity
with JumpReLU Sparse Autoencoders") and checked against SAELens, which the tests do
through `gsx.saes.convert`. It imports nothing from SAELens.

Checkpoint format ("gsx-scratch", format_version 1), one folder:

- `sae_weights.safetensors`: tensors `W_enc [d_in, d_sae]`, `b_enc [d_sae]`,
  `W_dec [d_sae, d_out]`, `b_dec [d_out]`, `threshold [d_sae]` and, for a model with
  an affine skip connection, `W_skip [d_in, d_out]`. The threshold is always float32.
  The other tensors are stored in the compute dtype.
- `cfg.json`: `format` ("gsx-scratch"), `format_version`, `architecture` ("jumprelu"),
  `d_in`, `d_sae`, `d_out`, `apply_b_dec_to_input`, `affine_skip` and `dtype` (the
  compute dtype name, such as "float32"). Then the provenance fields `hook_name`,
  `hook_name_out` and `model_name` (null when unknown), `metadata` (a free JSON object,
  for example the training configuration) and `library_versions` (from
  `gsx.io.library_versions`).

Each file is written atomically. `sae_weights.safetensors` is written before
`cfg.json`, and `load` checks the tensor shapes against `cfg.json`, so a save that was
interrupted between the two files raises on load instead of mixing two models.
Loading reads only safetensors and JSON and never unpickles.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from gsx.io import atomic_path, library_versions, write_json_atomic

CHECKPOINT_FORMAT = "gsx-scratch"
CHECKPOINT_FORMAT_VERSION = 1
WEIGHTS_FILENAME = "sae_weights.safetensors"
CONFIG_FILENAME = "cfg.json"

REQUIRED_TENSOR_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
OPTIONAL_TENSOR_KEYS = ("W_skip",)


@dataclass(frozen=True)
class JumpReLUSAEConfig:
    """Shape, options and provenance of a `JumpReLUSAE`.

    `d_out` equals `d_in` for an SAE and may differ for a transcoder. The provenance
    fields are informational: `hook_name` is the TransformerLens hook that the input is
    read from, `hook_name_out` the hook that a transcoder predicts, `model_name` the
    model, and `dtype` the compute dtype name (such as "float32").
    """

    d_in: int
    d_sae: int
    d_out: int
    apply_b_dec_to_input: bool = False
    affine_skip: bool = False
    hook_name: str | None = None
    hook_name_out: str | None = None
    model_name: str | None = None
    dtype: str = "float32"


def dtype_name(dtype: torch.dtype) -> str:
    """Return the short name of a torch dtype, e.g. "bfloat16" for torch.bfloat16."""
    return str(dtype).removeprefix("torch.")


def parse_float_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Return the floating-point torch dtype named by `dtype` ("float32" or torch.float32).

    Raises ValueError for an unknown name or a non-floating dtype.
    """
    if isinstance(dtype, str):
        candidate = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(candidate, torch.dtype):
            raise ValueError(f"invalid dtype {dtype!r}: expected a torch floating dtype name such as 'float32'")
        dtype = candidate
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"invalid dtype {dtype!r}: expected a floating dtype such as torch.float32")
    return dtype


class JumpReLUSAE(nn.Module):
    r"""JumpReLU sparse autoencoder (or transcoder) as used by Gemma Scope.

    For an input activation x of width d_in:

        pre(x)  = (x - b_dec) @ W_enc + b_enc      if apply_b_dec_to_input
                = x @ W_enc + b_enc                otherwise           [d_sae]
        f_i(x)  = pre_i(x) * H(pre_i(x) - threshold_i)                 [d_sae]
        x_hat   = f(x) @ W_dec + b_dec  (+ x @ W_skip if affine_skip)  [d_out]

    H is the Heaviside step with H(0) = 0: a latent fires only where its
    pre-activation is strictly greater than its threshold. A pre-activation equal to
    the threshold gives f_i = 0 and does not count in L0 = sum_i H(pre_i - threshold_i).
    The threshold is non-negative, so every active latent is positive, which makes
    this the same function as SAELens's `relu(pre) * H(pre - threshold)`.

    `W_skip` is the affine skip connection of Gemma Scope 2 transcoders, stored as
    Gemma Scope 2 stores `affine_skip_connection`: shape [d_in, d_out], applied as
    `x @ W_skip`. SAELens stores the transpose.

    `threshold` is kept in float32 whatever the compute dtype, because Adam's
    lr-sized steps on a threshold of order 1 round away in bfloat16. It is cast to
    the pre-activation dtype for the comparison. Parameters start at zero: fill them
    with `from_tensors`, `load`, or `gsx.training.scratch.initialize_like_saelens_`.
    """

    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    threshold: nn.Parameter
    W_skip: nn.Parameter | None

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        d_out: int | None = None,
        apply_b_dec_to_input: bool = False,
        affine_skip: bool = False,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
        hook_name: str | None = None,
        hook_name_out: str | None = None,
        model_name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if d_out is None:
            d_out = d_in
        for name, value in (("d_in", d_in), ("d_sae", d_sae), ("d_out", d_out)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"invalid {name}={value!r}: expected a positive int")
        if apply_b_dec_to_input and d_out != d_in:
            raise ValueError(
                f"invalid apply_b_dec_to_input=True with d_in={d_in} != d_out={d_out}: "
                "b_dec can only be subtracted from the input when d_out equals d_in"
            )
        compute_dtype = parse_float_dtype(dtype)

        self.d_in = d_in
        self.d_sae = d_sae
        self.d_out = d_out
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.affine_skip = bool(affine_skip)
        self.hook_name = hook_name
        self.hook_name_out = hook_name_out
        self.model_name = model_name
        self.metadata: dict[str, Any] = dict(metadata or {})

        def zeros(*shape: int, dtype: torch.dtype = compute_dtype) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape, dtype=dtype, device=device))

        # Registered in the order of SAELens's JumpReLUTrainingSAE. Gradient clipping
        # sums the parameter norms in this order, so the order keeps training bit-identical.
        self.b_dec = zeros(d_out)
        self.W_dec = zeros(d_sae, d_out)
        self.W_enc = zeros(d_in, d_sae)
        self.b_enc = zeros(d_sae)
        self.threshold = zeros(d_sae, dtype=torch.float32)
        if self.affine_skip:
            self.W_skip = zeros(d_in, d_out)
        else:
            self.register_parameter("W_skip", None)

    # ------------------------------------------------------------------ properties

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype (the dtype of W_enc)."""
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.W_enc.device

    @property
    def cfg(self) -> JumpReLUSAEConfig:
        """Current shape, options and provenance, as a new frozen dataclass."""
        return JumpReLUSAEConfig(
            d_in=self.d_in,
            d_sae=self.d_sae,
            d_out=self.d_out,
            apply_b_dec_to_input=self.apply_b_dec_to_input,
            affine_skip=self.affine_skip,
            hook_name=self.hook_name,
            hook_name_out=self.hook_name_out,
            model_name=self.model_name,
            dtype=dtype_name(self.dtype),
        )

    def _apply(self, fn: Any, recurse: bool = True) -> JumpReLUSAE:
        # nn.Module.to(dtype), .half() and friends cast every floating parameter;
        # restore the float32 threshold afterwards.
        super()._apply(fn, recurse)
        if self.threshold.dtype != torch.float32:
            self.threshold.data = self.threshold.data.float()
        return self

    # ------------------------------------------------------------------ forward

    def compute_pre_activations(self, x: Tensor) -> Tensor:
        """Compute the encoder pre-activations `pre(x)`.

        x: [..., d_in], cast to the compute dtype. Returns [..., d_sae].
        """
        self._check_input_width(x)
        x = x.to(self.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre_activations: Tensor) -> Tensor:
        """Apply the JumpReLU: keep a pre-activation where it is strictly above its threshold, else 0.

        pre_activations: [..., d_sae]. Returns [..., d_sae] in the same dtype.
        """
        threshold = self.threshold.to(pre_activations.dtype)
        return torch.where(pre_activations > threshold, pre_activations, torch.zeros_like(pre_activations))

    def encode(self, x: Tensor) -> Tensor:
        """Encode activations into latent activations `f(x)`.

        x: [..., d_in]. Returns [..., d_sae], zero wherever pre <= threshold.
        """
        return self.activate(self.compute_pre_activations(x))

    def decode(self, features: Tensor) -> Tensor:
        """Decode latent activations: `features @ W_dec + b_dec` (without the skip term).

        features: [..., d_sae]. Returns [..., d_out].
        """
        return features.to(self.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct (SAE) or predict (transcoder) the output activation.

        x: [..., d_in]. Returns [..., d_out], including `x @ W_skip` when affine_skip is on.
        """
        reconstruction = self.decode(self.encode(x))
        if self.W_skip is not None:
            reconstruction = reconstruction + x.to(self.dtype) @ self.W_skip
        return reconstruction

    def _check_input_width(self, x: Tensor) -> None:
        if x.ndim == 0 or x.shape[-1] != self.d_in:
            raise ValueError(f"invalid input shape {tuple(x.shape)}: the last dimension must be d_in={self.d_in}")

    # ------------------------------------------------------------------ folding

    @torch.no_grad()
    def fold_activation_norm_scaling_factor_(self, scaling_factor: float) -> None:
        """Fold a scalar activation normalisation into the weights, in place.

        A model trained on `scaling_factor * x` to predict `scaling_factor * target`
        becomes a model of the raw `x` and `target` with the same latent activations:
        `W_enc *= s`, `W_dec /= s`, `b_dec /= s`. `b_enc`, `threshold` and `W_skip`
        are unchanged, because the skip term is linear and its input and output carry
        the same scale.
        """
        scale = float(scaling_factor)
        if not scale > 0 or scale == float("inf"):
            raise ValueError(f"invalid scaling_factor={scaling_factor!r}: expected a finite positive number")
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    @torch.no_grad()
    def fold_W_dec_norm_(self) -> Tensor:
        """Rescale decoder rows to unit norm in place and return the old row norms [d_sae].

        Latent i is multiplied by n_i = ||W_dec[i]|| (clamped to at least 1e-8, as
        SAELens does): `W_enc[:, i]`, `b_enc[i]` and `threshold[i]` are multiplied by
        n_i and `W_dec[i]` is divided by it. Since pre_i > threshold_i exactly when
        n_i * pre_i > n_i * threshold_i, the firing pattern, L0 and reconstruction are
        unchanged up to rounding.
        """
        norms = self.W_dec.norm(dim=-1).clamp(min=1e-8)
        self.W_dec.div_(norms.unsqueeze(1))
        self.W_enc.mul_(norms.unsqueeze(0))
        self.b_enc.mul_(norms)
        self.threshold.mul_(norms.to(torch.float32))
        return norms

    # ------------------------------------------------------------------ tensors and files

    def tensors(self) -> dict[str, Tensor]:
        """Return the parameters by checkpoint key (detached views, not copies)."""
        tensors = {key: getattr(self, key).detach() for key in REQUIRED_TENSOR_KEYS}
        if self.W_skip is not None:
            tensors["W_skip"] = self.W_skip.detach()
        return tensors

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], **options: Any) -> JumpReLUSAE:
        """Build a model from the tensors `W_enc, b_enc, W_dec, b_dec, threshold` and optional `W_skip`.

        d_in, d_sae and d_out come from the shapes: `W_enc [d_in, d_sae]`,
        `b_enc [d_sae]`, `W_dec [d_sae, d_out]`, `b_dec [d_out]`, `threshold [d_sae]`,
        `W_skip [d_in, d_out]`. A present `W_skip` turns `affine_skip` on. `options`
        are the keyword arguments of `__init__` (apply_b_dec_to_input, dtype, device,
        provenance). dtype and device default to those of `W_enc`. The tensors are
        copied, so the model never shares storage with the caller.

        Raises ValueError naming the key and shapes when a key is missing or unknown,
        the shapes disagree, a tensor is not floating point, or a threshold is negative.
        """
        keys = set(tensors)
        missing = [key for key in REQUIRED_TENSOR_KEYS if key not in keys]
        unknown = sorted(keys - set(REQUIRED_TENSOR_KEYS) - set(OPTIONAL_TENSOR_KEYS))
        if missing or unknown:
            raise ValueError(
                f"invalid tensor keys: missing {missing}, unknown {unknown}; expected "
                f"{list(REQUIRED_TENSOR_KEYS)} and optionally {list(OPTIONAL_TENSOR_KEYS)}"
            )
        for key, tensor in tensors.items():
            if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
                raise ValueError(f"invalid tensor {key}: expected a floating-point torch.Tensor, got {tensor!r:.80}")

        d_in, d_sae, d_out = _dims_from_shapes(tensors)
        for name, value in (("d_in", d_in), ("d_sae", d_sae), ("d_out", d_out)):
            if name in options and options.pop(name) != value:
                raise ValueError(
                    f"invalid option {name}: it disagrees with the tensor shapes, which give {name}={value}"
                )
        has_skip = "W_skip" in tensors
        if options.pop("affine_skip", has_skip) != has_skip:
            raise ValueError(
                f"invalid option affine_skip: it must match the presence of W_skip (W_skip present: {has_skip})"
            )
        negative = int((tensors["threshold"] < 0).sum())
        if negative:
            raise ValueError(
                f"invalid threshold: {negative} of {d_sae} entries are negative "
                f"(min {float(tensors['threshold'].min()):.6g}); a JumpReLU threshold must be >= 0"
            )

        options.setdefault("dtype", tensors["W_enc"].dtype)
        options.setdefault("device", tensors["W_enc"].device)
        sae = cls(d_in, d_sae, d_out=d_out, affine_skip=has_skip, **options)
        with torch.no_grad():
            for key, tensor in tensors.items():
                getattr(sae, key).copy_(tensor)
        return sae

    def save(self, folder: str | Path) -> Path:
        """Write the model to `folder` in the gsx-scratch format (see the module docstring).

        The folder is created if needed, and other files in it are kept. Returns the folder.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {key: tensor.contiguous() for key, tensor in self.tensors().items()}
        with atomic_path(folder / WEIGHTS_FILENAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        cfg = self.cfg
        write_json_atomic(
            folder / CONFIG_FILENAME,
            {
                "format": CHECKPOINT_FORMAT,
                "format_version": CHECKPOINT_FORMAT_VERSION,
                "architecture": "jumprelu",
                "d_in": cfg.d_in,
                "d_sae": cfg.d_sae,
                "d_out": cfg.d_out,
                "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
                "affine_skip": cfg.affine_skip,
                "dtype": cfg.dtype,
                "hook_name": cfg.hook_name,
                "hook_name_out": cfg.hook_name_out,
                "model_name": cfg.model_name,
                "metadata": self.metadata,
                "library_versions": library_versions(),
            },
        )
        return folder

    @classmethod
    def load(
        cls,
        folder: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
    ) -> JumpReLUSAE:
        """Read a model written by `save`. `dtype` overrides the stored compute dtype.

        Raises FileNotFoundError for a missing file and ValueError for another format
        or tensors whose shapes disagree with `cfg.json`.
        """
        folder = Path(folder)
        cfg_path = folder / CONFIG_FILENAME
        weights_path = folder / WEIGHTS_FILENAME
        for path in (cfg_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"missing checkpoint file {path}: expected a folder written by JumpReLUSAE.save"
                )
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if cfg.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"invalid checkpoint format {cfg.get('format')!r} in {cfg_path}: expected {CHECKPOINT_FORMAT!r}"
            )
        if cfg.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"unsupported format_version {cfg['format_version']} in {cfg_path}: "
                f"this gsx reads up to {CHECKPOINT_FORMAT_VERSION}"
            )

        tensors = load_file(str(weights_path), device=str(device))
        sae = cls.from_tensors(
            tensors,
            apply_b_dec_to_input=cfg["apply_b_dec_to_input"],
            dtype=dtype if dtype is not None else cfg["dtype"],
            device=device,
            hook_name=cfg.get("hook_name"),
            hook_name_out=cfg.get("hook_name_out"),
            model_name=cfg.get("model_name"),
            metadata=cfg.get("metadata") or {},
        )
        for name in ("d_in", "d_sae", "d_out", "affine_skip"):
            if getattr(sae, name) != cfg[name]:
                raise ValueError(
                    f"invalid checkpoint {folder}: {name}={cfg[name]} in {CONFIG_FILENAME} but the weights give "
                    f"{getattr(sae, name)}"
                )
        return sae

    def extra_repr(self) -> str:
        return (
            f"d_in={self.d_in}, d_sae={self.d_sae}, d_out={self.d_out}, "
            f"apply_b_dec_to_input={self.apply_b_dec_to_input}, affine_skip={self.affine_skip}"
        )


def _dims_from_shapes(tensors: Mapping[str, Tensor]) -> tuple[int, int, int]:
    """Return (d_in, d_sae, d_out) from the tensor shapes, raising ValueError when they disagree."""
    shapes = {key: tuple(tensor.shape) for key, tensor in tensors.items()}
    if len(shapes["W_enc"]) != 2 or len(shapes["W_dec"]) != 2:
        raise ValueError(f"invalid shapes: W_enc {shapes['W_enc']} and W_dec {shapes['W_dec']} must both be 2-D")
    d_in, d_sae = shapes["W_enc"]
    d_out = shapes["W_dec"][1]
    expected = {
        "W_enc": (d_in, d_sae),
        "b_enc": (d_sae,),
        "W_dec": (d_sae, d_out),
        "b_dec": (d_out,),
        "threshold": (d_sae,),
        "W_skip": (d_in, d_out),
    }
    for key, shape in shapes.items():
        if shape != expected[key]:
            raise ValueError(
                f"invalid shape for {key}: got {shape}, expected {expected[key]} "
                f"(W_enc {shapes['W_enc']} gives d_in={d_in}, d_sae={d_sae}, "
                f"and W_dec {shapes['W_dec']} gives d_out={d_out})"
            )
    return d_in, d_sae, d_out
