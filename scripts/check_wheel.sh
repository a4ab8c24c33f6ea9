#!/usr/bin/env bash
# The distributions as a user gets them (issue 22), from the repository root with .venv built (scripts/setup.sh):
#   1. builds the sdist and wheel of trl-conservative and of each plugin package (python -m build), checks each with
#      `twine check --strict` and that each holds its LICENSE;
#   2. asks pip's resolver, for Python 3.10-3.13 and each starting point, what it installs beside the wheel, and checks
#      every answer against the package's own version check (scripts/check_resolver.py);
#   3. installs the wheel (not editable) beside transformers 4.57.6 (pip picks TRL 1.16) in a fresh venv, then from
#      an empty folder with no checkout runs `trl-conservative env`, the embedded default and a shipped recipe
#      (model and data swapped for the embedded tiny ones, CPU settings), and copies a recipe out.
# About 6 minutes on 2 cores with a cold pip cache.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
work=$(mktemp -d "${TMPDIR:-/tmp}/trl-conservative-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$SECONDS

# 1. Build and check every distribution. A recent pip for the tools (its resolver is the one users have, and much
# faster at backtracking than the pip a fresh venv brings).
python3 -m venv "$work/tools"
"$work/tools/bin/python" -m pip install -q --retries 5 --upgrade pip build twine
dist="$work/dist"
for project in . plugins/*/; do
  [ -f "$project/pyproject.toml" ] || continue
  "$work/tools/bin/python" -m build -q --outdir "$dist" "$project" >/dev/null
done
"$work/tools/bin/twine" check --strict "$dist"/*
# Each distribution holds its LICENSE; the main sdist holds no tests/ (they need the repository around them).
"$work/tools/bin/python" - "$dist" <<'PY'
import sys, tarfile, zipfile
from pathlib import Path

problems = []
for path in sorted(Path(sys.argv[1]).iterdir()):
    if path.suffix == ".whl":
        names = zipfile.ZipFile(path).namelist()
        has_license = any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    else:
        names = tarfile.open(path).getnames()
        has_license = any(n.count("/") == 1 and n.endswith("/LICENSE") for n in names)
        if path.name.startswith("trl_conservative-") and any(n.split("/")[1:2] == ["tests"] for n in names):
            problems.append(f"{path.name} ships tests/, which need the repository around them")
    if not has_license:
        problems.append(f"no LICENSE in {path.name}")
sys.exit("check_wheel: " + "; ".join(problems) if problems else None)
PY
wheel=$(ls "$dist"/trl_conservative-*.whl)
echo "check_wheel: built and checked $(ls "$dist" | wc -l) distributions ($((SECONDS - started)) s)"

# 2. The resolver matrix.
.venv/bin/python scripts/check_resolver.py "$wheel" --pip-python "$work/tools/bin/python"
echo "check_wheel: resolver matrix done ($((SECONDS - started)) s)"

# 3. The wheel from anywhere: a fresh venv, an empty folder, the user's own cache.
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --retries 5 torch==2.13.0  # pinned: unpinned pulls a multi-GB CUDA build
"$work/venv/bin/python" -m pip install -q --retries 5 "$wheel" "transformers==4.57.6"
mkdir "$work/elsewhere"
cd "$work/elsewhere"
bin="$work/venv/bin"
"$bin/python" -c "import sys, trl_conservative; sys.exit(not trl_conservative.__file__.startswith('$work/venv/'))"  # not the checkout
"$bin/trl-conservative" env | tee env.txt
grep -q "TRL line in use: fused_head" env.txt
"$bin/trl-conservative" run --max_steps 10 --eval_steps 5 --output_dir default-out
test -f default-out/run_summary.json
"$bin/trl-conservative" run --config builtin:llama31_8b_cdpo_lora --model_name_or_path builtin:tiny-arithmetic \
  --dataset_name builtin:arithmetic --dtype float32 --bf16 false --use_cpu true --max_steps 4 \
  --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --gradient_accumulation_steps 1 --max_length 16 \
  --eval_strategy steps --eval_steps 4 --save_strategy no --report_to none --output_dir recipe-out
test -f recipe-out/run_summary.json
"$bin/trl-conservative" examples copy losses/cdpo --to copies >/dev/null
test -f copies/losses/cdpo.yaml
test -f "$("$bin/trl-conservative" examples path accelerate/multi_gpu)"
echo "check_wheel: the wheel ran from $PWD with no checkout ($((SECONDS - started)) s)"
