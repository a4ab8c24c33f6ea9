"""`LossTable`: what `trl-conservative losses` prints (registered losses, TRL's own names, failed plugins)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from .formatting import citation_title

__all__ = ["LossTable"]


@dataclass
class LossTable:
    """Registered losses: name, source and version, parameters, first line of the citation; failed plugins."""

    infos: Sequence[Any]  # plugins.LossInfo
    failures: dict[str, str] = field(default_factory=dict)
    native: Iterable[str] = ()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = Table(title="Registered losses", title_justify="left", show_lines=True)
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("source", ratio=2)
        table.add_column("parameters", ratio=2)
        table.add_column("about", ratio=3)
        for info in self.infos:
            source = info.source + (f"\n{info.version}" if info.version else "")
            params = "\n".join(
                f"{p.name}: {p.type.__name__} = {p.default!r}" + (f"\n  {p.help}" if p.help else "")
                for p in info.params
            )
            description = getattr(info, "description", "") or ""
            about = "\n".join(x for x in (description, f"cite: {citation_title(info.citation)}") if x)
            table.add_row(info.name, source, params or "-", about)
        items: list[Any] = [table]
        native = sorted(self.native)
        if native:
            items.append(Text("Also accepted, computed by TRL itself: " + ", ".join(native)))
        if self.failures:
            failed = Table(title="Plugins that failed to load", title_justify="left")
            failed.add_column("plugin", style="bold")
            failed.add_column("error", overflow="fold")
            for name, error in sorted(self.failures.items()):
                failed.add_row(name, error)
            items.append(failed)
        yield Group(*items)
