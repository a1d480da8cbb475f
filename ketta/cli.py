"""``ketta``: run the server, manage the database, inspect the patches, import env providers."""

from __future__ import annotations

import signal
import sys

import typer

from ketta import LETTA_VERSION, __version__
from ketta.settings import get_settings

app = typer.Typer(
    help="Ketta: a drop-in Letta server where every LLM provider is a database row.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # typer 0.29's rich help shows every flag as "--flag <bool>"
)
db_app = typer.Typer(help="Ketta's database migrations (own version table: ketta_alembic_version).", no_args_is_help=True)
patches_app = typer.Typer(help="The declared patches over Letta.", invoke_without_command=True)
providers_app = typer.Typer(help="Providers stored in the database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(patches_app, name="patches")
app.add_typer(providers_app, name="providers")


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
    from ketta import logging_setup
    from ketta.settings import SettingsError, load_environment

    try:
        load_environment()  # .env of the working directory, for Letta's settings too; process env wins
        logging_setup.configure(get_settings().log_level)
    except (SettingsError, ValueError) as exc:
        _fail(str(exc))


@app.command()
def server(
    host: str = typer.Option("localhost", help="Interface to bind."),
    port: int = typer.Option(8283, help="Port to listen on (Letta's default)."),
    workers: int = typer.Option(1, help="Worker processes (the database is prepared once, before they start)."),
) -> None:
    """Start the Letta-compatible REST API (/v1, /openapi.json) with Ketta's patches."""
    import uvicorn

    from ketta import app as app_module
    from ketta import cors, database, migrations, startup
    from ketta.letta_modifications import PatchDriftError

    # uvicorn re-raises SIGTERM after its graceful shutdown (the embedded PostgreSQL is stopped by
    # then, in the app's lifespan): make that a normal exit with status 143, not a kill.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        startup.check_port(host, port)  # before the slow part
        if workers > 1:
            # This process only supervises: it settles the database (embedded one included),
            # migrates once and checks the patches; each worker builds the app with create_app.
            app_module.prepare(get_settings())
            origins = cors.settle_origins()
        else:
            app_ = app_module.create_app()
            origins = cors.allowed_origins(app_)
        prepared = app_module.prepared
        assert prepared is not None
        info = startup.StartInfo(
            url=f"http://{host}:{port}", database_uri=prepared.uri, embedded_home=database.embedded_home(),
            revision=migrations.current(prepared.uri), login=startup.login_enabled(get_settings()),
            patches_applied=prepared.patches_applied, cors_origins=origins,
        )
    except (database.DatabaseError, migrations.MigrationError, PatchDriftError, startup.PortInUse) as exc:
        database.stop_embedded()
        _fail(str(exc))
    try:
        typer.echo(startup.block(info))
        if workers > 1:
            # Workers re-run create_app; LETTA_PG_URI is exported so they share this database.
            uvicorn.run("ketta.app:create_app", factory=True, host=host, port=port, workers=workers, access_log=False)
        else:
            uvicorn.run(app_, host=host, port=port, access_log=False)
    finally:
        database.stop_embedded()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _database_uri(attach: bool = False) -> str:
    from ketta import database

    try:
        return database.ensure_database(get_settings().home_dir, attach=attach)
    except database.DatabaseError as exc:
        _fail(str(exc))
        raise  # unreachable


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply Ketta's migrations (adopting a database made by Letta's own migrations)."""
    from ketta import database, migrations

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
    from ketta import database, migrations

    try:
        typer.echo(migrations.current(_database_uri(attach=True)) or "none")
    finally:
        database.stop_embedded()


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. -1 or base.")) -> None:
    """Revert Ketta's migrations down to REVISION."""
    from ketta import database, migrations

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
    for row in letta_modifications.status_from_source(settings):  # no Letta import: answers in about a second
        state = "on " if row.enabled else "off"
        match = "ok" if row.problem is None else f"DRIFT: {row.problem}"
        typer.echo(f"{state} {row.patch.target:<75} {row.patch.setting:<18} {match}")
        typer.echo(f"      {row.patch.why}")


@patches_app.command("verify")
def patches_verify() -> None:
    """Exit non-zero naming every patch whose target is missing or whose upstream source changed."""
    from ketta import letta_modifications

    problems = letta_modifications.verify()
    total = len(list(letta_modifications.iter_patches()))
    for row in problems:
        typer.echo(f"DRIFT {row.patch.target} ({row.module}): {row.problem}")
    if problems:
        _fail(f"{len(problems)} of {total} patches no longer match the installed Letta")
    typer.echo(f"all {total} patches match the installed Letta")


@patches_app.command("fingerprint")
def patches_fingerprint(target: str = typer.Argument(..., help="module:Class.attr")) -> None:
    """Print the fingerprint of an upstream target, for writing or re-basing a patch."""
    from ketta import patching

    probe = patching.Patch(target=target, replacement=None, fingerprint="", setting="", why="")
    typer.echo(patching.current_fingerprint(probe))


@providers_app.command("import-env")
def providers_import_env() -> None:
    """Create database providers from the usual env keys (OPENAI_API_KEY, ANTHROPIC_API_KEY,
    GEMINI_API_KEY, OLLAMA_BASE_URL, MOONSHOT_API_KEY, ...), once; existing names are left alone.
    Works beside a running server (through its database)."""
    import asyncio

    from ketta import database, migrations
    from ketta.app import prepare
    from ketta.import_env import import_env_providers

    try:
        prepare(get_settings(), attach=True)
        outcomes = asyncio.run(import_env_providers())
    except (database.DatabaseError, migrations.MigrationError) as exc:
        _fail(str(exc))
    finally:
        database.stop_embedded()
    if not outcomes:
        typer.echo("no provider configured in the environment")
    for name, outcome in outcomes:
        typer.echo(f"{name}: {outcome}")
    if any(outcome.startswith("refused") for _, outcome in outcomes):
        raise typer.Exit(code=1)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
