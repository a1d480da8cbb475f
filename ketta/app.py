"""The ASGI app factory: database, migrations, patches, then Letta's app.

Order matters: Letta reads ``LETTA_PG_URI`` and builds its pydantic schemas when its
modules are imported, so the database is settled and the patches applied before
``letta.server.rest_api.app`` is imported. Usable directly by ASGI servers:
``uvicorn --factory ketta.app:create_app``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI

from ketta.core.settings import KettaSettings, get_settings

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
    global prepared, _server_token
    from ketta import letta_modifications
    from ketta.security import auth, cors, encryption_key
    from ketta.security.keyring import check as keyring_check
    from ketta.db import database, migrations
    from ketta.core import heap, home, logging_setup, offline
    from ketta.core.settings import load_environment

    load_environment()
    settings = settings or get_settings()
    home.contain_letta(settings)  # before anything imports Letta
    logging_setup.configure(settings.log_level, log_format=settings.log_format)
    cors.settle_origins()
    if settings.offline:
        offline.stay_offline()
    if auth.login_required(settings):
        _server_token = auth.load_server_token(settings)
    else:
        _server_token = None
        log.warning("Login is OFF (KETTA_INSECURE_NO_LOGIN): anyone who can reach this server can use every stored key")
    auth.neutralise_letta_secure_mode()
    uri = database.ensure_database(settings.home_dir, attach=attach)
    keys = encryption_key.ensure_encryption_key(settings)
    home.secure_files(settings)
    migrations.upgrade(uri)
    if settings.encryption_keyring:
        keyring_check.verify(uri, keys)  # before Letta's slow import: a wrong key is refused in one line
    key_info = f"{keys.describe()} (key id {keys.current.id})"
    log.info("Encryption key: %s. A database backup cannot be read without it: keep a copy (`ketta keys export`).", key_info)
    with heap.collector_paused_then_frozen(settings.freeze_heap_at_start):
        applied = letta_modifications.apply_all(settings)  # imports most of Letta
    logging_setup.configure(settings.log_level, log_format=settings.log_format)  # again: importing Letta installed its logging config
    log.info("Ketta applied %d patches", len(applied))
    prepared = Prepared(uri=uri, patches_applied=len(applied), encryption_key=key_info)
    return uri


_app: FastAPI | None = None
_server_token: str | None = None


def _stopping_embedded_database(lifespan: Callable) -> Callable:
    """Letta's lifespan, then the shared LLM clients and the database pool closed and a clean
    stop of the embedded PostgreSQL this process started.

    Stopping at ASGI shutdown works under any server: uvicorn re-raises SIGTERM after its
    graceful shutdown, which would kill the process before ``atexit`` handlers run. Letta's own
    shutdown steps get at most KETTA_SHUTDOWN_GRACE seconds, so a stuck one cannot hold the exit.
    """

    @asynccontextmanager
    async def lifespan_then_stop(app: FastAPI) -> AsyncIterator[Any]:
        from ketta.db import database

        letta_lifespan = lifespan(app)
        state = await letta_lifespan.__aenter__()
        try:
            yield state
        finally:
            grace = get_settings().shutdown_grace
            try:
                await asyncio.wait_for(letta_lifespan.__aexit__(None, None, None), timeout=max(grace, 1.0))
            except asyncio.TimeoutError:
                log.warning("Letta's shutdown steps took over %.0f s (KETTA_SHUTDOWN_GRACE); going on", grace)
            await _close_pools()
            database.stop_embedded()

    return lifespan_then_stop


def _import_letta_app(server_token: str | None) -> FastAPI:
    """Letta's app, built at import. Letta keeps a password of its own for ``POST /v1/auth``
    (``LETTA_SERVER_PASSWORD`` or a random one, read at import): make it the server token, without
    leaving the token in the environment that tool sandboxes inherit."""
    before = os.environ.get("LETTA_SERVER_PASSWORD")
    set_here = server_token is not None and not before
    if set_here:
        os.environ["LETTA_SERVER_PASSWORD"] = server_token
    from ketta.core import heap, home

    sys.argv.append(_NO_OPENAPI_AT_IMPORT)
    try:
        with home.letta_cwd(get_settings()), heap.collector_paused_then_frozen(get_settings().freeze_heap_at_start):
            from letta.server.rest_api.app import app  # the rest of Letta: its routers and app
    finally:
        sys.argv.remove(_NO_OPENAPI_AT_IMPORT)
        if set_here:
            if before is None:
                os.environ.pop("LETTA_SERVER_PASSWORD", None)
            else:
                os.environ["LETTA_SERVER_PASSWORD"] = before
    return app


# Letta's own switch (read from sys.argv by ``create_application``): do not build the OpenAPI
# document at import. Built there it cost ~6 s of CPU per start (40% of it) and was thrown away:
# FastAPI rebuilds it at the first GET /openapi.json once Ketta has added its routes. Without it
# Letta also writes no ``openapi_letta.json`` (a file for its SDK generator, read by nothing).
_NO_OPENAPI_AT_IMPORT = "--no-generation"

async def _close_pools() -> None:
    """Close the shared LLM HTTP clients and this process's database pool."""
    from ketta.llm import http as llm_http

    await llm_http.aclose_all()
    try:
        from letta.server.db import close_db

        await asyncio.wait_for(close_db(), timeout=5)
    except Exception as exc:  # noqa: BLE001 - shutdown goes on
        log.warning("closing the database pool failed: %s", exc)


def _secrets_out_of_environment(app_module_settings: KettaSettings) -> None:
    """Letta has read its settings: hand the secrets to its settings objects and take them out of
    ``os.environ``, so no tool process (nor anything else this server starts) inherits them."""
    from ketta.security import server_secrets

    if not app_module_settings.secrets_out_of_environment:
        return
    from letta.settings import settings as letta_settings

    uri = server_secrets.get("LETTA_PG_URI")
    if uri and not letta_settings.pg_uri:
        letta_settings.pg_uri = uri
    key = server_secrets.get("LETTA_ENCRYPTION_KEY")
    if key and not letta_settings.encryption_key:
        letta_settings.encryption_key = key
    names = server_secrets.take_from_environment()
    log.debug("Secrets taken out of the environment: %s", ", ".join(names))


def _operator_keys_out_of_letta(app_module_settings: KettaSettings) -> None:
    """Letta's clients fall back to the env keys it read into ``model_settings`` for any call
    without a key of its own: empty them (kept in Ketta's memory for its own fallback)."""
    from ketta.security.operator_keys import withhold_from_letta, withhold_search_keys

    names = [] if app_module_settings.share_search_keys else withhold_search_keys()
    if not app_module_settings.unified_providers:
        return
    names += withhold_from_letta()
    log.debug("Operator keys withheld from Letta's clients: %s", ", ".join(names))


def create_app() -> FastAPI:
    """Ketta's ASGI app: Letta's REST API with every Ketta patch applied before the first request."""
    global _app
    if _app is None:
        prepare()
        from ketta.core import logging_setup

        logging_setup.configure(get_settings().log_level, quiet_stdout=True, log_format=get_settings().log_format)
        app = _import_letta_app(_server_token)
        from ketta.core import patching

        patching.install_exception_handlers(app)  # handlers Letta defines inside create_application
        from ketta.core import console

        console.register_app(app)  # which logged exceptions are client errors (one console line each)
        from ketta.api.closed_routes import drop_letta_proxy_routes

        drop_letta_proxy_routes(app)  # they forward the caller's token and the operator's env key upstream

        from ketta.security import auth, cors, user_tokens
        from ketta.security.redaction import ProviderSecretsFilter, install_log_scrubbing, install_response_scrubbing

        app.add_middleware(ProviderSecretsFilter)
        if get_settings().unified_providers:
            from ketta.providers import model_listing

            model_listing.install(app)  # GET /v1/models/ lists embedding models too (Klui's pickers)
        if get_settings().provider_health:
            from ketta.api.provider_health import router as health_router

            app.include_router(health_router)
        if get_settings().provider_pools and get_settings().llm_routing:
            from ketta.api.pools import router as pools_router

            app.include_router(pools_router)
        if get_settings().usage_ledger:
            from ketta.api import usage as usage_api

            usage_api.install(app)  # GET /v1/usage/, /v1/ketta/budgets, /v1/ketta/prices; a spent budget answers 429
        install_response_scrubbing(app)
        install_log_scrubbing()
        from ketta.api import user_tokens as user_tokens_api

        user_tokens_api.mount(app)
        _secrets_out_of_environment(app_module_settings=get_settings())
        _operator_keys_out_of_letta(app_module_settings=get_settings())
        if _server_token is not None:
            if get_settings().web_app_dir:
                from ketta.api import web_login

                web_login.install(app, _server_token, get_settings().web_app_dir, user_tokens.resolve,
                                  int(get_settings().web_session_hours * 3600))
            auth.install(app, _server_token, user_tokens.resolve)
        if get_settings().cancel_on_disconnect:
            from ketta.api.disconnect import CancelOnDisconnect

            app.add_middleware(CancelOnDisconnect)
        app.router.lifespan_context = _stopping_embedded_database(app.router.lifespan_context)
        cors.outermost(app)  # last: preflights pass before any login middleware added above
        _app = app
    return _app
