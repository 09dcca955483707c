#!/usr/bin/env bash
# Quick start: set up fsobj on a fresh Debian/Ubuntu machine, mount a demo
# store and show what the mount does (docs/mount.md).
#
#   bash mountscripts/quickstart.sh [DIR] [--keep]
#
# DIR (default ./demo) holds the demo identity, store, cache and mount point.
# With --keep the demo stays mounted (unmount with: fsobj umount DIR/mnt).
# Sets up first with scripts/setup.sh: the packages it needs (fuse3,
# libfuse3-dev, pkg-config, attr, ...; with sudo when not root), a virtualenv
# in .venv with "pip install -e .[test]", and a line in /etc/xattr.conf.
set -euo pipefail

cd "$(dirname "$0")/.."
DEMO=demo
KEEP=0
for arg in "$@"; do
    case "$arg" in
        --keep) KEEP=1 ;;
        *) DEMO=$arg ;;
    esac
done

bash scripts/setup.sh  # packages, .venv, fsobj, the /etc/xattr.conf line
# shellcheck disable=SC1091
. .venv/bin/activate

mkdir -p "$DEMO"
DEMO=$(cd "$DEMO" && pwd)
export FSOBJ_IDENTITY="$DEMO/identity.json"
export FSOBJ_PASSPHRASE="${FSOBJ_PASSPHRASE:-demo-passphrase}"
MNT="$DEMO/mnt"
V="$MNT/photos"

run() {
    printf '\n$ %s\n' "$*"
    "$@"
}

[ -f "$FSOBJ_IDENTITY" ] || fsobj identity create --name demo
if [ ! -d "$DEMO/store" ]; then
    fsobj init "$DEMO/store"
    fsobj -s "$DEMO/store" partition create photos
fi
mkdir -p "$MNT"
if mountpoint -q "$MNT"; then
    fsobj umount "$MNT" || fusermount3 -u -z "$MNT"
fi

run fsobj mount "$DEMO/store" "$MNT" -o "cache_dir=$DEMO/cache"
if [ "$KEEP" = 0 ]; then
    trap 'fsobj umount "$MNT" || fusermount3 -u -z "$MNT"' EXIT
fi

run ls -la "$MNT"
run cp -r fsobj/fs "$V/code"
run ls -l "$V/code"
run sh -c "echo 'first line' > '$V/notes.txt'"
run sh -c "echo 'more' >> '$V/notes.txt'"
run cat "$V/notes.txt"
run ls -l "$V/.versions/notes.txt/"
first=$(ls "$V/.versions/notes.txt/" | head -n 1)
run cat "$V/.versions/notes.txt/$first"
run cp "$V/.versions/notes.txt/$first" "$V/notes.txt"
run cat "$V/notes.txt"
run setfattr -n user.camera -v X100 "$V/notes.txt"
run getfattr -d -m - "$V/notes.txt"
run mv "$V/code" "$V/source"
run rm "$V/source/ops.py"
run ls "$V/.versions/source/"
run fsobj -s "$DEMO/store" log photos notes.txt
run fsobj -s "$DEMO/store" ls photos

if [ "$KEEP" = 1 ]; then
    printf '\nThe demo store is mounted on %s; unmount with: fsobj umount %s\n' "$MNT" "$MNT"
else
    printf '\nDone; unmounting %s (run with --keep to leave it mounted).\n' "$MNT"
fi
