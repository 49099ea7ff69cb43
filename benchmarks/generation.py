"""Batched generation against a naive one-prompt-at-a-time ``model.generate`` loop, same prompts and settings.

    python benchmarks/generation.py [--model smollm2] [--n 32] [--max-new-tokens 48] [--batch-size 16]

Both sides decode greedily from the same loaded model; tokens are counted up to the end-of-turn token, so
padding after a finished answer is not counted as work. Prints a table and the speed ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from alignscope.data import load_suite
from alignscope.models import GenerationConfig, load_model, user_turn


def count_tokens(model, texts: list[str]) -> int:  # type: ignore[no-untyped-def]
    return sum(len(model.response_ids(t)) for t in texts)


def naive(model, prompts: list[str], max_new_tokens: int) -> list[str]:  # type: ignore[no-untyped-def]
    """What a user without alignscope writes: one prompt, one generate call."""
    out = []
    for p in prompts:
        text = model.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    model = load_model(args.model)
    prompts = (
        load_suite("harmful").take(args.n // 2).prompts
        + load_suite("benign").take(args.n - args.n // 2).prompts
    )
    convos = [user_turn(p) for p in prompts]
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    model.generate(convos[:2], cfg.with_(max_new_tokens=4))  # warm-up, both sides share it

    t0 = time.perf_counter()
    ours = model.generate(convos, cfg)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = naive(model, prompts, args.max_new_tokens)
    t_naive = time.perf_counter() - t0

    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    tok_ours, tok_naive = count_tokens(model, ours), count_tokens(model, theirs)
    print(
        f"model {args.model}, {len(prompts)} prompts, greedy, max_new_tokens={args.max_new_tokens}, "
        f"torch threads {torch.get_num_threads()}, device {model.device}"
    )
    print("| method | seconds | generated tokens | tokens/s |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| alignscope batched (batch {args.batch_size}) | {t_ours:.1f} | {tok_ours} | {tok_ours / t_ours:.1f} |"
    )
    print(f"| naive loop of model.generate | {t_naive:.1f} | {tok_naive} | {tok_naive / t_naive:.1f} |")
    print(
        f"speed-up (tokens/s): {(tok_ours / t_ours) / (tok_naive / t_naive):.2f}x; "
        f"identical outputs: {same}/{len(prompts)}"
    )


if __name__ == "__main__":
    main()
