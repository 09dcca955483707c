"""CLI commands that manage identities, stores and partitions, and check stores."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fsobj import fsck
from fsobj import identity as identity_files
from fsobj.cli.common import Context, emit_json, fmt_time, pass_ctx, progress
from fsobj.errors import UsageError, VerifyFailed
from fsobj.store import Store

# ---------------------------------------------------------------- identity


@click.group()
def identity() -> None:
    """Create, show and export identities (Ed25519 + X25519 keys)."""


@identity.command("create")
@click.option("--name", default=None, help="Display name shown to people you share with [default: $USER].")
@click.option("--force", is_flag=True, help="Overwrite an existing identity file (its keys are lost).")
@pass_ctx
def identity_create(ctx: Context, name: str | None, force: bool) -> None:
    """Create a new identity, protected by a passphrase."""
    import getpass

    name = name or getpass.getuser()
    passphrase = ctx.passphrase(confirm=True)
    if not passphrase:
        raise UsageError("the passphrase must not be empty")
    ident = identity_files.create(ctx.identity_file, name, passphrase, overwrite=force)
    click.echo(f"created identity {name} ({ident.user_id.hex()}) in {ctx.identity_file}")


@identity.command("show")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_ctx
def identity_show(ctx: Context, as_json: bool) -> None:
    """Show the identity's name and user id (no passphrase needed)."""
    pub = identity_files.load_public(ctx.identity_file)
    if as_json:
        emit_json({"name": pub.name, "user_id": pub.user_id.hex(), "file": str(ctx.identity_file)})
    else:
        click.echo(f"name:    {pub.name}\nuser id: {pub.user_id.hex()}\nfile:    {ctx.identity_file}")


@identity.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@pass_ctx
def identity_export(ctx: Context, output: str | None) -> None:
    """Export the public part of the identity, for others to grant you access."""
    text = identity_files.export_public(identity_files.load_public(ctx.identity_file)) + "\n"
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)


# ---------------------------------------------------------------- store


@click.command("init")
@click.argument("path", type=click.Path(file_okay=False))
def init(path: str) -> None:
    """Create a new, empty store in directory PATH (the embedded default backend)."""
    Store.init(Path(path))
    click.echo(f"initialised store {path}")


@click.command("verify")
@click.option("--rebuild-index", is_flag=True, help="Recompute the index from the blobs first.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_ctx
def verify(ctx: Context, rebuild_index: bool, as_json: bool) -> None:
    """Check every blob, signature and link this identity can read.

    Exits non-zero (12) if any fault is found.
    """
    store = ctx.store()
    faults: list[str] = []
    if rebuild_index:
        rb = fsck.rebuild_index(store)
        faults += rb.faults
        if not as_json:
            click.echo(f"index rebuilt: {rb.versions} versions in {rb.partitions} partitions", err=True)
    with progress(store.index.stats()["versions"], "verifying", unit_min=1000) as tick:
        report = fsck.verify(store, tick)
    report.faults = faults + report.faults
    report.rebuilt = rebuild_index
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(
            f"checked {report.partitions} partitions, {report.versions} versions, "
            f"{report.payload_blobs} payload blobs ({report.bytes_checked} bytes); "
            f"{report.skipped_partitions} partitions not readable by this identity; "
            f"{report.orphans} unreferenced blobs"
        )
        for f in report.faults:
            click.echo(f"FAULT: {f}", err=True)
    if report.faults:
        raise VerifyFailed(f"{len(report.faults)} fault(s) found")


@click.command("gc")
@click.option("--grace", default=3600.0, show_default=True, help="Keep unreferenced blobs younger than this (seconds).")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_ctx
def gc(ctx: Context, grace: float, dry_run: bool, as_json: bool) -> None:
    """Delete blobs that no version references (after purge or failed writes)."""
    report = fsck.gc(ctx.store(), grace, dry_run)
    if as_json:
        emit_json(report.to_json())
    else:
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {report.deleted} blobs ({report.bytes_freed} bytes); kept {report.kept_young} young ones")


# ---------------------------------------------------------------- partitions


@click.group()
def partition() -> None:
    """Create, list, share partitions."""


@partition.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_ctx
def partition_create(ctx: Context, name: str, as_json: bool) -> None:
    """Create partition NAME owned by this identity."""
    view = ctx.store().create_partition(name)
    if as_json:
        emit_json(view.info())
    else:
        click.echo(f"created partition {name} ({view.id.hex()})")


@partition.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_ctx
def partition_ls(ctx: Context, as_json: bool) -> None:
    """List the partitions this identity can read."""
    store = ctx.store()
    views = store.partitions()
    if as_json:
        emit_json([v.info() | {"objects": store.index.count_heads(v.id)} for v in views])
        return
    for v in views:
        owner = "" if v.role == "owner" else f"@{v.record.owner.user_id.hex()[:8]} ({v.record.owner.name})"
        click.echo(f"{v.display_name}{owner}\t{v.role}\t{store.index.count_heads(v.id)} objects\t{v.id.hex()[:16]}")


@partition.command("show")
@click.argument("name")
@pass_ctx
def partition_show(ctx: Context, name: str) -> None:
    """Show a partition's id, owner, members and key epoch (JSON)."""
    view = ctx.store().partition(name)
    view.require_read()
    info = view.info()
    info["created"] = fmt_time(view.record.created_us)
    emit_json(info)


@partition.command("grant")
@click.argument("name")
@click.option(
    "--to", "pubfile", required=True, type=click.Path(exists=True, dir_okay=False), help="Public identity file."
)
@click.option("--read", "role", flag_value="read", help="Read access.")
@click.option("--write", "role", flag_value="write", help="Read and write access.")
@pass_ctx
def partition_grant(ctx: Context, name: str, pubfile: str, role: str | None) -> None:
    """Grant another identity read or write access to partition NAME (owner only)."""
    if role is None:
        raise UsageError("say --read or --write")
    pub = identity_files.load_public(Path(pubfile))
    ctx.store().grant(name, pub, role)
    click.echo(f"granted {role} on {name} to {pub.name} ({pub.user_id.hex()[:16]})")


@partition.command("revoke")
@click.argument("name")
@click.option("--from", "user", required=True, help="User id (or a unique prefix of it) or member name.")
@pass_ctx
def partition_revoke(ctx: Context, name: str, user: str) -> None:
    """Revoke a member's access and rotate the partition key (owner only).

    The ex-member cannot read anything written afterwards; what they could
    read before (older versions, under older keys) must be assumed copied.
    """
    view = ctx.store().revoke(name, user)
    click.echo(f"revoked {user} from {name}; partition key is now epoch {view.record.current_epoch}")


@click.command("bench")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, exists=True),
    help="Scratch directory (existing) on the disk to measure.",
)
@click.option("--size-mib", default=1024, show_default=True, help="Size of the big file.")
@click.option("--objects", default=100_000, show_default=True, help="Objects for the lookup/list benchmark.")
@click.option("--rss-size-mib", default=4096, show_default=True, help="File size for the peak-RSS run (0: skip).")
@click.option("--feed-messages", default=10_000, show_default=True, help="Notifications for the feed benchmark.")
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(["big_file", "rss", "many", "feeds"]),
    help="Run only these sections (repeatable).",
)
@click.option("--mount", "mount", is_flag=True, help="Benchmark the mount against gocryptfs and a plain directory.")
@click.option("--small-files", default=2000, show_default=True, help="With --mount: 4 KiB files created.")
@click.option("--dir-entries", default=10_000, show_default=True, help="With --mount: entries for ls/stat/read/rm.")
@click.option("--versions", default=1000, show_default=True, help="With --mount: versions of one file to list.")
@click.option(
    "--rounds", default=3, show_default=True, type=click.IntRange(1), help="With --mount: rounds of the work (medians)."
)
@click.option("--json", "as_json", is_flag=True, help="Output only JSON.")
def bench(
    workdir: str | None,
    size_mib: int,
    objects: int,
    rss_size_mib: int,
    feed_messages: int,
    only: tuple[str, ...],
    mount: bool,
    small_files: int,
    dir_entries: int,
    versions: int,
    rounds: int,
    as_json: bool,
) -> None:
    """Measure put/get against cp/cat, dedup, memory, lookups and feeds.

    With --mount: sequential and small-file work on an fsobj mount, a
    gocryptfs mount and a plain directory, in --rounds rounds that run every
    target in turn (medians). Prints a table and JSON; each target of the
    issues is marked met or not. Run as root to drop the page cache
    before cold reads.
    """
    where = Path(workdir) if workdir else None
    if mount:
        from fsobj import bench_mount

        result = bench_mount.run(where, sys.stderr, size_mib, small_files, dir_entries, versions, rss_size_mib, rounds)
        if not as_json:
            click.echo(bench_mount.table(result))
        emit_json(result)
        return
    from fsobj import bench as bench_mod

    result = bench_mod.run(where, size_mib, objects, rss_size_mib, sys.stderr, feed_messages, only)
    if not as_json:
        click.echo(bench_mod.table(result))
    emit_json(result)


COMMANDS = [identity, init, verify, gc, partition, bench]
