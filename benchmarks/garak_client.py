"""garak (NVIDIA's LLM vulnerability scanner) against ``alignscope serve``, as a real client would run it.

    PYTHONPATH=src python benchmarks/garak_client.py [--model smollm2] [--probes test.Test] [--generations 1]
    PYTHONPATH=src python benchmarks/garak_client.py --model tiny   # a tiny random model: a quick check

garak runs in its own virtualenv (created once under ``$ALIGNSCOPE_CACHE/venvs/garak`` with pip: the CPU torch
wheel, then ``garak==0.17.1``), as ``benchmarks/gcg_vs_nanogcg.py`` does for nanoGCG. The script starts
``alignscope serve`` on a free loopback port with an audit log, runs garak's ``openai.OpenAICompatible``
generator against it with its default options (only the server's URI and the model name are given: garak then
sends ``n``, ``max_tokens`` 150, ``temperature`` 0.7, ``top_p``, ``frequency_penalty``, ``presence_penalty`` and
``stop: ["#", ";"]`` with every request) and one probe, then reads the audit log: every chat completion garak
sent must have returned 200. It prints the counts by status and garak's attempts, and exits non-zero otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

GARAK_REQS = [
    "torch==2.13.0",
    "garak==0.17.1",
]  # torch first: the CPU wheel, not a GPU build garak would pull
CHAT = "/v1/chat/completions"


def cache_root() -> Path:
    return Path(os.environ.get("ALIGNSCOPE_CACHE", Path.home() / ".cache" / "alignscope"))


def ensure_venv(path: Path) -> Path:
    """The virtualenv's python, creating the environment on first use."""
    py = path / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import garak"], capture_output=True).returncode == 0:
        return py
    print(f"creating garak's virtualenv in {path} (once; a few minutes)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    for requirement in GARAK_REQS:
        subprocess.run([str(py), "-m", "pip", "install", "-q", requirement], check=True)
    return py


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_model_dir(root: Path) -> Path:
    """A tiny random model saved as a Hugging Face directory (any spec ``alignscope serve`` takes)."""
    from alignscope.testing import tiny_local_model

    path = root / "tiny-model"
    model = tiny_local_model(seed=0)
    model.model.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


def start_server(
    spec: str, name: str, port: int, audit_log: Path, threads: int, log: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "alignscope.cli",
        "serve",
        "--model",
        spec,
        "--served-name",
        name,
        "--port",
        str(port),
        "--audit-log",
        str(audit_log),
        "--threads",
        str(threads),
    ]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def wait_until_up(proc: subprocess.Popen[bytes], port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"alignscope serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"alignscope serve did not answer /health within {timeout:g}s")


def run_garak(py: Path, port: int, name: str, probes: str, generations: int, home: Path) -> int:
    options = {"openai": {"OpenAICompatible": {"uri": f"http://127.0.0.1:{port}/v1/"}}}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        OPENAICOMPATIBLE_API_KEY="none",  # garak requires one; the server has no key
        XDG_DATA_HOME=str(home / "data"),  # garak's reports, config and cache stay in this run's folder
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
    )
    cmd = [
        str(py),
        "-m",
        "garak",
        "--target_type",
        "openai.OpenAICompatible",
        "--target_name",
        name,
        "--generator_options",
        json.dumps(options),
        "--probes",
        probes,
        "--generations",
        str(generations),
        "--report_prefix",
        "alignscope",
    ]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env).returncode


def audit_counts(audit_log: Path) -> tuple[collections.Counter[Any], collections.Counter[Any], list[str]]:
    """Chat completions by HTTP status, other /v1 requests by (method, path, status), and the errors."""
    chats: collections.Counter[Any] = collections.Counter()
    others: collections.Counter[Any] = collections.Counter()
    errors: list[str] = []
    for line in audit_log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("event") != "request":
            continue
        if record.get("method") == "POST" and record.get("path") == CHAT:
            chats[record.get("status")] += 1
            if record.get("status") != 200:
                errors.append(str(record.get("error")))
        else:
            others[(record.get("method"), record.get("path"), record.get("status"))] += 1
    return chats, others, errors


def garak_attempts(home: Path) -> tuple[int, int]:
    """Attempts in garak's report and how many of their outputs are text (garak writes None for a failure)."""
    attempts = outputs = 0
    for report in (home / "data").rglob("alignscope*.report.jsonl"):
        for line in report.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if entry.get("entry_type") != "attempt" or entry.get("status") != 2:
                continue
            attempts += 1
            for out in entry.get("outputs", []):
                if isinstance(out, dict) and isinstance(out.get("text"), str):
                    outputs += 1
    return attempts, outputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="a model spec, or 'tiny' (a tiny random model)")
    ap.add_argument("--probes", default="test.Test", help="garak probes (default: its test probe, 8 prompts)")
    ap.add_argument("--generations", type=int, default=1, help="garak's generations per prompt")
    ap.add_argument(
        "--threads", type=int, default=1, help="the server's torch threads (1 suits a shared CPU)"
    )
    ap.add_argument("--venv", default=str(cache_root() / "venvs" / "garak"))
    ap.add_argument("--keep", default=None, help="keep the run folder (audit log, garak report) here")
    ap.add_argument("--startup-timeout", type=float, default=600.0)
    args = ap.parse_args(argv)

    py = ensure_venv(Path(args.venv))
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="alignscope-garak-"))
    root.mkdir(parents=True, exist_ok=True)
    spec = str(tiny_model_dir(root)) if args.model == "tiny" else args.model
    name = "tiny" if args.model == "tiny" else args.model
    port = free_port()
    audit_log, server_log = root / "audit.jsonl", root / "server.log"
    proc = start_server(spec, name, port, audit_log, args.threads, server_log)
    try:
        wait_until_up(proc, port, args.startup_timeout, server_log)
        t0 = time.perf_counter()
        garak_rc = run_garak(py, port, name, args.probes, args.generations, root)
        seconds = time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    chats, others, errors = audit_counts(audit_log)
    attempts, outputs = garak_attempts(root)
    total = sum(chats.values())
    print(
        f"\ngarak 0.17.1 openai.OpenAICompatible (default options), probes {args.probes}, generations {args.generations}"
    )
    print(f"model {args.model} served by alignscope serve; garak exit code {garak_rc}; {seconds:.0f} s")
    print(f"chat completions in the audit log: {total}, by status: {dict(sorted(chats.items(), key=str))}")
    for (method, path, status), count in sorted(others.items(), key=str):
        print(f"other requests: {method} {path} -> {status}: {count} (garak's connectivity check)")
    print(f"garak attempts: {attempts}, outputs with text: {outputs}")
    print(f"audit log, garak report and server log in {root}")
    if errors:
        print(f"first error: {errors[0]}")
    ok = garak_rc == 0 and total > 0 and chats[200] == total and outputs == total
    print("OK: every request returned 200" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
