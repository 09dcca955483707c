"""One worker of the racing-processes test (tests/test_mount_lifecycle.py); holds no tests.

``python stress_ops.py ROOT WORKER SECONDS SEED`` applies random file operations
under ROOT for SECONDS and prints a JSON object: how many operations ran and the
problems found. Names ``s<d>/p<worker>_<k>`` are this worker's own and are checked
against a model (content, mode, mtime) during the run and at its end; names
``s<d>/n<k>`` are shared with the other workers and only provoke races (their
outcome depends on timing). The operations are those of ordinary tools: rsync's
temporary file (``fchmod`` before writing, ``utime`` and ``chmod`` after closing,
``rename``), overwrite, append, unlink, rename over, ``chmod`` and ``utime``,
``setxattr``, ``truncate`` and reads.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sys
import time


def run(root: str, me: int, seconds: float, seed: int) -> dict[str, object]:
    rnd = random.Random(seed)
    model: dict[str, tuple[bytes, int, int | None]] = {}  # own path -> (content, mode, mtime_ns if set)
    problems: list[str] = []
    ops = 0

    def own() -> str:
        return f"{root}/s{rnd.randrange(3)}/p{me}_{rnd.randrange(8)}"

    def shared() -> str:
        return f"{root}/s{rnd.randrange(2)}/n{rnd.randrange(3)}"

    def check(path: str, when: str) -> None:
        data, mode, mtime = model[path]
        with open(path, "rb") as f:
            got = f.read()
        st = os.stat(path)
        if got != data:
            problems.append(f"{when} {path}: {len(got)} bytes, expected {len(data)}")
        if st.st_mode & 0o777 != mode:
            problems.append(f"{when} {path}: mode {st.st_mode & 0o777:o}, expected {mode:o}")
        if mtime is not None and st.st_mtime_ns != mtime:
            problems.append(f"{when} {path}: mtime {st.st_mtime_ns}, expected {mtime}")

    def rsync_like(dst: str, data: bytes, mtime: int) -> None:
        d, b = os.path.split(dst)
        tmp = f"{d}/.{b}.{me}{rnd.randrange(10**6):06d}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.close(fd)
        os.utime(tmp, ns=(mtime, mtime))
        fd = os.open(tmp, os.O_RDONLY)
        os.fchmod(fd, 0o644)
        os.close(fd)
        os.rename(tmp, dst)

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ops += 1
        op = rnd.randrange(10)
        try:
            if op == 0:
                dst, mtime = own(), 1_600_000_000_000_000_000 + rnd.randrange(10**12)
                data = rnd.randbytes(rnd.randrange(30000))
                rsync_like(dst, data, mtime)
                model[dst] = (data, 0o644, mtime)
            elif op == 1:
                dst, data = own(), rnd.randbytes(rnd.randrange(20000))
                with open(dst, "wb") as f:
                    f.write(data)
                model[dst] = (data, model[dst][1] if dst in model else 0o644, None)
            elif op == 2 and (dst := own()) in model:
                extra = rnd.randbytes(1 + rnd.randrange(5000))
                with open(dst, "ab") as f:
                    f.write(extra)
                model[dst] = (model[dst][0] + extra, model[dst][1], None)
            elif op == 3 and (dst := own()) in model:
                os.unlink(dst)
                del model[dst]
            elif op == 4 and (src := own()) in model and (dst := own()) != src:
                os.rename(src, dst)
                model[dst] = model.pop(src)
            elif op == 5 and (dst := own()) in model:
                mode, mtime = rnd.choice([0o600, 0o640, 0o644]), 1_700_000_000_000_000_000 + rnd.randrange(10**12)
                os.chmod(dst, mode)
                os.utime(dst, ns=(mtime, mtime))
                model[dst] = (model[dst][0], mode, mtime)
            elif op == 6 and (dst := own()) in model:
                check(dst, "read")
            elif op == 7:
                rsync_like(shared(), rnd.randbytes(3000), 1)
            elif op == 8:
                dst, k = shared(), rnd.randrange(3)
                if k == 0:
                    with open(dst, "wb") as f:
                        f.write(rnd.randbytes(2000))
                elif k == 1:
                    os.unlink(dst)
                else:
                    with open(dst, "rb") as f:
                        f.read()
            elif op == 9:
                dst = shared()
                if rnd.randrange(2):
                    os.setxattr(dst, "user.k", rnd.randbytes(4).hex().encode())
                else:
                    os.truncate(dst, rnd.randrange(5000))
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EEXIST):  # a shared name raced away or back
                problems.append(f"op {op}: {e!r}")
    for path in sorted(model):
        try:
            check(path, "end")
        except OSError as e:
            problems.append(f"end {path}: {e!r}")
    return {"worker": me, "seed": seed, "ops": ops, "problems": problems}


if __name__ == "__main__":
    root, me, seconds, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    os.umask(0o022)
    for d in range(3):
        os.makedirs(f"{root}/s{d}", exist_ok=True)
    print(json.dumps(run(root, me, seconds, seed)))
