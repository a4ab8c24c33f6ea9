"""Every environment pip resolves from our requirements must be one trl-conservative runs in, or pip must refuse it.

For each Python from 3.10 to 3.13 and each starting point a user has (a fresh environment; transformers 4 or 5
pinned beside us; TRL 0.23 or TRL 1.16 pinned), asks pip's resolver what it would install beside the built wheel
(`pip install --dry-run --report`, binary wheels only, for that Python) and feeds the resolved TRL and transformers
versions to `trl_compat.stack_problem`, the check the package itself makes at import. A resolution pip refuses is
fine; one the package would refuse fails this script, unless it is a known gap listed in KNOWN_GAPS (which fails
too when the gap closes, so the list stays true).

    .venv/bin/python scripts/check_resolver.py dist/trl_conservative-*.whl

pip's `--python-version` picks wheels and `Requires-Python` for that Python, but evaluates environment markers
(`python_version < '3.11'` in our requirements) against the Python running pip. So pip runs here under a shim that
makes its marker environment that of the target Python too (`MARKERS_AS`), which is what pip on that Python does.

Reads PyPI (metadata only: pip fetches no wheel it can read the metadata of separately), with one pip cache shared by
the resolutions; a few minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from trl_conservative.trainer.trl_compat import stack_problem

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# Starting point -> the requirements given beside ours. torch is pinned to the release every machine here has, so
# the answer does not depend on which torch pip would pick (nothing here constrains torch against TRL).
STARTS: dict[str, tuple[str, ...]] = {
    "fresh": (),
    "transformers 4.x": ("transformers==4.57.6",),
    "transformers 5.x": ("transformers>=5,<6",),
    "TRL 0.23": ("trl==0.23.0",),
    "TRL 1.16": ("trl==1.16.0",),
}
# (start, python) -> why a refused stack still resolves there. TRL 0.23-0.28 declare `transformers>=4.56.1` with no
# upper bound, yet cannot import beside transformers 5; pip's markers cannot make our transformers bound depend on
# the TRL release, and capping transformers below 5 for everyone would refuse TRL 1.16's own stack. Where
# transformers 5 installs (Python >= 3.11), `pip install trl-conservative trl==0.23.0` therefore takes the newest
# transformers; `run` then exits 2 naming the fix (`pip install "transformers>=4.56.1,<5"`). Naming both pins, as the
# seed stack does, resolves to a stack that runs.
TRL_0X_GAP = "TRL 0.2x declares no transformers bound; our markers cannot tie transformers to the TRL release"
KNOWN_GAPS: dict[tuple[str, str], str] = {("TRL 0.23", python): TRL_0X_GAP for python in ("3.11", "3.12", "3.13")}
# Runs pip with the marker environment of Python argv[1] (python_version, python_full_version), then pip's argv[2:].
MARKERS_AS = """
import sys
from pip._vendor.packaging import markers
target, running = sys.argv.pop(1), markers.default_environment
def default_environment():
    return {**running(), "python_version": target, "python_full_version": target + ".0"}
markers.default_environment = default_environment
from pip._internal.cli.main import main
sys.exit(main(sys.argv[1:]))
"""
REFUSED_BY_PIP = ("ResolutionImpossible", "Could not find a version that satisfies", "conflicting dependencies")


@dataclass
class Outcome:
    start: str
    python: str
    versions: dict[str, str]  # resolved distribution -> version; empty when pip refused
    problem: str | None  # what the package would say, or pip's refusal when `refused`
    refused: bool = False
    seconds: float = 0.0


PIP_PYTHON = sys.executable  # the interpreter whose pip resolves: --pip-python


def resolve(wheel: Path, start: str, python: str, cache: Path) -> Outcome:
    started = time.monotonic()
    outcome = _resolve(wheel, start, python, cache)
    outcome.seconds = time.monotonic() - started
    return outcome


def _resolve(wheel: Path, start: str, python: str, cache: Path) -> Outcome:
    requirements = [str(wheel), "torch==2.13.0", *STARTS[start]]
    with tempfile.TemporaryDirectory(prefix="resolve-") as tmp:
        report = Path(tmp) / "report.json"
        command = [
            PIP_PYTHON, "-c", MARKERS_AS, python, "install", "--dry-run", "--quiet", "--ignore-installed",
            "--cache-dir", str(cache),
            "--only-binary=:all:", "--python-version", python, "--target", str(Path(tmp) / "target"),
            "--report", str(report), "--disable-pip-version-check", *requirements,
        ]  # fmt: skip
        for attempt in range(3):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                installs = json.loads(report.read_text())["install"]
                versions = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}
                problem = stack_problem(versions.get("trl", "none"), versions.get("transformers", "none"))
                return Outcome(start, python, versions, problem)
            if any(sign in done.stderr for sign in REFUSED_BY_PIP):
                reason = next(line for line in done.stderr.splitlines() if line.startswith("ERROR")) or "refused"
                return Outcome(start, python, {}, reason, refused=True)
            time.sleep(5 * (attempt + 1))  # a registry hiccup, not an answer
        sys.exit(f"check_resolver: pip failed for {start} on Python {python}:\n{done.stderr[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wheel", type=Path, help="the built trl-conservative wheel")
    parser.add_argument("--jobs", type=int, default=4, help="resolutions run at once (default 4)")
    parser.add_argument("--python", action="append", choices=PYTHONS, help="only this Python (repeatable)")
    parser.add_argument("--start", action="append", choices=list(STARTS), help="only this starting point")
    parser.add_argument("--pip-python", default=sys.executable, help="run the pip of this interpreter")
    args = parser.parse_args()
    global PIP_PYTHON
    PIP_PYTHON = args.pip_python
    cases = [(s, p) for p in args.python or PYTHONS for s in args.start or STARTS]
    with tempfile.TemporaryDirectory(prefix="resolve-cache-") as cache, ThreadPoolExecutor(args.jobs) as pool:
        outcomes = list(pool.map(lambda case: resolve(args.wheel.resolve(), *case, Path(cache)), cases))
    failures = []
    for o in outcomes:
        gap = KNOWN_GAPS.get((o.start, o.python))
        stack = f"trl {o.versions.get('trl')}, transformers {o.versions.get('transformers')}"
        if o.refused:
            verdict = f"refused by pip ({o.problem})"
        elif o.problem is None:
            verdict = f"{stack}: runs"
        else:
            verdict = f"{stack}: REFUSED BY THE PACKAGE ({o.problem})"
        if gap is not None:
            verdict += f" [known gap: {gap}]"
            if o.problem is None or o.refused:
                failures.append(f"{o.start} on Python {o.python}: the known gap closed; remove it from KNOWN_GAPS")
        elif o.problem is not None and not o.refused:
            failures.append(f"{o.start} on Python {o.python}: pip resolves {stack}, which the package refuses")
        print(f"Python {o.python:5} {o.start:17} {verdict} ({o.seconds:.0f} s)")
    for failure in failures:
        print(f"check_resolver: FAIL: {failure}", file=sys.stderr)
    runs = sum(o.problem is None and not o.refused for o in outcomes)
    print(f"check_resolver: {len(outcomes)} resolutions: {runs} run, {sum(o.refused for o in outcomes)} refused by pip")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
