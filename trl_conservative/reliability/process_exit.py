"""End a multi-process run without the interpreter teardown that can abort a finished process.

Under torchrun / accelerate with gloo (CPU), torch's process-group worker threads release the last reference to
a finished collective's tensors on their own, some time after the main thread saw it complete. When that happens
while Python is already finalizing, the worker thread cannot take the GIL, is unwound, and the process dies with
"terminate called without an active exception" (SIGABRT) after every byte of work was done. Measured on TRL
0.23 / torch 2.13 with stock `trl.DPOTrainer`: 6 of 60 two-process runs. The launcher then reports the run as
failed and SIGTERMs the other ranks, which may still be writing the report.

`leave_process_group` is the last thing a process of a multi-process run does: wait until every process is done
(on success), do what interpreter exit would do that matters (join the non-daemon threads, run the atexit
handlers, through which trackers such as wandb finish their runs, flush the standard streams) and then end the
process at once with `os._exit`. A single-process run is not touched: the call returns the status.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

__all__ = ["in_process_group", "leave_process_group"]


def in_process_group() -> bool:
    """Whether this process is one of a `torch.distributed` process group."""
    if "torch.distributed" not in sys.modules:
        return False  # never imported, so never initialized (and `--help` stays free of torch)
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def leave_process_group(status: int, *, wait: bool) -> int:
    """Return `status` outside a process group; inside one, end this process with it (never returns).

    `wait=True` first waits for every process (use it when all of them finished normally: a process that failed
    alone would never arrive, so an error path must pass `wait=False`).
    """
    if not in_process_group():
        return status
    if wait:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon and thread.is_alive():
            thread.join()  # as interpreter exit would
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to save
            pass
    os._exit(status)
