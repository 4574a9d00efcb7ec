"""The Mooncake pre-flight (SPEC §11): after both hosts are prepared and before the first case,
Mooncake moves a ladder of sizes between the two hosts' containers (or two engines on one host)
and a store value across them, every byte checked; a failure fails every asked case at once.

It runs the payload `payloads/preflight/mooncake_preflight.py` as a case runs its servers (logs
under `run/logs/mooncake_preflight/`, stopped by PID, remote logs copied back): a
`mooncake_master` and Mooncake's HTTP metadata server on the local host, the target on the remote
one, then the initiator on the local one, whose last output line holds the figures.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from harness import simknobs
from harness.errors import HarnessError, Interrupted
from harness.files import write_json_atomic
from harness.hosts.nodes import Node
from harness.prep import environment
from harness.prep.environment import Environment
from harness.results.outcome import CaseResult
from harness.run.cases import SINGLE, Case, CaseContext
from harness.servers.server import OwnsPort, Server, log_line
from harness.settings import PreflightProtocol, Settings, SimMooncake
from harness.text import human_bytes
from harness.waiting import wait_until

log = logging.getLogger(__name__)

NAME = "mooncake_preflight"        # its log and PID dirs, its JUnit testcase
RESULT_FILE = "preflight.json"     # under run/logs/mooncake_preflight/
LADDER = (4096, 1 << 20, 64 << 20, 1 << 30)
RDMA_DEVICES_DIR = "/sys/class/infiniband"
# Bind `count` sockets to port 0 of an address at once: distinct ports, free at that moment.
FREE_PORTS = ("import socket, sys\n"
              "held = [socket.socket() for _ in range(int(sys.argv[2]))]\n"
              "for sock in held:\n    sock.bind((sys.argv[1], 0))\n"
              "print(' '.join(str(sock.getsockname()[1]) for sock in held))")


class PreflightFailed(HarnessError):
    """Mooncake cannot move bytes between the hosts: no case can pass. Its one line is the
    reason every case gets, `Mooncake pre-flight: ...`, naming the host itself."""

    def __str__(self) -> str:
        return self.message


@dataclass
class Preflight:
    """What the pre-flight found: figures, or why it was skipped."""
    ok: bool = False
    skipped: str = ""                 # why it did not run ("" when it ran)
    build: str = ""
    protocol: str = ""
    memory: str = ""
    route: str = ""                   # "local -> remote" addresses
    sizes: list[dict] = field(default_factory=list)
    store: dict = field(default_factory=dict)
    error: str = ""
    duration_s: float = 0.0
    failure: HarnessError | None = field(default=None, repr=False)  # what the run raises

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()
                if k != "failure" and v not in ("", [], {})}


def ladder(max_bytes: int) -> list[int]:
    """The sizes moved: the standard ladder up to the cap, the cap itself last."""
    sizes = [size for size in LADDER if size < max_bytes]
    return sizes + [max_bytes]


def run_preflight(env: Environment, settings: Settings, group: str) -> Preflight:
    """Run it; PreflightFailed names what failed, where, with the error."""
    started = time.monotonic()
    result = CaseResult(NAME, group=group)
    case = Case(NAME, group, SINGLE, 0, (), run=lambda ctx: None)
    with ExitStack() as stack:  # as the runner runs a case: its dirs, its stops, its logs
        environment.fresh_case_dirs(env, NAME)
        ctx = CaseContext(case, settings, env.local, env.remote, result, stack, env.policy,
                          env.timeline)
        stack.callback(environment.collect_remote_logs, env, NAME)
        stack.callback(ctx.stop_leftovers)
        found = _run(ctx)
    found.duration_s = time.monotonic() - started
    return found


def _skip_reason(settings: Settings) -> str:
    if not settings.preflight:
        return "PREFLIGHT=false"
    if settings.harness_sim and settings.effective_sim_mooncake is SimMooncake.OFF:
        return "HARNESS_SIM_MOONCAKE=off: the simulated engines move no bytes"
    return ""


def _run(ctx: CaseContext) -> Preflight:
    local = ctx.local
    target_node = ctx.remote or local
    protocol = _protocol(ctx)
    ports = _free_ports(local, 3)  # the master's RPC and metrics, the metadata server
    store = ["--store", f"{local.address}:{ports[0]}",
             "--metadata", f"http://{local.address}:{ports[2]}/metadata"]
    sizes = ",".join(map(str, ladder(ctx.settings.preflight_max_bytes)))
    common = ["--protocol", protocol, "--memory", "auto", "--sizes", sizes, *store]
    # the simulator's mooncake:corrupt acts here too: the target changes what arrives
    faults = simknobs.check_faults(ctx.settings.sim_faults, ctx.settings.sim_vllm_version)
    corrupt = ["--corrupt"] if ("mooncake", "corrupt") in faults else []
    with ctx.step("mooncake pre-flight: master and target"):
        services = _master(ctx, ports)
        target = _payload(ctx, "target", target_node,
                          ["--role", "target", "--host", target_node.address,
                           "--control-port", "0", *corrupt, *common])
        _ready_or_said(ctx, services, target)
        control = _hello(target)["control"]
    with ctx.step("mooncake pre-flight: transfers"):
        initiator = _payload(ctx, "initiator", local,
                             ["--host", local.address, *common,
                              "--target", control])
        initiator.start()
        said = _outcome(ctx, initiator)
        _let_exit(ctx, target)
    found = Preflight(ok=bool(said.get("ok")), build=said.get("build", ""), protocol=protocol,
                      memory=said.get("memory", ""), sizes=said.get("sizes", []),
                      store=said.get("store", {}),
                      route=f"{local.address} -> {target_node.address}")
    if not found.ok:
        _failed(ctx, said, local)
    return found


def _protocol(ctx: CaseContext) -> str:
    """PREFLIGHT_PROTOCOL, or for auto: rdma when every node sees an RDMA device."""
    asked = ctx.settings.preflight_protocol
    if asked is not PreflightProtocol.AUTO:
        return asked.value
    for node in ctx.nodes:
        listing = node.exec(["ls", "-A", RDMA_DEVICES_DIR], check=False, timeout=30)
        if not (listing.ok and listing.output.strip()):
            return "tcp"
    return "rdma"


def _free_ports(node: Node, count: int) -> list[int]:
    """`count` ports free on the node's address now, as its kernel hands them out. Fixed ports
    do not do: a master cannot listen on a port that still has connections in TIME_WAIT,
    which any interrupted run leaves for a minute."""
    done = node.exec(["python3", "-c", FREE_PORTS, node.address, str(count)], timeout=30)
    return [int(port) for port in done.output.split()]


def _master(ctx: CaseContext, ports: list[int]) -> list[Server]:
    """`mooncake_master` and the wheel's HTTP metadata server, on the local host's address.
    Not the master's own metadata server: it binds every address without SO_REUSEADDR."""
    node = ctx.local
    address = node.address
    argv = ["mooncake_master", f"--rpc_port={ports[0]}", f"--rpc_address={address}",
            f"--metrics_host={address}", f"--metrics_port={ports[1]}"]
    metadata = ["python3", "-m", "mooncake.http_metadata_server", "--host", address,
                "--port", str(ports[2])]
    ready = [OwnsPort(ctx.settings.timeout_preflight_s)]
    return [ctx.server("mooncake_master", node, argv, log=_log(node, "mooncake_master.log"),
                       ready=ready, address=address, port=ports[0], env=ctx.sim_env(node),
                       kind="preflight"),
            ctx.server("metadata_server", node, metadata, log=_log(node, "metadata_server.log"),
                       ready=ready, address=address, port=ports[2], env=ctx.sim_env(node),
                       kind="preflight")]


def _payload(ctx: CaseContext, role: str, node: Node, args: list[str]) -> Server:
    log_path = _log(node, f"{role}.log")
    argv = ["python3", str(node.layout.payloads / "preflight" / "mooncake_preflight.py"), *args]
    if role == "target":
        argv += ["--log-file", str(log_path)]
    ready = [log_line('"control": ', ctx.settings.timeout_preflight_s)] if role == "target" \
        else []
    return ctx.server(role, node, argv, log=log_path, ready=ready, env=ctx.sim_env(node),
                      pythonpath=ctx.pythonpath(node), kind="preflight")


def _log(node: Node, name: str):
    return node.layout.case_logs(NAME) / name


def _ready_or_said(ctx: CaseContext, services: list[Server], target: Server) -> None:
    """All start at once; the target is ready once it says where it listens, and one that
    exits first said why (Mooncake that does not load on that host: the master and metadata
    server, of the same wheel, would then fail too, saying less)."""
    for server in [*services, target]:
        server.start()
    try:
        target.wait_ready(ctx.cancel)
    except HarnessError:
        said = _last_json(target)
        if said.get("error"):
            _failed(ctx, said, target.node)
        raise
    for service in services:
        try:
            service.wait_ready(ctx.cancel)
        except HarnessError:
            loader = [line for line in service.log_tail().splitlines()
                      if "error while loading shared libraries" in line]
            if loader:  # the binary's own form of "Mooncake cannot load"
                _failed(ctx, {"error": f"{service.name} cannot load: {loader[-1].strip()}",
                              "stage": "import"}, service.node)
            raise


def _outcome(ctx: CaseContext, initiator: Server) -> dict:
    """The initiator's last JSON line, once it exits (bounded by TIMEOUT_PREFLIGHT_S)."""
    proc = initiator.proc
    assert proc is not None
    done, _, waited = wait_until(lambda: (proc.exit_code() is not None, "still moving bytes"),
                                 timeout_s=ctx.settings.timeout_preflight_s,
                                 awaited="the Mooncake pre-flight", cancel=ctx.cancel,
                                 detail=initiator.last_log_line)
    if not done:
        raise PreflightFailed(f"Mooncake pre-flight: no answer within {waited:.0f}s",
                              host=initiator.node.name, server="initiator",
                              log_tail=initiator.log_tail())
    said = _last_json(initiator)
    if not said:
        raise PreflightFailed(f"Mooncake pre-flight: the initiator exited with status "
                              f"{proc.exit_code()} without a result",
                              host=initiator.node.name, server="initiator",
                              log_tail=initiator.log_tail())
    return said


def _let_exit(ctx: CaseContext, target: Server) -> None:
    """The initiator told the target to quit: let it go before the master stops, so its
    store client leaves on its own rather than being cut off (which leaves the master's
    port in TIME_WAIT for a minute)."""
    proc = target.proc
    if proc is not None:
        wait_until(lambda: (proc.exit_code() is not None, "still running"),
                   timeout_s=ctx.settings.timeout_stop_s, awaited="the pre-flight target's exit",
                   cancel=ctx.cancel)


def _hello(target: Server) -> dict:
    """What the target said when it was ready: its session, buffer and control port."""
    for line in target.log_tail(200).splitlines():
        if line.startswith("{") and '"control": ' in line:
            return json.loads(line)
    raise PreflightFailed("Mooncake pre-flight: the target's ready line cannot be read",
                          host=target.node.name, server="target", log_tail=target.log_tail())


def _last_json(server: Server) -> dict:
    for line in reversed(server.log_tail(200).splitlines()):
        if line.startswith("{") and '"ok"' in line:
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def _failed(ctx: CaseContext, said: dict, node: Node) -> None:
    """Raise what failed: Mooncake that cannot load in a demo that does not require it is a
    skip, said with the real cause; anything else fails the run."""
    error = said.get("error") or "failed without saying why"
    if said.get("stage") == "import" and _optional(ctx.settings):
        raise _Optional(error, host=node.name)
    raise PreflightFailed(f"Mooncake pre-flight: on {node.name} ({node.address}): {error}",
                          host=node.name)


class _Optional(HarnessError):
    """Mooncake does not load where nothing requires it (the demo without a wheel)."""


def _optional(settings: Settings) -> bool:
    return settings.harness_sim and settings.effective_sim_mooncake is SimMooncake.AUTO


def checked(env: Environment, settings: Settings, group: str) -> Preflight:
    """The run's step: the pre-flight's findings, written down; an optional Mooncake that
    cannot load is a skip said with its cause; a failure is kept as `failure` (a
    PreflightFailed naming the pre-flight) for the run to raise. Ctrl-C goes straight up."""
    started = time.monotonic()
    why_not = _skip_reason(settings)
    if why_not:
        log.info("Mooncake pre-flight: skipped (%s)", why_not)
        found = Preflight(skipped=why_not)
    else:
        try:
            found = run_preflight(env, settings, group)
        except Interrupted:
            raise
        except _Optional as exc:
            found = Preflight(skipped=f"Mooncake cannot load on {exc.host}: {exc.message}")
            log.warning("Mooncake pre-flight: skipped: %s", found.skipped)
        except HarnessError as exc:
            failure = exc if isinstance(exc, PreflightFailed) else _named(exc)
            found = Preflight(error=str(failure), failure=failure,
                              duration_s=time.monotonic() - started)
    _report(env, found)
    return found


def _named(exc: HarnessError) -> PreflightFailed:
    """A step of the pre-flight failed: its one line says it is the pre-flight's."""
    where = f"{exc.where()}: " if exc.where() else ""
    failure = PreflightFailed(f"Mooncake pre-flight: {where}{exc.message}", step=exc.step,
                              host=exc.host, server=exc.server, log_tail=exc.log_tail,
                              hint=exc.hint)
    failure.__cause__ = exc
    return failure


def _report(env: Environment, found: Preflight) -> None:
    """The console lines (one per size) and run/logs/mooncake_preflight/preflight.json."""
    path = Path(str(env.layout.case_logs(NAME))) / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, found.to_json())
    if not found.ok:
        return
    log.info("Mooncake pre-flight: %s, %s, %s memory, %s (%.1fs)", found.build, found.protocol,
             found.memory, found.route, found.duration_s)
    for row in found.sizes:
        log.info("  %9s  write %8.3f GB/s %9.3f ms   read %8.3f GB/s %9.3f ms",
                 human_bytes(row["bytes"]), row["write_gbps"], row["write_ms"],
                 row["read_gbps"], row["read_ms"])
    if found.store:
        log.info("  store %s: put %.3f ms (remote), get %.3f ms (local), master %s",
                 human_bytes(found.store["bytes"]), found.store["put_ms"],
                 found.store["get_ms"], found.store["master"])
