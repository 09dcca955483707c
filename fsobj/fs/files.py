"""File contents: open, read, write, truncate, flush, fsync, release, and commits.

Owns: when an open file becomes a version. A file commits when the last
handle that wrote to it is closed (``flush`` of a handle that wrote, or
``release``), on ``fsync``, and at unmount; exactly one version per commit.
If the object moved on underneath (another mount, the CLI), the writer's data
is committed as ``<key>.conflict-<hash8>`` and the event is logged.
"""

from __future__ import annotations

import contextlib
import errno
import os

import trio

from fsobj.errors import ConflictError, NotFoundError
from fsobj.fs import work
from fsobj.fs.inodes import NodeKey
from fsobj.fs.openfile import OpenFile
from fsobj.fs.staging import BASE, DIRTY
from fsobj.fs.state import (
    MountState,
    PartState,
    log,
    oserror,
)
from fsobj.fs.stream import PayloadStream
from fsobj.fs.tree import (
    Ref,
)
from fsobj.store import Version


class FileOps(MountState):
    """Operations on file contents and their commits."""

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """A new handle: (fh, keep_cache)."""
        key = self._key(ino)
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        existed = ino in self.files
        of = await self._open_file(ino, key, writable)
        fh = self._add_handle(of, writable)  # no await since _open_file: nobody closed it meanwhile
        try:
            if writable:
                await self._settle(of)
            if existed and key[0] == "obj" and not of.dirty:
                await self._follow_head(of, self._part(key[1]))
            if writable and flags & os.O_TRUNC:
                await self._truncate_of(of, 0)
        except BaseException:
            await self.release(fh)
            raise
        keep = existed or (of.base is not None and self.page_cache.get(ino) == of.base.hash)
        return fh, keep

    async def _open_file(self, ino: int, key: NodeKey, writable: bool) -> OpenFile:
        """The inode's open file, made if it has none (another task may make it meanwhile)."""
        if key[0] == "ver":
            if writable:
                raise oserror(errno.EROFS, "versions are read-only")
        elif key[0] == "obj":
            if writable:
                self._writable(self._part(key[1]))
        else:
            raise oserror(errno.EISDIR)
        of = self.files.get(ino)
        if of is None:
            if key[0] == "ver":
                new = await self._load_version_file(ino, key[1])
            else:
                new = await self._load_object_file(ino, self._part(key[1]), key[2])
            of = self.files.get(ino) or self._track(new)
        return of

    async def _load_version_file(self, ino: int, h: bytes) -> OpenFile:
        v = await self._version(h)
        return OpenFile(ino, v.header.partition, None, v.sort_key, v, v.header.posix, v.header.headers, read_only=True)

    async def _load_object_file(self, ino: int, ps: PartState, ref: Ref) -> OpenFile:
        await self._tree(ps)
        e = ps.heads.get(ref) if isinstance(ref, bytes) else None
        if e is None or e.tombstone:
            raise oserror(errno.ENOENT)
        v = await self._version(e.head_hash, ps.view)
        if v.header.posix.type != "file":
            raise oserror(errno.EISDIR if v.header.posix.type == "dir" else errno.EINVAL)
        of = OpenFile(ino, ps.pid, ref, v.sort_key, v, v.header.posix, v.header.headers)
        # unlinked after the kernel looked the name up, its tombstone not written yet: it
        # opens as an unlinked file does (its content reads; writes are dropped at close)
        of.unlinked = isinstance(ref, bytes) and self.committer.removing(ref)
        return of

    async def _follow_head(self, of: OpenFile, ps: PartState) -> None:
        """An open file with nothing staged follows newer versions committed elsewhere."""
        if not isinstance(of.ref, bytes) or of.base is None:
            return
        await self._tree(ps)  # the heads are only current once the tree is
        e = ps.heads.get(of.ref)
        if e is None or e.tombstone or e.seq <= of.base.header.seq:
            return
        v = await self._version(e.head_hash, ps.view)
        if not of.dirty and v.header.seq > of.base.header.seq:
            of.rebase(v)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        _, of = self._file(fh)
        if of.staging is None:
            return await self._read_base(of, off, size)
        async with of.lock:
            if of.staging is None:
                return await self._read_base(of, off, size)
            end = min(off + size, of.staging.size)
            s = of.stream
            owed = b""
            if s is not None and s.owes(off, end):  # its bytes are not in the spill file
                cut = max(off, s.owed_from)
                owed = await self._thread(s.read_owed, cut, end)
                end = cut
            out = []
            for p in of.staging.pieces(off, max(0, end - off)):
                if p.kind == DIRTY:
                    out.append(of.staging.read_dirty(p.start, p.end - p.start))
                elif p.kind == BASE:
                    out.append(await self._read_base(of, p.start, p.end - p.start, keep=True))
                else:
                    out.append(bytes(p.end - p.start))
            out.append(owed)
            return b"".join(out)

    async def _read_base(self, of: OpenFile, off: int, size: int, keep: bool = False) -> bytes | memoryview:
        """The committed version's bytes; without ``keep`` valid until the next ``await``."""
        reader = of.reader(self.store, self._view(of), self.read_budget)
        return await reader.read(off, size, self.limiter, keep) if reader is not None else b""

    async def write(self, fh: int, off: int, data: bytes) -> int:
        h, of = self._file(fh)
        if not h.writable or of.read_only:
            raise oserror(errno.EBADF)
        if h.flushed:
            await self._settle(of)
        async with of.lock:
            st = of.ensure_staging(self.opts.spill_dir, self.staging_budget)
            fresh = off == 0 and st.size == 0 and st.base_limit == 0 and not len(st.extents)
            s = of.stream
            if s is not None and (off != s.pos or s.aborted or s.failed):
                await self.end_stream(of)  # first: the spill file gets what the stream owes it
                s = None
            if s is None and fresh:
                s = of.stream = PayloadStream(self.store, self._view(of), self.stream_slots)
            if s is not None and s.spilling:
                # the stream owes these bytes to the spill file: they are copied there only
                # if the commit does not use the stream's payload (fsobj.fs.stream)
                if await self._stream_write(of, s, data):
                    st.write_elsewhere(off, len(data))
                else:
                    st.write(off, data)
            else:
                st.write(off, data)
                if s is not None and s.started and st.spill_fd is not None:
                    s.spill_to(st.spill_fd)  # the staging spilled: from the next append on
                if s is not None:
                    await self._stream_write(of, s, data)
            of.touch()
        h.flushed = False
        return len(data)

    async def _stream_write(self, of: OpenFile, s: PayloadStream, data: bytes) -> bool:
        """Sequential writes from offset 0 also go to a payload stream (written while they
        arrive); any other write stops it and the commit reads the staging. False if the
        stream failed to take ``data`` (it has ended: the staging must take it)."""
        try:
            if not s.feed(data):
                await trio.to_thread.run_sync(s.feed_blocking, data)
            return True
        except Exception:  # the stream is only a shortcut: the staging takes the data back
            log.exception("streaming the payload of %s failed; it commits from the staging", of.sort_key)
            await self.end_stream(of)
            return False

    async def end_stream(self, of: OpenFile) -> None:
        """Stop the open file's stream (lock held); the spill file gets the bytes the stream
        owes it, in a worker thread (they may have to be read back from its chunks). If
        they cannot be, the staging is lost: its reads and commit fail with EIO."""
        s, of.stream = of.stream, None
        if s is None:
            return
        try:
            with trio.CancelScope(shield=True):
                await self._thread(s.abort)
        except OSError:
            log.exception("the staged bytes of %s could not be taken back from its stream", of.sort_key)
            if of.staging is not None:
                of.staging.lose()
            raise

    async def flush(self, fh: int) -> None:
        """close(2) of a descriptor: commit if this handle wrote since its last flush and no
        other writer still has unflushed writes. A handle that did not write commits at
        release instead: ``echo x > f`` closes a dup of the descriptor before writing."""
        h, of = self._file(fh)
        wrote, h.flushed = not h.flushed, True
        if wrote:
            await self._maybe_commit(of)

    async def fsync(self, fh: int) -> None:
        _, of = self._file(fh)
        if of.dirty:
            await self._commit(of)

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        of = self.files[h.ino]
        of.handles.discard(fh)
        try:
            await self._maybe_commit(of)
        finally:
            self._close_file(of)

    def _close_file(self, of: OpenFile) -> None:
        if of.handles or self.files.get(of.ino) is not of or self.committer.queued(of):
            return
        if of.dirty and not of.unlinked:
            if of.staging is not None and of.staging.lost:  # no commit can succeed: the close said EIO
                log.error("%s: its uncommitted writes are lost (EIO); its last version stays", of.sort_key)
            else:
                # its commit failed (logged): keep the data; unmount, fsync or the next close retries
                log.error("%s could not be committed; its data is kept until a commit succeeds", of.sort_key)
                return
        of.drop_staging()
        of.close_reader()
        del self.files[of.ino]
        if of.base is not None and not of.dirty:
            self.page_cache[of.ino] = of.base.hash
        self.inodes.unpin(of.ino)

    async def _maybe_commit(self, of: OpenFile) -> None:
        """Commit (or queue for the next group commit) once no writer has unflushed writes."""
        if not self._closed_writes(of):
            return
        if self.committer.enabled and not of.unlinked and (of.staging is None or of.staging.in_memory):
            await self.committer.submit(of)
        else:
            await self._commit(of)

    async def _settle(self, of: OpenFile) -> None:
        """Before a file that waits in the group commit changes again, commit what was closed:
        every close is its own version, even within the commit window."""
        if self.committer.queued(of) and self._closed_writes(of):
            await self._commit(of)

    async def _commit(self, of: OpenFile) -> None:
        """Commit an open file's staged state as one new version (a conflict copy if it lost a race)."""
        self.committer.discard(of)
        if of.base is None:
            await self.committer.drain_removals()  # a name freed by unlink is free in the store first
        async with of.lock:
            if not self._ready(of):
                return
            ps = self._part(of.pid)
            job = self._job(of, ps)
            try:
                try:
                    done = await self._work(work.commit_data, job)
                except ConflictError as e:
                    await self._save_conflict(of, ps, job, e)
                    return
            except BaseException:
                await self._restore(of, ps)
                raise
            self._committed(of, ps, done.value, done.gen_after)

    async def _commit_many(self, ofs: list[OpenFile]) -> None:
        """Commit several open files in one transaction (the group commit); on a conflict,
        each is committed on its own so that only the loser becomes a conflict copy."""
        ofs = sorted(ofs, key=_ino)
        alone: list[OpenFile] = []
        async with contextlib.AsyncExitStack() as stack:
            for of in ofs:
                await stack.enter_async_context(of.lock)
            ready = [of for of in ofs if self._ready(of) and self._closed_writes(of)]
            if ready:
                parts = [self._part(of.pid) for of in ready]
                # files staged in memory only (release() has no spill file to empty): nothing
                # to give back if the batch fails, so the batch keeps no stream payload
                jobs = [self._job(of, ps, keep_streamed=False) for of, ps in zip(ready, parts, strict=True)]
                try:
                    jobs = await self._thread(work.settle_sources, self.store, jobs)
                    done = await self._far(work.commit_batch, jobs)
                except ConflictError:
                    alone = ready  # only the losers become conflict copies
                except Exception:
                    log.exception("group commit of %d files failed; committing them one by one", len(ready))
                    alone = ready
                else:
                    for of, ps, v in zip(ready, parts, done.value, strict=True):
                        self._committed(of, ps, v, done.gen_after)
        for of in alone:
            try:
                await self._commit(of)
            except Exception:
                log.exception("could not commit %s", of.sort_key)
        for of in ofs:
            self._close_file(of)

    def _ready(self, of: OpenFile) -> bool:
        """Whether ``of`` has something to commit (writes to an unlinked file are dropped here)."""
        if of.dirty and of.unlinked:
            log.debug("discarding writes to unlinked %s", of.sort_key)
            of.dirty = False
            of.drop_staging()
        return of.dirty

    def _job(self, of: OpenFile, ps: PartState, keep_streamed: bool = True) -> work.DataJob:
        source = of.source(self.store, ps.view, self.read_budget)
        job = work.DataJob(ps.view, of.base, of.sort_key, of.posix, of.headers, source, of.payload_changed)
        job.stream = of.take_stream()
        job.on_streamed = of.keep_streamed if keep_streamed else None
        job.on_lost = of.staging.lose if of.staging is not None else None
        return job

    async def _restore(self, of: OpenFile, ps: PartState) -> None:
        """After a failed commit (lock held): the staging gets back the bytes it released."""
        if of.streamed is not None and of.dirty:
            with trio.CancelScope(shield=True):
                await self._thread(of.restore_staging, self.store, ps.view)

    def _committed(self, of: OpenFile, ps: PartState, v: Version, gen_after: int) -> None:
        if isinstance(of.ref, int):
            self._settle_new(ps, of, v)
        self._apply(ps, [v], gen_after)
        of.committed(v)

    def _settle_new(self, ps: PartState, of: OpenFile, v: Version) -> None:
        """A file created here got its first version: its ref becomes the baseHash."""
        old = of.ref
        assert isinstance(old, int)
        if ps.tree is not None:
            ps.tree.swap(old, v.base_hash)
        of.ref = v.base_hash
        self._settled_ref(old, v.base_hash)
        self.inodes.rekey(("obj", ps.pid, old), ("obj", ps.pid, v.base_hash))

    async def _save_conflict(self, of: OpenFile, ps: PartState, job: work.DataJob, e: ConflictError) -> None:
        """The writer's data goes to ``<key>.conflict-<hash8>``; the file follows the winner."""
        done = await self._work(work.conflict_copy, job, e.current)
        copy = done.value
        self._apply(ps, [copy], done.gen_after)
        log.warning(
            "conflict: %s/%s changed while it was open for writing (%s); the writer's data was saved as %s/%s",
            ps.name,
            job.sort_key,
            e,
            ps.name,
            copy.sort_key,
        )
        of.dirty = False
        of.drop_staging()
        if isinstance(of.ref, int):
            if ps.tree is not None:
                ps.tree.remove(of.ref)
            of.unlinked = True
            return
        try:
            cur = await self._thread(work.head, self.store, ps.view, of.ref)
        except NotFoundError:
            of.unlinked = True
            return
        self._apply(ps, [cur], -1)
        if cur.tombstone:
            of.unlinked = True
        else:
            of.rebase(cur)

    async def fsyncdir(self, fh: int | None = None) -> None:
        """Make every closed file durable: commit the group-commit queue now, and the
        directory times it has not written yet. On the mount root (``fh``: a handle of
        it) it is ``sync`` of the whole mount: every open file's written data commits
        too (:meth:`flush_all`), as ``sync`` writes out the dirty data of open files on a
        local filesystem; ``sync MOUNTPOINT`` and ``fsobj sync`` do this (the kernel
        passes ``sync`` and ``syncfs`` to no FUSE daemon)."""
        opened = self.dirs.get(fh) if fh is not None else None
        if opened is not None and opened[0][0] == "root":
            await self.flush_all()
        else:
            await self.committer.drain(force=True)

    async def flush_all(self) -> None:
        """Commit every open file with staged changes, and everything waiting in the group
        commit (SIGTERM, unmount, ``fsync`` of the mount root)."""
        await self.committer.drain(force=True)
        for of in list(self.files.values()):
            if of.dirty:
                try:
                    await self._commit(of)
                except Exception:
                    log.exception("could not commit %s", of.sort_key)
        await self._save_dir_times(True)  # a conflict copy made just now adds an entry

    async def _truncate(self, ino: int, key: NodeKey, size: int) -> None:
        if key[0] != "obj":
            raise oserror(errno.EISDIR if key[0] != "ver" else errno.EROFS)
        ps = self._part(key[1])
        self._writable(ps)
        of = await self._open_file(ino, key, writable=True)
        fh = self._add_handle(of, writable=True)  # an internal handle: release commits and closes
        try:
            await self._settle(of)
            await self._truncate_of(of, size)
        finally:
            await self.release(fh)

    async def _truncate_of(self, of: OpenFile, size: int) -> None:
        async with of.lock:
            st = of.ensure_staging(self.opts.spill_dir, self.staging_budget)
            if size != st.size or size < st.base_limit:
                await self.end_stream(of)
                st.truncate(size)
                of.touch()


def _ino(of: OpenFile) -> int:
    return of.ino
