"""The per-host preparation steps of SPEC §5, as plain functions.

Each takes the settings and the node (or host, or engine client) it works on, logs one line when
it starts or is skipped, and raises a `HarnessError` that names its step and host:

    run-dir          prepare_run_dir(settings, host, layout) -> wheel already there?
    get-wheel        harness.prep.wheel.fetch_wheel (not here)
    pull-image       pull_image(client, image, policy)
    start-container  start_container(node, image, run_id)
    install-erdma    install_erdma(node, settings)
    pip-install      install_python_packages(node, settings, group, wheel_name)

Everything in a node goes through `node.exec` with argv lists (a shell only where a pipe or a
redirection is needed, every value quoted), so the same calls work on a `ContainerNode` and,
with HARNESS_RUNTIME=host, on a `HostNode`.
"""
from __future__ import annotations

import logging
import shlex
from pathlib import Path, PurePosixPath

from harness.errors import CommandFailed, HarnessError
from harness.layout import Layout
from harness.hosts.nodes import Node
from harness.settings import ImagePull, Runtime, Settings
from harness.shrc import read_shrc, write_shrc
from harness.results.steps import (STEP_GET_WHEEL, STEP_INSTALL_ERDMA,  # noqa: F401 - prep's
                                   STEP_PIP_INSTALL, STEP_PULL_IMAGE, STEP_RUN_DIR,
                                   STEP_START_CONTAINER, Skipped, at_step, starting)
from harness.prep.wheel import reusable_wheel

log = logging.getLogger(__name__)

ERDMA_CODENAMES = ("noble", "jammy")
ERDMA_DEFAULT_CODENAME = "jammy"
ERDMA_KEYRING = "/etc/apt/trusted.gpg.d/erdma.gpg"
ERDMA_SOURCES = "/etc/apt/sources.list.d/erdma.list"
ERDMA_PACKAGES = ("libibverbs1", "ibverbs-providers", "ibverbs-utils", "librdmacm1")
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
APT_TIMEOUT_S = 900.0
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore"}
PIP_TIMEOUT_S = 1800.0
PROBE_TIMEOUT_S = 120.0


# --- 1. run dir and settings -------------------------------------------------------------------
def wheel_is_current(settings: Settings, whl_dir: Path) -> bool:
    """True when the wheel in `whl_dir` is this run's artifact: the stamp a successful fetch
    wrote there names the same artifact (API, GIT_REPO, ARTIFACT_ID) and the wheel still has
    the recorded sha256. `.shrc` alone is not trusted: a run that failed before its fetch
    records its ARTIFACT_ID there too. With MOONCAKE_WHEEL set the wheel is taken again."""
    return reusable_wheel(settings, whl_dir) is not None


def prepare_run_dir(settings: Settings, host, layout: Layout) -> bool:
    """Create run/, run/logs, run/pids, run/whls and write run/.shrc (local host's disk).

    Returns True when the wheel download can be skipped (`wheel_is_current`). A `.shrc` that
    is there but malformed is refused, so a person sees what was edited by hand.
    """
    starting(STEP_RUN_DIR, host.name, f"{layout.run} and {layout.shrc.name}")
    shrc = Path(str(layout.shrc))
    with at_step(STEP_RUN_DIR, host.name):
        if shrc.is_file():
            read_shrc(shrc)
    try:
        for path in (layout.run, layout.logs, layout.pids, layout.whls):
            host.mkdir(path)
        write_shrc(shrc, settings, layout.path_entries())
    except OSError as exc:
        raise HarnessError(f"cannot prepare {layout.run}: {exc}", step=STEP_RUN_DIR,
                           host=host.name) from None
    return wheel_is_current(settings, Path(str(layout.whls)))


# --- 3. image ----------------------------------------------------------------------------------
def pull_image(client, image: str, policy: ImagePull | str, *,
               host: str = "local") -> Skipped | None:
    """Pull `image` with a docker SDK client as IMAGE_PULL says (the container node's policy,
    harness.containers.node.pull_image); `Skipped` when there was nothing to pull."""
    from harness.containers.node import SdkEngine, pull_image as pull_with_policy
    return pull_with_policy(SdkEngine(client), image, policy, host=host)


# --- 4. container ------------------------------------------------------------------------------
def start_container(node, image: str, run_id: str) -> None:
    """Replace the node's container with a fresh one of `image` (ContainerNode.start)."""
    starting(STEP_START_CONTAINER, node.name, f"{node.container_name} from {image}")
    with at_step(STEP_START_CONTAINER, node.name):
        node.start(image, run_id)


# --- 5. eRDMA ----------------------------------------------------------------------------------
def parse_os_release(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        name, sep, raw = line.strip().partition("=")
        if not sep or not name or name.startswith("#"):
            continue
        try:
            words = shlex.split(raw)
        except ValueError:
            words = [raw.strip("\"'")]
        values[name] = words[0] if words else ""
    return values


def erdma_codename(os_release: str) -> tuple[str, str | None]:
    """The eRDMA repo's codename for a container's /etc/os-release, and a warning if guessed."""
    found = parse_os_release(os_release).get("UBUNTU_CODENAME", "").strip()
    if found in ERDMA_CODENAMES:
        return found, None
    shown = repr(found) if found else "not set"
    return ERDMA_DEFAULT_CODENAME, (f"UBUNTU_CODENAME is {shown} (eRDMA has noble and jammy): "
                                    f"using {ERDMA_DEFAULT_CODENAME}")


def erdma_source_line(repo_url: str, codename: str) -> str:
    return (f"deb [signed-by={ERDMA_KEYRING}] {repo_url.rstrip('/')}/apt/ubuntu "
            f"{codename}/erdma main")


def erdma_commands(settings: Settings, codename: str) -> list[tuple[list[str], dict]]:
    """(argv, env) of each eRDMA install command, in order; the last one is the check."""
    repo = settings.erdma_repo_url.rstrip("/")
    q = shlex.quote
    fetch_key = (f"set -o pipefail; curl -fsSL {q(repo + '/GPGKEY')}"
                 f" | gpg --batch --yes --dearmor -o {q(ERDMA_KEYRING)}")
    add_repo = f"printf '%s\\n' {q(erdma_source_line(repo, codename))} > {q(ERDMA_SOURCES)}"
    return [
        (["bash", "-c", fetch_key], {}),
        (["bash", "-c", add_repo], {}),
        (["apt-get", "update"], APT_ENV),
        (["apt-get", "install", "-y", *ERDMA_PACKAGES], APT_ENV),
        (["ibv_devinfo"], {}),
    ]


def install_erdma(node: Node, settings: Settings) -> Skipped | None:
    """Add the eRDMA apt repo for the container's Ubuntu, install verbs, require ibv_devinfo;
    `Skipped` (why) when the settings say not to."""
    if not settings.install_erdma:
        return Skipped("INSTALL_ERDMA=false")
    if settings.harness_runtime is Runtime.HOST:
        return Skipped("HARNESS_RUNTIME=host: nothing is installed into the host's system")
    with at_step(STEP_INSTALL_ERDMA, node.name):
        os_release = node.exec(["cat", "/etc/os-release"], check=False, timeout=PROBE_TIMEOUT_S)
        codename, warning = erdma_codename(os_release.output if os_release.ok else "")
        if warning:
            log.warning("[%s] %s: %s", node.name, STEP_INSTALL_ERDMA, warning)
        starting(STEP_INSTALL_ERDMA, node.name, f"{settings.erdma_repo_url} ({codename})")
        commands = erdma_commands(settings, codename)
        for argv, env in commands[:-1]:
            node.exec(argv, env=env or None, timeout=APT_TIMEOUT_S)
        check_argv, _ = commands[-1]
        done = node.exec(check_argv, check=False, timeout=PROBE_TIMEOUT_S)
        if not done.ok:
            raise CommandFailed(check_argv, done.exit_code, done.output,
                                hint="no usable RDMA device in the container: check "
                                     "RDMA_DEVICES and the host's eRDMA driver, or set "
                                     "INSTALL_ERDMA=false")
    return None


# --- 6. Python packages ------------------------------------------------------------------------
def pip_commands(wheel: PurePosixPath, python: str = "python3") -> list[list[str]]:
    """Reinstall the wheel itself, then let pip add only the dependencies that are missing."""
    return [
        [python, "-m", "pip", "install", "--force-reinstall", "--no-deps", str(wheel)],
        [python, "-m", "pip", "install", str(wheel)],
    ]


def install_python_packages(node: Node, settings: Settings, group: str, wheel_name: str | None, *,
                            python: str = "python3") -> None:
    """Install the run's Mooncake wheel (from run/whls as the node sees it); for SGLANG, make
    sure `sglang_router` imports, installing it from ROUTER_PIP_INDEX_URL only if it does not.

    `python` is the interpreter that runs the engines on that node (with HARNESS_RUNTIME=host
    the caller passes the host's one).
    """
    with at_step(STEP_PIP_INSTALL, node.name):
        if wheel_name is None:  # a simulated run without a wheel: the image's Mooncake stays
            starting(STEP_PIP_INSTALL, node.name, "no Mooncake wheel in this run: the "
                     "installed Mooncake stays")
        else:
            wheel = node.layout.whls / PurePosixPath(wheel_name).name
            starting(STEP_PIP_INSTALL, node.name, f"{wheel.name} into {python}")
            for argv in pip_commands(wheel, python):
                node.exec(argv, env=PIP_ENV, timeout=PIP_TIMEOUT_S)
        if group.upper() != "SGLANG":
            return
        probe = node.exec([python, "-c", "import sglang_router"], check=False,
                          timeout=PROBE_TIMEOUT_S)
        if probe.ok:
            starting(STEP_PIP_INSTALL, node.name, "sglang-router already importable")
            return
        starting(STEP_PIP_INSTALL, node.name,
                 f"sglang-router from {settings.router_pip_index_url}")
        node.exec([python, "-m", "pip", "install", "--index-url", settings.router_pip_index_url,
                   "sglang-router"], env=PIP_ENV, timeout=PIP_TIMEOUT_S)
