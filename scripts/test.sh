#!/usr/bin/env bash
# One command for the tests: install into .venv, lint with ruff, run pytest. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Headless Chromium for the HTML viewer test (Debian's package); that test skips when it cannot be had.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1) \
        || echo "chromium could not be installed; the viewer test will skip" >&2
fi

.venv/bin/ruff check .

# pytest exits 5 when it collected no test: that is a failure here too.
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests" >&2
    exit 1
fi
exit "$status"
