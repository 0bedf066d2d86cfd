#!/usr/bin/env bash
# Start the CDS service with the bundled packs on embedded defaults (SQLite audit in var/).
# Installs what it needs into .venv on first run. Extra arguments go to `cds serve`
# (e.g. --port 8080 --workers 2 --reload-packs). Settings: see README ("Configuration").
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/cds ] || [ pyproject.toml -nt .venv/.installed ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e .
  touch .venv/.installed
fi
exec .venv/bin/cds serve "$@"
