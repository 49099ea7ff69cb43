"""Batched greedy decoding against the machine's teacher-forced forward rate, and against float32 greedy outputs.

    python benchmarks/generation.py [--model smollm2] [--n 64] [--max-new-tokens 48] [--batch-sizes 16,64]
                                    [--naive-n 8] [--threads 1] [--no-bf16]

Measured in one process, one after the other, all in CPU seconds of this process (``time.process_time``):

* **forward rate**: one teacher-forced forward pass over 8 x 128 tokens (random ids, logits at every
  position), tokens per CPU second; with the float32 linear kernels ``generate`` uses (oneDNN where it beats
  torch's BLAS, see ``alignscope.models.fast_linear``) and with torch's own, and in bfloat16 where the CPU
  has native bf16 matmuls;
* **batched decode rate**: ``LocalModel.generate`` over ``--n`` prompts (half built-in harmful, half benign;
  chat template with its system turn) at each batch size, generated tokens (counted up to the end-of-turn
  token) per CPU second, prefill included: what a user waits for;
* **ratio**: decode rate / forward rate of the same dtype (target >= 0.5); the bf16 rows also give the ratio
  to the float32 forward, since bf16 decoding is a way to serve a float32 model faster;
* **identical outputs**: each batched run's texts against float32 greedy decoding with torch's kernels, one
  prompt at a time (``model.generate`` from transformers, the naive loop), on the first ``--naive-n``
  prompts (the naive loop is slow, so it is bounded). The speed-up over that loop is printed too.

Prints the machine, the load average before and after, and refuses a ratio whose two sides ran under
different load (rule in ``benchmarks/_machine.py``). About 3-4 minutes on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from _machine import Side, load1, machine_line, measure, print_heading, ratio_text
from alignscope.attacks.gcg_scoring import fast_bfloat16
from alignscope.data import load_suite
from alignscope.models import GenerationConfig, load_model, user_turn
from alignscope.models.fast_linear import fp32_linears


def count_tokens(model: Any, texts: list[str]) -> int:
    return sum(len(model.response_ids(t)) for t in texts)


def forward_rate(model: Any, kernels: str) -> tuple[float, Side]:
    """Teacher-forced tokens per CPU second over one 8 x 128 forward pass."""
    ids = torch.randint(
        0, int(model.model.config.vocab_size), (8, 128), generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode(), fp32_linears(model.model, kernels):
        model.model(input_ids=ids[:2, :16])  # warm-up (weights touched, kernels chosen, weights packed)
        _, side = measure(f"forward ({model.dtype}, {kernels})", lambda: model.model(input_ids=ids))
    return ids.numel() / side.cpu, side


def naive(model: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """What a user without alignscope writes: one prompt, one transformers generate call, torch's kernels."""
    out = []
    for p in prompts:
        text = model.format_chat(user_turn(p))
        ids = model.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            gen = model.model.generate(
                **ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=model.tokenizer.pad_token_id,
            )
        out.append(model.tokenizer.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=64, help="prompts decoded by every batched run")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-sizes", default="16,64")
    ap.add_argument("--naive-n", type=int, default=8, help="prompts of the one-at-a-time float32 reference")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load1()
    print(machine_line(), flush=True)

    model = load_model(args.model, dtype="float32")
    prompts = (
        load_suite("harmful").take(args.n // 2).prompts
        + load_suite("benign").take(args.n - args.n // 2).prompts
    )
    convos = [user_turn(p) for p in prompts]
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    rows: list[dict[str, Any]] = []
    fwd: dict[str, tuple[float, Side]] = {
        "float32, torch kernels": forward_rate(model, "torch"),
        "float32": forward_rate(model, model.fp32_linear),
    }
    reference, ref_side = measure(
        "naive loop", lambda: naive(model, prompts[: args.naive_n], args.max_new_tokens)
    )
    naive_rate = count_tokens(model, reference) / ref_side.cpu

    def decode(m: Any, label: str, forward_key: str) -> None:
        for bs in sizes:
            cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=bs)
            m.generate(convos[:2], cfg.with_(max_new_tokens=4))  # warm-up
            out, side = measure(f"{label} batch {bs}", lambda cfg=cfg: m.generate(convos, cfg))
            rows.append(
                {
                    "label": f"{label}, batch {bs}",
                    "rate": count_tokens(m, out) / side.cpu,
                    "side": side,
                    "forward": forward_key,
                    "same": sum(a == b for a, b in zip(out, reference, strict=False)),
                }
            )

    decode(model, "float32", "float32")
    if not args.no_bf16 and fast_bfloat16(torch.device("cpu")):
        low = load_model(args.model, dtype="bfloat16")
        fwd["bfloat16"] = forward_rate(low, "torch")
        decode(low, "bfloat16", "bfloat16")
    elif not args.no_bf16:
        print("bfloat16 rows skipped: this CPU has no native bf16 matmuls (avx512_bf16 / AMX)")
    load_after = load1()

    print_heading(
        f"\nmodel {args.model}, {len(prompts)} prompts (built-in harmful/benign, chat template), greedy, "
        f"max_new_tokens={args.max_new_tokens}, torch threads {torch.get_num_threads()}, CPU seconds",
        load_before,
        load_after,
    )
    print("| forward pass (8 x 128 tokens, teacher-forced) | tokens / CPU-s |")
    print("| --- | ---: |")
    for name, (rate, _) in fwd.items():
        print(f"| {name} | {rate:.0f} |")
    print(
        f"\n| batched decode | tokens / CPU-s | / forward, same dtype | / float32 forward | identical to float32 "
        f"greedy (first {len(reference)}) | vs naive loop ({naive_rate:.0f} tok/CPU-s) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        f_rate, f_side = fwd[r["forward"]]
        f32_rate, f32_side = fwd["float32"]
        same_dtype = ratio_text(f_side, r["side"], r["rate"] / f_rate)
        to_fp32 = ratio_text(f32_side, r["side"], r["rate"] / f32_rate) if r["forward"] != "float32" else "-"
        vs_naive = ratio_text(ref_side, r["side"], r["rate"] / naive_rate)
        print(
            f"| {r['label']} | {r['rate']:.0f} | {same_dtype} | {to_fp32} | {r['same']}/{len(reference)} "
            f"| {vs_naive} |"
        )
    print("\nsides (load = mean 1-minute load average; share = CPU-s / (wall-s x threads)):")
    for name, side in [*((k, v[1]) for k, v in fwd.items()), ("naive loop", ref_side)] + [
        (r["label"], r["side"]) for r in rows
    ]:
        print(
            f"  {name:<28} CPU {side.cpu:6.1f} s, wall {side.wall:6.1f} s, load {side.load:.2f}, share {side.share:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
