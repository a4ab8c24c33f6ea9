"""How a process of a multi-process run ends (`trl_conservative.reliability.process_exit`).

Interpreter teardown under gloo can abort a finished process (SIGABRT, "terminate called without an active
exception": 6 of 60 stock two-process TRL runs here), so a process in a process group ends with `os._exit` after
doing what a normal exit would do that matters. Proven in a real (one-process, gloo) group.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from trl_conservative.reliability.process_exit import in_process_group, leave_process_group

SCRIPT = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from pathlib import Path
    import torch.distributed as dist
    from trl_conservative.reliability.process_exit import in_process_group, leave_process_group

    out = Path(sys.argv[1])
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=0, world_size=1)
    assert in_process_group()
    atexit.register(lambda: (out / "atexit").write_text("ran"))

    def late_writer():
        time.sleep(0.5)
        (out / "thread").write_text("joined")

    threading.Thread(target=late_writer).start()  # not a daemon: a normal exit waits for it
    print("buffered line", end="")  # no newline: still in the buffer unless flushed
    leave_process_group(7, wait=True)
    (out / "after").write_text("leave_process_group returned")
    """
)


def test_outside_a_process_group_it_returns_the_status() -> None:
    assert not in_process_group()
    assert leave_process_group(3, wait=True) == 3


def test_in_a_process_group_it_exits_with_the_status_after_what_a_normal_exit_does(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert proc.stdout.endswith("buffered line")
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "joined"
    assert not (tmp_path / "after").exists()
