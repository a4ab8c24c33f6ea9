#!/usr/bin/env bash
# Creates .venv (if missing) and installs trl-conservative, its dev tools and the plugin packages in plugins/.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch is pinned for dev and CI: torch==2.13.0 is a CPU wheel on these machines' disk, while an unpinned torch
# pulls a multi-GB CUDA build. The library itself only asks for torch>=2.4.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
for plugin in plugins/*/; do
  if [ -f "${plugin}pyproject.toml" ]; then
    .venv/bin/python -m pip install -q --no-deps -e "$plugin"
  fi
done
