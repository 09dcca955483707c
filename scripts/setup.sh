#!/usr/bin/env bash
# Set up everything fsobj needs on a fresh Debian/Ubuntu machine: system
# packages (FUSE 3 and its headers, for pyfuse3; attr, for getfattr/setfattr),
# a virtualenv in .venv, fsobj itself with its test extras, and one line in
# /etc/xattr.conf (below).
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
packages=(fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev attr rsync)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# a python3 that is not Debian's (pyenv, /usr/local) brings its own venv and headers
if command -v python3 >/dev/null && python3 -c 'import venv, sysconfig, os; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null; then
    missing=("${missing[@]/python3-venv}"); missing=("${missing[@]/python3-dev}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# cp -a and mv copy extended attributes through libattr, which skips the names that
# /etc/xattr.conf marks "skip". Without this line they ask for every system.fsobj.*
# fact of every file (29 requests a file) only to have the destination refuse them:
# cp -a of 2,000 small files out of a mount took 5.3-8.0 s instead of 0.8-1.5 s
# (docs/mount.md, "Extended attributes").
# Not fatal: without root (or sudo) fsobj works, and cp -a is only slower.
if ! grep -qs '^system\.fsobj\.\*' /etc/xattr.conf; then
    if printf 'system.fsobj.*\t\t\tskip\t\t# fsobj: the facts of a version, computed by the mount\n' \
        | $SUDO tee -a /etc/xattr.conf >/dev/null 2>&1; then
        echo "setup: added 'system.fsobj.* skip' to /etc/xattr.conf"
    else
        echo "setup: could not add 'system.fsobj.* skip' to /etc/xattr.conf: cp -a out of a mount stays slow" >&2
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import fsobj, pyfuse3, pytest, hypothesis' 2>/dev/null \
    || [[ pyproject.toml -nt .venv/.fsobj-installed ]]; then
    echo "setup: installing fsobj into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch .venv/.fsobj-installed
fi
echo "setup: ready (activate with: . .venv/bin/activate)"
