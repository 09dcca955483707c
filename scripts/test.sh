#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, then ruff.
# Extra arguments go to pytest. Exit code: pytest's (5, "no tests collected",
# counts as a failure: a run that checked nothing must not pass).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/ruff check fsobj tests || exit 1
.venv/bin/python -m pytest -q "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
    echo "test: pytest collected no tests: failing" >&2
    exit 1
fi
exit $rc
