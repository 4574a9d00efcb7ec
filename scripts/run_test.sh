#!/usr/bin/env bash
# Migration shim: T-One's tone-cli template runs `run_test.sh run-single X` / `run-all [GROUP]`.
# This maps those onto the nox sessions, so the template keeps working while it moves to nox.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  echo "usage: $0 run-single <case> | run-all [SGLANG|VLLM]" >&2
  exit 2
}

# nox from PATH, else from the project's own .venv (created on first use).
nox_cmd() {
  if command -v nox > /dev/null 2>&1; then
    echo nox
    return
  fi
  if [ ! -x "$root/.venv/bin/nox" ]; then
    python3 -m venv "$root/.venv" >&2
    "$root/.venv/bin/python" -m pip install --quiet nox >&2
  fi
  echo "$root/.venv/bin/nox"
}

[ $# -ge 1 ] || usage
case "$1" in
  run-single)
    [ $# -eq 2 ] || usage
    nox=$(nox_cmd)
    exec "$nox" --noxfile "$root/noxfile.py" -s single -- "$2"
    ;;
  run-all)
    [ $# -le 2 ] || usage
    group=$(printf '%s' "${2:-}" | tr '[:lower:]' '[:upper:]')
    case "$group" in
      "") session=all ;;
      SGLANG) session=sglang ;;
      VLLM) session=vllm ;;
      *) echo "error: unknown group '${2}'; accepted: SGLANG, VLLM (none runs both)" >&2; exit 2 ;;
    esac
    nox=$(nox_cmd)
    exec "$nox" --noxfile "$root/noxfile.py" -s "$session"
    ;;
  *) usage ;;
esac
