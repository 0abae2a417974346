"""A throwaway PostgreSQL server for tests and benchmarks: ``initdb`` + ``postgres`` in a temp dir.

The server listens only on a Unix socket in its own directory (``listen_addresses=''``),
with ``fsync`` off: it is for tests, never for data you keep. It needs the PostgreSQL
server binaries (Debian's ``postgresql-15``: ``/usr/lib/postgresql/15/bin``; ``make
pytest`` installs it when missing). PostgreSQL refuses to run as root, so under root the
server runs as the ``postgres`` system user, in a directory it owns under ``/tmp``.

>>> server = PostgresServer.start()                       # doctest: +SKIP
>>> url = server.create_database("t1")                    # doctest: +SKIP
>>> store = PostgresStore(url)                            # doctest: +SKIP
>>> server.stop()                                         # doctest: +SKIP

The pytest fixtures ``postgres_server`` (one per test session) and ``postgres_url`` (a
fresh database per test) come with beamagent's pytest plugin.

The server runs in a session of its own (a Ctrl-C of the test run does not reach it), so
a test run killed with SIGKILL cannot stop it. Each server's directory names the process
that started it (``owner.pid``); :meth:`PostgresServer.start` first stops the servers
whose owner is dead and deletes their directories (:func:`reap_orphans`).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from beamagent.testing.leaks import forget_long_lived_child, long_lived_child, pid_alive

__all__ = [
    "PostgresServer",
    "PostgresUnavailable",
    "find_postgres_bindir",
    "postgres_required",
    "reap_orphans",
]

#: Set to ``1`` to make tests that need PostgreSQL fail (not skip) when it is missing;
#: ``CI=true`` does the same.
REQUIRE_ENV = "BEAMAGENT_REQUIRE_POSTGRES"

#: The server's superuser (trust authentication over the private socket).
SUPERUSER = "postgres"

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_counter = itertools.count(1)


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed, or the server did not start."""


def postgres_required() -> bool:
    """Whether a missing PostgreSQL must fail the tests that need it (CI), not skip them."""
    return os.environ.get(REQUIRE_ENV) == "1" or os.environ.get("CI", "").lower() == "true"


def find_postgres_bindir() -> Path | None:
    """The directory of the newest installed ``postgres`` server binary, or ``None``.

    ``$BEAMAGENT_PG_BINDIR`` wins; else Debian's ``/usr/lib/postgresql/<version>/bin``.
    """
    configured = os.environ.get("BEAMAGENT_PG_BINDIR")
    if configured:
        path = Path(configured)
        return path if (path / "postgres").is_file() else None
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")

    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parent.parent.name
        return tuple(int(p) for p in part.split(".") if p.isdigit())

    if not found:
        return None
    return Path(max(found, key=version)).parent


class PostgresServer:
    """A running throwaway server; :meth:`start` it, :meth:`stop` it (or use ``with``)."""

    def __init__(
        self, base: Path, bindir: Path, process: subprocess.Popen[bytes], port: int
    ) -> None:
        self.base = base
        """The server's directory: ``data/`` (the cluster), the socket, ``server.log``."""
        self.bindir = bindir
        self.port = port
        self._process = process
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        tmpdir: str | os.PathLike[str] | None = None,
        *,
        bindir: str | os.PathLike[str] | None = None,
        port: int = 5432,
        timeout: float = 60.0,
        max_connections: int = 200,
    ) -> PostgresServer:
        """Create a cluster in a new directory under ``tmpdir`` and start the server on it.

        Under root the directory is made under ``/tmp`` instead (it must be reachable by
        the ``postgres`` user, which a private pytest temp dir is not). ``port`` only
        names the socket file (``.s.PGSQL.<port>``); nothing listens on TCP.

        Raises:
            PostgresUnavailable: no server binaries, or ``initdb``/``postgres`` failed.
        """
        found = Path(bindir) if bindir is not None else find_postgres_bindir()
        if found is None or not (found / "postgres").is_file():
            raise PostgresUnavailable(
                "the PostgreSQL server is not installed (no /usr/lib/postgresql/*/bin/postgres);"
                " install it with `apt-get install postgresql-15` (make pytest does as root) "
                "or set BEAMAGENT_PG_BINDIR"
            )
        as_root = os.geteuid() == 0
        parent = "/tmp" if as_root or tmpdir is None else os.fspath(tmpdir)
        reap_orphans(parent)
        base = Path(tempfile.mkdtemp(prefix="bapg-", dir=parent))
        # A socket path is limited to 107 bytes.
        if len(str(base)) > 80:
            shutil.rmtree(base, ignore_errors=True)
            reap_orphans("/tmp")
            base = Path(tempfile.mkdtemp(prefix="bapg-", dir="/tmp"))
        (base / _OWNER).write_text(str(os.getpid()))
        demote = _demote_to_postgres(base) if as_root else None
        data = base / "data"
        log_path = base / "server.log"
        try:
            initdb = subprocess.run(
                [
                    str(found / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                capture_output=True,
                preexec_fn=demote,
                timeout=timeout,
                check=False,
                env=_server_env(),
                cwd=base,
            )
            if initdb.returncode != 0:
                raise PostgresUnavailable(
                    f"initdb failed ({initdb.returncode}): {initdb.stderr.decode(errors='replace')}"
                )
            with open(log_path, "ab") as log_file:
                process = subprocess.Popen(
                    [
                        str(found / "postgres"),
                        "-D",
                        str(data),
                        "-p",
                        str(port),
                        "-c",
                        "listen_addresses=",
                        "-c",
                        f"unix_socket_directories={base}",
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        f"max_connections={max_connections}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    preexec_fn=demote,
                    env=_server_env(),
                    cwd=base,
                    start_new_session=True,  # a Ctrl-C of the test run does not reach it
                )
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        server = cls(base, found, process, port)
        long_lived_child(process.pid)  # shared by tests: not a leak of the one that started it
        try:
            server._wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout: float) -> None:
        # postmaster.pid's 8th line becomes "ready" once the server accepts connections.
        pidfile = self.base / "data" / "postmaster.pid"
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            if self._process.poll() is not None:
                raise PostgresUnavailable(
                    f"postgres exited with {self._process.returncode}: {self.log_tail()}"
                )
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
            if time.monotonic() > deadline:
                raise PostgresUnavailable(
                    f"postgres did not become ready in {timeout} s: {self.log_tail()}"
                )
            pause.wait(0.02)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log (for error messages)."""
        try:
            text = (self.base / "server.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        return self._process.pid

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (fast shutdown: open connections are ended) and delete its files."""
        process = self._process
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        forget_long_lived_child(process.pid)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- databases ------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's Unix socket (the libpq ``host``)."""
        return self.base

    def url(self, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL of database ``dbname`` over the server's Unix socket."""
        host = urllib.parse.quote(str(self.socket_dir), safe="")
        return f"postgresql://{SUPERUSER}@{host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh name unless given) and return its URL."""
        name = name or f"t{os.getpid()}_{next(_counter)}"
        if not _NAME.match(name):
            raise ValueError(f"a test database name must match {_NAME.pattern}, got {name!r}")
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending its open connections first."""
        if not _NAME.match(name):
            raise ValueError(f"a test database name must match {_NAME.pattern}, got {name!r}")
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        import psycopg

        with self._lock, psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(statement.encode())


_OWNER = "owner.pid"


def reap_orphans(parent: str | os.PathLike[str] = "/tmp", timeout: float = 30.0) -> int:
    """Stop the servers under ``parent`` whose starting process is dead; delete their files.

    A server whose owner (``owner.pid`` in its directory) is alive is left alone, and so
    is a directory without that file. The postmaster is signalled only if its command
    line names that server's data directory (a reused pid is never hit); it gets a fast
    shutdown (SIGINT), then SIGKILL after ``timeout`` seconds. Returns how many were reaped.
    """
    reaped = 0
    for owner_file in sorted(Path(parent).glob(f"bapg-*/{_OWNER}")):
        base = owner_file.parent
        try:
            owner = int(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        postmaster = _postmaster_of(base)
        if postmaster is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGINT)
            if not _wait_exit(postmaster, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(postmaster, signal.SIGKILL)
                _wait_exit(postmaster, timeout)
        shutil.rmtree(base, ignore_errors=True)
        reaped += 1
    return reaped


def _postmaster_of(base: Path) -> int | None:
    """The pid of the postmaster serving ``base`` (checked against its command line)."""
    data = base / "data"
    try:
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if os.fsencode(data) in cmdline else None


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait (bounded) for a process that is not our child to exit; True once it has."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _demote_to_postgres(base: Path) -> Callable[[], None]:
    """Give ``base`` to the ``postgres`` user; the ``preexec_fn`` that becomes that user."""
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "running as root, and there is no 'postgres' system user to run the server as "
            "(PostgreSQL refuses to run as root); install postgresql-15 or run as another user"
        ) from None
    os.chown(base, user.pw_uid, user.pw_gid)
    os.chmod(base, 0o700)
    uid, gid = user.pw_uid, user.pw_gid

    def demote() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return demote
