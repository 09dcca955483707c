"""Mount-wide bounds on memory that grows with the number of open files.

Owns: :class:`ByteBudget`, a count of bytes that many holders share under one
limit. A holder asks before it grows (:meth:`ByteBudget.take`) and gives the
bytes back when it lets them go; when the budget is spent it falls back to a
path that does not hold memory: a read arena to reading lean
(``fsobj.fs.reader``), a staging in memory to its spill file
(``fsobj.fs.staging``). Thread-safe: stagings are also closed from worker
threads.
"""

from __future__ import annotations

import threading

ARENA_BUDGET = 64 * 1024 * 1024  # all of a mount's read arenas together
STAGING_BUDGET = 64 * 1024 * 1024  # all of a mount's in-memory stagings together


class ByteBudget:
    """``limit`` bytes shared by many holders; ``used`` is what they hold now."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Count ``n`` more bytes if they fit; False (nothing counted) if not."""
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n
            assert self.used >= 0, "a budget got back more than it gave"
