#!/usr/bin/env bash
# Set up (scripts/setup.sh), then build a demo store under ./demo and show the
# object store at work: identities, a partition, versions, history, sharing,
# verification. If the mount is available, the store is then mounted at
# ./demo/mnt (unmount with: .venv/bin/fsobj umount demo/mnt).
# The demo identity's passphrase is "demo" (FSOBJ_PASSPHRASE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate

demo=${FSOBJ_DEMO_DIR:-$PWD/demo}
if mountpoint -q "$demo/mnt" 2>/dev/null; then fusermount3 -u -z "$demo/mnt"; fi
rm -rf "$demo"
mkdir -p "$demo"
export FSOBJ_STORE=$demo/store FSOBJ_IDENTITY=$demo/alice.json FSOBJ_PASSPHRASE=demo
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step fsobj identity create --name alice
step fsobj init "$demo/store"
step fsobj partition create notes
echo "first draft" > "$demo/todo.txt"
step fsobj put notes lists/todo.txt "$demo/todo.txt" --header kind=list
echo "second draft" >> "$demo/todo.txt"
step fsobj put notes lists/todo.txt "$demo/todo.txt"
printf 'b\n' | fsobj put notes b.txt - >/dev/null
printf 'a\n' | fsobj put notes a.txt - >/dev/null
step fsobj ls notes -l
step fsobj get notes lists/todo.txt
step fsobj log notes lists/todo.txt
step fsobj rm notes a.txt
step fsobj ls notes --all -l
FSOBJ_IDENTITY=$demo/bob.json fsobj identity create --name bob >/dev/null
FSOBJ_IDENTITY=$demo/bob.json fsobj identity export -o "$demo/bob.pub"
step fsobj partition grant notes --to "$demo/bob.pub" --read
echo; echo "# bob reads alice's partition:"
step env FSOBJ_IDENTITY="$demo/bob.json" fsobj ls "notes@$(fsobj identity show --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["user_id"][:8])')"
step fsobj verify
echo; echo "# on disk everything is ciphertext; no sort key appears in the blobs or the index:"
step sh -c "grep -rl 'todo' '$demo/store' || echo 'no match for \"todo\" in the store'"

if fsobj mount --help >/dev/null 2>&1; then
    mkdir -p "$demo/mnt"
    step fsobj mount "$demo/store" "$demo/mnt"
    step cp /etc/hosts "$demo/mnt/notes/hosts.txt"
    step ls -la "$demo/mnt/notes" "$demo/mnt/notes/lists"
    step cat "$demo/mnt/notes/lists/todo.txt"
    step sh -c "echo 'third draft' >> '$demo/mnt/notes/lists/todo.txt'"
    step ls "$demo/mnt/notes/.versions/lists/todo.txt/"
    step cat "$demo/mnt/notes/.versions/lists/todo.txt/$(ls "$demo/mnt/notes/.versions/lists/todo.txt/" | head -1)"
    step getfattr -d -m - "$demo/mnt/notes/lists/todo.txt"
    echo
    echo "The demo store is mounted at $demo/mnt. Unmount with: fsobj umount $demo/mnt"
fi
