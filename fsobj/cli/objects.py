"""CLI commands on objects: put, get, ls, log, rm, purge, checksum."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO

import click

from fsobj.cli.common import Context, emit_json, fmt_time, hash_arg, pass_ctx, progress
from fsobj.errors import DeletedError, UsageError
from fsobj.model.checksum import file_checksum, stream_checksum
from fsobj.store import Version


def _parse_headers(pairs: tuple[str, ...]) -> list[tuple[str, str]] | None:
    if not pairs:
        return None
    out = []
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise UsageError(f"--header must be KEY=VALUE, got {p!r}")
        out.append((k, v))
    return out


def _print_version(v: Version, as_json: bool) -> None:
    if as_json:
        emit_json(v.summary())
    else:
        click.echo(f"absoluteHash {v.hash.hex()}\nbaseHash     {v.base_hash.hex()}\nversion      {v.header.seq}")


@click.command("put")
@click.argument("partition")
@click.argument("sort_key")
@click.argument("file", required=False, default="-")
@click.option("--header", "headers", multiple=True, metavar="K=V", help="User header (repeatable; replaces all).")
@click.option("--expect", metavar="HASH", help="Fail unless the current version is this absoluteHash.")
@click.option("--new", is_flag=True, help="Always start a new object, even if the sort key is taken (a tie).")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_ctx
def put(
    ctx: Context,
    partition: str,
    sort_key: str,
    file: str,
    headers: tuple[str, ...],
    expect: str | None,
    new: bool,
    as_json: bool,
) -> None:
    """Store FILE (or stdin) as object SORT_KEY in PARTITION.

    A new object, or a new version of the live object with that sort key.
    Prints its hashes once the version is durable.
    """
    store = ctx.store()
    kwargs = {"headers": _parse_headers(headers), "expect": hash_arg(expect) if expect else None, "new": new}
    if file == "-":
        v = store.put(partition, sort_key, sys.stdin.buffer, **kwargs)  # type: ignore[arg-type]
    else:
        try:
            size = os.path.getsize(file)
            f: BinaryIO = open(file, "rb")
        except OSError as e:
            raise UsageError(f"cannot read {file}: {e.strerror}") from e
        with f, progress(size, "put") as tick:
            v = store.put(partition, sort_key, f, progress=tick, **kwargs)  # type: ignore[arg-type]
    _print_version(v, as_json)


@click.command("get")
@click.argument("partition", required=False)
@click.argument("sort_key", required=False)
@click.option("--hash", "hash_", metavar="HASH", help="An absoluteHash (that version) or baseHash (its latest).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE (atomically) instead of stdout.")
@click.option("--exact", is_flag=True, help="With --hash: that exact version, even if it is a baseHash.")
@click.option("--info", is_flag=True, help="Print the version's headers as JSON instead of the payload.")
@pass_ctx
def get(
    ctx: Context,
    partition: str | None,
    sort_key: str | None,
    hash_: str | None,
    output: str | None,
    exact: bool,
    info: bool,
) -> None:
    """Write the latest version of SORT_KEY in PARTITION (or of --hash) to stdout.

    --hash takes a baseHash (the latest version of that object) or an
    absoluteHash (that version). The first version's hash is also the baseHash:
    add --exact to get that first version itself.
    """
    store = ctx.store()
    if hash_:
        if partition or sort_key:
            raise UsageError("give either PARTITION SORT_KEY or --hash, not both")
        v = store.get_hash(hash_arg(hash_), exact)
    elif partition and sort_key:
        v = store.get(partition, sort_key)
    else:
        raise UsageError("give PARTITION SORT_KEY, or --hash HASH")
    if info:
        emit_json(v.summary())
        return
    if v.tombstone:
        raise DeletedError(f"version {v.hash.hex()} is a tombstone (the object was deleted): it has no payload")
    if output:
        tmp = Path(output).with_name(f".{Path(output).name}.fsobj-tmp")
        try:
            tmp.unlink(missing_ok=True)  # a stale one (or a planted link) is never followed
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)  # plaintext: owner only
            with os.fdopen(fd, "wb") as f, progress(v.length, "get") as tick:
                for data in store.open_payload(v, tick):
                    f.write(data)
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        out = sys.stdout.buffer
        with progress(v.length, "get") as tick:
            for data in store.open_payload(v, tick):
                out.write(data)
        out.flush()


@click.command("ls")
@click.argument("partition")
@click.option("--prefix", default="", help="Only sort keys starting with this.")
@click.option("--after", default=None, help="Only sort keys after this one (for paging).")
@click.option(
    "--after-hash",
    default=None,
    metavar="HASH",
    help="With --after: resume after this (sort key, absoluteHash), so ties can be paged.",
)
@click.option("--limit", type=int, default=None, help="At most this many.")
@click.option("--all", "include_deleted", is_flag=True, help="Include deleted (tombstoned) objects.")
@click.option("-l", "long", is_flag=True, help="Long format: version, size, time, hash.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_ctx
def ls(
    ctx: Context,
    partition: str,
    prefix: str,
    after: str | None,
    after_hash: str | None,
    limit: int | None,
    include_deleted: bool,
    long: bool,
    as_json: bool,
) -> None:
    """List objects of PARTITION in sort-key order (ties by absoluteHash)."""
    entries = ctx.store().list(
        partition, prefix, after, limit, include_deleted, hash_arg(after_hash) if after_hash else None
    )
    if as_json:
        emit_json([e.to_json() for e in entries])
        return
    for e in entries:
        if long:
            mark = " (deleted)" if e.tombstone else ""
            click.echo(
                f"v{e.seq:<4} {e.length:>12} {fmt_time(e.created_us)} {e.head_hash.hex()[:16]} {e.sort_key}{mark}"
            )
        else:
            click.echo(e.sort_key)


@click.command("log")
@click.argument("partition")
@click.argument("sort_key")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_ctx
def log(ctx: Context, partition: str, sort_key: str, as_json: bool) -> None:
    """Every version of SORT_KEY in PARTITION, oldest first, tombstones included."""
    versions = ctx.store().log(partition, sort_key)
    if as_json:
        emit_json([v.summary() for v in versions])
        return
    for v in versions:
        h = v.header
        kind = "tombstone" if h.tombstone else f"{h.length} bytes"
        click.echo(f"{h.seq:>4} {fmt_time(h.created_us)} {v.hash.hex()} {kind} {h.sort_key} by {h.author.hex()[:8]}")


@click.command("rm")
@click.argument("partition")
@click.argument("sort_key")
@click.option("--expect", metavar="HASH", help="Fail unless the current version is this absoluteHash.")
@pass_ctx
def rm(ctx: Context, partition: str, sort_key: str, expect: str | None) -> None:
    """Delete SORT_KEY logically: a tombstone version; history stays readable."""
    v = ctx.store().delete(partition, sort_key, hash_arg(expect) if expect else None)
    click.echo(f"deleted {sort_key} (tombstone {v.hash.hex()})")


@click.command("purge")
@click.argument("partition")
@click.argument("sort_key")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def purge(ctx: Context, partition: str, sort_key: str, yes: bool) -> None:
    """Physically delete every version of SORT_KEY (owner only; irreversible)."""
    if not yes and sys.stdin.isatty():
        click.confirm(f"purge every version of {sort_key!r} in {partition}?", abort=True, err=True)
    versions, freed = ctx.store().purge(partition, sort_key)
    click.echo(f"purged {versions} versions, freed {freed} payload blobs")


@click.command("checksum")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
def checksum(files: tuple[str, ...]) -> None:
    """Print the payload checksum that FILES (- for stdin) would have in a store.

    Local files, no store or key needed: compare the output with the
    system.fsobj.checksum attribute (or the "checksum" of `log --json`) of a
    version whose checksum_type is blake3-blocks-1m. Versions written before
    that type existed show checksum_type blake3: plain BLAKE3, as b3sum prints.
    Output: "<checksum>  <file>", one line per file.
    """
    for f in files:
        digest = stream_checksum(sys.stdin.buffer) if f == "-" else file_checksum(f)
        click.echo(f"{digest.hex()}  {f}")


COMMANDS = [put, get, ls, log, rm, purge, checksum]
