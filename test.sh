#!/usr/bin/env bash
# Run the whole test suite: unit, property-based, end-to-end over real HTTP (uvicorn + a real
# FHIR server on loopback, installed from npm on first run), and every pack's own test cases.
# Installs what it needs into .venv (Python) and tests/fhir_server/node_modules (Node 22).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/pytest ] || [ pyproject.toml -nt .venv/.installed-test ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[test]"
  touch .venv/.installed-test .venv/.installed
fi
exec .venv/bin/python -m pytest "$@"
