"""Log records held back while a block runs, and replayed only if it succeeds (the CLI's settings parse)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["deferred_logs"]


@contextlib.contextmanager
def deferred_logs(name: str) -> Iterator[None]:
    """Hold back the log records of logger `name` while the block runs; replay them only if it succeeds.

    The CLI parses its settings inside this for `trl_conservative.registry`: a broken plugin's warning is shown on
    a successful run, but when parsing fails the one-line error (which names failed plugins itself) stands alone.
    """
    held: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    target = logging.getLogger(name)
    handler, propagate = Hold(), target.propagate
    target.addHandler(handler)
    target.propagate = False
    try:
        yield
    finally:
        target.removeHandler(handler)
        target.propagate = propagate
    for record in held:  # reached only without an exception
        target.handle(record)
