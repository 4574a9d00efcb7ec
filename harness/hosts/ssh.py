"""The remote host over SSH: `SSHHost`, the same small interface as `LocalHost` on paramiko.

One paramiko connection is opened on first use and reused for the whole run (exec channels and
one SFTP session share it); `close()` ends it. Where it goes (HostName, User, Port, IdentityFile,
ProxyJump) is REMOTE_IP looked up in SSH_CONFIG, the harness's settings winning where set
(harness.hosts.ssh_config). Host keys follow `SSH_HOST_KEY_POLICY` and
`SSH_KNOWN_HOSTS` (SPEC §3): `strict` knows only the file, `accept-new` records unknown keys in
it and refuses changed ones, `ignore` takes any key and records nothing. Every failure is one
`SSHError` line naming the host (`remote`) and the address, with a hint of what to do.
No `ssh`, `scp` or `rsync` subprocess is involved: the project tree goes up as one tar file.
"""
from __future__ import annotations

import logging
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import paramiko

from harness.errors import CommandFailed, HarnessError, close_quietly
from harness.hosts.argv import timed_out, with_env, with_timeout
from harness.hosts.local import Completed
from harness.settings import HostKeyPolicy, Settings
from harness.hosts.ssh_config import Hop, resolve
from harness.hosts.ssh_keys import (AcceptNewPolicy, StrictPolicy, UnknownHostKey,
                                    changed_key_message, key_file_problem, known_hosts_name)
from harness.hosts.ssh_files import SFTPFiles

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0
KEEPALIVE_S = 15
POLL_S = 0.2
# Seconds a command with a timeout may overrun it locally before the channel is closed (the
# remote `timeout` wrapper TERMs it at the limit and KILLs it this much later).
TIMEOUT_GRACE_S = 2.0
REMOTE_KILL_AFTER_S = 5
EOF_AFTER_EXIT_S = 2.0
# Every remote command has a deadline: this one where the caller gives none (the longest prep
# steps, pip and docker pull, give their own).
DEFAULT_EXEC_TIMEOUT_S = 900.0
# Most one SFTP request, or the server's answer to a channel request, may take.
SFTP_TIMEOUT_S = 60.0


class SSHError(HarnessError):
    """The remote host could not be reached, refused us, or the connection broke."""


def remote_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                   cwd: object = None, timeout: float | None = None) -> str:
    """argv as one line for the remote shell: `cd CWD && timeout ... env K=V argv`, all quoted."""
    words = with_env(argv, env)
    if timeout is not None:
        words = with_timeout(words, timeout, REMOTE_KILL_AFTER_S)
    line = shlex.join(words)
    if cwd:
        line = f"cd {shlex.quote(str(cwd))} && {line}"
    return line


class SSHHost(SFTPFiles):
    """The remote host. `name` is how errors refer to it; `address` is the IP servers bind."""

    def __init__(self, settings: Settings, address: str, name: str = "remote", *,
                 connect_timeout: float = CONNECT_TIMEOUT_S,
                 default_timeout: float = DEFAULT_EXEC_TIMEOUT_S,
                 sftp_timeout: float = SFTP_TIMEOUT_S,
                 client_factory: Callable[[], paramiko.SSHClient] = paramiko.SSHClient) -> None:
        self.name = name
        self.address = address          # what servers bind and URLs name (REMOTE_IP)
        self.route = resolve(settings, address)
        self.hostname = self.route.target.hostname
        self.port = self.route.target.port
        self.user = self.route.target.user
        self.policy = HostKeyPolicy(self.route.host_key_policy)
        self.known_hosts = Path(self.route.known_hosts)
        self.connect_timeout = connect_timeout
        self.default_timeout = default_timeout
        self.sftp_timeout = sftp_timeout
        self.connects = 0            # how many connections were opened (one per run is the aim)
        self._client_factory = client_factory
        self._client: paramiko.SSHClient | None = None
        self._jump_clients: list[paramiko.SSHClient] = []
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()        # connection setup and the one SFTP session
        self._sftp_lock = threading.RLock()

    @property
    def target(self) -> str:
        return self.route.target.target

    def __repr__(self) -> str:
        return f"SSHHost({self.name!r}, {self.user}@{self.target})"

    # --- the connection ----------------------------------------------------------------------
    def _error(self, message: str, hint: str | None = None) -> SSHError:
        return SSHError(message, host=self.name, hint=hint)

    def _lost(self, what: str, exc: BaseException | None = None) -> SSHError:
        why = f" ({type(exc).__name__}: {exc})" if exc is not None and str(exc) else ""
        return self._error(f"SSH connection to {self.target} lost during {what}{why}",
                           hint="the remote host went down, sshd was restarted or the network "
                                "dropped; processes started there may still run")

    def _transport(self) -> paramiko.Transport:
        """The open transport; connects on first use (and again after a lost connection)."""
        with self._lock:
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return transport
                log.warning("%s: SSH connection to %s was lost; reconnecting",
                            self.name, self.target)
                self._drop()
            self._client = self._connect()
            return self._client.get_transport()

    def _connect(self) -> paramiko.SSHClient:
        """Through the ProxyJump hosts (each over the one before), then to the target."""
        jumps: list[paramiko.SSHClient] = []
        # ProxyCommand runs through the shell, as ssh runs it (never together with jumps)
        sock = (paramiko.ProxyCommand(shlex.join(["/bin/sh", "-c", self.route.proxy_command]))
                if self.route.proxy_command else None)
        try:
            hops = [*self.route.jumps, self.route.target]
            for hop, after in zip(hops[:-1], hops[1:], strict=True):
                jumps.append(self._open(hop, sock))
                sock = self._forward(jumps[-1], hop, after)
            self.connects += 1
            client = self._open(self.route.target, sock)
        except BaseException:
            for jump in reversed(jumps):
                jump.close()
            raise
        self._jump_clients = jumps
        via = f" via {', '.join(hop.target for hop in self.route.jumps)}" if jumps else ""
        log.info("%s: connected to %s@%s over SSH%s", self.name, self.user, self.target, via)
        return client

    def _open(self, hop: Hop, sock) -> paramiko.SSHClient:
        client = self._client_factory()
        self._apply_host_key_policy(client)
        kwargs = dict(hostname=hop.hostname, port=hop.port, username=hop.user, sock=sock,
                      timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                      auth_timeout=self.connect_timeout, channel_timeout=self.connect_timeout)
        if hop.key_from_setting:
            self._check_key_file(hop.key_files[0])
            kwargs.update(key_filename=hop.key_files[0], allow_agent=False, look_for_keys=False)
        elif hop.key_files:        # the config's IdentityFile: those and the agent's, as ssh
            kwargs.update(key_filename=hop.key_files, look_for_keys=False)
        try:
            client.connect(**kwargs)
        except BaseException as exc:
            client.close()
            raise self._connect_error(exc, hop) from None
        transport = client.get_transport()
        transport.set_keepalive(KEEPALIVE_S)
        if sock is None:
            _tcp_keepalive(transport.sock)
        return client

    def _forward(self, jump: paramiko.SSHClient, hop: Hop, after: Hop) -> paramiko.Channel:
        """A direct-tcpip channel from the jump host to the next hop (`ssh -J`'s)."""
        try:
            return jump.get_transport().open_channel(
                "direct-tcpip", (after.hostname, after.port), ("127.0.0.1", 0),
                timeout=self.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._error(f"jump host {hop.target} (ProxyJump {hop.alias} in "
                              f"{self.route.config_file}) cannot reach {after.target} "
                              f"({exc or type(exc).__name__})",
                              hint="check the jump host's AllowTcpForwarding and that it can "
                                   "reach the target") from None

    def _check_key_file(self, key_file: str) -> None:
        """A key that cannot be used is said so here, not as a refused login later."""
        problem = key_file_problem(key_file)
        if problem:
            raise self._error(*problem)

    def _apply_host_key_policy(self, client: paramiko.SSHClient) -> None:
        if self.policy is HostKeyPolicy.IGNORE:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            return
        if self.known_hosts.is_file():
            try:
                client.get_host_keys().load(str(self.known_hosts))
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise self._error(f"cannot read SSH_KNOWN_HOSTS {self.known_hosts}: {exc}") \
                    from None
        elif self.policy is HostKeyPolicy.STRICT and self.known_hosts.exists():
            raise self._error(f"SSH_KNOWN_HOSTS {self.known_hosts} is not a file")
        if self.policy is HostKeyPolicy.STRICT:
            client.set_missing_host_key_policy(StrictPolicy())
        else:
            client.set_missing_host_key_policy(AcceptNewPolicy(self.known_hosts))

    def _connect_error(self, exc: BaseException, hop: Hop) -> BaseException:
        name = known_hosts_name(hop.hostname, hop.port)
        if isinstance(exc, UnknownHostKey):
            return self._error(
                f"host key of {hop.target} is not in {self.known_hosts} "
                f"(SSH_HOST_KEY_POLICY=strict); add it with ssh-keyscan -p {hop.port} "
                f"{hop.hostname} >> {self.known_hosts} or use accept-new")
        if isinstance(exc, paramiko.BadHostKeyException):
            return self._error(changed_key_message(hop.target, exc.key, self.known_hosts, name,
                                                   self.policy.value))
        if isinstance(exc, paramiko.AuthenticationException):
            keys = ", ".join(hop.key_files) or "agent/default keys"
            return self._error(
                f"SSH login as {hop.user}@{hop.target} refused (wrong user or key; "
                f"REMOTE_USER/REMOTE_SSH_KEY{self._config_note()})",
                hint=f"the key ({keys}) must be in ~{hop.user}/.ssh/authorized_keys on "
                     f"{'the remote host' if hop is self.route.target else hop.alias}")
        if isinstance(exc, (paramiko.ssh_exception.NoValidConnectionsError, socket.timeout,
                            TimeoutError, socket.gaierror, OSError)):
            why = _reach_reason(exc)
            return self._error(f"cannot reach {hop.target} over SSH ({why})",
                               hint="check REMOTE_IP and REMOTE_SSH_PORT, and that sshd runs "
                                    "on the remote host")
        if isinstance(exc, (paramiko.SSHException, EOFError)):
            return self._error(f"SSH handshake with {hop.target} failed ({exc or type(exc)})",
                               hint="is an SSH server listening on REMOTE_SSH_PORT?")
        return exc

    def _config_note(self) -> str:
        return f"; and {self.route.config_file}" if self.route.config_file else ""

    def _drop(self) -> None:
        close_quietly(self._sftp, self._client, *reversed(self._jump_clients))
        self._sftp = None
        self._client = None
        self._jump_clients = []

    def close(self) -> None:
        """Close the SFTP session and the connection; idempotent (a later use reconnects)."""
        with self._lock, self._sftp_lock:
            self._drop()

    def __enter__(self) -> "SSHHost":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- commands ----------------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, cwd: object = None, check: bool = True) -> Completed:
        """Run argv to completion remotely; stdout and stderr together. Raises CommandFailed on
        non-zero (with check), on timeout always; SSHError when the connection breaks."""
        argv = [str(a) for a in argv]
        limit = self.default_timeout if timeout is None else timeout
        command = remote_command(argv, env=env, cwd=cwd, timeout=limit)
        what = f"`{shlex.join(argv)[:200]}`"
        transport = self._transport()
        started = time.monotonic()
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(what, exc) from None
        try:
            channel.set_combine_stderr(True)
            channel.settimeout(POLL_S)
            self._answered_within(self.connect_timeout, channel,
                                  lambda: channel.exec_command(command), what)
            channel.shutdown_write()          # stdin at EOF, as LocalHost's DEVNULL
            output, code = self._collect(channel, transport, limit, what)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(what, exc) from None
        finally:
            channel.close()
        text = output.decode(errors="replace")
        # The remote `timeout` answers 124/137 at the limit; without a limit of the caller's,
        # such a status is the command's own unless the default limit really passed.
        stopped = timed_out(code) and (
            timeout is not None or time.monotonic() - started >= limit)
        if code is None or stopped:
            raise CommandFailed(argv, None, text, host=self.name)
        done = Completed(argv, code, text)
        if check and not done.ok:
            raise CommandFailed(argv, code, text, host=self.name)
        return done

    def _collect(self, channel: paramiko.Channel, transport: paramiko.Transport,
                 timeout: float | None, what: str) -> tuple[bytes, int | None]:
        """Read until EOF and the exit status; (output, None) when the local deadline passed."""
        deadline = None if timeout is None else time.monotonic() + timeout + TIMEOUT_GRACE_S
        chunks: list[bytes] = []
        eof = False
        exited_at = None
        while not (eof and channel.status_event.is_set()):
            if deadline is not None and time.monotonic() >= deadline:
                return b"".join(chunks), None
            if channel.status_event.is_set() and exited_at is None:
                exited_at = time.monotonic()
            # A process left in the background may hold the output open: once the command
            # exited, its output is only waited for while it keeps coming.
            if exited_at is not None and time.monotonic() - exited_at > EOF_AFTER_EXIT_S:
                break
            if not eof:
                try:
                    data = channel.recv(65536)
                except socket.timeout:
                    data = None
                if data:
                    chunks.append(data)
                    if exited_at is not None:
                        exited_at = time.monotonic()
                elif data == b"":
                    eof = True
            else:
                channel.status_event.wait(POLL_S)
            if not transport.is_active():
                raise self._lost(what)
        if channel.exit_status == -1 and self._dying(transport):
            raise self._lost(what)
        return b"".join(chunks), channel.exit_status

    def _answered_within(self, seconds: float, channel: paramiko.Channel,
                         request: Callable[[], object], what: str) -> None:
        """Make a channel request (exec, subsystem) that paramiko would wait on forever:
        the channel is closed when the server has not answered within `seconds`."""
        unanswered = threading.Event()

        def give_up() -> None:
            unanswered.set()
            try:
                channel.close()          # wakes the waiting request
            except (paramiko.SSHException, EOFError, OSError):
                pass                     # the connection went meanwhile: the request sees it
        timer = threading.Timer(seconds, give_up)
        timer.daemon = True
        timer.start()
        try:
            request()
        except (paramiko.SSHException, EOFError, OSError):
            if unanswered.is_set():
                raise self._error(f"{self.target} did not answer {what} within {seconds:g}s",
                                  hint="the SSH server or the remote host is wedged") from None
            raise
        finally:
            timer.cancel()

    @staticmethod
    def _dying(transport: paramiko.Transport) -> bool:
        """After a channel closed without an exit status: did the connection go? (paramiko
        closes the channels a moment before it marks the transport inactive)."""
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            if not transport.is_active():
                return True
            time.sleep(0.02)
        return False


def _tcp_keepalive(sock) -> None:
    """Notice a peer that vanished without a word (power loss, partition) within about a
    minute: TCP keepalive probes, and a limit on unacknowledged data (Linux options)."""
    options = [(socket.SOL_SOCKET, "SO_KEEPALIVE", 1), (socket.IPPROTO_TCP, "TCP_KEEPIDLE", 15),
               (socket.IPPROTO_TCP, "TCP_KEEPINTVL", 5), (socket.IPPROTO_TCP, "TCP_KEEPCNT", 6),
               (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", 60_000)]
    for level, name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(level, option, value)
            except (OSError, AttributeError):
                pass


def _reach_reason(exc: BaseException) -> str:
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        errors = list(exc.errors.values())
        first = errors[0] if errors else exc
        return getattr(first, "strerror", None) or str(first).lower()
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "connection timed out"
    if isinstance(exc, socket.gaierror):
        return f"address not resolved: {exc.strerror or exc}"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
