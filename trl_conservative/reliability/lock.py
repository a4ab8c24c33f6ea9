"""`RunLock`: one run at a time in an output folder.

`trl-conservative run` holds `output_dir/.trl_conservative.lock` from the moment its settings are checked until its
report is written. The lock is an exclusive `flock` on that file, which the kernel drops when the process dies
(even by SIGKILL), and the file names its holder (run id, pid, host, process start time, start time, command):

- a second run on the same folder cannot take the `flock` and refuses with one line naming the holder;
- a lock file left by a killed run is *stale*: the `flock` is free and its pid is gone (or is another process
  now, told apart by its start time) on this host. The new run says so in one log line and takes over;
- a lock file written on another host (a shared file system) cannot be checked from here: refused, naming the
  host and pid and the file to delete once that run is known to be gone.

Only the main process of a multi-process run takes the lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from trl_conservative.errors import ConfigError

__all__ = [
    "LOCK_FILE",
    "LockHolder",
    "RunLock",
    "process_alive",
    "read_holder",
    "this_process",
]

LOCK_FILE = ".trl_conservative.lock"


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a lock: enough to tell whether it is still running."""

    run_id: str
    pid: int
    host: str
    started: str
    process_start: int | None = None  # /proc/<pid>/stat start time, to tell a reused pid apart
    command: str = ""

    def describe(self) -> str:
        return f"run {self.run_id} (pid {self.pid} on host {self.host!r}, started {self.started})"


def this_process(run_id: str) -> LockHolder:
    return LockHolder(
        run_id=run_id,
        pid=os.getpid(),
        host=socket.gethostname(),
        started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        process_start=_process_start(os.getpid()),
        command=" ".join(["trl-conservative", *sys.argv[1:]])[:500],
    )


def read_holder(path: str | os.PathLike[str]) -> LockHolder | None:
    """The holder recorded in a lock file, or None (no file, empty or unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return LockHolder(**data)
    except (OSError, ValueError, TypeError):
        return None


def process_alive(pid: int, process_start: int | None = None) -> bool:
    """Whether `pid` runs on this host (and, when `process_start` is known, is the same process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    if process_start is not None:
        now = _process_start(pid)
        if now is not None and now != process_start:
            return False  # the pid was reused by a later process
    return True


def _process_start(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime), counted after the parenthesised command name, which may contain spaces.
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


class RunLock:
    """The lock of one run on `output_dir`; `acquire()` raises `ConfigError` when another run holds it."""

    def __init__(self, output_dir: str | os.PathLike[str], run_id: str) -> None:
        self.folder = Path(output_dir)
        self.path = self.folder / LOCK_FILE
        self.holder = this_process(run_id)
        self._fd: int | None = None
        self._created_folder = False

    def acquire(self, *, log: Callable[[str], None] = print) -> RunLock:
        import fcntl

        self._created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ConfigError(self._busy_message(read_holder(self.path))) from None
            except OSError as exc:  # a file system without flock: fall back to the pid check alone
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:  # else the previous holder removed the file in between: lock the new one
                break
            os.close(fd)
        self._fd = fd
        try:
            self._check_previous(read_holder(self.path), log)
            data = json.dumps(asdict(self.holder), indent=2).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except BaseException:
            self._fd = None
            os.close(fd)
            raise
        return self

    def probe(self) -> None:
        """Refuse (`ConfigError`) now if another run holds the lock, without taking it or writing anything.

        `trl-conservative run` probes before it loads the model, so a busy folder costs no loading time; the lock
        itself is taken (and checked again) once the trainer is built.
        """
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return  # no lock file (or no folder yet): free
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(self._busy_message(read_holder(self.path))) from None
            except OSError:
                pass
            self._check_previous(read_holder(self.path), lambda message: None)
        finally:
            os.close(fd)

    def _check_previous(self, previous: LockHolder | None, log: Callable[[str], None]) -> None:
        if previous is None or (previous.pid, previous.host) == (self.holder.pid, self.holder.host):
            return
        if previous.host != self.holder.host:
            raise ConfigError(
                f"output_dir {str(self.folder)!r} is locked by {previous.describe()}, on another host, which this "
                f"host cannot check. Wait for that run to finish; if it is no longer running, delete "
                f"{str(self.path)!r}."
            )
        if process_alive(previous.pid, previous.process_start):
            raise ConfigError(self._busy_message(previous))
        log(
            f"Taking over a stale lock on {str(self.folder)!r}: {previous.describe()} is no longer running "
            "(it was killed or crashed before releasing it)."
        )

    def _busy_message(self, holder: LockHolder | None) -> str:
        who = holder.describe() if holder is not None else "another process (its details are being written)"
        return (
            f"output_dir {str(self.folder)!r} is in use by {who}. Wait for it to finish, or choose another "
            "output_dir: two runs in one folder would overwrite each other's checkpoints and model."
        )

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # drops the flock
        self._fd = None
        if self._created_folder:  # a run that wrote nothing leaves no empty folder behind
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
