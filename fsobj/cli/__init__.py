"""The ``fsobj`` command line: a thin click layer over the library.

Owns: argument parsing and output formats only. Every command calls the
store API; errors become one line on stderr and the exit code from
``fsobj.errors`` (``fsobj exit-codes`` prints the table).
"""

from __future__ import annotations

import sqlite3
import sys

import click

from fsobj.cli import admin, feeds, mount, objects
from fsobj.cli.common import Context
from fsobj.errors import EXIT_CODES, FsobjError, NoSpaceError, exit_code_for
from fsobj.store.payload import keep_chunk_buffers


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-s", "--store", "store_path", envvar="FSOBJ_STORE", metavar="PATH", help="Store directory [env FSOBJ_STORE]."
)
@click.option(
    "--identity",
    "identity_path",
    envvar="FSOBJ_IDENTITY",
    metavar="PATH",
    help="Identity file [env FSOBJ_IDENTITY; default ~/.config/fsobj/identity.json].",
)
@click.option(
    "--passphrase-file",
    metavar="PATH",
    help="Read the identity passphrase from this file (else FSOBJ_PASSPHRASE, else a prompt).",
)
@click.version_option(package_name="fsobj")
@click.pass_context
def cli(ctx: click.Context, store_path: str | None, identity_path: str | None, passphrase_file: str | None) -> None:
    """fsobj: an encrypted, versioned, content-addressed object store.

    Objects live in partitions, ordered by sort key; every update is a new
    immutable version named by its hash (absoluteHash), and the first version's
    hash (baseHash) names the whole series.
    """
    obj = Context(store_path, identity_path, passphrase_file)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


for module in (admin, objects, feeds, mount):
    for command in module.COMMANDS:
        cli.add_command(command)


@cli.command("exit-codes")
def exit_codes() -> None:
    """Print the exit codes fsobj uses and what each means."""
    for code, meaning in EXIT_CODES.items():
        click.echo(f"{code:>4}  {meaning}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to exit codes."""
    keep_chunk_buffers()  # inherited by the mount daemon's fork
    try:
        cli.main(args=argv, prog_name="fsobj", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("fsobj: interrupted", err=True)
        return 130
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except FsobjError as e:
        click.echo(f"fsobj: error: {e}", err=True)
        return exit_code_for(e)
    except OSError as e:
        click.echo(f"fsobj: error: {e}", err=True)
        return exit_code_for(e)
    except sqlite3.Error as e:
        full = "full" in str(e)
        click.echo(f"fsobj: error: index database: {e}", err=True)
        return NoSpaceError.exit_code if full else 1
    except KeyboardInterrupt:
        click.echo("fsobj: interrupted", err=True)
        return 130
    return 0


def run() -> None:
    sys.exit(main())
