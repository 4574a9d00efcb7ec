#!/usr/bin/env bash
# Provision this machine for the harness's own test suite (SPEC section 9).
#
# One idempotent script for CI (.ci/run) and for people: run it as root, as often as you
# like; a second run only checks and takes seconds. It
#   1. installs the Debian packages the tests need (only those missing),
#   2. starts a Docker engine (`dockerd --iptables=false --ip6tables=false --bridge=none
#      --storage-driver=overlay2`, detached, log in /var/log/harness-dockerd.log) unless one
#      answers already,
#   3. creates /run/sshd and host keys (the tests start their own sshd),
#   4. downloads the wheels of tests/image/requirements.txt and their dependencies
#      (CPython 3.11, manylinux x86_64) into ${HARNESS_CACHE}/wheels,
#   5. fetches the published JUnit schema the tests validate junit.xml against (junit-10.xsd, the
#      Jenkins xUnit plugin's, as shipped in pytest's source distribution on PyPI),
#   6. builds the test image offline (debootstrap of Debian bookworm + a venv at /opt/venv,
#      `docker import`), never from Docker Hub, when it is missing or its inputs changed,
#   7. writes ${HARNESS_CACHE}/provision.env (MOONCAKE_WHEEL, HARNESS_TEST_IMAGE, ...) and
#      prints a summary.
#
# Settings (environment):
#   HARNESS_CACHE          cache dir                       /var/cache/mooncake-harness
#   HARNESS_TEST_IMAGE     image tag to build/use          mooncake-harness-test:bookworm
#   HARNESS_DEBIAN_MIRROR  Debian mirror for debootstrap   the one apt is configured with
#   HARNESS_DOCKERD_WAIT_S how long to wait for dockerd    60
set -euo pipefail

readonly HARNESS_CACHE="${HARNESS_CACHE:-/var/cache/mooncake-harness}"
readonly WHEEL_DIR="$HARNESS_CACHE/wheels"
readonly MOONCAKE_DIR="$HARNESS_CACHE/mooncake"
readonly ENV_FILE="$HARNESS_CACHE/provision.env"
readonly IMAGE="${HARNESS_TEST_IMAGE:-mooncake-harness-test:bookworm}"
readonly SUITE=bookworm
readonly DOCKERD_LOG=/var/log/harness-dockerd.log
readonly DOCKERD_WAIT_S="${HARNESS_DOCKERD_WAIT_S:-60}"
readonly IMAGE_LABEL=org.mooncake.harness.image-inputs
# Bump when the way the image is built changes, so existing images get rebuilt.
readonly IMAGE_RECIPE=1
readonly JUNIT_SCHEMA="$HARNESS_CACHE/junit-10.xsd"
# The pytest release whose sdist carries testing/example_scripts/junit-10.xsd.
readonly JUNIT_SCHEMA_FROM=pytest==9.0.2
readonly IMAGE_PATH_ENV=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly HERE
readonly IMAGE_SRC="$HERE/image"
readonly REQUIREMENTS="$IMAGE_SRC/requirements.txt"
readonly IMAGE_PACKAGES="$IMAGE_SRC/packages.txt"
readonly IMAGE_PIP_CONF="$IMAGE_SRC/pip.conf"

# Host packages: the Docker engine, debootstrap (and the archive keyring it checks the
# mirror with), sshd for the "remote" host, the libraries the Mooncake binaries link, and the
# browser the HTML report is opened in (Playwright drives Debian's chromium: Playwright's own
# browser download is not reachable from CI).
readonly HOST_PACKAGES=(
    docker.io debootstrap debian-archive-keyring ca-certificates openssh-server
    libibverbs1 ibverbs-providers libnl-3-200 libnl-route-3-200 libcurl4 libnuma1
    chromium
)

# pip download: wheels only, for the image's interpreter (bookworm: CPython 3.11, glibc 2.36).
PIP_TARGET_ARGS=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311)
for minor in $(seq 36 -1 17); do
    PIP_TARGET_ARGS+=(--platform "manylinux_2_${minor}_x86_64")
done
PIP_TARGET_ARGS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64
                  --platform manylinux1_x86_64)
readonly PIP_TARGET_ARGS

readonly STARTED_AT=$SECONDS

say() { printf 'provision: %s\n' "$*"; }
die() { printf 'provision: ERROR: %s\n' "$*" >&2; exit 1; }

sha256_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- 1. Debian packages -------------------------------------------------------------------

is_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

APT_UPDATED=0
apt_install() {
    if (( ! APT_UPDATED )); then
        say "apt-get update"
        apt-get -q update >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600 \
        install --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
}

install_host_packages() {
    local missing=() pkg
    for pkg in "${HOST_PACKAGES[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    # python3 with pip (for pip download) and venv (for .ci/run); whatever python3 is on PATH
    if ! command -v python3 >/dev/null; then
        missing+=(python3 python3-pip python3-venv)
    else
        python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
        python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    fi
    if (( ${#missing[@]} )); then
        apt_install "${missing[@]}"
    else
        say "Debian packages: all present"
    fi
}

# --- 2. Docker engine ---------------------------------------------------------------------

docker_answers() {
    timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

start_dockerd() {
    if docker_answers; then
        say "dockerd: answering already"
        return
    fi
    say "dockerd: starting (log $DOCKERD_LOG)"
    # A new session, stdin closed, output to the log: it outlives this script and its terminal.
    setsid nohup dockerd --iptables=false --ip6tables=false --bridge=none \
        --storage-driver=overlay2 >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local pid=$! deadline=$((SECONDS + DOCKERD_WAIT_S))
    disown "$pid" 2>/dev/null || true
    until docker_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            die "dockerd (pid $pid) exited before answering; see $DOCKERD_LOG"
        fi
        if (( SECONDS >= deadline )); then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            die "dockerd (pid $pid) did not answer 'docker version' within ${DOCKERD_WAIT_S}s; see $DOCKERD_LOG"
        fi
        sleep 0.5
    done
    say "dockerd: up (pid $pid)"
}

# --- 3. sshd ------------------------------------------------------------------------------

prepare_sshd() {
    install -d -m 0755 /run/sshd
    # Host keys normally come from openssh-server's postinst; make sure they exist.
    ssh-keygen -A >/dev/null
    say "sshd: /run/sshd and host keys ready"
}

# --- 4. Wheel cache -----------------------------------------------------------------------

wheels_key() {
    { cat "$REQUIREMENTS"; printf '%s\n' "${PIP_TARGET_ARGS[@]}"; } | sha256sum | cut -d' ' -f1
}

download_wheels() {
    local key stamp="$WHEEL_DIR/.provision-key" partial="$WHEEL_DIR.partial"
    key="$(wheels_key)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
        say "wheels: cached in $WHEEL_DIR"
    else
        if [[ -d "$WHEEL_DIR" ]]; then
            say "wheels: $REQUIREMENTS changed, downloading again"
            rm -rf "$WHEEL_DIR"
        fi
        # Download into .partial (pip skips files already there, so an interrupted run
        # resumes), then move it into place in one step.
        say "wheels: pip download into $partial (the Mooncake wheel is about 50 MB)"
        mkdir -p "$partial"
        local log="$HARNESS_CACHE/pip-download.log"
        python3 -m pip download --disable-pip-version-check --progress-bar off \
            --dest "$partial" "${PIP_TARGET_ARGS[@]}" -r "$REQUIREMENTS" >"$log" 2>&1 \
            || { tail -n 20 "$log" >&2; die "pip download of $REQUIREMENTS failed; see $log"; }
        printf '%s\n' "$key" >"$partial/.provision-key"
        mv "$partial" "$WHEEL_DIR"
        say "wheels: $(find "$WHEEL_DIR" -name '*.whl' | wc -l) wheels in $WHEEL_DIR"
    fi

    local found=("$WHEEL_DIR"/mooncake_transfer_engine_non_cuda-*.whl)
    [[ ${#found[@]} -eq 1 && -f "${found[0]}" ]] \
        || die "expected exactly one mooncake_transfer_engine_non_cuda wheel in $WHEEL_DIR, found: ${found[*]}"
    # A directory holding exactly this one wheel: what the tests use as MOONCAKE_WHEEL.
    local name
    name="$(basename "${found[0]}")"
    MOONCAKE_WHEEL="$MOONCAKE_DIR/$name"
    if ! [[ -f "$MOONCAKE_WHEEL" ]] || ! cmp -s "${found[0]}" "$MOONCAKE_WHEEL"; then
        rm -rf "$MOONCAKE_DIR"
        mkdir -p "$MOONCAKE_DIR"
        ln "${found[0]}" "$MOONCAKE_WHEEL" 2>/dev/null || cp "${found[0]}" "$MOONCAKE_WHEEL"
    fi
}

# --- 5. JUnit schema ----------------------------------------------------------------------

fetch_junit_schema() {
    if [[ -s "$JUNIT_SCHEMA" ]]; then
        say "junit schema: cached in $JUNIT_SCHEMA"
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary :all: --dest "$tmp" "$JUNIT_SCHEMA_FROM" >/dev/null 2>&1 \
        || { rm -rf "$tmp"; die "pip download of the $JUNIT_SCHEMA_FROM sdist failed"; }
    tar -xzf "$tmp"/pytest-*.tar.gz -C "$tmp" --wildcards '*/testing/example_scripts/junit-10.xsd' \
        || { rm -rf "$tmp"; die "no junit-10.xsd in the $JUNIT_SCHEMA_FROM sdist"; }
    install -m 0644 "$tmp"/pytest-*/testing/example_scripts/junit-10.xsd "$JUNIT_SCHEMA"
    rm -rf "$tmp"
    say "junit schema: $JUNIT_SCHEMA (from the $JUNIT_SCHEMA_FROM sdist)"
}

# --- 6. Test image ------------------------------------------------------------------------

image_key() {
    { sha256_of "$REQUIREMENTS" "$IMAGE_PACKAGES" "$IMAGE_PIP_CONF"
      echo "$SUITE recipe=$IMAGE_RECIPE"; } | sha256sum | cut -d' ' -f1
}

debian_mirror() {
    if [[ -n "${HARNESS_DEBIAN_MIRROR:-}" ]]; then
        echo "$HARNESS_DEBIAN_MIRROR"
        return
    fi
    # The first .../debian archive apt is configured with (deb822 or one-line style).
    local uri
    uri="$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
                /etc/apt/sources.list.d/*.list 2>/dev/null \
           | grep -v '^[[:space:]]*#' \
           | grep -oE 'https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
           | head -n 1 | tr -d '[:space:]' || true)"
    echo "${uri:-http://deb.debian.org/debian}"
}

umount_below() {
    # Whatever debootstrap left mounted (proc, sys) in an interrupted build.
    local target
    awk -v root="$1" 'index($2, root "/") == 1 { print $2 }' /proc/mounts | sort -r \
        | while read -r target; do umount -l "$target" || true; done
}

remove_rootfs() {
    [[ -e "$1" ]] || return 0
    umount_below "$1"
    rm -rf --one-file-system "$1"
}

in_root() {
    # Run in the image's root with a clean environment: the host's PIP_* settings, pip
    # config and paths must not leak into the image.
    chroot "$1" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin "${@:2}"
}

image_current() {
    local have
    have="$(docker image inspect -f "{{ index .Config.Labels \"$IMAGE_LABEL\" }}" "$IMAGE" \
            2>/dev/null)" || return 1
    if [[ "$have" == "$1" ]]; then
        return 0
    fi
    if [[ -z "$have" || "$have" == "<no value>" ]]; then
        say "image: $IMAGE exists but was not built by this script; using it as it is"
        return 0
    fi
    say "image: $IMAGE was built from other inputs; rebuilding"
    return 1
}

build_image() {
    local key="$1" root="$HARNESS_CACHE/rootfs.build" mirror packages old_id
    mirror="$(debian_mirror)"
    packages="$(grep -vE '^[[:space:]]*(#|$)' "$IMAGE_PACKAGES" | tr -s '[:space:]' ',' \
                | sed 's/,$//')"
    remove_rootfs "$root"
    mkdir -p "$HARNESS_CACHE/debootstrap-debs"

    say "image: debootstrap --variant=minbase $SUITE from $mirror (a few minutes)"
    debootstrap --variant=minbase --include="$packages" \
        --cache-dir="$HARNESS_CACHE/debootstrap-debs" \
        "$SUITE" "$root" "$mirror" >"$HARNESS_CACHE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$HARNESS_CACHE/debootstrap.log" >&2
             die "debootstrap failed; see $HARNESS_CACHE/debootstrap.log"; }
    umount_below "$root"

    say "image: venv at /opt/venv, offline install of $(basename "$REQUIREMENTS")"
    in_root "$root" /usr/bin/python3 -m venv /opt/venv
    mkdir -p "$root/tmp/wheels"
    cp "$WHEEL_DIR"/*.whl "$root/tmp/wheels/"
    cp "$REQUIREMENTS" "$root/tmp/requirements.txt"
    in_root "$root" /opt/venv/bin/python3 -m pip install --quiet --no-index \
        --disable-pip-version-check --find-links /tmp/wheels -r /tmp/requirements.txt \
        || die "offline pip install into the image's venv failed"

    # Keep the dependency wheels (not the big Mooncake/router wheels themselves) in the
    # image, so a later `pip install <mooncake wheel>` resolves its dependencies offline.
    mkdir -p "$root/opt/wheels"
    find "$root/tmp/wheels" -name '*.whl' ! -name 'mooncake_transfer_engine*' \
        ! -name 'sglang_router-*' -exec mv -t "$root/opt/wheels" {} +
    install -m 0644 "$IMAGE_PIP_CONF" "$root/opt/venv/pip.conf"
    rm -rf "$root/tmp/wheels" "$root/tmp/requirements.txt" "$root"/var/lib/apt/lists/* \
        "$root"/var/cache/apt/archives/*.deb "$root/root/.cache"

    say "image: docker import as $IMAGE"
    old_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
    tar -C "$root" --numeric-owner -c . \
        | docker import \
            --change "ENV PATH=$IMAGE_PATH_ENV" \
            --change 'ENV LANG=C.UTF-8' \
            --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
            --change "LABEL $IMAGE_LABEL=$key" \
            --change 'CMD ["bash"]' \
            - "$IMAGE" >/dev/null \
        || die "docker import failed"
    remove_rootfs "$root"
    if [[ -n "$old_id" && "$old_id" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
}

# Checks the image against what the tests rely on; prints the facts on success.
# shellcheck disable=SC2016  # expanded by the container's bash, not here
readonly IMAGE_CHECK='
set -euo pipefail
python3 -c "import sglang_router, requests, pytest, mooncake.engine"
for tool in bash ps kill setsid pip mooncake_master mooncake_http_metadata_server; do
    command -v "$tool" >/dev/null || { echo "missing in image: $tool" >&2; exit 1; }
done
[[ "$(command -v python3)" == /opt/venv/bin/python3 ]] || { echo "python3 is not the venv" >&2; exit 1; }
read -r port mport < <(python3 -c "
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind((\"127.0.0.1\", 0))
print(*(s.getsockname()[1] for s in socks))")
mooncake_master --rpc_address=127.0.0.1 --rpc_port="$port" --metrics_host=127.0.0.1 \
    --metrics_port="$mport" >/tmp/master.log 2>&1 &
pid=$!
for _ in $(seq 100); do
    grep -q "Master service started" /tmp/master.log && break
    kill -0 "$pid" 2>/dev/null || { cat /tmp/master.log >&2; exit 1; }
    sleep 0.1
done
grep -q "Master service started" /tmp/master.log || { cat /tmp/master.log >&2; exit 1; }
kill "$pid"; wait "$pid" || true
echo "python $(python3 -c "import sys; print(sys.version.split()[0])")," \
     "sglang-router $(pip show sglang-router | sed -n "s/^Version: //p")," \
     "mooncake-transfer-engine-non-cuda $(pip show mooncake-transfer-engine-non-cuda | sed -n "s/^Version: //p")"
'

ensure_image() {
    local key
    key="$(image_key)"
    if image_current "$key"; then
        say "image: $IMAGE present"
        return
    fi
    build_image "$key"
    say "image: checking $IMAGE"
    local facts
    facts="$(docker run --rm --network host "$IMAGE" bash -c "$IMAGE_CHECK")" || {
        docker image rm "$IMAGE" >/dev/null 2>&1 || true
        die "the freshly built image $IMAGE failed its checks (removed it)"
    }
    say "image: ok ($facts)"
}

# --- 7. Summary ---------------------------------------------------------------------------

write_env_file() {
    local tmp="$ENV_FILE.tmp"
    {
        echo "# written by tests/provision.sh; source it (set -a) to use what it provisioned"
        printf 'HARNESS_CACHE=%q\n' "$HARNESS_CACHE"
        printf 'HARNESS_WHEEL_CACHE=%q\n' "$WHEEL_DIR"
        printf 'HARNESS_TEST_IMAGE=%q\n' "$IMAGE"
        printf 'MOONCAKE_WHEEL=%q\n' "$MOONCAKE_WHEEL"
        printf 'HARNESS_JUNIT_SCHEMA=%q\n' "$JUNIT_SCHEMA"
    } >"$tmp"
    mv "$tmp" "$ENV_FILE"
}

main() {
    (( EUID == 0 )) || die "run me as root (apt-get, dockerd, debootstrap, chroot)"
    [[ -f "$REQUIREMENTS" && -f "$IMAGE_PACKAGES" && -f "$IMAGE_PIP_CONF" ]] \
        || die "missing inputs under $IMAGE_SRC"
    mkdir -p "$HARNESS_CACHE"

    install_host_packages
    start_dockerd
    prepare_sshd
    download_wheels
    fetch_junit_schema
    ensure_image
    write_env_file

    say "---- summary ($((SECONDS - STARTED_AT)) s)"
    say "docker server : $(docker version --format '{{.Server.Version}}')"
    say "test image    : $IMAGE $(docker image inspect -f '{{.Id}}' "$IMAGE")"
    say "wheel cache   : $WHEEL_DIR"
    say "MOONCAKE_WHEEL: $MOONCAKE_WHEEL"
    say "settings file : $ENV_FILE"
}

main "$@"
