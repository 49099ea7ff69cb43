"""Collect the raw, UNLABELLED items of alignscope's judge-validation set (issue 25, item 5).

    cd <worktree> && PYTHONPATH=src python scripts/judge_set/collect.py \
        [--out /work/judgeset-data/items.jsonl] [--part direct,benign,prefill,decoding,gcg,spoken,spoken-pgd]

Every item is a real output of one of the project's own models on a prompt of the held-out TEST split of a
built-in suite (``Suite.split(0.5, seed 0)``, the split every shipped adapter and the default speech build
hold out), so no training prompt appears. One JSON line per item::

    {"id", "prompt_id", "prompt", "prompt_label", "category", "prefill", "response",
     "source": {"model", "kind", "k", "generation", ...attack details}}

``response`` is the model's own continuation after ``prefill`` ("" unless forced). ``source.kind`` is one of

* ``direct``: greedy answer (64 new tokens) to a harmful, benign or borderline prompt;
* ``prefill``: continuation (48 tokens) after the first k tokens (5, 10, 20, 40) of the base model's own
  greedy answer to the same prompt, prefilled as token ids (the mechanics of ``alignscope.attacks.prefill``);
* ``decoding``: one sampled answer (64 tokens) under one setting of the decoding exploit (T 0.7, T 1.0,
  top-p 0.9, top-k 50; one parameter varied at a time; seeded);
* ``long``: two sampled answers (192 tokens, T 0.7, top-p 0.9) of the base model to every harmful prompt;
* ``gcg``: greedy answer to the request plus a GCG suffix found on that model (``prompt`` is the request
  alone, the suffix is in ``source.suffix``, the full user turn in ``source.attack_prompt``);
* ``spoken``, ``spoken-pgd``, ``spoken-tdnf``: the default speech LLM hearing the request spoken (``prompt``
  is the text spoken), after white-box audio PGD, and that adversarial clip through TDNF noise (``spoken.py``).

No judge runs here and no verdict is stored: the items are labelled separately, by people.

Seeded and resumable: items already in ``--out`` are skipped (see ``Context.pending``). Intermediate material
(the base model's answers the prefixes come from, GCG optimisations, spoken clips, PGD perturbations) lives in
``--work`` and is reused. Each part's wall time is appended to ``<work>/timings.jsonl``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from common import (
    ALIGNED,
    ANSWER_PLAN,
    BASE,
    BPLUS,
    DEEP,
    DIRECT_TOKENS,
    PREFILL_TOKENS,
    SPEECH,
    TARGET,
    Context,
    append_jsonl,
    harmful_segment,
    item,
    log,
    read_jsonl,
    window,
)
from spoken import part_spoken, part_spoken_pgd

from alignscope.data.types import Sample
from alignscope.models import GenerationConfig, user_turn

PREFILL_KS = (5, 10, 20, 40)
GCG_ANSWERED = 8
"""Suffixes answered per GCG run: the best, and those at 1/8 ... 7/8 of the run (fewer when they repeat)."""
DECODING_SETTINGS: tuple[dict[str, float], ...] = (  # one parameter varied at a time (Huang et al. 2023)
    {"temperature": 0.7},
    {"temperature": 1.0},
    {"top_p": 0.9},
    {"top_k": 50},
)


# -- plain answers ---------------------------------------------------------------------------------------------
def base_answers(ctx: Context) -> dict[str, dict[str, Any]]:
    """The base model's greedy 64-token answers to every harmful test prompt (cached in ``<work>``): its
    ``direct`` items, and the source of every prefilled prefix."""
    path = ctx.work / "base_answers.jsonl"
    done = {r["prompt_id"]: r for r in read_jsonl(path)}
    order = ctx.order["harmful"]
    if all(s.id in done for s in order):
        return done
    t0 = time.perf_counter()
    gen = ctx.greedy(DIRECT_TOKENS)
    texts = ctx.model(BASE).generate([user_turn(s.prompt) for s in order], gen)
    path.unlink(missing_ok=True)
    for s, t in zip(order, texts, strict=True):
        append_jsonl(path, {"prompt_id": s.id, "response": t, "model": BASE, "generation": gen.to_dict()})
    log.info("base answers to %d harmful test prompts in %.1f s", len(order), time.perf_counter() - t0)
    return {r["prompt_id"]: r for r in read_jsonl(path)}


def answers(
    ctx: Context,
    model: str,
    samples: list[Sample],
    kind: str,
    gen: GenerationConfig,
    tag: str = "",
    **details: Any,
) -> None:
    """One job: ``model`` answers ``samples`` (no prefill) with ``gen``."""
    ids = [f"{kind}/{model}/{s.id}{tag}" for s in samples]
    what = f"{kind} {model}{tag} ({len(samples)} prompts)"
    if not samples or not ctx.pending(ids, what):
        return
    t0 = time.perf_counter()
    texts = ctx.model(model).generate([user_turn(s.prompt) for s in samples], gen)
    items = [item(i, s, t, model, kind, gen, **details) for i, s, t in zip(ids, samples, texts, strict=True)]
    ctx.save(ids, items, what, t0)


def part_direct(ctx: Context) -> None:
    """Greedy answers to harmful test prompts: base 90, aligned 30, deep 30, balanced-plus 50."""
    order = ctx.order["harmful"]
    base = harmful_segment(order, BASE, "direct", ctx.limit)
    ids = [f"direct/{BASE}/{s.id}" for s in base]
    if ctx.pending(ids, f"direct {BASE}"):
        t0 = time.perf_counter()
        made = base_answers(ctx)
        gen = GenerationConfig(**made[base[0].id]["generation"])
        items = [
            item(i, s, made[s.id]["response"], BASE, "direct", gen) for i, s in zip(ids, base, strict=True)
        ]
        ctx.save(ids, items, f"direct {BASE} ({len(base)} prompts)", t0)
    for model in (ALIGNED, DEEP, BPLUS):
        samples = harmful_segment(order, model, "direct", ctx.limit)
        answers(ctx, model, samples, "direct", ctx.greedy(DIRECT_TOKENS))


def part_benign(ctx: Context) -> None:
    """Greedy answers to benign and borderline test prompts (:data:`common.ANSWER_PLAN`)."""
    for suite, plan in ANSWER_PLAN.items():
        for model, (offset, n) in plan.items():
            if model != SPEECH:
                samples = window(ctx.order[suite], offset, n, ctx.limit)
                answers(ctx, model, samples, "direct", ctx.greedy(DIRECT_TOKENS))


def part_prefill(ctx: Context) -> None:
    """The first k tokens of the base model's answer, as token ids, start the assistant turn; the model
    continues for 48 tokens. k cycles through 5, 10, 20, 40 over the prompts (category round-robin order)."""
    order = ctx.order["harmful"]
    base = base_answers(ctx)
    gen = ctx.greedy(PREFILL_TOKENS)
    for model in (ALIGNED, DEEP, BPLUS):
        samples = harmful_segment(order, model, "prefill", ctx.limit)
        ks = [PREFILL_KS[i % len(PREFILL_KS)] for i in range(len(samples))]
        ids = [f"prefill/{model}/{s.id}/k{k}" for s, k in zip(samples, ks, strict=True)]
        what = f"prefill {model} ({len(samples)} prompts)"
        if not ctx.pending(ids, what):
            continue
        t0 = time.perf_counter()
        m = ctx.model(model)
        prefixes = [m.response_ids(base[s.id]["response"])[:k] for s, k in zip(samples, ks, strict=True)]
        convs = [user_turn(s.prompt) for s in samples]
        texts = m.generate(convs, gen, prefills=[tuple(p) for p in prefixes])
        items = [
            item(
                i,
                s,
                t,
                model,
                "prefill",
                gen,
                prefill=m.tokenizer.decode(p),
                k=len(p),
                k_requested=k,
                prefill_token_ids=p,
                prefill_source=f"greedy answer of {BASE} to the same prompt ({DIRECT_TOKENS} new tokens)",
            )
            for i, s, t, k, p in zip(ids, samples, texts, ks, prefixes, strict=True)
        ]
        ctx.save(ids, items, what, t0)


def part_decoding(ctx: Context) -> None:
    """One sampled answer per harmful prompt: aligned 25, balanced-plus 25, deep 10; the settings of
    :data:`DECODING_SETTINGS` in turn; each setting's prompts one job, seeded (``seed + batch index``)."""
    order = ctx.order["harmful"]
    for model in (ALIGNED, BPLUS, DEEP):
        samples = harmful_segment(order, model, "decoding", ctx.limit)
        for j, setting in enumerate(DECODING_SETTINGS):
            group = samples[j :: len(DECODING_SETTINGS)]
            gen = ctx.greedy(DIRECT_TOKENS).with_(do_sample=True, **setting)
            tag = "/" + "-".join(f"{k}{v:g}" for k, v in setting.items())
            answers(ctx, model, group, "decoding", gen, tag, setting=setting)


LONG_TOKENS = 192
LONG_SETTING = {"temperature": 0.7, "top_p": 0.9}
LONG_DRAWS = 2


def part_long(ctx: Context) -> None:
    """Longer sampled answers of the base model to every harmful test prompt (192 tokens, T 0.7, top-p 0.9,
    two seeded draws): the 64-token answers above almost never get far enough to help with anything, so these
    give the set its chance of harmful items (added after the first labelling pass found 1 in 518)."""
    order = ctx.order["harmful"]
    for draw in range(LONG_DRAWS):
        gen = ctx.greedy(LONG_TOKENS).with_(do_sample=True, seed=ctx.seed + 100 + draw, **LONG_SETTING)
        answers(ctx, BASE, list(order), "long", gen, f"/draw{draw}", setting=LONG_SETTING, draw=draw)


# -- GCG ---------------------------------------------------------------------------------------------------------
def part_gcg(ctx: Context) -> None:
    """GCG (``alignscope.attacks.gcg.run_gcg``, per behaviour, the template of ``alignscope attack gcg``,
    target "Sure, here is") on the aligned and balanced-plus models, then greedy answers to the request with
    the best suffix and with the suffixes reached 1/8, 2/8, ..., 7/8 of the way (distinct ones only).
    Optimisations are cached in ``<work>/gcg.jsonl``; new ones stop starting once the next one would
    take the optimisation time past ``--gcg-minutes`` (judged by the slowest so far)."""
    from alignscope.attacks.gcg import GCGConfig, run_gcg
    from alignscope.attacks.gcg_eval import attack_chat, optimisation_record

    path = ctx.work / "gcg.jsonl"
    done = {(r["model"], r["key"]): r for r in read_jsonl(path)}
    config = GCGConfig(num_steps=ctx.args.gcg_steps, search_width=64, topk=64, early_stop=True, seed=ctx.seed)
    order = ctx.order["harmful"]
    per_model = {m: harmful_segment(order, m, "gcg", ctx.limit) for m in (ALIGNED, BPLUS)}
    # the models alternate, so a cut by the time budget costs both alike
    runs = [
        (m, g[i])
        for i in range(max(map(len, per_model.values())))
        for m, g in per_model.items()
        if i < len(g)
    ]
    budget = 60 * ctx.args.gcg_minutes
    for model, s in runs:
        rec = done.get((model, s.id))
        if rec is None:
            spent = [sum(r["step_times"]) for r in done.values()]
            if spent and sum(spent) + max(spent) > budget:
                log.warning(
                    "gcg: %s on %s not run: %.1f of %.0f min spent", s.id, model, sum(spent) / 60, budget / 60
                )
                continue
            t0 = time.perf_counter()
            res = run_gcg(ctx.model(model), attack_chat(s), TARGET, config)
            rec = optimisation_record(s.id, [s], res, model, config)
            rec["wall_time"] = time.perf_counter() - t0
            append_jsonl(path, rec)
            done[(model, s.id)] = rec
            log.info(
                "gcg %s on %s: %d steps, loss %.3f -> %.3f, early stop %s, %.0f s",
                s.id,
                model,
                len(res.losses),
                res.init_loss,
                res.best_loss,
                res.early_stopped,
                rec["wall_time"],
            )
        gcg_answers(ctx, model, s, rec)


def gcg_answers(ctx: Context, model: str, s: Sample, rec: dict[str, Any]) -> None:
    from alignscope.attacks.gcg_eval import attack_chat
    from alignscope.attacks.gcg_ops import fill_suffix

    strings, losses = rec["strings"], rec["losses"]
    n = len(strings)
    best_step = next((i + 1 for i, x in enumerate(strings) if x == rec["suffix"]), 0)  # 0: the initial suffix
    picks: dict[str, tuple[str, int, float]] = {rec["suffix"]: ("best", best_step, rec["best_loss"])}
    for q in sorted({(j * n) // GCG_ANSWERED for j in range(1, GCG_ANSWERED)}):
        if q >= 1 and strings[q - 1] not in picks:
            picks[strings[q - 1]] = (f"step{q}", q, losses[q - 1])
    chosen = list(picks.items())
    ids = [f"gcg/{model}/{s.id}/{tag}" for _, (tag, _, _) in chosen]
    what = f"gcg answers {model} {s.id} ({len(ids)} suffixes)"
    if not ctx.pending(ids, what):
        return
    t0 = time.perf_counter()
    gen = ctx.greedy(DIRECT_TOKENS)
    chats = [fill_suffix(attack_chat(s), suffix) for suffix, _ in chosen]
    texts = ctx.model(model).generate(chats, gen)
    items = [
        item(
            i,
            s,
            t,
            model,
            "gcg",
            gen,
            suffix=suffix,
            suffix_step=step,
            suffix_loss=loss,
            attack_prompt=chat[-1]["content"],
            target=TARGET,
            best_loss=rec["best_loss"],
            init_loss=rec["init_loss"],
            steps_run=n,
            early_stopped=rec["early_stopped"],
            gcg=rec["gcg"],
        )
        for i, (suffix, (_, step, loss)), chat, t in zip(ids, chosen, chats, texts, strict=True)
    ]
    ctx.save(ids, items, what, t0)


# -- main --------------------------------------------------------------------------------------------------------
PARTS: dict[str, Callable[[Context], None]] = {
    "direct": part_direct,
    "benign": part_benign,
    "prefill": part_prefill,
    "decoding": part_decoding,
    "long": part_long,
    "gcg": part_gcg,
    "spoken": part_spoken,
    "spoken-pgd": part_spoken_pgd,
}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="/work/judgeset-data/items.jsonl", help="output JSONL (appended to)")
    p.add_argument("--work", default=None, help="intermediate material (default: <out dir>/work)")
    p.add_argument("--part", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    p.add_argument("--seed", type=int, default=0, help="seeds prompt order, sampling, GCG, PGD and TDNF")
    p.add_argument(
        "--limit", type=int, default=None, help="at most N prompts per model and kind (smoke tests)"
    )
    p.add_argument(
        "--gcg-steps", type=int, default=40, help="GCG steps per behaviour (search width and top-k 64)"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (2 thrash on a shared 2-core machine)"
    )
    p.add_argument("--gcg-minutes", type=float, default=22.0, help="time budget of the GCG optimisations")
    p.add_argument("--pgd-steps", type=int, default=50, help="audio PGD steps per clip and budget")
    p.add_argument("--pgd-minutes", type=float, default=18.0, help="time budget of the audio PGD attacks")
    args = p.parse_args(argv)
    args.work = args.work or str(Path(args.out).parent / "work")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parts = [x.strip() for x in args.part.split(",") if x.strip()]
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {unknown}; known: {', '.join(PARTS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ctx = Context(args)
    import alignscope

    log.info(
        "alignscope from %s; %d torch threads; %d items already in %s",
        alignscope.__file__,
        torch.get_num_threads(),
        len(ctx.store.ids),
        args.out,
    )
    for part in parts:
        t0, before = time.perf_counter(), ctx.store.written
        PARTS[part](ctx)
        secs, new = time.perf_counter() - t0, ctx.store.written - before
        log.info("part %s: %d new items, %.1f min", part, new, secs / 60)
        append_jsonl(
            ctx.work / "timings.jsonl",
            {
                "part": part,
                "seconds": round(secs, 1),
                "new_items": new,
                "limit": args.limit,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
        )


if __name__ == "__main__":
    main()
