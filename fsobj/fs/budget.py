"""Mount-wide bounds on memory that grows with the number of open files.

Owns: :class:`ByteBudget`, a count of bytes that many holders share under one
limit, and :class:`Share`, what one holder has counted in it. A holder asks
before it grows (:meth:`Share.grow_to`) and gives the bytes back when it lets
them go (:meth:`Share.shrink_to`); when the budget is spent it falls back to a
path that does not hold memory: a read arena to reading lean
(``fsobj.fs.reader``), a staging in memory to its spill file
(``fsobj.fs.staging``). Thread-safe: stagings are also closed from worker
threads.
"""

from __future__ import annotations

import threading

READ_BUDGET = 64 * 1024 * 1024  # a mount's read arenas and the chunks its readers cache, together
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


class Share:
    """The bytes one holder has counted in ``budget`` (None: nothing is counted)."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: ByteBudget | None) -> None:
        self.budget = budget
        self.held = 0

    def grow_to(self, n: int) -> bool:
        """Hold ``n`` bytes if the budget has room for the growth; False (nothing changes) if not."""
        if self.budget is None or n <= self.held:
            return True
        if not self.budget.take(n - self.held):
            return False
        self.held = n
        return True

    def shrink_to(self, n: int) -> None:
        """Give back what is held beyond ``n`` bytes."""
        if self.budget is not None and self.held > n:
            self.budget.give(self.held - n)
            self.held = n
