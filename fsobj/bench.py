"""``fsobj bench``: the store's performance figures, measured in one run.

Owns: the benchmark scenarios and their report. Every throughput figure is
paired with a baseline measured in the same run on the same disk (``cp`` +
``sync`` for writes, ``cat`` for reads), and reported as a ratio, because the
machines it runs on are shared and noisy. Page-cache effects are removed by
dropping caches before cold reads when running as root.

Runs the CLI in subprocesses for the big-file figures (so peak RSS is the real
process's, via ``wait4``), and the library in-process for lookups.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import blake3

from fsobj import identity as identity_files
from fsobj.blobs.local import LocalBlobStore
from fsobj.store import Store

MIB = 1024 * 1024
PASS = "bench-passphrase"


def _drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _run(cmd: list[str], env: dict[str, str], stdout: Any = subprocess.DEVNULL) -> tuple[float, int]:
    """Run a command; (wall seconds, peak RSS in KiB of that process)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr.strip()}")
    return elapsed, usage.ru_maxrss


def _blob_usage(store_dir: Path) -> tuple[int, int]:
    """(number of blobs, their bytes) in the store (``LocalBlobStore.usage``). Rows are
    counted by their blobs' bytes: measured by the database's file sizes, a put of
    4 MiB added 4,194,460-4,194,499 bytes, and once less than 4 MiB in a full test run."""
    blobs = LocalBlobStore(store_dir)
    try:
        return blobs.usage()
    finally:
        blobs.close()


def _make_file(path: Path, size: int, seed: bytes = b"fsobj bench") -> None:
    """Incompressible, non-repeating content (BLAKE3 XOF), so nothing dedups by accident."""
    xof = blake3.blake3(seed)
    with open(path, "wb") as f:
        for offset in range(0, size, 4 * MIB):
            f.write(xof.digest(min(4 * MIB, size - offset), seek=offset))


class Bench:
    def __init__(self, workdir: Path, log: TextIO) -> None:
        self.dir = workdir
        self.log = log
        self.store_dir = workdir / "store"
        self.ident_path = workdir / "identity.json"
        self.env = dict(
            os.environ, FSOBJ_PASSPHRASE=PASS, FSOBJ_IDENTITY=str(self.ident_path), FSOBJ_STORE=str(self.store_dir)
        )
        self.fsobj = [sys.executable, "-m", "fsobj"]
        self.cache_dropped = False

    def say(self, msg: str) -> None:
        print(f"bench: {msg}", file=self.log, flush=True)

    def setup(self) -> None:
        Store.init(self.store_dir)
        identity_files.create(self.ident_path, "bench", PASS)
        _run([*self.fsobj, "partition", "create", "bench"], self.env)

    def cold(self) -> None:
        self.cache_dropped = _drop_caches()

    # ------------------------------------------------------------ big file
    def big_file(self, size_mib: int) -> dict[str, Any]:
        src = self.dir / "src.bin"
        self.say(f"writing a {size_mib} MiB source file")
        _make_file(src, size_mib * MIB)
        size = src.stat().st_size
        dst = self.dir / "copy.bin"
        self.cold()
        t_cp, _ = _run(["sh", "-c", f"cp '{src}' '{dst}' && sync"], self.env)
        self.cold()
        t_cat, _ = _run(["cat", str(dst)], self.env)
        dst.unlink()
        self.say("fsobj put / get")
        self.cold()
        _n0, b0 = _blob_usage(self.store_dir)
        t_put, rss_put = _run([*self.fsobj, "put", "bench", "big", str(src)], self.env)
        n1, b1 = _blob_usage(self.store_dir)
        self.cold()
        t_get, rss_get = _run([*self.fsobj, "get", "bench", "big"], self.env)
        # identical content again: only a header blob may be new
        t_reput, _ = _run([*self.fsobj, "put", "bench", "big", str(src)], self.env)
        n2, b2 = _blob_usage(self.store_dir)
        # 1 MiB changed in the middle
        with open(src, "r+b") as f:
            f.seek(size // 2)
            f.write(random.Random(2).randbytes(MIB))
        t_edit, _ = _run([*self.fsobj, "put", "bench", "big", str(src)], self.env)
        _n3, b3 = _blob_usage(self.store_dir)
        src.unlink()
        mbs = lambda t: size / MIB / t  # noqa: E731
        return {
            "size_bytes": size,
            "cp_sync_MiB_s": round(mbs(t_cp), 1),
            "cat_MiB_s": round(mbs(t_cat), 1),
            "put_MiB_s": round(mbs(t_put), 1),
            "get_MiB_s": round(mbs(t_get), 1),
            "put_vs_cp": round(t_cp / t_put, 2),
            "get_vs_cat": round(t_cat / t_get, 2),
            "first_put_new_blob_bytes": b1 - b0,
            "identical_reput_new_blobs": n2 - n1,
            "identical_reput_new_chunk_blobs": max(0, n2 - n1 - 1),
            "identical_reput_s": round(t_reput, 2),
            "edit_1MiB_new_blob_bytes": b3 - b2,
            "edit_1MiB_put_s": round(t_edit, 2),
            "put_peak_rss_MiB": round(rss_put / 1024, 1),
            "get_peak_rss_MiB": round(rss_get / 1024, 1),
        }

    def rss(self, size_mib: int) -> dict[str, Any]:
        src = self.dir / "rss.bin"
        self.say(f"peak RSS with a {size_mib} MiB file")
        _make_file(src, size_mib * MIB)
        _, rss_put = _run([*self.fsobj, "put", "bench", "rss", str(src)], self.env)
        src.unlink()
        _, rss_get = _run([*self.fsobj, "get", "bench", "rss"], self.env)
        _run([*self.fsobj, "purge", "--yes", "bench", "rss"], self.env)
        return {
            "size_bytes": size_mib * MIB,
            "put_peak_rss_MiB": round(rss_put / 1024, 1),
            "get_peak_rss_MiB": round(rss_get / 1024, 1),
        }

    # ------------------------------------------------------------ many objects
    def many(self, count: int) -> dict[str, Any]:
        self.say(f"creating {count} objects")
        ident = identity_files.load(self.ident_path, PASS)
        keys = [f"obj/{i:08d}" for i in range(count)]
        shuffled = keys[:]
        random.Random(3).shuffle(shuffled)
        t0 = time.perf_counter()
        with Store.open(self.store_dir, ident) as store:
            store.create_partition("many")
            for i in range(0, count, 5000):
                with store.batch():
                    for k in shuffled[i : i + 5000]:
                        store.put("many", k, k.encode())
        t_create = time.perf_counter() - t0
        self.cold()
        with Store.open(self.store_dir, ident) as store:
            t0 = time.perf_counter()
            page = store.list("many", after=keys[count // 2], limit=1000)
            t_list_cold = time.perf_counter() - t0
            assert [e.sort_key for e in page] == keys[count // 2 + 1 : count // 2 + 1001]
            probes = random.Random(4).sample(keys, min(200, count))
            t_key, t_base, t_list = [], [], []
            for k in probes:
                t0 = time.perf_counter()
                v = store.get("many", k)
                t_key.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                store.get_hash(v.base_hash)
                t_base.append(time.perf_counter() - t0)
            for k in probes[:50]:
                t0 = time.perf_counter()
                store.list("many", after=k, limit=1000)
                t_list.append(time.perf_counter() - t0)
        ms = lambda xs: round(statistics.median(xs) * 1000, 2)  # noqa: E731
        p99 = lambda xs: round(sorted(xs)[int(len(xs) * 0.99) - 1] * 1000, 2)  # noqa: E731
        return {
            "objects": count,
            "create_objects_per_s": round(count / t_create),
            "get_by_sort_key_ms_median": ms(t_key),
            "get_by_sort_key_ms_p99": p99(t_key),
            "get_by_base_hash_ms_median": ms(t_base),
            "get_by_base_hash_ms_p99": p99(t_base),
            "list_1000_warm_ms_median": ms(t_list),
            "list_1000_cold_ms": round(t_list_cold * 1000, 1),
        }

    # ------------------------------------------------------------ feeds
    def feeds(self, count: int) -> dict[str, Any]:
        """Notifications produced and consumed per second; commit-to-reader latency."""
        from fsobj.feeds import Feeds

        ident = identity_files.load(self.ident_path, PASS)
        out: dict[str, Any] = {"notifications": count}
        with Store.open(self.store_dir, ident) as store:
            store.create_partition("feedbench")
            feeds = Feeds(store)
            for consumers in (1, 4):
                name = f"c{consumers}"
                feeds.create(name, [("feedbench", "")])
                self.say(f"feeds: {count} notifications, {consumers} consumer(s)")
                t0 = time.perf_counter()
                for start in range(0, count, 1000):
                    with store.batch():
                        for i in range(start, min(count, start + 1000)):
                            store.put("feedbench", f"{name}/{i:08d}", b"")
                t_produce = time.perf_counter() - t0
                t_consume = self._consume(name, consumers, count)
                feeds.delete(name)
                out[f"produced_per_s_{name}"] = round(count / t_produce)
                out[f"consumed_acked_per_s_{consumers}_consumers"] = round(count / t_consume)
            feeds.create("latency", [("feedbench", "")])
            latencies = self._latency(feeds, "latency", 60)
        out["wakeup_latency_ms_median"] = round(statistics.median(latencies), 1)
        out["wakeup_latency_ms_p99"] = round(sorted(latencies)[max(0, int(len(latencies) * 0.99) - 1)], 1)
        out["wakeup_samples"] = len(latencies)
        return out

    def _consume(self, name: str, consumers: int, count: int) -> float:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        done = ctx.Value("i", 0)
        procs = [
            ctx.Process(target=_feed_consumer, args=(str(self.store_dir), str(self.ident_path), name, done))
            for _ in range(consumers)
        ]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        elapsed = time.perf_counter() - t0
        if done.value != count:
            raise RuntimeError(f"feed bench: consumed {done.value} of {count} notifications")
        return elapsed

    def _latency(self, feeds: Any, name: str, samples: int) -> list[float]:
        """A writer process commits every 50 ms; the reader long-polls here."""
        writer = subprocess.Popen(
            [sys.executable, "-c", _LATENCY_WRITER, str(self.store_dir), str(self.ident_path), str(samples)],
            env=self.env,
        )
        latencies: list[float] = []
        try:
            while len(latencies) < samples:
                notes = feeds.read(name, 10, wait_s=10)
                now = time.time_ns() // 1000
                if not notes:
                    break
                latencies += [(now - n.commit_us) / 1000 for n in notes]
                feeds.ack(name, [n.receipt for n in notes])
        finally:
            writer.wait(timeout=60)
        return latencies


_LATENCY_WRITER = """
import sys, time
from pathlib import Path
from fsobj import identity
from fsobj.store import Store
store_dir, ident, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Store.open(Path(store_dir), identity.load(Path(ident), "bench-passphrase")) as s:
    for i in range(n):
        time.sleep(0.05)
        s.put("feedbench", f"latency/{i}", b"")
"""


def _feed_consumer(store_dir: str, ident_path: str, name: str, done: Any) -> None:
    from fsobj.feeds import Feeds

    ident = identity_files.load(Path(ident_path), PASS)
    with Store.open(Path(store_dir), ident) as store:
        feeds = Feeds(store)
        while notes := feeds.read(name, 100, wait_s=0.5, visibility_s=300):
            feeds.ack(name, [n.receipt for n in notes])
            with done.get_lock():
                done.value += len(notes)


TARGETS = [
    ("big_file", "put_vs_cp", ">=", 0.5),
    ("big_file", "get_vs_cat", ">=", 0.5),
    ("big_file", "edit_1MiB_new_blob_bytes", "<=", 4 * MIB),
    ("big_file", "identical_reput_new_chunk_blobs", "<=", 0),
    ("rss", "put_peak_rss_MiB", "<", 256),
    ("rss", "get_peak_rss_MiB", "<", 256),
    ("many", "get_by_sort_key_ms_median", "<", 50),
    ("many", "get_by_base_hash_ms_median", "<", 50),
    ("many", "list_1000_warm_ms_median", "<", 50),
    ("many", "list_1000_cold_ms", "<", 1000),
    ("feeds", "consumed_acked_per_s_1_consumers", ">=", 2000),
    ("feeds", "consumed_acked_per_s_4_consumers", ">=", 2000),
    ("feeds", "wakeup_latency_ms_median", "<", 50),
]


SECTIONS = ("big_file", "rss", "many", "feeds")


def run(
    workdir: Path | None,
    size_mib: int,
    objects: int,
    rss_size_mib: int,
    log: TextIO,
    feed_messages: int = 10_000,
    only: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run the chosen sections (all by default) in a scratch directory under ``workdir``."""
    chosen = set(only or SECTIONS)
    base = Path(tempfile.mkdtemp(prefix="fsobj-bench-", dir=workdir or Path.cwd()))
    bench = Bench(base, log)
    try:
        bench.setup()
        result: dict[str, Any] = {"workdir_disk": str(workdir or "."), "cpu_count": os.cpu_count()}
        if "big_file" in chosen:
            result["big_file"] = bench.big_file(size_mib)
        if "rss" in chosen and rss_size_mib:
            result["rss"] = bench.rss(rss_size_mib)
        if "many" in chosen and objects:
            result["many"] = bench.many(objects)
        if "feeds" in chosen and feed_messages:
            result["feeds"] = bench.feeds(feed_messages)
        result["page_cache_dropped"] = bench.cache_dropped
        result["targets"] = _check(result)
        return result
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _check(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}
    for section, key, op, target in TARGETS:
        if section in result:
            value = result[section][key]
            out.append(
                {
                    "figure": f"{section}.{key}",
                    "value": value,
                    "target": f"{op} {target}",
                    "met": ops[op](value, target),
                }
            )
    return out


def table(result: dict[str, Any]) -> str:
    lines = [f"{'figure':<48} {'value':>14}  {'target':<14} met"]
    lines.append("-" * len(lines[0]))
    targets = {t["figure"]: t for t in result.get("targets", [])}
    for section in SECTIONS:
        for key, value in result.get(section, {}).items():
            name = f"{section}.{key}"
            t = targets.get(name)
            mark = "" if t is None else ("yes" if t["met"] else "NO")
            lines.append(f"{name:<48} {value!s:>14}  {'' if t is None else t['target']:<14} {mark}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(None, 64, 1000, 0, sys.stderr), indent=2))
