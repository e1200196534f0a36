"""Write an evaluation report: JSON with stable keys, Markdown for people, and PNG plots.

`python -m gsx.run` writes `report.json`, `report.md` and `report_*.png` into the
run folder; `python -m gsx.eval` writes `report_<UTC timestamp>.json` / `.md` /
`_*.png`. Both have the same keys. New keys may be added, and existing keys keep
their meaning within a `gsx_report_version`.

report.json keys:
- `gsx_report_version`: format version of this file (1).
- `kind`: `run` (end of `gsx.run`) or `eval` (`gsx.eval`).
- `run`: name, folder, start time (UTC, ISO 8601), wall-clock seconds per phase;
  for `eval` also the command line.
- `model`: name, source, hook_name (the SAE's input hook), hook_name_out (the hook
  its output replaces), d_in.
- `sae`: path, d_sae and architecture. A `run` report adds the training
  hyper-parameters. An `eval` report adds the source as given, release, sae_id,
  kind and the model the SAE was trained on.
- `data`: corpus, documents, duplicates dropped, held-out documents, context size,
  eval_sequences (reconstruction metrics), ce_sequences (CE and KL), and for `run`
  the training token count.
- `training` (`run` only): steps, first and last logged entries of the training
  log (loss, mse, l0, fvu), checkpoint folders.
- `eval`:
  - `reconstruction`: n_tokens, l0, fvu, explained_variance, mse,
    cosine_similarity, relative_reconstruction_bias, n_dead, n_dense, d_sae,
    dense_threshold (`gsx.evaluation.metrics`);
  - `splice`: n_loss_tokens, ce_loss_clean, ce_loss_spliced, ce_loss_zero_ablated,
    ce_loss_delta, ce_loss_recovered, kl_div_spliced, n_sequences
    (`gsx.evaluation.splice`), or null when CE was not computed;
  - `distributions`: `l0` (quantiles, histogram), `feature_density` (n_dead,
    histogram of log10 firing frequency), `squared_error` (quantiles,
    log10_histogram, n_zero), see `ReconstructionStats.distributions`;
  - `settings`: batch_size, ce_chunk_tokens, dense_threshold,
    include_special_tokens, special_token_ids;
  - `resources`: seconds, rss_before_mib, peak_rss_mib, peak_increase_mib of the
    evaluation (`gsx.evaluation.resources`).
- `features`: top latents by frequency and by mean activation with contexts and
  logit-lens tokens (`gsx.evaluation.features.summarize_features`).
- `plots`: file names (beside the report) of the `feature_density`, `l0` and
  `reconstruction_error` PNGs.
- `versions`: installed versions of the libraries that decide the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gsx.io import write_json_atomic, write_text_atomic
from gsx.reporting.plots import write_plots

REPORT_VERSION = 1

DEFINITIONS = """\
- **L0**: latents with a nonzero activation, per token; the table gives the mean over tokens.
- **FVU**: Σ‖x − x̂‖² / Σ‖x − x̄‖² over all evaluated tokens, x̄ the mean activation of the whole set;
  **explained variance** = 1 − FVU (SAELens's `explained_variance`, not its `explained_variance_legacy`).
- **MSE**: ‖x − x̂‖² summed over the d_in dimensions, mean over tokens.
- **Cosine similarity**: mean over tokens of cos(x, x̂).
- **Relative reconstruction bias**: Σx̂·x̂ / Σx̂·x over all tokens; below 1 means x̂ is shrunk.
  SAELens averages this ratio over batches instead.
- **Dead / dense latents**: never active on the evaluated tokens / active on more than the dense threshold's
  fraction of them. The feature density plot bins log10 of the firing frequency of the other latents.
- **CE losses**: mean next-token cross-entropy (nats) of the model as is, with the SAE's reconstruction in place of
  the hook's activations, and with them set to zero, at the same positions. A prediction counts when neither its input
  token nor its target is BOS / EOS / PAD. SAELens zero-ablates every position, BOS included, so its
  `ce_loss_with_ablation` and `ce_loss_score` differ from gsx's zero-ablated loss and fraction recovered.
- **Fraction of CE recovered**: (CE zero-ablated − CE spliced) / (CE zero-ablated − CE clean).
- **KL**: mean KL(clean ‖ spliced) of the next-token distributions over the same predictions
  (SAELens also counts the last position of each sequence).
- **Top-activating contexts**: tokens around each of a latent's largest activations, the token itself «marked».
- **Promoted / suppressed tokens**: the largest and smallest entries of (d_j ⊙ w) @ W_U, where d_j is the
  residual-stream direction the latent's decoder row writes, w the final norm's weight and W_U the unembedding
  (logits per unit of activation before the final norm divides by the residual's RMS).
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if value is None:
        return "n/a"
    return str(value)


def _escape(text: str) -> str:
    """Make `text` safe inside a Markdown table cell or list item."""
    for raw, escaped in (("\\", "\\\\"), ("|", "\\|"), ("`", "ˋ"), ("*", "\\*"), ("_", "\\_"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(raw, escaped)
    return text


def _token_list(tokens: list[dict[str, Any]], n: int = 5) -> str:
    return ", ".join(f"`{json.dumps(t['token'], ensure_ascii=False).replace('`', 'ˋ').replace('|', '¦')}`" for t in tokens[:n])


def _summary_line(report: dict[str, Any]) -> str:
    model, sae, data = report["model"], report["sae"], report["data"]
    if report.get("kind") == "eval":
        return (f"SAE `{sae.get('source', sae['path'])}` ({sae.get('kind', 'sae')}, d_sae {sae['d_sae']}) on "
                f"`{model['hook_name']}` of {model['name']} (d_in {model['d_in']}), evaluated on held-out text of "
                f"{data['corpus']}.")
    return (f"JumpReLU SAE on `{model['hook_name']}` of {model['name']} (d_in {model['d_in']}, d_sae {sae['d_sae']}), "
            f"trained on {data['training_tokens']:,} tokens of {data['corpus']}.")


def _metrics_lines(report: dict[str, Any]) -> list[str]:
    data = report["data"]
    evaluation = report["eval"]
    rec, splice = evaluation["reconstruction"], evaluation.get("splice")
    settings = evaluation.get("settings", {})
    if settings.get("include_special_tokens"):
        excluded = "special tokens included"
    else:
        excluded = "BOS / EOS / PAD positions excluded"
    if report.get("kind") == "eval":
        documents = f"held-out documents (split seed {data.get('split_seed')})"
    else:
        documents = "documents the training never saw"
    lines = [
        "## Held-out evaluation",
        "",
        f"{rec['n_tokens']:,} held-out tokens of {data['eval_sequences']} sequences from {data['eval_documents']} "
        f"{documents}; {excluded}.",
    ]
    if splice:
        lines[-1] += f" CE and KL on the first {splice.get('n_sequences') or data.get('ce_sequences')} sequences " \
                     f"({splice['n_loss_tokens']:,} predictions)."

    lines += ["", *_metrics_table(rec, splice, settings)]
    resources = evaluation.get("resources")
    if resources:
        peak = resources.get("peak_rss_mib")
        memory = f", peak RSS {peak:,.0f} MiB ({resources['peak_increase_mib']:,.0f} MiB above the start)" if peak else ""
        lines += ["", f"The evaluation took {resources['seconds']:.1f} s{memory}."]
    return lines


def _metrics_table(rec: dict[str, Any], splice: dict[str, Any] | None, settings: dict[str, Any]) -> list[str]:
    lines = [
        "| metric | value |",
        "|---|---|",
        f"| L0 (active latents per token) | {_fmt(rec['l0'])} |",
        f"| explained variance (1 − FVU) | {_fmt(rec['explained_variance'])} |",
        f"| FVU | {_fmt(rec['fvu'])} |",
        f"| MSE (sum over d_in, mean over tokens) | {_fmt(rec['mse'])} |",
        f"| cosine similarity x, x̂ | {_fmt(rec['cosine_similarity'])} |",
        f"| relative reconstruction bias | {_fmt(rec['relative_reconstruction_bias'])} |",
        f"| dead latents (never fired) | {rec['n_dead']} of {rec['d_sae']} |",
        f"| dense latents (fired on > {_fmt(rec.get('dense_threshold', settings.get('dense_threshold')))} of tokens) "
        f"| {rec['n_dense']} |",
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
    return lines


def _distribution_lines(report: dict[str, Any]) -> list[str]:
    distributions = report["eval"].get("distributions")
    if not distributions:
        return []
    lines = ["", "## Distributions", ""]
    l0, error = distributions["l0"]["quantiles"], distributions["squared_error"]["quantiles"]
    if l0:
        lines.append(f"- L0 per token: median {_fmt(l0['p50'])}, 5–95 % {_fmt(l0['p5'])}–{_fmt(l0['p95'])}, "
                     f"max {_fmt(l0['max'])}.")
    if error:
        lines.append(f"- ‖x − x̂‖² per token: median {_fmt(error['p50'])}, 5–95 % {_fmt(error['p5'])}–"
                     f"{_fmt(error['p95'])}, max {_fmt(error['max'])}.")
    lines.append(f"- Dead latents: {distributions['feature_density']['n_dead']}.")
    plots = report.get("plots") or {}
    titles = {"feature_density": "Feature density", "l0": "L0 distribution",
              "reconstruction_error": "Reconstruction error per token"}
    for name, title in titles.items():
        if name in plots:
            lines += ["", f"![{title}]({plots[name]})"]
    return lines


def _feature_table(title: str, entries: list[dict[str, Any]], lens_applied: bool) -> list[str]:
    lines = ["", f"### {title}", ""]
    if not entries:
        return lines + ["No latent qualifies."]
    header = "| latent | frequency | firing tokens | mean act. | max act. |"
    rule = "|---|---|---|---|---|"
    if lens_applied:
        header += " promotes | suppresses |"
        rule += "---|---|"
    lines += [header, rule]
    for e in entries:
        row = (f"| {e['latent']} | {_fmt(e['frequency'], 3)} | {e['firing_tokens']} | {_fmt(e['mean_activation'], 3)} "
               f"| {_fmt(e['max_activation'], 3)} |")
        if lens_applied:
            row += f" {_token_list(e.get('promoted', []))} | {_token_list(e.get('suppressed', []))} |"
        lines.append(row)
    lines += ["", "Top-activating contexts:", ""]
    for e in entries:
        contexts = "; ".join(f"{_escape(c['text'])} ({_fmt(c['activation'], 3)})" for c in e["contexts"])
        lines.append(f"- **{e['latent']}**: {contexts or 'none'}")
    return lines


def _feature_lines(report: dict[str, Any]) -> list[str]:
    features = report.get("features")
    if not features:
        return []
    lens = features["logit_lens"]
    lines = ["", "## Top latents"]
    if not lens["applied"]:
        lines += ["", f"No logit lens: {lens.get('reason', 'not applicable')}."]
    lines += _feature_table(f"By firing frequency (top {features['n_top']})", features["by_frequency"], lens["applied"])
    lines += _feature_table(
        f"By mean activation when firing (top {features['n_top']}, latents firing on at least "
        f"{features['min_firing_tokens']} tokens)",
        features["by_mean_activation"], lens["applied"],
    )
    return lines


def _training_lines(report: dict[str, Any]) -> list[str]:
    training, sae = report.get("training"), report["sae"]
    if not (training and training.get("first") and training.get("last")):
        return []
    first, last = training["first"], training["last"]
    return [
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


def render_markdown(report: dict[str, Any]) -> str:
    """Render a report dictionary as Markdown."""
    kind = "evaluation" if report.get("kind") == "eval" else "run"
    lines = [f"# gsx {kind} `{report['run']['name']}`", "", _summary_line(report), ""]
    lines += _metrics_lines(report)
    lines += _distribution_lines(report)
    lines += _feature_lines(report)
    lines += _training_lines(report)
    lines += ["", "## Definitions", "", DEFINITIONS.rstrip()]
    lines += ["", "## Run", ""]
    lines += [f"- {key}: {_fmt(value)}" for key, value in report["run"].items()]
    lines += [f"- SAE files: `{report['sae']['path']}`"]
    lines += ["", "## Library versions", ""]
    lines += [f"- {name} {version}" for name, version in report["versions"].items()]
    return "\n".join(lines) + "\n"


def write_report_files(folder: Path, report: dict[str, Any], stem: str = "report") -> tuple[dict[str, Any], Path, Path]:
    """Write `<stem>.json`, `<stem>.md` and the `<stem>_*.png` plots into `folder` atomically.

    Returns the report as written (with `gsx_report_version` and, when the report
    has `eval.distributions`, the plots' file names under `plots`), and the JSON
    and Markdown paths.
    """
    folder = Path(folder)
    report = {"gsx_report_version": REPORT_VERSION, **report}
    distributions = report.get("eval", {}).get("distributions")
    if distributions:
        versions = report.pop("versions", None)
        report["plots"] = write_plots(folder, stem, distributions, report["eval"]["reconstruction"])
        if versions is not None:
            report["versions"] = versions
    json_path = write_json_atomic(folder / f"{stem}.json", report)
    md_path = write_text_atomic(folder / f"{stem}.md", render_markdown(report))
    return report, json_path, md_path


def write_report(folder: Path, report: dict[str, Any], stem: str = "report") -> tuple[Path, Path]:
    """Write the report files as `write_report_files` does; return the JSON and Markdown paths."""
    _, json_path, md_path = write_report_files(folder, report, stem)
    return json_path, md_path


def format_summary_line(report: dict[str, Any]) -> str:
    """Return the one-line summary the command lines print: L0, explained variance, dead latents, CE."""
    rec, splice = report["eval"]["reconstruction"], report["eval"].get("splice")
    line = f"L0 {rec['l0']:.1f} of {rec['d_sae']}, explained variance {rec['explained_variance']:.3f}, dead {rec['n_dead']}"
    if splice:
        line += (f", CE clean {splice['ce_loss_clean']:.3f} -> spliced {splice['ce_loss_spliced']:.3f} "
                 f"({splice['ce_loss_recovered']:.1%} recovered)")
    return line
