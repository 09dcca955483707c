"""The commit helper: a second process that does the group commit's store work.

Owns: starting, feeding and stopping one helper process per mount, and the
messages between the two. The daemon's request loop and a commit running in
one of its threads share one Python interpreter lock, so on a busy mount each
slows the other (docs/mount.md, "Commit helper"). The helper process runs the
same ``fsobj.fs.work`` functions on its own ``Store`` of the same store
directory (the store is safe for several processes: SQLite WAL, blobs written
under temporary names, optimistic locking), on another core.

What crosses over: the work function's name (one of :data:`FUNCTIONS`) and
its arguments, pickled, with each ``PartitionView`` replaced by its partition
id (the helper opens its own view, with its own keys); back comes the
``work.Done`` result or the exception, and the index generations the helper's
transactions produced, which the daemon counts as its own (so its own commits
never look like another writer's). Only arguments that are plain data cross:
a commit whose bytes wait in a spill file runs in the daemon as before.

Lifetime: the daemon starts the helper at mount time and sends it the
unlocked identity over the pipe (never written anywhere). The helper answers
one request at a time and exits when its input closes, so it never outlives
the daemon, even after ``kill -9`` (it finishes the transaction it is in
first). It ignores SIGINT and SIGTERM: the daemon's shutdown drains through
it, then closes the pipe. If the helper dies, the request that was running
fails with :class:`HelperError` and the daemon does the work itself from
then on.

Wire format: each message is an 8-byte big-endian length, then a pickle.
Both ends are the same program started by the same user over a private pipe;
pickle is not used for anything read from disk or the network.
"""

from __future__ import annotations

import copyreg
import gc
import importlib
import io
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fsobj import crypto
from fsobj.fs import work
from fsobj.store import PartitionView, Store
from fsobj.store.payload import keep_chunk_buffers

log = logging.getLogger("fsobj.fs")

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "commit_batch": work.commit_batch,
    "change_names": work.change_names,
}
_LEN = struct.Struct(">Q")


GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Collect cycles less often in the mount's two long-running processes.

    The daemon holds a few hundred thousand objects (trees, version and inode
    caches), and Python's default thresholds (700, 10, 10) ran a full
    collection of all of them every few thousand requests. Measured over
    creating and removing 10,000 files: 668 collections took 0.66 s of the
    daemon's request loop, 5 of them full ones of 95 ms each; with these
    thresholds 5 young-generation collections took 0.11 s. Unpickling the
    helper's replies, which allocates many small objects, went from 18.8 to
    3.2 µs per version. Cycles are still collected, later.
    """
    gc.set_threshold(*GC_THRESHOLDS)


class HelperError(Exception):
    """The helper process is gone, or answered something that is not a reply."""


class NotPortable(Exception):
    """The arguments cannot cross to the helper (e.g. bytes that wait in a spill file):
    nothing was sent; do the work here."""


# ---------------------------------------------------------------- messages


def _view_ref(partition_id: bytes) -> PartitionView:
    """What a pickled ``PartitionView`` names; only :class:`_Unpickler` resolves it."""
    raise pickle.UnpicklingError("a partition view crossed to a process without a store")


def _reduce_view(view: PartitionView) -> tuple[Callable[[bytes], PartitionView], tuple[bytes]]:
    return _view_ref, (view.id,)


# A dispatch table, not ``persistent_id``: the pickler would call a Python
# ``persistent_id`` for every object it pickles, which made pickling the versions
# of an ``rm -r`` batch 2.6 times slower (28.5 against 11.0 µs per version).
_DISPATCH = {**copyreg.dispatch_table, PartitionView: _reduce_view}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: IO[bytes], store: Store | None) -> None:
        super().__init__(f)
        self.store = store
        self._views: dict[bytes, PartitionView] = {}  # one view per partition per message

    def find_class(self, module: str, name: str) -> Any:
        # by the name the daemon pickles it under (the helper itself runs as __main__)
        if module == "fsobj.fs.helper" and name == "_view_ref":
            return self._view
        return super().find_class(module, name)

    def _view(self, partition_id: bytes) -> PartitionView:
        if self.store is None:
            return _view_ref(partition_id)
        view = self._views.get(partition_id)
        if view is None:
            view = self._views[partition_id] = self.store.partition(partition_id)
        return view


def _frame(obj: object) -> memoryview:
    """One message: the length, then the pickle (pickled in place behind a placeholder)."""
    buf = io.BytesIO()
    buf.write(_LEN.pack(0))
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(obj)
    data = buf.getbuffer()
    data[: _LEN.size] = _LEN.pack(len(data) - _LEN.size)
    return data


def _send(fd: int, obj: object) -> None:
    _write_all(fd, _frame(obj))


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]  # a pipe may take part of it (a signal, a full pipe)


def _read_exactly(fd: int, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = os.read(fd, min(n - got, 1 << 20))
        if not part:
            raise EOFError("the other end closed the pipe")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _receive(fd: int, store: Store | None) -> object:
    (n,) = _LEN.unpack(_read_exactly(fd, _LEN.size))
    return _Unpickler(io.BytesIO(_read_exactly(fd, n)), store).load()


def _error_state(e: BaseException) -> tuple[str, str, tuple[object, ...], dict[str, object], str]:
    return (type(e).__module__, type(e).__qualname__, e.args, dict(vars(e)), traceback.format_exc())


def _rebuild_error(
    module: str, name: str, args: tuple[object, ...], state: dict[str, object], tb: str
) -> BaseException:
    """The helper's exception as the same class here (fsobj's own and builtins only)."""
    cls: object = None
    if module == "builtins" or module.startswith("fsobj."):
        cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        return HelperError(f"the commit helper failed: {module}.{name}{args!r}\n{tb}")
    try:
        e = cls(*args)  # OSError sets errno from its arguments
    except Exception:
        e = cls.__new__(cls)
        e.args = args
    e.__dict__.update(state)
    return e


# ---------------------------------------------------------------- the daemon's end


class CommitHelper:
    """The daemon's handle on its helper process (blocking calls: use from worker threads)."""

    def __init__(
        self, store_root: Path, identity: crypto.Identity, own: Callable[[list[int]], None] = lambda gens: None
    ) -> None:
        self._own = own  # told the generations each request produced, before it counts as answered
        package_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "fsobj.fs.helper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            env=env,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._to, self._from = self._proc.stdin.fileno(), self._proc.stdout.fileno()
        self._lock = threading.Lock()
        self.in_flight = 0  # requests sent and not yet answered (read by the trio thread)
        self.broken = False
        try:
            _send(self._to, (str(store_root), identity.name, identity.private_bytes()))
            reply = _receive(self._from, None)
        except (OSError, EOFError, pickle.PickleError) as e:
            self.close()
            raise HelperError(f"the commit helper did not start: {e}") from e
        if reply != "ready":
            self.close()
            raise HelperError(f"the commit helper did not start: {reply}")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def call(self, fn: Callable[..., Any], *args: object) -> work.Done[Any]:
        """Run ``work.run(store, fn, *args)`` in the helper. Raises what the work raised,
        :class:`NotPortable` (nothing sent), or :class:`HelperError` if the helper is gone
        (then the work may or may not have been committed)."""
        name = fn.__name__
        if FUNCTIONS.get(name) is not fn:
            raise ValueError(f"{name} does not run in the commit helper")
        try:
            message = _frame((name, args))  # before taking the lock: NotPortable sends nothing
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise NotPortable(f"arguments of {name} cannot cross to the helper: {e}") from e
        with self._lock:
            if self.broken:
                raise HelperError("the commit helper is gone")
            self.in_flight += 1
            try:
                _write_all(self._to, message)
                reply = _receive(self._from, None)
                if not isinstance(reply, tuple) or not reply or reply[0] not in ("ok", "error"):
                    raise ValueError(f"a reply of type {type(reply).__name__}")
                if reply[0] == "ok":
                    self._own(reply[2])
            except (OSError, EOFError, pickle.PickleError, ValueError) as e:
                self.broken = True
                raise HelperError(f"the commit helper is gone ({e}); exit status {self._proc.poll()}") from e
            finally:
                self.in_flight -= 1
        if reply[0] == "error":
            raise _rebuild_error(*reply[1:])
        return reply[1]

    def close(self, timeout: float = 30.0) -> None:
        """Close its input (it exits after the request it is in) and wait for it."""
        for f in (self._proc.stdin, self._proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the commit helper (pid %d) did not exit; killing it", self._proc.pid)
            self._proc.kill()
            self._proc.wait()


# ---------------------------------------------------------------- the helper's end


def serve(inp: int, out: int) -> int:
    """The helper's main loop: one request at a time until its input closes."""
    try:
        root, name, secret = _receive(inp, None)  # type: ignore[misc]
        store = Store.open(Path(root), crypto.Identity.from_private_bytes(name, secret))
    except EOFError:
        return 0
    except Exception as e:
        _send(out, f"{type(e).__name__}: {e}")
        return 1
    _send(out, "ready")
    with store:
        while True:
            try:
                fn_name, args = _receive(inp, store)  # type: ignore[misc]
            except EOFError:
                return 0
            try:
                done = work.run(store, FUNCTIONS[fn_name], *args)
                reply: tuple[object, ...] = ("ok", done, sorted(store.index.take_own()))
            except BaseException as e:  # every failure goes back to the daemon, which decides
                store.index.take_own()
                reply = ("error", *_error_state(e))
            try:
                _send(out, reply)
            except (pickle.PicklingError, TypeError, AttributeError) as e:
                _send(out, ("error", "builtins", "RuntimeError", (f"unsendable reply: {e}",), {}, ""))


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon stops us by closing the pipe
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="fsobj commit helper: %(message)s")
    keep_chunk_buffers()
    tune_gc()
    out = os.dup(1)  # the replies; anything printed by mistake goes to stderr, not into them
    os.dup2(2, 1)
    try:
        return serve(0, out)
    except OSError as e:  # the daemon went away mid-reply
        log.warning("stopping: %s", e)
        return 0


if __name__ == "__main__":
    sys.exit(main())
