"""Which node instances are provably dead, so their work can be taken over at once.

Each instance holds an exclusive `flock` on its own file beside a SQLite database for as long
as its process lives; the kernel drops the lock when the process dies, however it dies. A
lock that can be taken therefore belongs to a dead instance: a node restarted on the same
data releases its predecessor's reservations and finishes its wallet operations at start,
without waiting for a heartbeat to age. Where no lock file is found (another machine on a
shared Postgres, or an instance from before this mechanism) the answer is "unknown", and
callers fall back to heartbeats.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

_SAFE_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


class InstanceLocks:
    """Lock files of the instances sharing one database, in one directory."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._held: int | None = None
        self._own: Path | None = None

    def _path(self, instance_id: str) -> Path | None:
        if self.directory is None or not _SAFE_ID.match(instance_id):
            return None
        return self.directory / f"{instance_id}.lock"

    def hold(self, instance_id: str) -> None:
        """Take this instance's lock for the life of the process."""
        path = self._path(instance_id)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._held, self._own = fd, path

    def is_dead(self, instance_id: str) -> bool | None:
        """True if the instance's process is gone, False if alive, None if unknown here."""
        path = self._path(instance_id)
        if path is None:
            return None
        if path == self._own:
            return False
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing drops a lock we may have taken
        return True

    def release(self) -> None:
        """Let go of this instance's lock at a clean stop."""
        if self._held is not None:
            with contextlib.suppress(FileNotFoundError):
                if self._own is not None:
                    self._own.unlink()
            os.close(self._held)
            self._held = self._own = None
