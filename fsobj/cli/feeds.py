"""CLI commands on feeds: create, read, ack, extend, follow, ls, show, rm, subscribe."""

from __future__ import annotations

import json
import sys

import click

from fsobj.cli.common import Context, emit_json, pass_ctx
from fsobj.feeds import DEFAULT_VISIBILITY_S, Feeds


def _feeds(ctx: Context) -> Feeds:
    return Feeds(ctx.store())


@click.group()
def feed() -> None:
    """Persistent change notifications (at-least-once, with ack)."""


@feed.command("create")
@click.argument("name")
@click.option("--partition", "partitions", multiple=True, required=True, help="Partition to follow (repeatable).")
@click.option("--prefix", default="", help="Only objects whose sort key starts with this.")
@click.option("--expires", type=float, default=None, help="Delete the feed this many seconds from now.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_ctx
def feed_create(
    ctx: Context, name: str, partitions: tuple[str, ...], prefix: str, expires: float | None, as_json: bool
) -> None:
    """Create feed NAME, subscribed to one or more partitions."""
    info = _feeds(ctx).create(name, [(p, prefix) for p in partitions], expires)
    if as_json:
        emit_json(info)
    else:
        click.echo(f"created feed {name} ({info['feed_id']})")


@feed.command("subscribe")
@click.argument("name")
@click.option("--partition", "partitions", multiple=True, required=True, help="Partition to follow (repeatable).")
@click.option("--prefix", default="", help="Only objects whose sort key starts with this.")
@click.option("--replace", is_flag=True, help="Replace all subscriptions instead of adding.")
@pass_ctx
def feed_subscribe(ctx: Context, name: str, partitions: tuple[str, ...], prefix: str, replace: bool) -> None:
    """Add partitions (or with --replace, set them) to feed NAME."""
    emit_json(_feeds(ctx).subscribe(name, [(p, prefix) for p in partitions], replace))


@feed.command("unsubscribe")
@click.argument("name")
@click.option("--partition", required=True, help="Partition to stop following.")
@pass_ctx
def feed_unsubscribe(ctx: Context, name: str, partition: str) -> None:
    """Stop feed NAME following a partition."""
    emit_json(_feeds(ctx).unsubscribe(name, partition))


@feed.command("read")
@click.argument("name")
@click.option("--max", "max_messages", default=10, show_default=True, help="At most this many notifications.")
@click.option("--wait", default=0.0, show_default=True, help="Wait up to this many seconds for notifications.")
@click.option(
    "--visibility",
    default=DEFAULT_VISIBILITY_S,
    show_default=True,
    help="Hide the notifications read from other readers for this many seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Output JSON (a list).")
@pass_ctx
def feed_read(ctx: Context, name: str, max_messages: int, wait: float, visibility: float, as_json: bool) -> None:
    """Read (lease) notifications; ack each with its receipt once processed."""
    notes = _feeds(ctx).read(name, max_messages, wait, visibility)
    if as_json:
        emit_json([n.to_json() for n in notes])
        return
    for n in notes:
        key = n.header.get("sort_key", n.error)
        click.echo(f"{n.seq}\t{n.event}\t{n.partition}\t{key}\t{n.version_hash.hex()[:16]}\t{n.receipt}")


@feed.command("ack")
@click.argument("name")
@click.argument("receipts", nargs=-1, required=True)
@pass_ctx
def feed_ack(ctx: Context, name: str, receipts: tuple[str, ...]) -> None:
    """Acknowledge (delete) notifications by receipt handle."""
    n = _feeds(ctx).ack(name, list(receipts))
    click.echo(f"acked {n}")


@feed.command("extend")
@click.argument("name")
@click.argument("receipt")
@click.option("--by", "by_s", type=float, required=True, help="Seconds to add to the visibility timeout.")
@pass_ctx
def feed_extend(ctx: Context, name: str, receipt: str, by_s: float) -> None:
    """Keep a notification hidden longer while still working on it."""
    visible = _feeds(ctx).extend(name, receipt, by_s)
    click.echo(f"hidden until {visible}")


@feed.command("follow")
@click.argument("name")
@click.option("--visibility", default=DEFAULT_VISIBILITY_S, show_default=True, help="Visibility timeout (seconds).")
@click.option("--count", type=int, default=None, help="Stop after this many notifications.")
@pass_ctx
def feed_follow(ctx: Context, name: str, visibility: float, count: int | None) -> None:
    """Print notifications as JSON lines, acking each once printed (Ctrl-C stops)."""
    feeds = _feeds(ctx)
    done = 0
    try:
        while count is None or done < count:
            want = 100 if count is None else min(100, count - done)
            for n in feeds.read(name, want, wait_s=5.0, visibility_s=visibility):
                sys.stdout.write(json.dumps(n.to_json()) + "\n")
                sys.stdout.flush()
                feeds.ack(name, [n.receipt])
                done += 1
    except (KeyboardInterrupt, BrokenPipeError):
        pass


@feed.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_ctx
def feed_ls(ctx: Context, as_json: bool) -> None:
    """List this identity's feeds with their depth."""
    feeds = _feeds(ctx).list()
    if as_json:
        emit_json(feeds)
        return
    for f in feeds:
        parts = ",".join(s["partition"] + (f":{s['prefix']}" if s["prefix"] else "") for s in f["subscriptions"])
        click.echo(f"{f['name']}\tdepth {f['depth']}\tin flight {f['in_flight']}\t{parts}")


@feed.command("show")
@click.argument("name")
@click.option("--expires", type=float, default=None, help="Set the feed to expire this many seconds from now.")
@pass_ctx
def feed_show(ctx: Context, name: str, expires: float | None) -> None:
    """Show feed NAME: subscriptions, depth, oldest, in flight (JSON)."""
    feeds = _feeds(ctx)
    emit_json(feeds.set_expiry(name, expires) if expires is not None else feeds.show(name))


@feed.command("rm")
@click.argument("name")
@pass_ctx
def feed_rm(ctx: Context, name: str) -> None:
    """Delete feed NAME and every notification queued in it."""
    _feeds(ctx).delete(name)
    click.echo(f"deleted feed {name}")


COMMANDS = [feed]
