#!/usr/bin/env bash
# `make lock`: resolve the newest releases that pyproject.toml's ranges allow, in a throwaway
# virtualenv, and write them to constraints.txt: the exact stack `make setup` and CI install.
# Run it to move the stack on purpose, then `make demo` and the tests on the new lock, and
# update the README's figures if they moved (the same seed gives other models on other releases).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q -e '.[test]'
{
  echo "# The exact releases \`make setup\` and CI install (pip install -c constraints.txt -e '.[test]')."
  echo "# Written by \`make lock\` (scripts/lock.sh) from pyproject.toml's ranges on Python $("$tmp/venv/bin/python" -c 'import platform; print(platform.python_version(), platform.machine())')."
  echo "# A local build label is dropped (torch 2.13.0+cpu -> 2.13.0): pip still prefers it."
  # --all: setuptools and wheel too (torch and astunparse need them at run time); pip aside
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | grep -v '^pip==' \
    | sed -E 's/\+[A-Za-z0-9.]+$//'
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) releases"
