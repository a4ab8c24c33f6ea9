"""Plain-text formatting shared by the report, the live line, the summary's warnings and the model card.

One number formatter (`fmt_number`) so a value reads the same wherever it is shown.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = ["SPARK_CHARS", "citation_title", "fmt_duration", "fmt_number", "sparkline"]

SPARK_CHARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 24) -> str:
    """Values as block characters, lowest to highest; longer series are averaged into `width` buckets.

    Non-finite values show as "!" so a NaN is visible in the trend.
    """
    if not values:
        return ""
    if len(values) > width:
        buckets = []
        for i in range(width):
            chunk = values[i * len(values) // width : (i + 1) * len(values) // width]
            buckets.append(math.nan if any(not math.isfinite(v) for v in chunk) else sum(chunk) / len(chunk))
        values = buckets
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    span = hi - lo
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append("!")
        elif span == 0:
            out.append(SPARK_CHARS[0])
        else:
            out.append(SPARK_CHARS[min(len(SPARK_CHARS) - 1, int((v - lo) / span * len(SPARK_CHARS)))])
    return "".join(out)


def fmt_number(value: float | None) -> str:
    """4 significant digits; scientific below 1e-3 and from 1e5 on; "-" for None, "nan"/"inf" as they are."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def citation_title(citation: str | None) -> str:
    """The `title` of a BibTeX entry (the first one), else its first line; "-" without a citation."""
    if not citation or not citation.strip():
        return "-"
    match = re.search(r"title\s*=\s*[{\"]+(.+?)[}\"]+\s*,?\s*$", citation, flags=re.MULTILINE | re.IGNORECASE)
    title = match.group(1).strip() if match else citation.strip().splitlines()[0]
    return re.sub(r"\\(.)", r"\1", title)  # BibTeX escapes such as \&
