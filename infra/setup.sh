#!/usr/bin/env bash
# Creates the project venv (.venv by default) with the pinned versions in constraints.txt.
# Idempotent: re-runs only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
stamp="$venv/.embedlake-installed"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
# The project's modules as bytecode (pip's editable install compiles none of them). Why: where the
# environment sets PYTHONDONTWRITEBYTECODE=1 (the development machine's shells do), every fresh
# process, Ray's workers included, compiled each module it imported from source on every run: the
# evaluation's figures task imports four, 22-27 ms from source against 6-12 from bytecode
# (docs/evaluation.md, twelfth round). Python still reads bytecode under that setting, and ignores a
# stale file; here only changed files are compiled again.
compile_project() {
    "$venv/bin/python" -m compileall -q embedlake flows tasks workers infra > /dev/null || true
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then compile_project; exit 0; fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
echo "installing embedlake and its pinned dependencies into $venv (a few minutes the first time)..."
set +o pipefail
"$venv/bin/pip" install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
"$venv/bin/pip" install -q -c constraints.txt -e '.[test]' 2>&1 | grep -v "is ignored"
status=${PIPESTATUS[0]}
set -o pipefail
[ "$status" -eq 0 ] || { echo "pip install failed ($status)" >&2; exit "$status"; }
echo "$want" > "$stamp"
compile_project
