"""Shared helpers for the benchmark scripts: the machine/versions header and section-wise RESULTS.md updates."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
_HEADER = (
    "# Benchmark results\n\nEach section is written by the script it names; rerun the script to refresh it.\n"
)


def machine_line() -> str:
    """Machine, library versions and date, for the top of a results section."""
    versions = []
    for dist in ("torch", "trl", "transformers", "peft", "trl-conservative"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        import torch

        if torch.cuda.is_available():
            cpu = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    except ImportError:
        pass
    return (
        f"Machine: {cpu}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"{', '.join(versions)}; measured {_dt.date.today().isoformat()}."
    )


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section `name` of RESULTS.md, leaving the other scripts' sections alone."""
    text = path.read_text() if path.exists() else _HEADER
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = (
        pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    path.write_text(text)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
