"""Assemble alignscope's judge-validation set from the collected items and two independent labelling passes.

    python scripts/judge_set/assemble.py --items ITEMS.jsonl --ids OPAQUE_IDS.json \
        --pass-a DIR_A --pass-b DIR_B [--adjudication ADJ.jsonl] --out src/alignscope/data/judge_eval

* Reads the items (``collect.py``'s output), the map from the opaque ids the labellers saw to item ids, and
  every ``*.jsonl`` label file of each pass (``{"id", "label", "note"}``).
* Reports agreement between the passes (Cohen's kappa, raw agreement, the confusion of the two passes) and
  writes the disagreements to ``<out>/disagreements.jsonl`` for adjudication.
* With ``--adjudication`` (``{"id", "label", "reason"}`` for every disagreement), writes the final set: each
  item with its adjudicated label and both passes' labels, split into ``dev.jsonl`` and ``test.jsonl`` by
  prompt (no prompt in both), stratified so both splits hold a similar share of harmful-labelled items, and
  ``agreement.json``.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sklearn.metrics import cohen_kappa_score

LABELS = ("refusal", "harmful", "neither")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_pass(directory: Path, opaque: dict[str, str]) -> dict[str, dict[str, Any]]:
    labels: dict[str, dict[str, Any]] = {}
    for file in sorted(directory.glob("*.jsonl")):
        for i, row in enumerate(read_jsonl(file), 1):
            if row.get("label") not in LABELS:
                raise SystemExit(f"{file}:{i}: label {row.get('label')!r} is not one of {LABELS}")
            item_id = opaque[row["id"]]
            if item_id in labels:
                raise SystemExit(f"{file}:{i}: {row['id']} labelled twice in one pass")
            labels[item_id] = row
    return labels


def split_by_prompt(items: list[dict[str, Any]], seed: int) -> dict[str, str]:
    """prompt_id -> "dev" / "test": groups with a harmful label are dealt alternately (seeded order), then the
    rest, each stratum by request type, so both splits get about half of each."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        groups[it["prompt_id"]].append(it)
    strata: dict[tuple[bool, str], list[str]] = defaultdict(list)
    for pid, members in groups.items():
        has_harm = any(m["label"] == "harmful" for m in members)
        strata[(has_harm, members[0]["prompt_label"])].append(pid)
    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    turn = 0
    for key in sorted(strata):
        pids = sorted(strata[key])
        rng.shuffle(pids)
        for pid in pids:
            assignment[pid] = ("dev", "test")[turn % 2]
            turn += 1
    return assignment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=Path, required=True)
    ap.add_argument("--ids", type=Path, required=True, help="opaque id -> item id (JSON)")
    ap.add_argument("--pass-a", type=Path, required=True)
    ap.add_argument("--pass-b", type=Path, required=True)
    ap.add_argument("--adjudication", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    items = {it["id"]: it for it in read_jsonl(args.items)}
    opaque = json.loads(args.ids.read_text())
    a, b = read_pass(args.pass_a, opaque), read_pass(args.pass_b, opaque)
    both = sorted(set(a) & set(b))
    missing = sorted(set(items) - set(both))
    print(f"{len(items)} items; pass A labelled {len(a)}, pass B {len(b)}; both {len(both)}")
    if missing:
        print(f"WARNING: {len(missing)} items lack a label from one pass, e.g. {missing[:3]}")
    la, lb = [a[i]["label"] for i in both], [b[i]["label"] for i in both]
    kappa = float(cohen_kappa_score(la, lb))
    agree = sum(x == y for x, y in zip(la, lb, strict=True)) / len(both)
    pairs = Counter(zip(la, lb, strict=True))
    print(f"agreement {agree:.3f}, Cohen's kappa {kappa:.3f}")
    print("pass A \\ pass B: " + " | ".join(LABELS))
    for x in LABELS:
        print(f"  {x:<8} " + " | ".join(str(pairs.get((x, y), 0)) for y in LABELS))
    args.out.mkdir(parents=True, exist_ok=True)
    disagreements = [i for i in both if a[i]["label"] != b[i]["label"]]
    with (args.out / "disagreements.jsonl").open("w", encoding="utf-8") as f:
        for i in disagreements:
            it = items[i]
            row = {
                "id": i,
                "prompt": it["prompt"],
                "prefill": it["prefill"],
                "response": it["response"],
                "request_type": it["prompt_label"],
                "a": a[i]["label"],
                "a_note": a[i].get("note", ""),
                "b": b[i]["label"],
                "b_note": b[i].get("note", ""),
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(disagreements)} disagreements -> {args.out / 'disagreements.jsonl'}")
    if args.adjudication is None:
        return
    adjudicated = {r["id"]: r for r in read_jsonl(args.adjudication)}
    undecided = [i for i in disagreements if i not in adjudicated]
    if undecided:
        raise SystemExit(f"{len(undecided)} disagreements have no adjudication, e.g. {undecided[:3]}")
    final: list[dict[str, Any]] = []
    for i in both:
        it = items[i]
        agreed = a[i]["label"] == b[i]["label"]
        label = a[i]["label"] if agreed else adjudicated[i]["label"]
        final.append(
            {
                "id": i,
                "prompt_id": it["prompt_id"],
                "prompt_label": it["prompt_label"],
                "category": it.get("category"),
                "prompt": it["prompt"],
                "prefill": it["prefill"],
                "response": it["response"],
                "label": label,
                "labels": {
                    "a": a[i]["label"],
                    "b": b[i]["label"],
                    **({} if agreed else {"adjudicated": label, "reason": adjudicated[i].get("reason", "")}),
                },
                "source": {**it["source"], "prompt_label": it["prompt_label"]},
            }
        )
    assignment = split_by_prompt(final, args.seed)
    for split in ("dev", "test"):
        rows = [r for r in final if assignment[r["prompt_id"]] == split]
        with (args.out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{split}: {len(rows)} items, {dict(Counter(r['label'] for r in rows))}")
    report = {
        "items": len(final),
        "agreement": agree,
        "cohen_kappa": kappa,
        "pass_confusion": {f"{x}|{y}": n for (x, y), n in sorted(pairs.items())},
        "disagreements": len(disagreements),
        "adjudicated_to": dict(Counter(adjudicated[i]["label"] for i in disagreements)),
        "labels": dict(Counter(r["label"] for r in final)),
        "splits": {s: sum(assignment[r["prompt_id"]] == s for r in final) for s in ("dev", "test")},
        "seed": args.seed,
    }
    (args.out / "agreement.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "disagreements.jsonl").unlink()


if __name__ == "__main__":
    main()
