"""Ketta's own settings (env prefix ``KETTA_``); Letta keeps reading its own ``LETTA_*`` vars.

Both come from the process environment first, then from ``.env`` in the working directory
(:func:`load_environment` copies ``.env`` into ``os.environ`` without overriding, before Letta
is imported, because Letta's own settings only read the process environment).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Variables that may instead be given as NAME_FILE=/path (Docker/compose secrets in /run/secrets).
FILE_VARIABLES: tuple[str, ...] = (
    "LETTA_SERVER_PASSWORD",
    "LETTA_PG_PASSWORD",
    "LETTA_PG_URI",
    "LETTA_ENCRYPTION_KEY",
)


# NAME -> the NAME_FILE path it was read from by load_environment (so a command can say where a
# value came from: `ketta token` names LETTA_SERVER_PASSWORD_FILE, not LETTA_SERVER_PASSWORD).
read_from_files: dict[str, str] = {}


class SettingsError(ValueError):
    """A setting given in a form Ketta cannot use; the message says what to fix."""


def load_environment(dotenv: Path | None = None) -> None:
    """``.env`` (working directory) into ``os.environ``, the process environment winning; then
    ``NAME_FILE`` secrets into ``NAME``. Idempotent; call before anything imports Letta."""
    from dotenv import dotenv_values

    from ketta.core import env_file

    path = dotenv if dotenv is not None else Path.cwd() / ".env"
    if path.is_file():
        env_file.check(path)  # a line it cannot read stops here, said once (python-dotenv would skip it)
        taken = set()
        for key, value in dotenv_values(path).items():
            if value is not None and key not in os.environ:
                os.environ[key] = value
                taken.add(key)
        env_file.remember(path, taken)
    for name in FILE_VARIABLES:
        file_name = os.environ.get(f"{name}_FILE")
        if not file_name or os.environ.get(name):
            continue
        try:
            os.environ[name] = Path(file_name).read_text().strip()
            read_from_files[name] = file_name
        except OSError as exc:
            raise SettingsError(f"{name}_FILE={file_name} cannot be read ({exc.strerror}): mount the secret there, or set {name} instead.") from None


class LettaDatabaseSettings(BaseSettings):
    """Letta's own database variables (``letta/settings.py``), read the way Letta reads them."""

    model_config = SettingsConfigDict(env_prefix="LETTA_", extra="ignore")

    pg_uri: str | None = None
    pg_db: str | None = None
    pg_user: str | None = None
    pg_password: str | None = None
    pg_host: str | None = None
    pg_port: str | None = None  # checked by ketta.db.database, which names a bad value

    def parts(self) -> dict[str, str | None]:
        """The LETTA_PG_* parts by variable name, empty strings as unset."""
        return {f"LETTA_PG_{k.upper()}": (getattr(self, f"pg_{k}") or None) for k in ("db", "user", "password", "host", "port")}


class KettaSettings(BaseSettings):
    """Every switch that changes Letta's behaviour; each gates the patches that declare it."""

    model_config = SettingsConfigDict(env_prefix="KETTA_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path("~/.ketta"), description="Data directory: embedded PostgreSQL, encryption key, lock file.")
    unified_providers: bool = Field(default=True, description="Every provider is an org-scoped database row; nothing synced from env vars.")
    hard_delete: bool = Field(default=True, description="DELETE /v1/providers/{id} removes the rows; the name is reusable at once.")
    no_openai_proxy: bool = Field(default=True, description="Handles are '{provider name}/{model}', never 'openai-proxy/...'.")
    env_key_fallback: bool = Field(
        default=False,
        description="With no key stored, use {PROVIDER_NAME}_API_KEY from the environment, only at its own endpoint (the type's "
        "default or {PROVIDER_NAME}_API_BASE). Opens the operator's env keys to every organization's keyless provider of that name.",
    )
    share_search_keys: bool = Field(
        default=False,
        description="Letta's built-in web_search/fetch_webpage tools may use the operator's EXA_API_KEY/TAVILY_API_KEY for every "
        "user's agents (off: withheld from Letta; an agent's own EXA_API_KEY tool variable still works).",
    )
    organization_scope: bool = Field(default=True, description="Letta queries without an organization filter (GET /v1/messages/ listed every "
                                     "organization's messages) see the caller's organization only, and ids a body refers to (an agent's "
                                     "block_ids, a group's agent_ids, ...) must be of the caller's organization.")
    kimi_provider: bool = Field(default=True, description="Register the 'kimi' (Moonshot AI) provider type.")
    offline: bool = Field(default=True, description="Never download data or send telemetry at run time (Letta fetches NLTK data at start-up; onnxruntime phones home).")
    encryption_keyring: bool = Field(default=True, description="Decrypt stored secrets with every configured key (current, then previous ones) and refuse to start when none can read them.")
    previous_encryption_keys: SecretStr = Field(default=SecretStr(""), description="Comma list of earlier encryption keys, accepted for decryption only (key rotation).")
    url_guard: bool = Field(default=True, description="Refuse unsafe provider URLs (non-http(s), credentials, private addresses); check every connection.")
    allow_private_hosts: str = Field(
        default="",
        description="Comma list of hostnames, IPs or CIDRs an LLM base_url may use although they are loopback/private/link-local "
        "(e.g. '127.0.0.1,localhost' for a local Ollama).",
    )
    insecure_no_login: bool = Field(default=False, description="Serve every request without a token (login off). Only on a trusted network.")
    patch_on_import: bool = Field(default=True, description="Patches of modules stock Letta imports only when a request needs them (the OpenAI SDK's resources, nltk) are applied at that module's first import, before anything uses it, their drift checked from source text at start; ~1 s of CPU less per start. False: the start imports them to patch them.")
    patch_fingerprint_cache: bool = Field(default=True, description="The start's patch drift check reuses the fingerprint of a patched target whose source file is unchanged since the last start (same path, size and mtime; kept in KETTA_HOME/patch_fingerprints.json), ~0.8 s of CPU less per start; `ketta patches verify` always reads every source. False: every start reads them all.")
    contain_letta_files: bool = Field(default=True, description="Letta's files live under KETTA_HOME (0700, secrets 0600); no ~/.letta/config, no openapi_letta.json in the working directory.")
    bounded_llm_calls: bool = Field(
        default=True,
        description="LLM/embedding calls share one pooled HTTP client per endpoint, with Ketta's timeouts and retry budget.",
    )
    llm_connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect to an LLM/embedding endpoint.")
    llm_read_timeout: float = Field(default=120.0, gt=0, description="Seconds an LLM/embedding endpoint may stay silent (between bytes).")
    llm_max_retries: int = Field(default=1, ge=0, le=10, description="Retries of a failed LLM/embedding call (connection error, timeout, 408/429/5xx).")
    cancel_on_disconnect: bool = Field(default=True, description="A request's work (and its LLM call) is cancelled when its client disconnects.")
    shutdown_grace: float = Field(default=10.0, ge=0, description="Seconds SIGTERM/SIGINT waits for running requests before cancelling them.")
    db_pool: bool = Field(default=True, description="Ketta's own database engine: a connection pool with pre-ping, instead of Letta's.")
    db_pool_size: int = Field(default=20, ge=1, description="Database connections kept open per process.")
    db_max_overflow: int = Field(default=20, ge=0, description="Extra connections a process may open under load beyond the pool size.")
    db_pool_recycle: int = Field(default=300, ge=1, description="Seconds after which a pooled connection is replaced.")
    db_fewer_round_trips: bool = Field(default=True, description="Fewer database round trips (ketta.db.round_trips): a pooled connection is pinged only after KETTA_DB_PING_AFTER_IDLE seconds idle, and BEGIN waits for a session's first write; false: SQLAlchemy's pre-ping and BEGIN before every session.")
    db_ping_after_idle: float = Field(default=5.0, ge=0, description="Seconds a pooled connection may sit idle before it is pinged on checkout (with KETTA_DB_FEWER_ROUND_TRIPS; one PostgreSQL closed is always replaced).")
    freeze_heap_at_start: bool = Field(default=True, description="Letta is imported with Python's cyclic garbage collector paused and what the import built (~700,000 objects) is frozen out of later collections (ketta.core.heap): ~1 s of CPU less per start, cheaper full collections while serving; the imports' few thousand garbage objects are kept. False: the collector as Python sets it.")
    route_fields_at_first_use: bool = Field(default=True, description="FastAPI builds the pydantic TypeAdapter of each field of a route (Letta's ~770 routes: ~4,300) at its first use instead of at import (ketta.api.route_fields): ~1.7 s of CPU less per start. False: all at import, as stock.")
    lean_cpu_paths: bool = Field(default=True, description="Skip work whose result cannot differ: the OpenAI SDK's request-body transform where it is an identity (ketta.llm.request_body), Letta's built-in tool schemas generated once per process; false: every message redoes both.")
    db_in_lists_as_arrays: bool = Field(default=True, description="Send `column IN (list)` as `column = ANY($1::type[])` (ketta.db.in_lists): one prepared statement whatever the list's length, not one per length kept in each connection's statement cache.")
    db_pgbouncer: bool = Field(default=False, description="The database is reached through PgBouncer in transaction mode (no prepared-statement cache).")
    letta_fixes: bool = Field(default=True, description="Carry Ketta's fixes of Letta 0.16.8 bugs that upstream never released (patches of kind 'fix'); false: Letta's own behaviour.")
    skip_fixes: str = Field(default="", description="Comma list of upstream references (e.g. 'letta-ai/letta#3144' or '3144') whose fix stays off.")
    allow_patch_drift: bool = Field(default=False, description="Start even if an upstream target changed since its patch was written: each drifted patch is skipped (Letta's own code runs for it), never applied blind.")
    llm_routing: bool = Field(default=True, description="Every LLM client's calls go through Ketta's routing seam (ketta.providers.routing): health recording, fallback handles, pools; false: Letta's calls untouched.")
    provider_health: bool = Field(default=True, description="Record every LLM/embedding call's outcome per provider; GET /v1/providers/{id}/health.")
    provider_health_window: float = Field(default=300.0, gt=0, description="Seconds of recent calls the health answer covers (error rate, latency).")
    provider_health_flush: float = Field(default=5.0, gt=0, description="At most this often (s) each worker writes its providers' health to the database.")
    provider_cooldown: float = Field(default=30.0, ge=0, description="Seconds a provider that answered 429 without Retry-After is skipped (0: never).")
    provider_fallback: bool = Field(default=True, description="Agents' metadata.ketta_fallback_handles take over a failed call (needs llm_routing).")
    provider_pools: bool = Field(default=True, description="Provider pools (/v1/pools/): one handle over several providers of the same models, calls spread over them.")
    usage_ledger: bool = Field(default=True, description="Record every LLM call's tokens and cost (ketta_usage), enforce budgets, serve GET /v1/usage; false: no ledger, no budgets.")
    web_app_dir: str = Field(default="", description="Serve this built web app (Klui's build/web) at / behind a login page; its same-origin calls use the session cookie. Empty: no web app, no cookie login.")
    web_session_hours: float = Field(default=12.0, gt=0, le=24 * 30, description="Hours a web login (session cookie) lasts.")
    gateway_errors: bool = Field(default=True, description="A blocking message whose LLM provider failed answers 502/503/504 naming the provider (with its Retry-After), not Letta's 500.")
    secrets_out_of_environment: bool = Field(default=True, description="Once Letta has read them, server secrets (LETTA_PG_URI, LETTA_ENCRYPTION_KEY, LETTA_SERVER_PASSWORD, *_API_KEY, ...) leave os.environ, so no child process inherits them.")
    tool_isolation: bool = Field(default=True, description="Tool code runs with a clean environment, in KETTA_HOME/tool_sandbox, and (server run as root) as KETTA_TOOL_USER.")
    tool_user: str = Field(default="nobody", description="The unprivileged OS user tool code runs as when the server runs as root.")
    tool_python: str = Field(default="", description="The Python interpreter tool code runs with as KETTA_TOOL_USER (same minor version as the server's); default: the server's own, which that user must be able to run.")
    allow_user_tool_code: bool = Field(default=False, description="Per-user tokens may create/change tools with source code and run tools (POST /v1/tools/run, .../tools/{name}/run). Off: only the server token may.")
    log_format: str = Field(default="text", description="Console lines as 'text' or 'json' (one JSON object per line, for log collectors); also `ketta server --log-format`.")
    log_level: str = Field(default="warning", description="Console log level for Letta's and Ketta's loggers; 'debug' also shows Python warnings.")

    def fix_skipped(self, upstream: str) -> bool:
        """Whether KETTA_SKIP_FIXES names this upstream reference ('owner/name#N', or just N)."""
        number = upstream.rsplit("#", 1)[-1]
        return any(item.strip() in (upstream, number, f"#{number}") for item in self.skip_fixes.split(",") if item.strip())

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()


@lru_cache(maxsize=1)
def get_settings() -> KettaSettings:
    """Ketta's settings; a value that does not validate is a SettingsError in one line naming the
    variable and its source (pydantic's own message spans lines and names neither)."""
    from pydantic import ValidationError

    try:
        return KettaSettings()
    except ValidationError as exc:
        from ketta.core import env_file

        secret = frozenset(name for name, info in KettaSettings.model_fields.items() if info.annotation is SecretStr)
        raise SettingsError(env_file.describe_invalid(exc, secret_fields=secret)) from None
