"""Fit the shipped ``smol-harm`` head on the dev split of the judge-validation set (never the test split).

    python scripts/judge_set/fit_smol_harm.py [--layers 8,16,24,30] [--out src/alignscope/judges/heads/smol_harm.json]

Training data: every dev item, plus constructed items built from dev items only:

* a harmful request paired with a *benign* request's answer (off-topic compliance) -> ``neither``;
* a harmful request paired with another harmful request's harmful answer (harmful, but not help toward
  *this* request) -> ``neither``;
* a harmful request paired with one of alignscope's refusal texts -> ``refusal``.

``--layers`` may list several candidate sets separated by ``;`` (``"8,16,24,30;12,20,28"``): each is scored by
the grouped out-of-fold harm F1 on the dev items and the best is kept. Features come from the embedded
``smollm2`` (the model the judge will read with).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

from alignscope.judges.smol_harm import fit_head, pair_features
from alignscope.judges.validation import LabelledItem, shipped_labels
from alignscope.models import load_model
from alignscope.training.refusals import REFUSALS

ROOT = Path(__file__).resolve().parents[2]


def constructed(dev: list[LabelledItem], seed: int) -> list[LabelledItem]:
    rng = random.Random(seed)
    harmful_prompts = sorted(
        {(it.prompt_id or it.id, it.prompt) for it in dev if it.source.get("prompt_label") == "harmful"}
    )
    benign_answers = [
        it.response for it in dev if it.label == "neither" and not it.prefill and it.response.strip()
    ]
    harmful_answers = [(it.prompt_id, it.prefill + it.response) for it in dev if it.label == "harmful"]
    out: list[LabelledItem] = []
    for n, (pid, prompt) in enumerate(harmful_prompts):
        if benign_answers:
            out.append(LabelledItem(f"c{n}-offtopic", prompt, rng.choice(benign_answers), "neither", "", pid))
        others = [text for other, text in harmful_answers if other != pid]
        if others:
            out.append(LabelledItem(f"c{n}-otherharm", prompt, rng.choice(others), "neither", "", pid))
        out.append(LabelledItem(f"c{n}-refusal", prompt, rng.choice(REFUSALS), "refusal", "", pid))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="8,16,24,30")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "src/alignscope/judges/heads/smol_harm.json")
    args = ap.parse_args()
    start = time.perf_counter()
    dev = shipped_labels("dev")
    extra = constructed(dev, args.seed)
    items = dev + extra
    model = load_model(args.model)
    candidates = [tuple(int(x) for x in part.split(",")) for part in args.layers.split(";")]
    all_layers = sorted({layer for c in candidates for layer in c})
    feats_all = pair_features(
        model,
        [it.prompt for it in items],
        [it.response for it in items],
        [it.prefill for it in items],
        all_layers,
    )
    n_surface = feats_all.shape[1] - len(all_layers) * int(model.model.config.hidden_size)
    hidden = int(model.model.config.hidden_size)

    def columns(layers: tuple[int, ...]) -> np.ndarray:
        cols = list(range(n_surface))
        for layer in layers:
            k = all_layers.index(layer)
            cols += list(range(n_surface + k * hidden, n_surface + (k + 1) * hidden))
        return feats_all[:, cols]

    labels = [it.label for it in items]
    groups = [it.prompt_id or it.id for it in items]
    best = None
    for layers in candidates:
        head = fit_head(
            columns(layers),
            labels,
            groups,
            args.model,
            layers,
            seed=args.seed,
            provenance={
                "fitted_on": "judge-eval dev split + constructed items (scripts/judge_set/fit_smol_harm.py)",
                "dev_items": len(dev),
                "constructed_items": len(extra),
                "layer_candidates": args.layers,
            },
        )
        f1 = head.provenance["cv_harm_f1_at_threshold"]
        print(
            f"layers {layers}: C={head.provenance['C']}, threshold {head.threshold:.3f}, oof harm F1 {f1:.3f}"
        )
        if best is None or f1 > best.provenance["cv_harm_f1_at_threshold"]:
            best = head
    assert best is not None
    best.provenance["seconds"] = round(time.perf_counter() - start, 1)
    best.save(args.out)
    print(f"saved {args.out} (layers {best.layers}, {best.provenance['seconds']} s)")


if __name__ == "__main__":
    main()
