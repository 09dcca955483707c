"""The request loop's reader hand-over: one task reads ``/dev/fuse`` until a handler waits.

Owns: the lock that pyfuse3's request loop takes around waiting for ``/dev/fuse``
(:class:`ReaderLock`), the way the daemon gives it to pyfuse3 (:func:`install`), and
the hook that tells it a request handler has to wait (:func:`watched`).

pyfuse3's loop (``pyfuse3.main``) runs reader tasks: a task waits until ``/dev/fuse``
is readable while holding a read lock, receives one request, starts a new reader if
no other is waiting, runs the handler, and goes back to the lock. With ``trio.Lock``
the task that has just answered finds the lock taken by the reader started for it,
parks, and is handed the lock when the next request comes: every request costs a
park, an unpark and a switch between two tasks. On a 2-core machine a ``pyfuse3``
filesystem that does nothing answered 17-22 % more requests per second with a single
reader (``pyfuse3.main(max_tasks=1)``), but one reader alone stalls every request
behind a handler that waits (for a thread, the commit helper, a lock).

:class:`ReaderLock` keeps both. A task that finds the lock free takes it without a
schedule point. A task that finds it taken (another task already watches
``/dev/fuse``) parks as a *spare* and is not handed the lock when it is released: the
task that has just answered a request takes it straight back. A spare is woken only
when a handler is about to wait (:func:`watched` sees the handler's coroutine yield
to trio): it then takes the free lock and reads the next request while the handler
waits. When no spare is parked, pyfuse3 itself has already started a new reader
(it does so whenever it receives a request while no reader is waiting). So a handler
that does not wait is answered by the task that read its request, and the next
request is read by that same task; one that waits hands ``/dev/fuse`` to another
task first.

Spares park for at most ``SPARE_NAP`` seconds at a time and then look again: the
lock being free with nobody to take it happens only when the session has ended
(pyfuse3 looks at its exit flag right after taking the lock), so this bounds how
long a spare outlives an unmount done with ``fusermount3 -u``; ``pyfuse3.terminate``
(SIGTERM, ``fsobj umount``) wakes them at once.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

import pyfuse3
import trio

SPARE_NAP = 0.2  # seconds a spare reader parks before it looks whether the lock was left free

T = TypeVar("T")


class ReaderLock:
    """pyfuse3's read lock as the daemon wants it (see the module docstring).

    Used by pyfuse3 as ``async with lock:`` around waiting for ``/dev/fuse``; only
    the task that holds it may release it."""

    def __init__(self) -> None:
        self._holder: trio.lowlevel.Task | None = None
        self._spares = trio.lowlevel.ParkingLot()
        self.handovers = 0  # spares woken for a waiting handler (tests, statistics)

    def locked(self) -> bool:
        return self._holder is not None

    @property
    def spares(self) -> int:
        return len(self._spares)

    async def __aenter__(self) -> None:
        task = trio.lowlevel.current_task()
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._holder is not None:
            with trio.move_on_after(SPARE_NAP):
                await self._spares.park()
        self._holder = task

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._holder is not trio.lowlevel.current_task():
            raise RuntimeError("the reader lock is released by a task that does not hold it")
        self._holder = None
        if exc_type is not None:  # the wait ended in an error (pyfuse3.terminate closes the fd)
            self._spares.unpark_all()

    def handler_waits(self) -> None:
        """A request handler is about to wait: a spare reader takes ``/dev/fuse``."""
        if self._holder is None and self._spares:
            self._spares.unpark()
            self.handovers += 1


_lock: ReaderLock | None = None


def install() -> ReaderLock:
    """Make pyfuse3's request loop use a :class:`ReaderLock` (call before
    ``pyfuse3.main``). pyfuse3 takes trio from its module attribute ``trio`` (the hook
    ``pyfuse3.asyncio`` uses to replace it); this gives it trio itself with ``Lock``
    returning the daemon's lock. Returns that lock."""
    global _lock
    lock = ReaderLock()
    shim = types.ModuleType("fsobj_trio_for_pyfuse3")
    shim.__getattr__ = lambda name: getattr(trio, name)  # type: ignore[method-assign]
    shim.Lock = lambda: lock  # type: ignore[attr-defined]
    pyfuse3.trio = shim  # type: ignore[attr-defined]
    _lock = lock
    return lock


def uninstall() -> None:
    global _lock
    pyfuse3.trio = trio  # type: ignore[attr-defined]
    _lock = None


@types.coroutine
def watched(coro: Coroutine[Any, Any, T]) -> Generator[Any, Any, T]:
    """Run a request handler's coroutine; the first time it yields to trio (it is
    going to wait), tell the reader lock so that another task reads the next request.
    A handler that finishes without yielding costs one generator step more."""
    try:
        trap = coro.send(None)
    except StopIteration as e:
        return e.value  # type: ignore[no-any-return]
    if _lock is not None:
        _lock.handler_waits()
    while True:
        try:
            value = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                trap = coro.throw(exc)
            except StopIteration as e:
                return e.value  # type: ignore[no-any-return]
        else:
            try:
                trap = coro.send(value)
            except StopIteration as e:
                return e.value  # type: ignore[no-any-return]
