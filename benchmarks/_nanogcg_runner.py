"""Runs nanoGCG in its own virtualenv (it needs transformers<=4.47.1) for benchmarks/gcg_vs_nanogcg.py.

Usage: python _nanogcg_runner.py JOB.json OUT.json. The job names the saved model directory, the formatted
prompt (chat template already applied, with ``{optim_str}``), the target and nanoGCG's settings. The output
holds nanoGCG's per-step losses, wall and CPU seconds per step, and the initial suffix's loss from a plain
forward pass (to check both sides optimise the same problem), the CPU seconds nanoGCG spent before its first
step (``setup_cpu``) and the whole run as a ``benchmarks/_machine.py`` side (wall, CPU, load average at start
and end).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time


def load1() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    import nanogcg
    import torch
    from nanogcg import gcg as gcg_module
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(int(job["threads"]))
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], torch_dtype=torch.float32).eval()
    # transformers 5 saves the tokenizer class as TokenizersBackend, unknown to 4.47: load tokenizer.json directly
    tok = PreTrainedTokenizerFast.from_pretrained(job["model_dir"])
    # The prompt arrives already formatted by alignscope, so nanoGCG's own templating must be the identity.
    # nanoGCG also deletes every occurrence of the BOS token from the template, and SmolLM2's BOS is
    # <|im_start|>, which would strip the chat markup: unset it (nothing else of nanoGCG uses it here).
    tok.chat_template = "{{ messages[0]['content'] }}"
    tok.bos_token = None
    before, after = job["prompt"].split("{optim_str}")
    ids = (
        tok(before, add_special_tokens=False)["input_ids"]
        + tok(job["init"], add_special_tokens=False)["input_ids"]
        + tok(after, add_special_tokens=False)["input_ids"]
    )
    target = tok(job["target"], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids + target])).logits[0]
    n = len(ids)
    init_loss = torch.nn.functional.cross_entropy(logits[n - 1 : n - 1 + len(target)], torch.tensor(target))

    marks: list[tuple[float, float]] = []
    original = gcg_module.GCG.compute_token_gradient

    def timed(self, optim_ids):  # each step starts with the token gradient
        marks.append((time.perf_counter(), time.process_time()))
        return original(self, optim_ids)

    gcg_module.GCG.compute_token_gradient = timed
    config = nanogcg.GCGConfig(
        num_steps=job["steps"],
        search_width=job["search_width"],
        topk=job["topk"],
        optim_str_init=job["init"],
        seed=job["seed"],
        verbosity="WARNING",
    )
    l0, w0, c0 = load1(), time.perf_counter(), time.process_time()
    res = nanogcg.run(model, tok, job["prompt"], job["target"], config)
    marks.append((time.perf_counter(), time.process_time()))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    out = {
        "version": nanogcg.__version__ if hasattr(nanogcg, "__version__") else "",
        "losses": [float(x) for x in res.losses],
        "best_loss": float(res.best_loss),
        "best_string": res.best_string,
        "step_wall": [b[0] - a[0] for a, b in itertools.pairwise(marks)],
        "step_cpu": [b[1] - a[1] for a, b in itertools.pairwise(marks)],
        "setup_cpu": marks[0][1] - c0,
        "side": {
            "name": "nanoGCG",
            "wall": wall,
            "cpu": cpu,
            "threads": int(job["threads"]),
            "load_start": l0,
            "load_end": load1(),
            "load": (l0 + load1()) / 2,
            "share": cpu / max(wall * int(job["threads"]), 1e-9),
        },
        "init_loss": float(init_loss),
        "before_tokens": len(tok(before, add_special_tokens=False)["input_ids"]),
    }
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
