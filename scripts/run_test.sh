#!/usr/bin/env bash
# Migration shim: T-One's tone-cli template runs `run_test.sh run-single X` / `run-all [GROUP]`.
# This maps those onto the nox sessions, so the template keeps working while it moves to nox.
#
# The sessions need Python >= 3.10 with a working venv and a package index before the harness
# runs. A host without such a Python (an older distribution's python3 is 3.6) still has what the
# old scripts needed, bash, docker and the serving image: the shim then runs the same session
# inside that image (host network and PID namespace, the Docker socket, the project at the same
# path, the SSH config and keys, the settings), with the same results in the same places.
# Whatever else stops the harness from starting (`pip install nox` failing, nox failing before
# its session writes anything), every case asked for still gets `Fail` in
# run/logs/<case>/test_results.json, one line on stderr says why, and the exit is 1. The shim
# needs no Python to do that; bootstrap output goes to run/logs/bootstrap.log.
set -euo pipefail

here=${BASH_SOURCE[0]%/*}
[ "$here" != "${BASH_SOURCE[0]}" ] || here=.
root=$(cd "$here/.." && pwd)
logs="$root/run/logs"
venv="$root/.venv"

# The cases of each group in run order. The shim needs them before any Python runs; the test
# tests/unit/test_shim_cases.py keeps them equal to the registry (harness.run.cases.group_cases).
SGLANG_CASES="test_hicache_storage_mooncake_backend test_disaggregation_different_tp test_1p1d_erdma test_epd_sglang test_moe_mooncake"
VLLM_CASES="test_vllm_1p1d_erdma"

PYTHON_NAMES="python3.13 python3.12 python3.11 python3.10 python3"
VERSION_OK='import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'

usage() {
  echo "usage: $0 run-single <case> | run-all [SGLANG|VLLM]" >&2
  exit 2
}

json_string() {  # $1 as a JSON string body: the reasons may hold paths and quotes
  local s=${1//\\/\\\\}
  printf '%s' "${s//\"/\\\"}"
}

write_atomic() {  # write_atomic FILE CONTENT: a reader sees the old file or the whole new one
  local tmp="${1%/*}/.${1##*/}.$$.tmp"
  printf '%s\n' "$2" > "$tmp" && mv -f "$tmp" "$1"
}

# `Fail` for each case, in the format harness/results/outcome.py writes, with the reason beside it.
write_fail() {
  local reason=$1 case stamp
  shift
  stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for case in "$@"; do
    mkdir -p "$logs/$case" || return 1
    write_atomic "$logs/$case/test_results.json" \
      "{\"test_case\": \"$case\", \"status\": \"Fail\", \"timestamp\": \"$stamp\"}" || return 1
    write_atomic "$logs/$case/case_summary.json" \
      "{\"case\": \"$case\", \"status\": \"Fail\", \"outcome\": \"failed\", \"reason\": \"$(json_string "$reason")\", \"step\": \"scripts/run_test.sh\", \"ended\": \"$stamp\"}" \
      || return 1
  done
}

# The harness cannot start: Fail for every asked case, the reason as one line, exit 1.
give_up() {
  local reason=$1
  shift
  write_fail "$reason" "$@" 2> /dev/null \
    || reason="$reason; and $logs is not writable, so no result was written"
  echo "error: $reason" >&2
  exit 1
}

# A venv at $venv from the first interpreter that is >= 3.10 and whose `-m venv` works, else
# from uv where present (uv needs no python3-venv and may fetch a Python). Sets `reason` on failure.
create_venv() {
  local log=$1 name py version tried=""
  for name in $PYTHON_NAMES; do
    py=$(command -v "$name") || continue
    if ! "$py" -c "$VERSION_OK" >> "$log" 2>&1; then
      read -r version < <("$py" --version 2>&1 || true) || true
      tried+=" $name is ${version:-unknown};"
      continue
    fi
    if "$py" -m venv --clear "$venv" >> "$log" 2>&1; then
      return 0
    fi
    rm -rf -- "$venv"  # a half-made venv (no pip) would be taken for a usable one next time
    tried+=" $name -m venv failed (python3-venv missing?);"
  done
  if ! command -v uv > /dev/null 2>&1; then
    tried+=" no uv"
  elif uv venv --clear --python '>=3.10' "$venv" >> "$log" 2>&1; then
    return 0
  else
    rm -rf -- "$venv"
    tried+=" uv venv failed"
  fi
  reason="no Python >= 3.10 with a working venv on this host (${tried# }); install python3.10+"
  reason+=" and python3-venv, or uv"
  return 1
}

# nox from PATH, else from the project's own .venv (created on first use). Sets `nox`, or
# `reason` and returns 1 when it cannot be had.
find_nox() {
  local log="$logs/bootstrap.log"
  if nox=$(command -v nox); then
    return 0
  fi
  nox="$venv/bin/nox"
  if [ -x "$nox" ] && "$venv/bin/python" -c "$VERSION_OK" 2> /dev/null; then
    return 0
  fi
  { mkdir -p "$logs" && : > "$log"; } 2> /dev/null || log=/dev/null
  if ! "$venv/bin/python" -c "$VERSION_OK" > /dev/null 2>&1; then
    create_venv "$log" || return 1
  fi
  if "$venv/bin/python" -m pip install --quiet nox >> "$log" 2>&1; then
    return 0
  fi
  if command -v uv > /dev/null 2>&1 \
      && uv pip install --python "$venv/bin/python" nox >> "$log" 2>&1; then
    return 0
  fi
  reason="'pip install nox' into $venv failed (no package index reachable?); see $log"
  return 1
}

# What `in_image` passes into the container: the settings the harness reads (SPEC §3), and how
# this host reaches its package index (pip's settings, proxies, a CA bundle).
PASSED_NAMES='^(PIP_|SSL_CERT_FILE$|REQUESTS_CA_BUNDLE$|HTTPS?_PROXY$|https?_proxy$|NO_PROXY$|no_proxy$|CONTAINER_|MODEL_CACHE$|REGISTRY_ADDR_|USE_|HUGGINGFACE_MIRROR$|REMOTE_|LOCAL_IP$|ARTIFACT_ID$|GIT_REPO$|PR_ID$|MOONCAKE_|GITHUB_|GH_|INSTALL_ERDMA$|ERDMA_|RDMA_DEVICES$|IMAGE_PULL$|SSH_|ROUTER_|SGLANG_|VLLM_|HARNESS_|EPD_IMAGE$|KEEP_ON_FAILURE$|TIMEOUT_|PROGRESS_|PREFLIGHT|RETRY_|BASELINE_|HF_)'

# No Python >= 3.10 here: the session runs inside the serving image of the asked cases' group
# (it has one, and pip), as root with this host's Docker, network, PIDs and project path.
in_image() {
  local image=$1; shift
  local args=(--rm --network host --pid host --user 0
              -v /var/run/docker.sock:/var/run/docker.sock -v "$root:$root" -w "$root"
              -e "HOME=$HOME" -e PYTHONDONTWRITEBYTECODE=1)
  if [ -d "$HOME/.ssh" ]; then args+=(-v "$HOME/.ssh:$HOME/.ssh:ro"); fi
  local name file
  while IFS= read -r name; do
    args+=(-e "$name")
  done < <(compgen -e | grep -E "$PASSED_NAMES" || true)
  for file in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}"; do
    if [ -f "$file" ]; then args+=(-v "$file:$file:ro"); fi
  done
  echo "no Python >= 3.10 on this host: running the session in $image" >&2
  # its own venvs under /tmp of the container: the project's .venv and .nox stay this host's
  exec docker run "${args[@]}" --entrypoint bash "$image" -c \
    'python3 -m venv /tmp/harness-venv && /tmp/harness-venv/bin/pip install --quiet nox &&
     exec /tmp/harness-venv/bin/nox --envdir /tmp/harness-nox "$@"' in-image \
    --noxfile "$root/noxfile.py" "$@"
}

# The serving image of the asked cases' group (the first case decides: a run is one group).
serving_image() {
  case " $VLLM_CASES " in
    *" ${cases[0]} "*) echo "${REGISTRY_ADDR_VLLM:-vllm/vllm-openai:latest}" ;;
    *) echo "${REGISTRY_ADDR_SGLANG:-lmsysorg/sglang:latest}" ;;
  esac
}

# nox, with Fail written first: if nox dies before its session marks the cases (a broken venv,
# a noxfile error), the cases still read Fail. The session and the harness rewrite them.
run_nox() {
  local reason="" nox="" no_python=""
  find_nox || no_python=1
  if [ -n "$no_python" ] && [[ $reason != "no Python >= 3.10"* ]]; then
    give_up "$reason" "${cases[@]}"
  fi
  if [ -n "$no_python" ] && ! command -v docker > /dev/null 2>&1; then
    give_up "$reason; and no docker to run the harness in the serving image" "${cases[@]}"
  fi
  write_fail "run did not finish: nox stopped before the harness started" "${cases[@]}" \
    2> /dev/null || give_up "cannot write the results under $logs" "${cases[@]}"
  [ -z "$no_python" ] || in_image "$(serving_image)" "$@"
  exec "$nox" --noxfile "$root/noxfile.py" "$@"
}

[ $# -ge 1 ] || usage
case "$1" in
  run-single)
    [ $# -eq 2 ] || usage
    name=${2##*/}
    name=${name%.sh}
    name=${name%.py}
    case " $SGLANG_CASES $VLLM_CASES " in
      *" $name "*) ;;
      *) echo "error: unknown case '$2'; known cases: $SGLANG_CASES $VLLM_CASES" >&2; exit 2 ;;
    esac
    cases=("$name")
    run_nox -s single -- "$2"
    ;;
  run-all)
    [ $# -le 2 ] || usage
    group=${2:-}
    group=${group^^}
    case "$group" in
      "") session=all; read -r -a cases <<< "$SGLANG_CASES $VLLM_CASES" ;;
      SGLANG) session=sglang; read -r -a cases <<< "$SGLANG_CASES" ;;
      VLLM) session=vllm; read -r -a cases <<< "$VLLM_CASES" ;;
      *) echo "error: unknown group '${2}'; accepted: SGLANG, VLLM (none runs both)" >&2; exit 2 ;;
    esac
    run_nox -s "$session"
    ;;
  *) usage ;;
esac
