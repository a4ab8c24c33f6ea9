"""MkDocs hooks (mkdocs.yml `hooks:`): the benchmark figures, which live beside `benchmarks/RESULTS.md`.

`docs/benchmarks.md` embeds `benchmarks/RESULTS.md` (pymdownx.snippets), so the numbers are written in one place;
its figures are linked relative to that file. They are added to the site here, at the site's root beside the page's
source, so the embedded links resolve and `mkdocs build --strict` checks them like any other link.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def on_files(files: Files, config: Any) -> Files:
    for figure in sorted(BENCHMARKS.glob("*.png")):
        files.append(
            File(
                figure.name,
                src_dir=str(BENCHMARKS),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
