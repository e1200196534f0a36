"""Write a run's report: `report.json` (stable keys) and `report.md` (the same numbers for people).

report.json keys:
- `gsx_report_version`: format version of this file (1).
- `run`: name, folder, start time (UTC, ISO 8601), wall-clock seconds per phase.
- `model`: name, source, hook, d_in.
- `sae`: source (folder or release id), d_sae, architecture, training hyper-parameters.
- `data`: corpus, documents, duplicates dropped, held-out documents, context size,
  training and evaluation token counts.
- `training`: steps, first and last logged entries of the training log (loss, mse, l0, fvu).
- `eval`: `reconstruction` (n_tokens, l0, fvu, explained_variance, mse,
  cosine_similarity, relative_reconstruction_bias, n_dead, n_dense, d_sae) and
  `splice` (n_loss_tokens, ce_loss_clean, ce_loss_spliced, ce_loss_zero_ablated,
  ce_loss_delta, ce_loss_recovered, kl_div_spliced), as defined in
  `gsx.evaluation.metrics` and `gsx.evaluation.splice`.
- `versions`: installed versions of the libraries that decide the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gsx.io import write_json_atomic, write_text_atomic

REPORT_VERSION = 1


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    """Render a report dictionary as Markdown."""
    run, model, sae, data = report["run"], report["model"], report["sae"], report["data"]
    rec = report["eval"]["reconstruction"]
    splice = report["eval"].get("splice")
    lines = [
        f"# gsx run `{run['name']}`",
        "",
        f"JumpReLU SAE on `{model['hook_name']}` of {model['name']} (d_in {model['d_in']}, d_sae {sae['d_sae']}), "
        f"trained on {data['training_tokens']:,} tokens of {data['corpus']}.",
        "",
        "## Held-out evaluation",
        "",
        f"{rec['n_tokens']:,} held-out tokens from {data['eval_documents']} documents the training never saw; "
        "BOS / EOS / PAD positions excluded.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| L0 (active latents per token) | {_fmt(rec['l0'])} |",
        f"| explained variance (1 − FVU) | {_fmt(rec['explained_variance'])} |",
        f"| FVU | {_fmt(rec['fvu'])} |",
        f"| MSE (sum over d_in, mean over tokens) | {_fmt(rec['mse'])} |",
        f"| cosine similarity x, x̂ | {_fmt(rec['cosine_similarity'])} |",
        f"| relative reconstruction bias | {_fmt(rec['relative_reconstruction_bias'])} |",
        f"| dead latents (never fired) | {rec['n_dead']} of {rec['d_sae']} |",
        f"| dense latents | {rec['n_dense']} |",
    ]
    if splice:
        lines += [
            f"| CE loss clean (nats) | {_fmt(splice['ce_loss_clean'])} |",
            f"| CE loss with SAE spliced in | {_fmt(splice['ce_loss_spliced'])} |",
            f"| CE loss with hook zero-ablated | {_fmt(splice['ce_loss_zero_ablated'])} |",
            f"| delta CE loss | {_fmt(splice['ce_loss_delta'])} |",
            f"| fraction of CE loss recovered | {_fmt(splice['ce_loss_recovered'])} |",
            f"| KL(clean ‖ spliced) | {_fmt(splice['kl_div_spliced'])} |",
        ]
    training = report.get("training")
    if training and training.get("first") and training.get("last"):
        first, last = training["first"], training["last"]
        lines += [
            "",
            "## Training",
            "",
            f"{training['steps']} steps of {sae['train_batch_size_tokens']} tokens, trainer `{sae['trainer']}`.",
            "",
            "| | step | loss | MSE | L0 | FVU |",
            "|---|---|---|---|---|---|",
            f"| first logged | {first['step']} | {_fmt(first['loss'])} | {_fmt(first['mse'])} | {_fmt(first['l0'])} | {_fmt(first['fvu'])} |",
            f"| last logged | {last['step']} | {_fmt(last['loss'])} | {_fmt(last['mse'])} | {_fmt(last['l0'])} | {_fmt(last['fvu'])} |",
            "",
            "The training-time numbers are on normalised activations of the current batch; "
            "the table above is the held-out evaluation of the final SAE.",
        ]
    lines += ["", "## Run", ""]
    lines += [f"- {key}: {_fmt(value)}" for key, value in run.items()]
    lines += [f"- SAE files: `{sae['path']}`"]
    lines += ["", "## Library versions", ""]
    lines += [f"- {name} {version}" for name, version in report["versions"].items()]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write `report.json` and `report.md` into `run_dir` atomically; return both paths."""
    report = {"gsx_report_version": REPORT_VERSION, **report}
    json_path = write_json_atomic(run_dir / "report.json", report)
    md_path = write_text_atomic(run_dir / "report.md", render_markdown(report))
    return json_path, md_path
