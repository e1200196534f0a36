"""Time the stages of the main job side by side on the packaged Gemma 3 270M.

Usage: .venv/bin/python -m benchmarks.bench_pipeline [--repeats 7] [--out benchmarks/results.json]

Every stage runs `--repeats` times in the same process, interleaved round-robin so
that background load affects all stages alike. The script prints the median time
of each stage, its throughput, and ratios between stages. Stages:

- harvest: activations at blocks.5.hook_resid_post for 16 × 128 tokens, the model
  stopping after block 5 (what SAELens's activation store does);
- forward: the full model on the same tokens (what each evaluation pass costs);
- eval_recon: `gsx.evaluation.evaluate_sae` on the same 16 sequences without CE
  (reconstruction metrics only);
- eval_ce: the same call with CE and KL (clean, spliced and zero-ablated passes,
  unembedding over the 262,144-token vocabulary);
- saelens_step: one SAELens JumpReLU training step, d_sae 2048, 1,024 tokens;
- scratch_step: one gsx scratch training step on the same batch and settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from gsx.data import build_corpus
from gsx.models import ModelSpec, load_model
from gsx.recipe import DataConfig

HOOK = "blocks.5.hook_resid_post"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions of each stage")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"), help="JSON file for the results")
    args = parser.parse_args()

    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    from gsx.data import special_token_ids
    from gsx.evaluation.splice import evaluate_sae
    from gsx.saes.convert import scratch_from_saelens
    from gsx.training.scratch import ScratchTrainConfig, compute_training_loss

    torch.manual_seed(0)
    model = load_model(ModelSpec())
    corpus = build_corpus(DataConfig(max_documents=300), model.tokenizer, seed=0)
    tokens = corpus.train_tokens[:16]
    n_tokens = tokens.numel()
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK], stop_at_layer=6)
    batch = cache[HOOK].reshape(-1, 640)[:1024].contiguous()
    batch = batch / batch.norm(dim=-1).mean() * 640**0.5

    saelens_sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=640, d_sae=2048, jumprelu_init_threshold=0.5))
    scratch_sae = scratch_from_saelens(saelens_sae)
    saelens_opt = torch.optim.Adam(saelens_sae.parameters(), lr=1e-4)
    scratch_opt = torch.optim.Adam(scratch_sae.parameters(), lr=1e-4)
    scratch_cfg = ScratchTrainConfig(d_in=640, d_sae=2048, show_progress=False)
    dead = torch.zeros(2048, dtype=torch.bool)

    def harvest() -> None:
        model.run_with_cache(tokens, names_filter=[HOOK], stop_at_layer=6)

    def forward() -> None:
        with torch.no_grad():
            model(tokens, return_type=None)

    eval_sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=640, d_sae=2048))
    with torch.no_grad():
        eval_sae.W_enc.normal_(0, 0.05)
        eval_sae.W_dec.copy_(eval_sae.W_enc.T)
    special = special_token_ids(model.tokenizer)

    def eval_recon() -> None:
        evaluate_sae(model, eval_sae, HOOK, tokens, special_ids=special, batch_size=8, compute_ce=False, progress=False)

    def eval_ce() -> None:
        evaluate_sae(model, eval_sae, HOOK, tokens, special_ids=special, batch_size=8, progress=False)

    def saelens_step() -> None:
        out = saelens_sae.training_forward_pass(
            TrainStepInput(sae_in=batch, coefficients={"l0": 1.0}, dead_neuron_mask=dead, n_training_steps=0,
                           is_logging_step=False)
        )
        out.loss.backward()
        saelens_opt.step()
        saelens_opt.zero_grad()

    def scratch_step() -> None:
        out = compute_training_loss(scratch_sae, batch, scratch_cfg, l0_coefficient=1.0)
        out.loss.backward()
        scratch_opt.step()
        scratch_opt.zero_grad()

    stages = {"harvest": (harvest, n_tokens), "forward": (forward, n_tokens), "eval_recon": (eval_recon, n_tokens), "eval_ce": (eval_ce, n_tokens),
              "saelens_step": (saelens_step, 1024), "scratch_step": (scratch_step, 1024)}
    times: dict[str, list[float]] = {name: [] for name in stages}
    for name, (fn, _) in stages.items():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, (fn, _) in stages.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(values) for name, values in times.items()}
    results = {
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "median_seconds": medians,
        "tokens_per_second": {name: stages[name][1] / medians[name] for name in stages},
        "ratios": {
            "scratch_step / saelens_step": medians["scratch_step"] / medians["saelens_step"],
            "forward / harvest": medians["forward"] / medians["harvest"],
            "eval_ce / eval_recon": medians["eval_ce"] / medians["eval_recon"],
            "eval_ce / forward": medians["eval_ce"] / medians["forward"],
            "harvest per token / saelens_step per token":
                (medians["harvest"] / n_tokens) / (medians["saelens_step"] / 1024),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'stage':<14} {'median s':>9} {'tokens/s':>10}")
    for name in stages:
        print(f"{name:<14} {medians[name]:>9.4f} {results['tokens_per_second'][name]:>10.0f}")
    for name, value in results["ratios"].items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
