"""Probe guard on the safety layers: AUROC on held-out AdvBench vs Alpaca, false refusals on borderline prompts.

Beyond Li et al. (ICLR 2025, arXiv 2408.17003): a logistic regression on one layer's last-prompt-token hidden
state, fitted on AdvBench (harmful) vs Alpaca (benign) training prompts, chooses its operating point on a
validation split (at most ``--target-fpr`` of benign validation prompts flagged) and is scored on held-out
AdvBench/Alpaca prompts it never saw, on alignscope's built-in harmful/benign suites (another distribution), and
on the built-in borderline-safe suite (benign prompts with alarming words: every flag is a false refusal).

Needs the public files in ``../shared/data`` (AdvBench ``harmful_behaviors.csv``, Alpaca
``harmless_instructions.jsonl``); exits cleanly with a message when they are absent.

    PYTHONPATH=src python benchmarks/probe_auroc.py [--model smollm2] [--train 100] [--test 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default=str(DATA), help="directory holding advbench/ and alpaca/")
    ap.add_argument(
        "--train", type=int, default=100, help="training prompts per class (30%% become validation)"
    )
    ap.add_argument("--test", type=int, default=100, help="held-out prompts per class")
    ap.add_argument(
        "--builtin", type=int, default=64, help="built-in harmful/benign prompts per class (0: skip)"
    )
    ap.add_argument("--target-fpr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    advbench = Path(args.data) / "advbench" / "harmful_behaviors.csv"
    alpaca = Path(args.data) / "alpaca" / "harmless_instructions.jsonl"
    if not advbench.exists() or not alpaca.exists():
        print(f"skipped: public data not found ({advbench} / {alpaca}); this benchmark needs ../shared/data")
        return 0

    from alignscope.analysis.layer_scan import prompt_hidden_states
    from alignscope.analysis.probe import ProbeConfig, ProbeGuard, _auroc, fit_probes
    from alignscope.data import load_advbench, load_jsonl, load_suite
    from alignscope.models import load_model, user_turn
    from alignscope.stats import wilson

    rng = np.random.default_rng(args.seed)
    harm_all = load_advbench(advbench).prompts
    benign_all = load_jsonl(alpaca, column="instruction", label="benign").prompts
    h_idx = rng.permutation(len(harm_all))[: args.train + args.test]
    b_idx = rng.permutation(len(benign_all))[: args.train + args.test]
    harm = [harm_all[i] for i in h_idx]
    benign = [benign_all[i] for i in b_idx]
    border = load_suite("borderline").prompts

    model = load_model(args.model)
    config = ProbeConfig(target_fpr=args.target_fpr, seed=args.seed)
    start = time.perf_counter()
    h = prompt_hidden_states(model, harm)
    b = prompt_hidden_states(model, benign)
    o = prompt_hidden_states(model, border)
    built_h = built_b = None
    if args.builtin:
        built_h = prompt_hidden_states(
            model, load_suite("harmful").take(args.builtin, seed=args.seed).prompts
        )
        built_b = prompt_hidden_states(model, load_suite("benign").take(args.builtin, seed=args.seed).prompts)
    read_s = time.perf_counter() - start
    n = args.train
    start = time.perf_counter()
    fit = fit_probes(h[:n], b[:n], config=config)  # borderline prompts play no part in fitting or choosing
    fit_s = time.perf_counter() - start

    print(
        f"probe guard, model={args.model} ({model.template_name}), logistic regression C={config.C} per layer; "
        f"fit on {n}+{n} AdvBench/Alpaca prompts ({fit.details['n_validation']['harmful']}+"
        f"{fit.details['n_validation']['benign']} of them validation), operating point: <= {config.target_fpr:.0%} "
        f"of benign validation prompts flagged; held out: {args.test}+{args.test} AdvBench/Alpaca, "
        f"{len(border)} built-in borderline-safe prompts"
        + (f", {args.builtin}+{args.builtin} built-in harmful/benign" if args.builtin else "")
    )
    print(
        f"hidden states of {len(harm) + len(benign) + len(border)} prompts: {read_s:.1f} s; probes: {fit_s:.1f} s"
    )
    header = (
        f"{'layer':>5}{'val AUROC':>11}{'test AUROC':>12}{'test TPR':>10}{'test FPR':>10}"
        f"{'borderline FRR':>16}{'builtin AUROC':>15}"
    )
    print(header)
    print("-" * len(header))
    rows = {}
    for s in fit.scores:
        probe = fit.probes[s.layer]
        pos = probe.logits(h[n:, s.layer])
        neg = probe.logits(b[n:, s.layer])
        frr = float((probe.logits(o[:, s.layer]) > s.threshold).mean())
        built = (
            _auroc(probe.logits(built_h[:, s.layer]), probe.logits(built_b[:, s.layer]))
            if built_h is not None and built_b is not None
            else float("nan")
        )
        rows[s.layer] = (pos, neg)
        mark = " <- guard" if s.layer == fit.chosen_layer else ""
        print(
            f"{s.layer:>5}{s.auroc:>11.3f}{_auroc(pos, neg):>12.3f}{(pos > s.threshold).mean():>10.2f}"
            f"{(neg > s.threshold).mean():>10.2f}{frr:>16.2f}{built:>15.3f}{mark}"
        )
    guard: ProbeGuard = fit.guard.bind(model)
    layer = fit.chosen_layer
    pos, neg = rows[layer]
    flagged_border = guard.check([user_turn(p) for p in border])
    start = time.perf_counter()
    guard.check([user_turn(p) for p in border])
    check_s = time.perf_counter() - start
    print(
        f"guard (layer {layer}, chosen by validation AUROC then d'): held-out AUROC {_auroc(pos, neg):.3f}; "
        f"AdvBench flagged {wilson(int((pos > guard.threshold).sum()), len(pos)).fmt()}; "
        f"Alpaca flagged {wilson(int((neg > guard.threshold).sum()), len(neg)).fmt()}; "
        f"borderline false refusals {wilson(sum(flagged_border), len(border)).fmt()}"
    )
    print(
        f"guard.check on {len(border)} prompts (forward pass stops after layer {layer} of {model.num_layers}): "
        f"{check_s:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
