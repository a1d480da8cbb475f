"""The ASGI app factory: database, migrations, patches, then Letta's app.

Order matters: Letta reads ``LETTA_PG_URI`` and builds its pydantic schemas when its
modules are imported, so the database is settled and the patches applied before
``letta.server.rest_api.app`` is imported. Usable directly by ASGI servers:
``uvicorn --factory ketta.app:create_app``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI

from ketta.settings import KettaSettings, get_settings

log = logging.getLogger("ketta")


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` settled on, for the start-up block."""

    uri: str
    patches_applied: int
    encryption_key: str = ""  # where the current key comes from and its id (never the key)


prepared: Prepared | None = None


def prepare(settings: KettaSettings | None = None, attach: bool = False) -> str:
    """Everything the app needs before Letta is imported; returns the database URI.

    ``attach``: use the embedded PostgreSQL of a ``ketta server`` already running on this
    KETTA_HOME (commands run beside the server) instead of refusing.
    """
    global prepared
    from ketta import cors, database, keyring, letta_modifications, logging_setup, migrations, offline, secrets
    from ketta.settings import load_environment

    load_environment()
    settings = settings or get_settings()
    logging_setup.configure(settings.log_level)
    cors.settle_origins()
    if settings.offline:
        offline.stay_offline()
    uri = database.ensure_database(settings.home_dir, attach=attach)
    keys = secrets.ensure_encryption_key(settings)
    migrations.upgrade(uri)
    if settings.encryption_keyring:
        keyring.verify(uri, keys)  # before Letta's slow import: a wrong key is refused in one line
    key_info = f"{keys.describe()} (key id {keys.current.id})"
    log.info("Encryption key: %s. A database backup cannot be read without it: keep a copy (`ketta keys export`).", key_info)
    applied = letta_modifications.apply_all(settings)
    logging_setup.configure(settings.log_level)  # again: importing Letta installed its logging config
    log.info("Ketta applied %d patches", len(applied))
    prepared = Prepared(uri=uri, patches_applied=len(applied), encryption_key=key_info)
    return uri


_app: FastAPI | None = None


def _stopping_embedded_database(lifespan: Callable) -> Callable:
    """Letta's lifespan, then a clean stop of the embedded PostgreSQL this process started.

    Stopping at ASGI shutdown works under any server: uvicorn re-raises SIGTERM after its
    graceful shutdown, which would kill the process before ``atexit`` handlers run.
    """

    @asynccontextmanager
    async def lifespan_then_stop(app: FastAPI) -> AsyncIterator[Any]:
        from ketta import database

        async with lifespan(app) as state:
            yield state
        database.stop_embedded()

    return lifespan_then_stop


def create_app() -> FastAPI:
    """Ketta's ASGI app: Letta's REST API with every Ketta patch applied before the first request."""
    global _app
    if _app is None:
        prepare()
        from ketta import logging_setup

        logging_setup.configure(get_settings().log_level, quiet_stdout=True)
        from letta.server.rest_api.app import app

        from ketta import cors
        from ketta.redaction import ProviderSecretsFilter

        app.add_middleware(ProviderSecretsFilter)
        if get_settings().provider_health:
            from ketta.provider_health_api import router as health_router

            app.include_router(health_router)
        app.router.lifespan_context = _stopping_embedded_database(app.router.lifespan_context)
        cors.outermost(app)  # last: preflights pass before any login middleware added above
        _app = app
    return _app
