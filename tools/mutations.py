"""Mutation check: does the suite notice when a promised behaviour breaks?

Each mutation is a one-line change to ``ketta/`` that breaks something the README promises. For
each, the script copies the package and the tests into a scratch directory, applies the change
there (never to the working tree), runs the tests said to cover it with the scratch copy first on
``PYTHONPATH`` (servers the tests start import it too), and reports whether the tests failed
(killed: good) or passed (survived: a gap in the suite).

    .venv/bin/python tools/mutations.py                 # every mutation
    .venv/bin/python tools/mutations.py kimi-default-url offline-default   # some, by id
    .venv/bin/python tools/mutations.py --list

Slow (each mutation runs its tests, some of which start servers): run it before resolving an
issue, not in CI. Exit status 1 when a mutation survived or no longer applies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("ketta", "tests", "bench", "pyproject.toml")  # bench: tests/test_round_trips.py reads PostgreSQL's log with bench/db_statements.py


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (which must occur exactly once in ``path``) with ``new``; ``tests`` must fail."""

    id: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "refresh-outage-empties-models",
        "ketta/providers/store.py",
        "raise UpstreamUnavailable(name, 504 if status == 504 else 502, f\"{message} (base_url {typed.base_url})\") from None",
        "return [], []",
        ("tests/letta_modifications/services/test_provider_manager.py::test_refresh_during_an_outage_answers_502_and_keeps_the_models",),
        "A refresh during an outage answers 502 and keeps the provider's models (as stock's unreachable_ok=True would not).",
    ),
    Mutation(
        "env-fallback-first",
        "ketta/providers/keys.py",
        "    if not key:\n        key = env_key_for(",
        "    if True:\n        key = env_key_for(",
        ("tests/test_provider_keys.py",),
        "A stored key wins over the env fallback.",
    ),
    Mutation(
        "env-fallback-ignores-setting",
        "ketta/providers/rules.py",
        "    if not get_settings().env_key_fallback:\n        return None",
        "    if False:\n        return None",
        ("tests/test_identity_and_env_keys.py::test_with_the_fallback_off_not_even_the_key_s_own_endpoint_gets_it",),
        "KETTA_ENV_KEY_FALLBACK=false turns the env fallback off.",
    ),
    Mutation(
        "offline-default",
        "ketta/core/settings.py",
        'offline: bool = Field(default=True,',
        'offline: bool = Field(default=False,',
        ("tests/test_settings_and_env.py::test_default_start_downloads_nothing",),
        "By default nothing is downloaded at start (Letta's NLTK download is skipped).",
    ),
    Mutation(
        "kimi-k25-thinking-temperature",
        "ketta/providers/kimi_client.py",
        "return 1.0 if thinking else 0.6",
        "return 0.6",
        ("tests/letta_modifications/llm_api/test_kimi_request_rules.py",),
        "kimi-k2.5/k2.6 with thinking accept only temperature 1.0.",
    ),
    Mutation(
        "kimi-k3-temperature",
        "ketta/providers/kimi_client.py",
        'if name.startswith(("kimi-k2.7-code", "kimi-k3")):',
        'if name.startswith(("kimi-k2.7-code",)):',
        ("tests/letta_modifications/llm_api/test_kimi_request_rules.py",),
        "kimi-k3 accepts only temperature 1.0.",
    ),
    Mutation(
        "kimi-k27-code-temperature",
        "ketta/providers/kimi_client.py",
        'if name.startswith(("kimi-k2.7-code", "kimi-k3")):',
        'if name.startswith(("kimi-k3",)):',
        ("tests/letta_modifications/llm_api/test_kimi_request_rules.py",),
        "kimi-k2.7-code accepts only temperature 1.0.",
    ),
    Mutation(
        "kimi-temperature-no-lower-clamp",
        "ketta/providers/kimi_client.py",
        'min(1.0, max(0.0, float(request_data["temperature"])))',
        'min(1.0, float(request_data["temperature"]))',
        ("tests/letta_modifications/llm_api/test_kimi_request_rules.py",),
        "Temperatures below 0 are clamped to 0 (Moonshot's range is [0, 1]).",
    ),
    Mutation(
        "kimi-default-base-url",
        "ketta/providers/kimi.py",
        'MOONSHOT_CHINA_BASE_URL = "https://api.moonshot.cn/v1"',
        'MOONSHOT_CHINA_BASE_URL = "https://api.moonshot.ai/v1"',
        ("tests/letta_modifications/schemas/providers/test_kimi_sync_listing.py",),
        "A kimi provider without base_url uses Moonshot's China endpoint.",
    ),
    Mutation(
        "name-limit-off-by-one",
        "ketta/providers/rules.py",
        "    if len(cleaned) > MAX_NAME_LENGTH:",
        "    if len(cleaned) >= MAX_NAME_LENGTH:",
        ("tests/test_providers.py",),
        "A 100-character provider name is accepted; 101 is refused.",
    ),
    Mutation(
        "kimi-switch-ignored",
        "ketta/letta_modifications/__init__.py",
        "    return bool(getattr(settings, patch.setting))",
        '    return patch.setting == "kimi_provider" or bool(getattr(settings, patch.setting))',
        ("tests/test_settings_and_env.py::test_switches_turned_off_give_stock_behaviour_one_by_one",),
        "KETTA_KIMI_PROVIDER=false removes the kimi provider type.",
    ),
    Mutation(
        "offline-switch-ignored",
        "ketta/letta_modifications/__init__.py",
        "    return bool(getattr(settings, patch.setting))",
        '    return patch.setting == "offline" or bool(getattr(settings, patch.setting))',
        ("tests/test_settings_and_env.py::test_switches_turned_off_give_stock_behaviour_one_by_one",),
        "KETTA_OFFLINE=false gives Letta's start-up download back.",
    ),
    Mutation(
        "pools-switch-ignored",
        "ketta/app.py",
        "        if get_settings().provider_pools and get_settings().llm_routing:",
        "        if get_settings().llm_routing:",
        ("tests/test_provider_pools.py::test_pools_off_is_stock",),
        "KETTA_PROVIDER_POOLS=false: no /v1/pools/ routes (stock Letta).",
    ),
    Mutation(
        "telemetry-not-refused",
        "ketta/core/offline.py",
        '    "ORT_DISABLE_TELEMETRY": "1",',
        '    "ORT_DISABLE_TELEMETRY": "0",',
        ("tests/test_offline.py::test_every_opt_out_is_set_and_an_operator_s_own_value_is_kept",),
        "onnxruntime's telemetry never leaves the machine.",
    ),
    Mutation(
        "migration-without-lock",
        "ketta/db/migrations/__init__.py",
        '    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})',
        "    pass",
        ("tests/test_migrations.py::test_upgrade_waits_for_the_advisory_lock",),
        "Two servers starting together on one database migrate one after the other.",
    ),
    # --- issues 7, 9, 10 (guard the keys, providers edited safely, secrets) and the Kimi rules ---
    Mutation(
        "login-off-by-default",
        "ketta/core/settings.py",
        "insecure_no_login: bool = Field(default=False,",
        "insecure_no_login: bool = Field(default=True,",
        ("tests/test_auth.py::test_token_forms_sdk_bearer_and_letta_bare_password",),
        "Login is on by default: a request without the token is 401.",
    ),
    Mutation(
        "user-token-acts-as-anyone",
        "ketta/security/auth.py",
        "        if claimed - {principal.user_id}:",
        "        if False:",
        ("tests/test_user_tokens.py::test_user_tokens_act_as_their_user_only_and_keep_orgs_apart",),
        "A user's token acts as that user only: another user_id header is 403.",
    ),
    Mutation(
        "url-guard-first-address-only",
        "ketta/security/url_guard.py",
        "    for text in addresses:",
        "    for text in addresses[:1]:",
        ('tests/test_url_guard.py', '-k', 'not server and not loopback_is_refused'),
        "Every address a name resolves to must pass (one public and one private address: refused).",
    ),
    Mutation(
        "url-guard-credentials-allowed",
        "ketta/security/url_guard.py",
        'if "@" in parts.netloc:',
        'if "@" in parts.path:',
        ('tests/test_url_guard.py', '-k', 'not server and not loopback_is_refused'),
        "A base_url with user:password@ is refused 422.",
    ),
    Mutation(
        "url-guard-ipv4-mapped-passes",
        "ketta/security/url_guard.py",
        "        return refused_category(address.ipv4_mapped)",
        "        return None",
        ('tests/test_url_guard.py', '-k', 'not server and not loopback_is_refused'),
        "An IPv4-mapped IPv6 address (::ffff:10.0.0.1) is judged as the IPv4 address it maps.",
    ),
    Mutation(
        "url-guard-not-at-connection",
        "ketta/security/url_guard.py",
        "addresses = await anyio.to_thread.run_sync(checked_addresses, host, port)",
        "addresses = await anyio.to_thread.run_sync(resolver, host, port)",
        ('tests/test_url_guard.py', '-k', 'not server and not loopback_is_refused'),
        "Every connection is checked again when made (DNS rebinding, redirects).",
    ),
    Mutation(
        "url-guard-create-unchecked",
        "ketta/providers/validation.py",
        "    await check_base_url(request.provider_type, request.base_url)",
        "    pass",
        ("tests/test_url_guard.py::test_server_refuses_unsafe_base_urls_everywhere",),
        "Creating a provider with an unsafe base_url is 422 and stores nothing.",
    ),
    Mutation(
        "hook-installer-not-called",
        "ketta/app.py",
        "        install_log_scrubbing()\n",
        "        pass\n",
        ("tests/test_architecture.py::test_every_declared_hook_is_installed_somewhere",),
        "Every hook the registry declares is installed by some module (the map lists no change Ketta no longer makes).",
    ),
    Mutation(
        "key-binding-ignores-port",
        "ketta/security/endpoints.py",
        "target[:3] != base[:3]",
        "target[:2] != base[:2]",
        ("tests/test_key_binding.py",),
        "An agent config may only name its provider's endpoint: another port of the same host is another endpoint.",
    ),
    Mutation(
        "key-binding-not-at-call-time",
        "ketta/providers/key_binding.py",
        "    return rewritten",
        "    return configured",
        ("tests/test_key_binding.py",),
        "An agent stored with another endpoint calls its provider's endpoint, never the config's.",
    ),
    Mutation(
        "redaction-sk-shape-missed",
        "ketta/security/redaction.py",
        'r"\\bsk-[A-Za-z0-9_\\-]{6,}"',
        'r"\\bsk-[A-Za-z0-9_\\-]{60,}"',
        ('tests/test_redaction.py', '-k', 'not no_key_in_any_response'),
        "An sk-... key nobody told the server about is still redacted from errors and logs.",
    ),
    Mutation(
        "redaction-known-keys-kept",
        "ketta/security/redaction.py",
        "    return pattern.sub(REDACTED, text) if pattern is not None and text else text",
        "    return text",
        ('tests/test_redaction.py', '-k', 'not no_key_in_any_response'),
        "Every key the server handles is redacted wherever it appears, whatever its shape.",
    ),
    Mutation(
        "key-with-line-break-accepted",
        "ketta/providers/rules.py",
        '        if not ("!" <= char <= "~"):',
        '        if char == "\\x00":',
        ('tests/test_redaction.py', '-k', 'not no_key_in_any_response'),
        "A key with a control character, space or non-ASCII is refused 422 (it would end up in an error message).",
    ),
    Mutation(
        "patch-drops-unsent-key",
        "ketta/letta_modifications/services/provider_manager.py",
        "    changed = current.model_copy()",
        '    changed = current.model_copy(update={"api_key_enc": None})',
        ("tests/letta_modifications/services/test_provider_edits.py::test_a_stored_key_never_follows_a_new_origin_by_itself",),
        "PATCH keeps the fields it was not sent: a same-origin base_url edit keeps the stored key (Klui's edit form sends only base_url).",
    ),
    Mutation(
        "patch-key-not-checked",
        "ketta/letta_modifications/services/provider_manager.py",
        '        "api_key" in sent or "access_key" in sent',
        "        False",
        ("tests/letta_modifications/services/test_provider_edits.py::test_patch_with_a_refused_key_answers_400_and_keeps_the_old_key",),
        "A new key sent by PATCH is checked upstream first; a refused one changes nothing.",
    ),
    Mutation(
        "provider-soft-delete",
        "ketta/letta_modifications/services/provider_manager.py",
        "        await session.execute(delete(ProviderRow).where(ProviderRow.id == provider_id))",
        "        await session.execute(update(ProviderRow).where(ProviderRow.id == provider_id).values(is_deleted=True))",
        ("tests/letta_modifications/services/test_provider_manager.py::test_delete_removes_rows_and_frees_the_name",),
        "DELETE /v1/providers/{id} removes the rows; the name is free at once.",
    ),
    Mutation(
        "conversation-soft-delete",
        "ketta/letta_modifications/services/conversation_manager.py",
        "delete(ConversationRow).where(ConversationRow.id == conversation_id)",
        '__import__("sqlalchemy").update(ConversationRow).where(ConversationRow.id == conversation_id).values(is_deleted=True)',
        ("tests/letta_modifications/services/test_conversation_manager.py",),
        "DELETE of a conversation removes its row (stock only flags it).",
    ),
    Mutation(
        "keyring-sync-current-key-only",
        "ketta/letta_modifications/helpers/crypto_utils.py",
        "            return original(cls, encrypted, key)",
        "            return original(cls, encrypted, keys[0])",
        ("tests/letta_modifications/helpers/test_crypto_utils.py",),
        "Decryption tries the current key, then the previous ones (rotation one replica at a time).",
    ),
    Mutation(
        "keyring-async-current-key-only",
        "ketta/letta_modifications/helpers/crypto_utils.py",
        "            return await original(cls, encrypted, key)",
        "            return await original(cls, encrypted, keys[0])",
        ("tests/letta_modifications/helpers/test_crypto_utils.py",),
        "Asynchronous decryption (what Letta's request paths use) tries the previous keys too.",
    ),
    Mutation(
        "keyring-ignores-runtime-key",
        "ketta/security/keyring/key_files.py",
        "    keys = [current] if current else []",
        "    keys = []",
        ("tests/letta_modifications/helpers/test_crypto_utils.py",),
        "A key Letta encrypts with, set at run time (settings.encryption_key), decrypts what it just encrypted.",
    ),
    Mutation(
        "db-pools-of-ended-loops-kept",
        "ketta/db/engine.py",
        "    closed = [key for key, (loop, _, _) in _engines.items() if loop.is_closed()]",
        "    closed = []",
        ("tests/letta_modifications/server/test_db.py::test_pools_of_ended_event_loops_give_their_connections_back",),
        "The pool of an event loop that ended gives its connections back (Letta's suite ran out of connection slots).",
    ),
    Mutation(
        "default-org-race-lost",
        "ketta/letta_modifications/services/organization_manager.py",
        "    except (UniqueConstraintViolationError, IntegrityError):",
        "    except ZeroDivisionError:",
        ("tests/letta_modifications/services/test_default_org_and_user.py::test_starts_at_once_on_a_new_database_all_get_the_default_org_and_user",),
        "Workers starting together on a new database all get the default organization (no duplicate-key start-up failure).",
    ),
    Mutation(
        "pool-ignores-recent-errors",
        "ketta/providers/pool_routing.py",
        "    return sorted(members, key=lambda m: (provider_health.recent_errors(organization_id, m.name, ERROR_MEMORY_S), last[m.name]))",
        "    return list(members)",
        ("tests/test_provider_pools.py",),
        "A pool spreads calls over its members (fewest recent errors, then least recently tried).",
    ),
    Mutation(
        "kimi-embedding-rule-off",
        "ketta/letta_modifications/services/agent_manager.py",
        "    if get_settings().kimi_provider:\n        await refuse_kimi_without_embedding",
        "    if False:\n        await refuse_kimi_without_embedding",
        ("tests/letta_modifications/schemas/providers/test_kimi.py::test_kimi_agent_needs_another_providers_embedding",),
        "A Kimi agent without another provider's embedding is refused 400 with Ketta's message.",
    ),
    Mutation(
        "kimi-lists-every-model",
        "ketta/providers/kimi.py",
        '_KIMI_MODEL_ID = re.compile(r"^(kimi-|moonshot-)", re.IGNORECASE)',
        '_KIMI_MODEL_ID = re.compile(r"", re.IGNORECASE)',
        ("tests/letta_modifications/schemas/providers/test_kimi.py::test_kimi_provider_lists_moonshot_models_with_context_windows",),
        "A Kimi provider lists Moonshot's chat models only, not a proxy's other models.",
    ),
    Mutation(
        "fix-3144-user-kept",
        "ketta/letta_modifications/llm_api/openai_client.py",
        '    request_data.pop("user", None)',
        '    request_data.get("user")',
        ("tests/test_letta_fixes.py::test_3144_responses_api_requests_carry_no_user[fixes_on]",),
        "letta-ai/letta#3144: Responses API requests carry no 'user' (a Responses endpoint refusing it answers the agent).",
    ),
    Mutation(
        "fix-3304-blocking-generic",
        "ketta/letta_modifications/server/rest_api/app.py",
        '"message": rate_limit_message(exc),',
        '"message": "Rate limit exceeded for LLM model provider. Please wait before making another request.",',
        ("tests/test_letta_fixes.py::test_3304_a_rate_limited_call_tells_the_caller_what_the_provider_said[fixes_on]",),
        "letta-ai/letta#3304: a blocking message's 429 says what the provider said.",
    ),
    Mutation(
        "fix-3304-handler-not-installed",
        "ketta/app.py",
        "        patching.install_exception_handlers(app)  # handlers Letta defines inside create_application",
        "        pass",
        ("tests/test_letta_fixes.py::test_3304_a_rate_limited_call_tells_the_caller_what_the_provider_said[fixes_on]",),
        "exception_handler patches reach the app Ketta serves.",
    ),
    Mutation(
        "fix-3304-stream-generic",
        "ketta/letta_modifications/services/streaming_service.py",
        '    payload["message"] = rate_limit_message(error)',
        '    payload["message"] = payload["message"]',
        ("tests/test_letta_fixes.py::test_3304_a_rate_limited_call_tells_the_caller_what_the_provider_said[fixes_on]",),
        "letta-ai/letta#3304: a streamed message's rate-limit error event says what the provider said.",
    ),
    Mutation(
        "fix-3164-openai-client-kept",
        "ketta/letta_modifications/services/file_processor/embedder/openai_embedder.py",
        "    if own is not None:",
        "    if False:",
        ("tests/test_letta_fixes.py::test_3164_an_uploaded_file_on_azure_embeddings_is_embedded_by_azure[fixes_on]",),
        "letta-ai/letta#3164: uploaded files on Azure embeddings go to Azure's deployment path.",
    ),
    Mutation(
        "fix-3156-cancelled-still-blocks",
        "ketta/letta_modifications/agents/helpers.py",
        'ORPHANING_STATUSES = ("cancelled", "failed")',
        'ORPHANING_STATUSES = ("failed",)',
        ("tests/test_letta_fixes.py::test_3156_a_conversation_whose_approval_run_was_cancelled_takes_new_messages[fixes_on]",),
        "letta-ai/letta#3156: a conversation whose approval run was cancelled takes new messages.",
    ),
    # --- the console (issue 22): ketta/core/console.py, ketta/cli.py
    Mutation(
        "console-client-error-traceback",
        "ketta/core/console.py",
        "    if status is not None and 400 <= status < 500:",
        "    if False:",
        ("tests/test_console.py::test_a_client_error_is_one_line_and_its_traceback_shows_at_debug",
         "tests/test_console.py::test_json_lines_carry_status_and_exception"),
        "A client error (4xx) is one console line; its traceback only at debug.",
    ),
    Mutation(
        "console-normal-warnings-shown",
        "ketta/core/console.py",
        "                if pattern.match(message):\n                    return False",
        "                if pattern.match(message):\n                    return True",
        ("tests/test_console.py::test_warnings_of_normal_operation_stay_off_the_console",),
        "Warnings Letta logs in normal operation (context estimate, completed_at, stream end) stay off the console.",
    ),
    Mutation(
        "console-watchdog-dump",
        "ketta/core/console.py",
        "            return bool(WATCHDOG_HEADLINES.match(record.getMessage()))",
        "            return True",
        ("tests/test_console.py::test_the_watchdog_keeps_its_headline_and_its_stack_dump_stays_in_the_file",),
        "Letta's event-loop watchdog shows its headline on the console; its ~60-line stack dump stays in the log file.",
    ),
    Mutation(
        "console-uvicorn-colours",
        "ketta/core/console.py",
        "            formatter[\"use_colors\"] = False",
        "            pass",
        ("tests/test_console.py::test_uvicorn_lines_are_formatted_in_a_terminal",),
        "uvicorn's lines are formatted in a terminal ([4242], not [%d]).",
    ),
    Mutation(
        "console-ctrl-c-silent",
        "ketta/cli.py",
        "    _starting = kind\n",
        "    _starting = None\n",
        ("tests/test_console.py::test_start_says_what_it_does_at_once_and_ctrl_c_says_it_stopped",),
        "Ctrl-C during start-up says in one line that the start stopped.",
    ),
    Mutation(
        "url-guard-host-twice",
        "ketta/security/url_guard.py",
        "    where = f\"a {category} address\" if host == str(address) else",
        "    where = f\"a {category} address\" if False else",
        ("tests/test_url_guard.py::test_the_refusal_names_the_host_once_and_the_setting_to_add",),
        "The URL-guard refusal names the host once (an IP literal is its own address).",
    ),
    Mutation(
        "handle-typo-no-suggestion",
        "ketta/providers/handle_suggestions.py",
        "    if close:",
        "    if False:",
        ("tests/letta_modifications/server/test_handle_suggestions.py::test_the_message_suggests_close_handles_else_some_else_says_what_to_do",),
        "A mistyped handle's 404 suggests the close handles the caller can use.",
    ),
    Mutation(
        "embedding-typo-400",
        "ketta/letta_modifications/server/server.py",
        "        if (exc.details or {}).get(\"argument_name\") != \"handle\":",
        "        if True:",
        ("tests/letta_modifications/server/test_handle_suggestions.py::test_an_embedding_handle_typo_is_a_404_not_a_400",),
        "A mistyped embedding handle answers 404 naming it (stock: 400).",
    ),
    Mutation(
        "provider-type-422-repr",
        "ketta/letta_modifications/server/rest_api/app.py",
        "        if error.get(\"type\") == \"enum\" and",
        "        if False and",
        ("tests/letta_modifications/server/test_provider_type_422.py::test_an_unknown_provider_type_is_a_plain_422_with_the_creatable_types",),
        "An unknown provider_type is a plain 422 listing the creatable types.",
    ),
    Mutation(
        "env-file-malformed-skipped",
        "ketta/core/env_file.py",
        "    if bad:\n",
        "    if False:\n",
        ("tests/test_env_file.py::test_a_malformed_line_stops_the_server_once_naming_file_and_line",
         "tests/test_env_file.py::test_an_unclosed_quote_in_the_database_uri_is_an_error_not_the_embedded_database"),
        "A .env line Ketta cannot read stops the start, said once with file and line.",
    ),
    Mutation(
        "settings-error-multiline",
        "ketta/core/settings.py",
        "        raise SettingsError(env_file.describe_invalid(exc, secret_fields=secret)) from None",
        "        raise",
        ("tests/test_env_file.py::test_an_invalid_value_names_the_variable_and_its_source",),
        "An invalid setting is one line naming the variable and where it came from.",
    ),
    Mutation(
        "openai-embeddings-unlisted",
        "ketta/letta_modifications/schemas/providers/openai.py",
        "    return [config for config in configs if config.embedding_model in listed]",
        "    return configs",
        ("tests/letta_modifications/schemas/providers/test_openai_embeddings.py",),
        "An OpenAI-compatible provider offers only the embedding models its /models names.",
    ),
    Mutation(
        "openai-models-asked-twice",
        "ketta/letta_modifications/schemas/providers/openai.py",
        "    pending = _in_flight.get(key)",
        "    pending = None",
        ("tests/letta_modifications/services/test_provider_edits.py::test_patch_with_an_accepted_key_stores_it_and_relists",),
        "One provider's chat and embedding listings share one GET /models.",
    ),
    # --- CLI commands and the database (issue 22): ketta/db/database.py, ketta/cli.py, ketta/providers/import_env.py
    Mutation(
        "cli-attach-starts-embedded",
        "ketta/db/database.py",
        "        if attach:\n            raise DatabaseError(no_server_message(home))",
        "        if False:\n            raise DatabaseError(no_server_message(home))",
        ("tests/test_cli_database.py::test_commands_that_need_the_database_say_in_one_line_that_no_server_runs",),
        "A command that needs the server's database says in one line that none runs; it never makes one.",
    ),
    Mutation(
        "import-env-makes-home-first",
        "ketta/cli.py",
        "        database.ensure_database(get_settings().home_dir, attach=True, create=False)\n",
        "",
        ("tests/test_cli_database.py::test_import_env_with_a_key_and_no_server_says_so_and_makes_nothing",),
        "import-env with a key but no server says so in one line and makes nothing under KETTA_HOME.",
    ),
    Mutation(
        "cli-maintenance-initdb",
        "ketta/db/database.py",
        "        if not create and not (embedded.pgdata / \"PG_VERSION\").exists():",
        "        if False:",
        ("tests/test_cli_database.py::test_maintenance_commands_never_initdb",),
        "ketta db upgrade/downgrade never initdb a new embedded database.",
    ),
    Mutation(
        "import-env-imports-letta",
        "ketta/cli.py",
        "    if not import_env.anything_configured():",
        "    if False:",
        ("tests/test_cli_database.py::test_import_env_with_nothing_configured_answers_without_letta",),
        "import-env with nothing configured answers at once, without Letta or a database.",
    ),
    Mutation(
        "in-use-names-postgres-port",
        "ketta/db/database.py",
        "    if url:\n        return f\"the Ketta server on",
        "    if False:\n        return f\"the Ketta server on",
        ("tests/test_cli_database.py::test_the_lock_file_names_the_server_url_for_the_in_use_refusal",),
        "'KETTA_HOME is in use' names the server's URL, not its PostgreSQL's port.",
    ),
    Mutation(
        "token-file-source-unnamed",
        "ketta/cli.py",
        "    if \"LETTA_SERVER_PASSWORD\" in read_from_files:",
        "    if False:",
        ("tests/test_cli_database.py::test_token_names_the_file_it_came_from",),
        "`ketta token` names LETTA_SERVER_PASSWORD_FILE when the token came from it.",
    ),
    Mutation(
        "fix-3156-completed-is-orphan",
        "ketta/letta_modifications/agents/helpers.py",
        'ORPHANING_STATUSES = ("cancelled", "failed")',
        'ORPHANING_STATUSES = ("cancelled", "failed", "completed")',
        ("tests/test_letta_fixes.py::test_3156_a_conversation_whose_approval_run_was_cancelled_takes_new_messages[fixes_on]",),
        "letta-ai/letta#3156: a live approval (run completed with requires_approval) still refuses a new message (409).",
    ),
    Mutation(
        "fixes-off-by-default",
        "ketta/core/settings.py",
        "    letta_fixes: bool = Field(default=True,",
        "    letta_fixes: bool = Field(default=False,",
        ("tests/test_patching.py::test_a_fix_names_its_upstream_report_is_on_by_default_and_each_can_be_skipped",),
        "Fixes of Letta are on by default.",
    ),
    Mutation(
        "skip-fixes-ignored",
        "ketta/letta_modifications/__init__.py",
        '    if patch.kind == "fix" and settings.fix_skipped(patch.upstream):',
        '    if patch.kind == "fix" and False:',
        ("tests/test_patching.py::test_a_fix_names_its_upstream_report_is_on_by_default_and_each_can_be_skipped",),
        "KETTA_SKIP_FIXES turns the named fix off.",
    ),
    Mutation(
        "handler-fingerprint-blind",
        "ketta/core/patching.py",
        "    if found != patch.fingerprint:",
        "    if False:",
        ("tests/test_patching.py::test_fingerprints_still_guard_against_a_different_installed_letta",),
        "A different installed letta (a changed target, handler closures included) is drift.",
    ),
    Mutation(
        'fallback-any-number',
        'ketta/providers/fallback.py',
        '    if len(value) > MAX_FALLBACKS:',
        '    if False:',
        ('tests/test_provider_fallback.py::test_each_fallback_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        'An agent names at most 5 fallback handles (400 otherwise).',
    ),
    Mutation(
        'fallback-own-model-allowed',
        'ketta/providers/fallback.py',
        '        if handle == primary_handle:',
        '        if False:',
        ('tests/test_provider_fallback.py::test_each_fallback_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        "A fallback handle is not the agent's own model (400 otherwise).",
    ),
    Mutation(
        'fallback-any-api-format',
        'ketta/providers/fallback.py',
        '        if primary_type and config.model_endpoint_type != primary_type:',
        '        if False:',
        ('tests/test_provider_fallback.py::test_each_fallback_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        "A fallback handle speaks the agent's model's API format (400 otherwise).",
    ),
    Mutation(
        'fallback-not-a-list-accepted',
        'ketta/providers/fallback.py',
        '    if not isinstance(value, list) or not all(isinstance(h, str) and h.strip() for h in value):',
        '    if False:',
        ('tests/test_provider_fallback.py::test_each_fallback_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        'The fallback list is a list of handles (400 saying so otherwise).',
    ),
    Mutation(
        'fallback-unknown-handle-500',
        'ketta/providers/fallback.py',
        '        except Exception:\n            raise FallbackInputError(',
        '        except ZeroDivisionError:\n            raise FallbackInputError(',
        ('tests/test_provider_fallback.py::test_each_fallback_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        'An unknown fallback handle is a 400 naming it, not a 500.',
    ),
    Mutation(
        'fallback-patch-unchecked',
        'ketta/letta_modifications/server/server.py',
        '        await provider_fallback.validate(request.metadata, actor, primary.handle, primary.model_endpoint_type)',
        '        pass',
        ('tests/test_provider_fallback.py::test_each_fallback_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        'Fallback handles are checked on PATCH too (nothing stored when refused).',
    ),
    Mutation(
        'pool-any-size',
        'ketta/providers/pools.py',
        '    if len(refs) > MAX_MEMBERS:',
        '    if False:',
        ('tests/test_provider_pools.py::test_each_pool_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        'A pool has at most 20 members (400 otherwise).',
    ),
    Mutation(
        'pool-of-pools',
        'ketta/providers/pools.py',
        '        if member.provider_type == POOL_PROVIDER_TYPE:',
        '        if False:',
        ('tests/test_provider_pools.py::test_each_pool_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        "A pool's member is not a pool (400 otherwise).",
    ),
    Mutation(
        'pool-member-twice',
        'ketta/providers/pools.py',
        '        if any(m.id == member.id for m in members):',
        '        if False:',
        ('tests/test_provider_pools.py::test_each_pool_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        'A pool names each member once (400 otherwise).',
    ),
    Mutation(
        'pool-mixed-types',
        'ketta/providers/pools.py',
        '    if len(types) > 1:',
        '    if False:',
        ('tests/test_provider_pools.py::test_each_pool_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        "A pool's members are of one provider_type (400 otherwise).",
    ),
    Mutation(
        'pool-no-common-model',
        'ketta/providers/pools.py',
        '    if not models:\n        raise PoolInputError(',
        '    if False:\n        raise PoolInputError(',
        ('tests/test_provider_pools.py::test_each_pool_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        "A pool's members share at least one chat model (400 otherwise, nothing stored).",
    ),
    Mutation(
        'pool-empty-allowed',
        'ketta/providers/pools.py',
        '    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):',
        '    if False:',
        ('tests/test_provider_pools.py::test_each_pool_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        'A pool has at least one member (400 otherwise).',
    ),
    Mutation(
        'pool-blank-member-name',
        'ketta/providers/pools.py',
        'not all(isinstance(r, str) and r.strip() for r in refs):',
        'not all(isinstance(r, str) for r in refs):',
        ('tests/test_provider_pools.py::test_each_pool_rule_refuses_with_400_on_create_and_patch_storing_nothing',),
        'A pool member is named by a non-blank name or id (400 saying so, not a lookup of an empty name).',
    ),
    Mutation(
        "secrets-stay-in-environ",
        "ketta/app.py",
        "    names = server_secrets.take_from_environment()",
        "    names: list[str] = []",
        ("tests/test_tool_isolation.py::test_the_server_process_keeps_no_secret_in_its_environment",),
        "The server process keeps no secret in os.environ (children would inherit it).",
    ),
    Mutation(
        "tool-env-inherited",
        "ketta/letta_modifications/services/tool_sandbox/local_sandbox.py",
        "    env = await patching.original(GATHER)(self, agent_state, additional_env_vars, sbx_id, False)",
        "    env = await patching.original(GATHER)(self, agent_state, additional_env_vars, sbx_id, is_local)",
        ("tests/test_tool_isolation.py::test_a_tool_run_from_source_gets_no_secret",),
        "A tool process gets the tool's own variables only, not a copy of the server's environment.",
    ),
    Mutation(
        "tool-runs-as-server-user",
        "ketta/security/tool_isolation.py",
        "    if os.geteuid() != 0:",
        "    if True:",
        ("tests/test_tool_isolation.py::test_a_tool_run_from_source_gets_no_secret",),
        "As root, tool code runs as KETTA_TOOL_USER, who cannot read KETTA_HOME's secrets.",
    ),
    Mutation(
        "tool-dir-from-sandbox-config",
        "ketta/letta_modifications/services/tool_sandbox/local_sandbox.py",
        '"sandbox_dir": str(directory)}})',
        '"sandbox_dir": (config.config or {}).get("sandbox_dir")}})',
        ("tests/test_tool_isolation.py::test_a_tool_run_from_source_gets_no_secret",),
        "Tools run in KETTA_HOME/tool_sandbox/<org>, whatever a sandbox configuration names.",
    ),
    Mutation(
        "user-tool-code-allowed",
        "ketta/security/tool_code.py",
        "    if get_settings().allow_user_tool_code or not writes_or_runs_code(method, path):",
        "    if True:",
        ("tests/test_tool_isolation.py::test_user_tokens_may_not_write_or_run_tool_code_by_default",),
        "A user token may not write or run tool code unless KETTA_ALLOW_USER_TOOL_CODE=true.",
    ),
    Mutation(
        "image-fetch-unguarded",
        "ketta/letta_modifications/helpers/message_helper.py",
        "            return await image_fetch.fetch_image(url, timeout_seconds)",
        '            return await __import__("ketta.core.patching").core.patching.original(TARGET)(url, max_retries, timeout_seconds)',
        ("tests/test_image_fetch.py",),
        "CVE-2026-4964: an image URL on a refused address is not fetched (directly or via a redirect): 400.",
    ),
    Mutation(
        "unsaved-env-key-served",
        "ketta/security/keyring/check.py",
        "    if index == 0 or not keyring.current_from_env or not found.source.startswith(str(keyring.home)):",
        "    if True:",
        ("tests/test_keyring.py::test_env_key_that_cannot_read_the_database_while_the_key_file_can_is_refused",),
        "LETTA_ENCRYPTION_KEY that cannot read the database while KETTA_HOME's key file can: refused.",
    ),
    Mutation(
        "web-cookie-cross-site-accepted",
        "ketta/api/web_login.py",
        'if site is not None and site != "same-origin" and not (site == "none" and safe):',
        "if False:",
        ("tests/test_web_login.py::test_cookie_rules_over_http",),
        "A session cookie sent by a cross-site (or same-site, other-origin) request logs nothing in (401).",
    ),
    Mutation(
        "web-cookie-origin-unchecked",
        "ketta/api/web_login.py",
        'if origin == "null" or parsed.netloc.lower() != host.lower()',
        "if False and parsed.netloc.lower() != host.lower()",
        ("tests/test_web_login.py::test_cookie_rules_over_http",),
        "A request whose Origin is another origin gets 401 with the cookie; the login form refuses it (CSRF).",
    ),
    Mutation(
        "web-session-survives-revoke",
        "ketta/api/web_login.py",
        "WHERE t.id = :id AND t.revoked_at IS NULL",
        "WHERE t.id = :id",
        ("tests/test_web_login.py::test_cookie_rules_over_http",),
        "Revoking a user token ends every web session made with it.",
    ),
    Mutation(
        "models-list-no-embeddings",
        "ketta/providers/model_listing.py",
        "return chat + [model for model in embeddings if model.handle not in chat_handles]",
        "return chat",
        ("tests/test_klui_contract.py::test_klui_agent_screen",),
        "Klui's embedding picker (GET /v1/models/?provider_name=) offers the provider's embedding models.",
    ),
    Mutation(
        "upstream-fault-is-500",
        "ketta/llm/upstream_errors.py",
        "return status if status in (503, 504) else 502",
        "return 500",
        ("tests/test_klui_contract.py::test_blocking_message_upstream_fault_is_a_gateway_error_and_a_resend_stores_once",),
        "A provider's failure on a blocking message is 502/503/504 naming it, never 500.",
    ),
    Mutation(
        "preflight-not-cached",
        "ketta/security/cors.py",
        'cors[-1].kwargs["max_age"] = PREFLIGHT_MAX_AGE',
        "pass",
        ("tests/test_cors.py::test_klui_preflights_are_cached_and_need_no_token",),
        "Klui's preflights are cached by the browser for 2 hours.",
    ),
    Mutation(
        "identity-body-unchecked",
        "ketta/security/auth.py",
        "            foreign = _foreign_identity(principal, _body_fields(scope[\"headers\"], received))",
        "            foreign = None",
        ("tests/test_identity_and_env_keys.py::test_chat_completions_acts_as_the_token_s_user_only",),
        "A user token naming another user in a body field (chat completions' 'user') gets 403.",
    ),
    Mutation(
        "identity-query-unchecked",
        "ketta/security/auth.py",
        "        foreign = _foreign_identity(principal, parse_qsl(",
        "        foreign = None and _foreign_identity(principal, parse_qsl(",
        ("tests/test_identity_and_env_keys.py::test_every_route_naming_another_identity_refuses_a_user_token",),
        "A user token naming another user or organization in the query string gets 403.",
    ),
    Mutation(
        "identity-same-org-user-allowed",
        "ketta/security/auth.py",
        "    own = {\"user\": principal.user_id, \"organization\": principal.organization_id}",
        "    own = {\"user\": principal.user_id, \"organization\": principal.organization_id}; return None",
        ("tests/test_identity_and_env_keys.py::test_chat_completions_acts_as_the_token_s_user_only",),
        "Every identity field is compared with the token's own user/organization.",
    ),
    Mutation(
        "latest-providers-unfiltered",
        "ketta/security/redaction.py",
        "PROVIDERS_PREFIXES = (\"/v1/providers\", \"/latest/providers\")",
        "PROVIDERS_PREFIXES = (\"/v1/providers\",)",
        ("tests/test_identity_and_env_keys.py::test_latest_provider_routes_never_return_key_material",),
        "/latest/providers responses are stripped of key material like /v1's.",
    ),
    Mutation(
        "letta-proxy-routes-served",
        "ketta/api/closed_routes.py",
        "    app.router.routes[:] = kept",
        "    pass",
        ("tests/test_closed_routes.py",),
        "Letta's Anthropic/Z.ai proxy routes (caller's token and operator's key upstream) are not served.",
    ),
    Mutation(
        "key-follows-new-origin",
        "ketta/letta_modifications/services/provider_manager.py",
        "    if moved and \"api_key\" not in sent and await plain_key(current, current.name):",
        "    if False:",
        ("tests/letta_modifications/services/test_provider_edits.py::test_a_stored_key_never_follows_a_new_origin_by_itself",),
        "PATCH moving a provider with a stored key to another origin must send the key again (400).",
    ),
    Mutation(
        "env-key-any-endpoint",
        "ketta/providers/rules.py",
        "    return key if any(endpoint and is_under(base_url, endpoint) for endpoint in own) else None",
        "    return key",
        ("tests/test_identity_and_env_keys.py::test_with_the_fallback_on_an_env_key_goes_only_to_its_own_endpoint",),
        "With the fallback on, an env key goes only to its own endpoint (type default or *_API_BASE).",
    ),
    Mutation(
        "env-fallback-default-on",
        "ketta/core/settings.py",
        "    env_key_fallback: bool = Field(\n        default=False,",
        "    env_key_fallback: bool = Field(\n        default=True,",
        ("tests/test_identity_and_env_keys.py::test_with_the_fallback_off_not_even_the_key_s_own_endpoint_gets_it",),
        "The env-key fallback is off by default.",
    ),
    Mutation(
        "letta-env-key-for-keyless-call",
        "ketta/letta_modifications/llm_api/llm_client_base.py",
        "    return key or NO_KEY, None, None\n\n\ndef _never_env_key",
        "    return key, None, None\n\n\ndef _never_env_key",
        ("tests/test_identity_and_env_keys.py::test_with_the_fallback_off_not_even_the_key_s_own_endpoint_gets_it",
         "tests/test_env_keys_inner_layers.py::test_a_keyless_provider_s_message_carries_no_env_key"),
        "Letta's own OPENAI_API_KEY fallback for a keyless provider's message is closed.",
    ),
    Mutation(
        "letta-env-key-for-providerless-config",
        "ketta/letta_modifications/llm_api/llm_client_base.py",
        "    return (key or NO_KEY, *rest)",
        "    return (key, *rest)",
        ("tests/test_identity_and_env_keys.py::test_an_agent_config_without_a_provider_never_gets_an_env_key",
         "tests/test_env_keys_inner_layers.py::test_an_agent_config_without_a_provider_gets_no_env_key"),
        "An llm_config without provider_name never gets Letta's env key fallback.",
    ),
    Mutation(
        "letta-env-key-for-embedding",
        "ketta/letta_modifications/llm_api/openai_client.py",
        "    kwargs[\"api_key\"] = NO_KEY  # never",
        "    pass  # never",
        ("tests/test_identity_and_env_keys.py::test_an_agent_config_without_a_provider_never_gets_an_env_key",
         "tests/test_env_keys_inner_layers.py::test_an_agent_config_without_a_provider_gets_no_env_key"),
        "An embedding config without a provider never gets OPENAI_API_KEY.",
    ),
    Mutation(
        "org-pool-members-any-org",
        "ketta/providers/pools.py",
        "pool.organization_id = :org AND ",
        "(pool.organization_id = :org OR true) AND ",
        ("tests/test_org_isolation.py::test_a_pool_s_members_are_its_own_organization_s",),
        "A pool's members are resolved in its own organization only (two organizations may both have a pool of one name).",
    ),
    Mutation(
        "org-pool-resolve-any-org",
        "ketta/providers/pools.py",
        "FROM providers WHERE organization_id = :org AND NOT is_deleted \"",
        "FROM providers WHERE (organization_id = :org OR true) AND NOT is_deleted \"",
        ("tests/test_org_isolation.py::test_a_pool_cannot_take_another_organization_s_provider",),
        "A pool's member list names providers of the caller's organization only.",
    ),
    Mutation(
        "org-pool-row-any-org",
        "ketta/providers/pools.py",
        "WHERE id = :id AND organization_id = :org AND provider_type = :type AND NOT is_deleted FOR UPDATE",
        "WHERE id = :id AND (organization_id = :org OR true) AND provider_type = :type AND NOT is_deleted FOR UPDATE",
        ("tests/test_org_isolation.py::test_another_organization_s_pool_and_provider_health_are_404",),
        "PATCH of another organization's pool is 404.",
    ),
    Mutation(
        "org-pool-get-any-org",
        "ketta/providers/pools.py",
        "sa.text(\"SELECT id, name FROM providers WHERE id = :id AND organization_id = :org AND provider_type = :type AND NOT is_deleted\"),",
        "sa.text(\"SELECT id, name FROM providers WHERE id = :id AND (organization_id = :org OR true) AND provider_type = :type AND NOT is_deleted\"),",
        ("tests/test_org_isolation.py::test_another_organization_s_pool_and_provider_health_are_404",),
        "GET/DELETE of another organization's pool is 404.",
    ),
    Mutation(
        "org-pool-list-any-org",
        "ketta/providers/pools.py",
        "\"SELECT id FROM providers WHERE organization_id = :org AND provider_type",
        "\"SELECT id FROM providers WHERE (organization_id = :org OR true) AND provider_type",
        ("tests/test_org_isolation.py::test_a_pool_s_members_are_its_own_organization_s",),
        "GET /v1/pools/ lists the caller's organization's pools only.",
    ),
    Mutation(
        "org-health-any-org",
        "ketta/api/provider_health.py",
        "WHERE id = :id AND organization_id = :org AND NOT is_deleted",
        "WHERE id = :id AND (organization_id = :org OR true) AND NOT is_deleted",
        ("tests/test_org_isolation.py::test_another_organization_s_pool_and_provider_health_are_404",),
        "GET /v1/providers/{id}/health of another organization's provider is 404.",
    ),
    Mutation(
        "org-key-lookup-any-org",
        "ketta/providers/keys.py",
        "WHERE name = :name AND organization_id = :org AND NOT is_deleted LIMIT 1",
        "WHERE name = :name AND (organization_id = :org OR true) AND NOT is_deleted LIMIT 1",
        ("tests/test_org_isolation.py::test_a_message_never_uses_another_organization_s_key",),
        "A call's key is looked up in the caller's organization only.",
    ),
    Mutation(
        "kimi-redirect-is-valid",
        "ketta/providers/kimi.py",
        "        if 300 <= response.status_code < 400:  # not followed",
        "        if False:  # not followed",
        ("tests/test_redirects.py",),
        "A Kimi key check answered by a redirect is not a valid key.",
    ),
    Mutation(
        "azure-redirect-is-valid",
        "ketta/letta_modifications/schemas/providers/azure.py",
        "    if 300 <= status < 400:",
        "    if False:",
        ("tests/test_redirects.py",),
        "An Azure key check answered by a redirect is not a valid key.",
    ),
    Mutation(
        "aiohttp-follows-redirects",
        "ketta/letta_modifications/schemas/providers/ollama.py",
        "    kwargs[\"allow_redirects\"] = False",
        "    pass",
        ("tests/test_redirects.py",),
        "Letta's aiohttp listings (ollama, mistral) never follow a redirect.",
    ),
    Mutation(
        "azure-env-key-for-keyless",
        "ketta/letta_modifications/llm_api/azure_client.py",
        "    return key, base_url, api_version",
        "    return patching.original(TARGET)(self, api_key, base_url, api_version)",
        ("tests/test_operator_keys.py::test_a_keyless_azure_provider_never_gets_azure_api_key",
         "tests/test_operator_keys.py::test_azure_never_takes_the_key_from_the_environment"),
        "A keyless azure provider never gets the operator's AZURE_API_KEY (Letta's _resolve_credentials fallback).",
    ),
    Mutation(
        "operator-key-any-endpoint",
        "ketta/security/operator_keys.py",
        "    return key if any(own and is_under(endpoint, own) for own in own_endpoints) else None",
        "    return key",
        ("tests/test_operator_keys.py::test_azure_fallback_on_gives_the_key_only_at_the_operator_s_endpoint",),
        "With the fallback on, AZURE_API_KEY goes only to the operator's own endpoint.",
    ),
    Mutation(
        "operator-key-ignores-setting",
        "ketta/security/operator_keys.py",
        "    if not get_settings().env_key_fallback or not endpoint:",
        "    if not endpoint:",
        ("tests/test_operator_keys.py::test_azure_fallback_on_gives_the_key_only_at_the_operator_s_endpoint",),
        "With the fallback off (the default), not even the operator's own Azure endpoint gets AZURE_API_KEY.",
    ),
    Mutation(
        "letta-model-settings-keep-keys",
        "ketta/security/operator_keys.py",
        "        setattr(model_settings, field, None)",
        "        pass",
        ("tests/test_operator_keys.py::test_agent_configs_without_a_provider_never_get_an_env_key",),
        "Letta's clients that read model_settings (DeepSeek, Groq, xAI, Together, MiniMax, Z.ai, ...) never get an env key.",
    ),
    Mutation(
        "sdk-key-from-environment",
        "ketta/security/operator_keys.py",
        "    if kwargs.get(\"api_key\") is None and not kwargs.get(\"auth_token\"):",
        "    if False:",
        ("tests/test_operator_keys.py::test_agent_configs_without_a_provider_never_get_an_env_key",),
        "An SDK client built without a key sends the placeholder, never reads OPENAI_API_KEY/ANTHROPIC_API_KEY itself.",
    ),
    Mutation(
        "fetch-webpage-unguarded",
        "ketta/letta_modifications/services/tool_executor/builtin_tool_executor.py",
        "        setting=\"url_guard\",",
        "        setting=\"insecure_no_login\",",
        ("tests/test_builtin_tools.py::test_a_user_s_llm_cannot_make_the_server_fetch_an_internal_page",),
        "The built-in fetch_webpage tool (URL chosen by the user's LLM) never fetches an internal address, directly or via a redirect.",
    ),
    Mutation(
        "search-keys-shared",
        "ketta/app.py",
        "    names = [] if app_module_settings.share_search_keys else withhold_search_keys()",
        "    names = []",
        ("tests/test_operator_keys.py::test_web_search_never_spends_the_operator_s_exa_key",),
        "web_search does not spend the operator's EXA_API_KEY unless KETTA_SHARE_SEARCH_KEYS is on.",
    ),
    # --- the house by concern (issue 20): drift, layering
    Mutation(
        "drift-applied-blind",
        "ketta/letta_modifications/__init__.py",
        "                skipped.append(patch)\n                continue\n",
        "                skipped.append(patch)\n",
        ("tests/test_patching.py::test_apply_all_refuses_drift_or_skips_the_drifted_patch_never_applies_it",),
        "With KETTA_ALLOW_PATCH_DRIFT=true a drifted patch is skipped (Letta's own code runs), never applied blind.",
    ),
    Mutation(
        "patches-module-unnamed",
        "ketta/cli.py",
        '    typer.echo(f"      declared in {row.module}{written_for}")',
        '    typer.echo(f"      declared in {row.patch.module_name}{written_for}")',
        ("tests/test_patching.py::test_ketta_patches_names_the_module_that_declares_each_patch",),
        "`ketta patches` names the Ketta module that declares each patch.",
    ),
    Mutation(
        "sdk-version-range-ignored",
        "ketta/core/patching.py",
        "    problem = requirement_problem(patch.requires)\n    if problem:\n        return problem\n    try:",
        "    try:",
        ("tests/test_patching.py::test_sdk_targets_carry_their_version_range_and_another_version_is_drift",),
        "A patch of the openai/anthropic SDK drifts when the installed SDK is outside the range it was written for.",
    ),
    Mutation(
        "hook-drift-ignored",
        "ketta/letta_modifications/__init__.py",
        "        if row.problem and row.enabled:",
        "        if False:",
        ("tests/test_patching.py::test_a_drifted_hook_refuses_the_start_unless_its_setting_is_off",),
        "A hook whose overridden Letta code drifted refuses the start (it cannot be skipped alone).",
    ),
    Mutation(
        "routing-records-with-health-off",
        "ketta/providers/routing.py",
        "    if get_settings().provider_health:\n        provider_health.record(",
        "    if True:\n        provider_health.record(",
        ("tests/test_routing_seam.py::test_routing_works_with_health_off_and_records_only_with_it_on",),
        "KETTA_PROVIDER_HEALTH=false records nothing, while the routing seam (fallback, pools) still runs.",
    ),
    Mutation(
        "routing-state-on-letta-client",
        "ketta/providers/routing.py",
        "    state.instrumented = True",
        "    state.instrumented = True\n    client._ketta_instrumented = True",
        ("tests/test_routing_seam.py::test_routing_keeps_its_state_beside_the_client_not_on_it",),
        "Routing keeps its per-client state beside Letta's client (a weak map), not as attributes on it.",
    ),
    Mutation(
        "fallback-anthropic-connection-not-retriable",
        "ketta/providers/health.py",
        "        if isinstance(candidate, (*anthropic_connection, openai.APIConnectionError,",
        "        if isinstance(candidate, (openai.APIConnectionError,",
        ("tests/test_provider_fallback.py::test_an_anthropic_primary_falls_back_to_another_anthropic_provider",),
        "An Anthropic provider that refuses connections is an 'error', not a connection failure: no fallback.",
    ),
    Mutation(
        "fallback-rebuild-binds-variadic",
        "ketta/providers/fallback.py",
        "    if not any(p.kind in variadic for p in signature.parameters.values()):\n",
        "    if True:\n",
        ("tests/test_provider_fallback.py::test_an_anthropic_primary_falls_back_to_another_anthropic_provider",),
        "The fallback rebuilds an Anthropic request with 'args'/'kwargs' as names (TypeError, 500).",
    ),
    Mutation(
        "health-scrub-not-strict",
        "ketta/security/redaction.py",
        "    if strict:\n",
        "    if False:\n",
        ("tests/test_redaction.py::test_one_scrubber_its_strict_mode_is_provider_health_s",),
        "Provider health's stored error texts lose token/secret assignments and URL credentials too.",
    ),
    Mutation(
        "layering-check-blind",
        "tests/test_architecture.py",
        "            if LAYERS.index(there) > LAYERS.index(here):",
        "            if False:",
        ("tests/test_architecture.py::test_the_check_catches_an_upward_import",),
        "An import that runs upward (a domain module importing a patch module) is reported.",
    ),
    Mutation(
        "org-messages-any-org",
        "ketta/security/organization_scope.py",
        "    if organization_id is None or not state.is_select:",
        "    if True:",
        ("tests/test_org_isolation.py::test_listing_all_messages_shows_only_the_caller_s_organization",),
        "GET /v1/messages/ lists the caller's organization's messages only (Letta 0.16.8 listed every organization's).",
    ),
    Mutation(
        "org-budget-any-org",
        "ketta/usage/budgets.py",
        '"b.organization_id = CAST(:org AS varchar) AND ((b.scope',
        '"((b.scope',
        ("tests/test_org_isolation.py::test_another_organization_s_budget_and_price_never_apply",),
        "A budget counts and refuses its own organization's calls only (a provider of the same name elsewhere is another).",
    ),
    Mutation(
        "org-price-any-org",
        "ketta/usage/ledger.py",
        "WHERE o.organization_id = CAST(:org AS varchar) AND o.provider_name",
        "WHERE o.provider_name",
        ("tests/test_org_isolation.py::test_another_organization_s_budget_and_price_never_apply",),
        "An operator's price prices its own organization's calls only.",
    ),
    Mutation(
        "file-upload-without-key",
        "ketta/letta_modifications/services/file_processor/embedder/openai_embedder.py",
        "        client.actor = actor",
        "        pass",
        ("tests/test_file_upload_keys.py",),
        "An uploaded file is embedded with its embedding provider's stored key (the uploader's organization's).",
    ),
    Mutation(
        "callback-url-unguarded",
        "ketta/security/callback_urls.py",
        "    if not get_settings().url_guard:\n        return None",
        "    if True:\n        return None",
        ("tests/test_callback_urls.py",),
        "A run's callback_url on a refused address is not called; the run says why.",
    ),
    Mutation(
        'org-refs-any-org',
        'ketta/security/references.py',
        'WHERE id = ANY(CAST(:ids AS varchar[])) AND organization_id = :org"',
        'WHERE id = ANY(CAST(:ids AS varchar[]))"',
        ("tests/test_org_isolation.py::test_ids_of_another_organization_named_in_a_body_are_404",),
        "Ids a body refers to (an agent's block_ids, a group's agent_ids, ...) must be rows of the caller's organization.",
    ),
    Mutation(
        'org-refs-agent-create',
        'ketta/letta_modifications/services/agent_manager.py',
        'await require_own(actor, agent_refs(agent_create))',
        'pass',
        ("tests/test_org_isolation.py::test_ids_of_another_organization_named_in_a_body_are_404",),
        "An agent is created only with blocks, folders and identities of the caller's organization (404 otherwise).",
    ),
    Mutation(
        'org-refs-agent-update',
        'ketta/letta_modifications/services/agent_manager.py',
        'await require_own(actor, agent_refs(agent_update))',
        'pass',
        ("tests/test_org_isolation.py::test_ids_of_another_organization_named_in_a_body_are_404",),
        "An agent update takes blocks, folders, identities, tools and messages of the caller's organization only.",
    ),
    Mutation(
        'org-refs-group-create',
        'ketta/letta_modifications/services/group_manager.py',
        'await require_own(actor, group_refs(group))',
        'pass',
        ("tests/test_org_isolation.py::test_ids_of_another_organization_named_in_a_body_are_404",),
        "A group is created with agents, manager and shared blocks of the caller's organization only.",
    ),
    Mutation(
        'org-refs-group-modify',
        'ketta/letta_modifications/services/group_manager.py',
        'await require_own(actor, group_refs(group_update))',
        'pass',
        ("tests/test_org_isolation.py::test_ids_of_another_organization_named_in_a_body_are_404",),
        "A group update takes agents of the caller's organization only.",
    ),
    Mutation(
        'org-refs-identity-create',
        'ketta/letta_modifications/services/identity_manager.py',
        '        await require_own(actor, identity_refs(identity))\n    return await patching.original(CREATE_TARGET)',
        '        pass\n    return await patching.original(CREATE_TARGET)',
        ("tests/test_org_isolation.py::test_ids_of_another_organization_named_in_a_body_are_404",),
        "An identity is created with agents and blocks of the caller's organization only.",
    ),
    Mutation(
        'org-refs-identity-update',
        'ketta/letta_modifications/services/identity_manager.py',
        '        await require_own(actor, identity_refs(identity))\n    return await patching.original(UPDATE_TARGET)',
        '        pass\n    return await patching.original(UPDATE_TARGET)',
        ("tests/test_org_isolation.py::test_ids_of_another_organization_named_in_a_body_are_404",),
        "An identity update or upsert links agents and blocks of the caller's organization only.",
    ),
    Mutation(
        "usage-user-sees-all",
        "ketta/api/usage.py",
        "    if principal is not None and not principal.is_admin:",
        "    if False:",
        ("tests/test_usage.py::test_a_user_token_sees_only_its_own_usage",),
        "A user token sees only its own user's usage (GET /v1/usage/ and the CSV), whatever it filters on.",
    ),
    Mutation(
        "usage-budget-not-refusing",
        "ketta/usage/budgets.py",
        "        if budget[\"hard\"]:\n            raise BudgetExceeded(budget)",
        "        if False:\n            raise BudgetExceeded(budget)",
        ("tests/test_usage.py::test_a_spent_hard_budget_refuses_before_the_provider",),
        "A spent hard budget refuses the call before it reaches the provider (429 naming it; an error event when streamed).",
    ),
    Mutation(
        "usage-budget-spend-not-counted",
        "ketta/usage/budgets.py",
        "ON CONFLICT (budget_id, period_start) DO UPDATE SET spent = ketta_usage_budget_spend.spent + EXCLUDED.spent\"",
        "ON CONFLICT (budget_id, period_start) DO NOTHING\"",
        ("tests/test_usage.py::test_a_spent_hard_budget_refuses_before_the_provider",),
        "Every recorded call adds to the period's spend of its budgets (shared by every worker).",
    ),
    Mutation(
        "usage-unknown-price-zero",
        "ketta/usage/ledger.py",
        "COALESCE((SELECT cost FROM price), CAST(:catalog AS numeric)) END",
        "COALESCE((SELECT cost FROM price), CAST(:catalog AS numeric), 0) END",
        ("tests/test_usage.py::test_blocking_and_streamed_calls_are_recorded_to_the_token",),
        "A call with no known price is counted with cost unknown (NULL), never 0.",
    ),
    Mutation(
        "usage-cached-not-apart",
        "ketta/usage/tokens.py",
        "        cached = _int(_get(prompt_details, \"cached_tokens\"))\n",
        "        cached = None\n",
        ("tests/test_usage.py::test_blocking_and_streamed_calls_are_recorded_to_the_token",),
        "Cached input tokens are read from the provider's report and kept apart.",
    ),
    Mutation(
        "usage-moonshot-stream-usage-lost",
        "ketta/usage/tokens.py",
        "                    usage = _get(choice, \"usage\") or usage",
        "                    pass",
        ("tests/test_usage.py::test_moonshot_style_usage_in_the_final_choice_is_read",),
        "A Moonshot stream's usage (inside the final choice) is counted.",
    ),
    Mutation(
        "usage-override-price-ignored",
        "ketta/usage/ledger.py",
        "ORDER BY (o.model = '*') LIMIT 1",
        "ORDER BY (o.model = '*') LIMIT 0",
        ("tests/test_usage.py::test_operator_price_gives_the_cost",),
        "The operator's price for a provider and model gives the call's cost.",
    ),
    Mutation(
        "usage-fallback-not-flagged",
        "ketta/providers/routing.py",
        "    marked = usage_context.via_fallback.set(True)",
        "    marked = usage_context.via_fallback.set(False)",
        ("tests/test_usage.py::test_fallback_and_pool_member_attempts_are_each_a_row",),
        "A ledger row says when an agent's fallback handle answered.",
    ),
    Mutation(
        "usage-pool-not-named",
        "ketta/providers/routing.py",
        "        member_of = usage_context.via_pool.set(pool)",
        "        member_of = usage_context.via_pool.set(None)",
        ("tests/test_usage.py::test_fallback_and_pool_member_attempts_are_each_a_row",),
        "A ledger row names the pool whose member took the call.",
    ),
    Mutation(
        "usage-anthropic-cache-not-in-prompt",
        "ketta/usage/tokens.py",
        "            prompt=_sum(_int(_get(usage, \"input_tokens\")), cache_read, cache_write),",
        "            prompt=_int(_get(usage, \"input_tokens\")),",
        ("tests/test_usage.py::test_anthropic_usage_blocking_and_streamed",),
        "Anthropic's prompt tokens include its cache reads and writes (its input_tokens does not).",
    ),
    Mutation(
        "usage-embedding-usage-dropped",
        "ketta/usage/ledger.py",
        "    record_later(call, from_response(response), \"ok\")\n    return response",
        "    record_later(call, Tokens(), \"ok\")\n    return response",
        ("tests/test_usage.py::test_embedding_calls_are_recorded_to_the_token",),
        "Each embeddings call is a ledger row with the prompt tokens its response reported.",
    ),
    Mutation(
        "usage-embeddings-not-recorded",
        "ketta/providers/routing.py",
        "    elif method.__name__ == \"request_embeddings\" and usage_ledger.enabled():",
        "    elif False:",
        ("tests/test_usage.py::test_embedding_calls_are_recorded_to_the_token", "tests/test_usage.py::test_ollama_embedding_calls_are_recorded"),
        "Embedding calls (archival memory inserted and searched, Ollama's too) are recorded in the usage ledger.",
    ),
    Mutation(
        "usage-embedding-failure-not-recorded",
        "ketta/usage/ledger.py",
        "        record_later(call, Tokens(), \"error\", request.classify(exc))\n        raise",
        "        raise",
        ("tests/test_usage.py::test_embedding_calls_are_recorded_to_the_token",),
        "A failed embeddings call that reached the provider is a row too ('error', its status class).",
    ),
    Mutation(
        "usage-embedding-budget-unchecked",
        "ketta/usage/ledger.py",
        "        call.provider_type = getattr(endpoint_type, \"value\", endpoint_type)\n        await _refuse_over_budget(call)\n",
        "        call.provider_type = getattr(endpoint_type, \"value\", endpoint_type)\n",
        ("tests/test_usage.py::test_a_spent_hard_budget_refuses_embeddings_before_the_provider",),
        "A spent hard budget refuses an embedding request before it reaches the provider.",
    ),
    Mutation(
        "usage-record-in-a-transaction",
        "ketta/usage/ledger.py",
        "            else:\n                await connection.execute(statement, *values)\n",
        "            else:\n                async with connection.transaction():\n                    await connection.execute(statement, *values)\n",
        ("tests/test_usage.py::test_a_ledger_row_is_one_statement_without_a_transaction",),
        "A ledger row (with its cost and budget spend) is one statement in autocommit: one round trip, no BEGIN/COMMIT.",
    ),
    Mutation(
        "usage-lost-connection-kept",
        "ketta/db/engine.py",
        "            pooled.invalidate()  # outside a greenlet",
        "            pass  # outside a greenlet",
        ("tests/test_usage.py::test_the_ledger_writes_on_after_its_connection_is_lost",),
        "A pooled connection lost under a ledger write leaves the pool: the next call's row is written.",
    ),
    Mutation(
        "ollama-embeddings-without-v1",
        "ketta/letta_modifications/llm_api/openai_client.py",
        "            kwargs[\"base_url\"] = kwargs[\"base_url\"].rstrip(\"/\") + \"/v1\"",
        "            pass",
        ("tests/test_usage.py::test_ollama_embedding_calls_are_recorded",),
        "An Ollama embedding handle's calls go to its /v1 (Letta sends them to the bare base_url: 404).",
    ),
    Mutation(
        "round-trips-writes-outside-transaction",
        "ketta/db/round_trips.py",
        "            plain = not executemany and is_plain_read(statement) and not getattr(cursor, \"server_side\", False)",
        "            plain = not executemany and not getattr(cursor, \"server_side\", False)",
        ("tests/test_round_trips.py::test_writes_after_reads_are_one_transaction_rolled_back_whole",
         "tests/test_round_trips.py::test_only_plain_reads_skip_begin"),
        "Deferring BEGIN covers plain reads only: a session's writes stay one transaction, rolled back whole.",
    ),
    Mutation(
        "round-trips-locking-read-outside-transaction",
        "ketta/db/round_trips.py",
        "    r\"\\bFOR\\s+(?:UPDATE|SHARE|NO\\s+KEY\\s+UPDATE|KEY\\s+SHARE)\\b|",
        "    r\"",
        ("tests/test_round_trips.py::test_a_locking_read_runs_inside_the_transaction",),
        "A SELECT ... FOR UPDATE starts the transaction: its row lock is held until the session ends.",
    ),
    Mutation(
        "lean-body-keeps-unset-keys",
        "ketta/llm/request_body.py",
        "    body = {key: value for key, value in data.items() if is_given(value)}",
        "    body = dict(data)",
        ("tests/letta_modifications/llm_api/test_openai_request_body.py::test_a_body_as_letta_builds_it_skips_the_walk_and_equals_the_sdks_transform",),
        "A body sent without the SDK's walk drops the keys left unset, as the SDK does.",
    ),
    Mutation(
        "lean-body-ignores-aliases",
        "ketta/llm/request_body.py",
        "        return not _may_transform(expected_type, set())",
        "        return True",
        ("tests/letta_modifications/llm_api/test_openai_request_body.py::test_a_type_with_an_alias_is_transformed_by_the_sdk",),
        "A parameter type that renames or formats a field is always transformed by the SDK.",
    ),
    Mutation(
        "lean-body-never-taken",
        "ketta/llm/request_body.py",
        "    if type(data) is not dict or not transform_is_identity(expected_type):",
        "    if True:",
        ("tests/letta_modifications/llm_api/test_openai_request_body.py::test_a_body_as_letta_builds_it_skips_the_walk_and_equals_the_sdks_transform",),
        "A plain body as Letta builds it skips the SDK's walk (the CPU the patch saves).",
    ),
    Mutation(
        "memo-hands-out-the-cached-value",
        "ketta/core/memo.py",
        "        return copy.deepcopy(cached(*args, **kwargs))",
        "        return cached(*args, **kwargs)",
        ("tests/test_memo.py::test_computed_once_per_arguments_and_each_caller_gets_its_own_copy",),
        "Each caller of a value computed once gets its own copy: changing it changes nobody else's.",
    ),
    Mutation(
        "key-file-made-twice",
        "ketta/security/keyring/key_files.py",
        "        os.link(tmp, path)  # atomic, and fails if the name exists",
        "        os.replace(tmp, path)",
        ("tests/test_keyring.py::test_workers_starting_at_once_on_a_new_home_end_up_with_one_key",),
        "Workers starting at once on a new KETTA_HOME share the first one's key file; none replaces it with its own.",
    ),
    Mutation(
        "heap-collector-left-paused",
        "ketta/core/heap.py",
        "        gc.enable()",
        "        pass",
        ("tests/test_heap.py::test_paused_inside_then_frozen_and_running_again",
         "tests/test_heap.py::test_a_failed_block_still_leaves_the_collector_running"),
        "The garbage collector runs again once Letta is imported (paused for good, a server's cyclic garbage would never be freed).",
    ),
    Mutation(
        "heap-nothing-frozen",
        "ketta/core/heap.py",
        "        gc.freeze()",
        "        pass",
        ("tests/test_heap.py::test_paused_inside_then_frozen_and_running_again",),
        "What the start's imports built is frozen out of later collections.",
    ),
    Mutation(
        "round-trips-begin-always",
        "ketta/db/round_trips.py",
        "    if _defer_begin_on.get() is self:",
        "    if False:",
        ("tests/test_round_trips.py::test_a_session_that_only_reads_opens_no_transaction",),
        "A session that only reads sends no BEGIN/COMMIT.",
    ),
    Mutation(
        "round-trips-closed-connection-kept",
        "ketta/db/round_trips.py",
        "        if raw is not None and raw.is_closed():",
        "        if False:",
        ("tests/test_round_trips.py::test_a_connection_postgres_closed_is_replaced_without_an_error",),
        "A pooled connection PostgreSQL closed is replaced on checkout, without a ping of every checkout.",
    ),
    Mutation(
        "round-trips-columns-only-loads-all",
        "ketta/db/round_trips.py",
        "        if not classes or not state.is_select:",
        "        if True:",
        ("tests/test_round_trips.py::test_columns_only_loads_a_row_without_its_selectin_relationships",),
        "RunManager.create_run reads its agent's columns only, not the agent's ten relationships.",
    ),
    Mutation(
        "round-trips-agent-update-reread",
        "ketta/db/direct_writes.py",
        "    if not _agent_update_result_unused.get():",
        "    if True:",
        ("tests/test_round_trips.py::test_a_message_costs_at_most_its_statements_and_transactions",),
        "A finished run's agent update (last_stop_reason) is one UPDATE, not the agent read with its relationships twice.",
    ),
    Mutation(
        "round-trips-unused-relationships-loaded",
        "ketta/db/round_trips.py",
        "        if not state.is_select or state.is_relationship_load or getattr(bind, \"_proxied\", bind) not in _skipping_engines:",
        "        if True:",
        ("tests/test_round_trips.py::test_a_message_costs_at_most_its_statements_and_transactions",),
        "Loading messages does not load their steps and runs (two statements per load that nothing reads).",
    ),
    Mutation(
        "round-trips-single-writes-in-transaction",
        "ketta/db/round_trips.py",
        "    return owner is not None and owner is asyncio.current_task()",
        "    return False",
        ("tests/test_round_trips.py::test_a_message_costs_at_most_its_statements_and_transactions",),
        "A session that writes one statement (a step, a provider trace, a run's updates) sends no BEGIN/COMMIT.",
    ),
    Mutation(
        "round-trips-step-metrics-read-modify-write",
        "ketta/letta_modifications/services/step_manager.py",
        "    if not args and not kwargs.get(\"allow_partial\") and set(kwargs) <= {*METRIC_FIELDS, \"allow_partial\"}:",
        "    if False:",
        ("tests/test_round_trips.py::test_a_message_costs_at_most_its_statements_and_transactions",),
        "A step's metrics row is written by one INSERT ... ON CONFLICT, not five reads and writes per call.",
    ),
    Mutation(
        "round-trips-step-metrics-update-drops-fields",
        "ketta/db/direct_writes.py",
        "        insert = insert.on_conflict_do_update(index_elements=[metrics.c.id], set_=given,",
        "        insert = insert.on_conflict_do_update(index_elements=[metrics.c.id], set_={\"step_ns\": None},",
        ("tests/test_round_trips.py::test_a_message_stores_what_it_stores_without_the_changes",),
        "The second metrics call of a step (after the LLM answered) stores its timings, as Letta's update does.",
    ),
    Mutation(
        "round-trips-step-success-status",
        "ketta/db/direct_writes.py",
        "        \"status\": StepStatus.SUCCESS,",
        "        \"status\": StepStatus.PENDING,",
        ("tests/test_round_trips.py::test_a_message_stores_what_it_stores_without_the_changes",),
        "A successful step is stored with status success, its tokens and stop reason, as Letta's update does.",
    ),
    Mutation(
        "round-trips-agent-stop-reason-lost",
        "ketta/db/direct_writes.py",
        "        .values(**values, updated_at=datetime.now(timezone.utc), _last_updated_by_id=actor.id)",
        "        .values(updated_at=datetime.now(timezone.utc), _last_updated_by_id=actor.id)",
        ("tests/test_round_trips.py::test_a_message_stores_what_it_stores_without_the_changes",),
        "A finished run still sets its agent's last_stop_reason.",
    ),
    Mutation(
        "round-trips-message-ids-truncated",
        "ketta/db/direct_writes.py",
        "            message_ids=message_ids,",
        "            message_ids=message_ids[:1],",
        ("tests/test_round_trips.py::test_a_message_stores_what_it_stores_without_the_changes",),
        "After a step the agent's context holds every in-context message, stored by the one UPDATE.",
    ),
    Mutation(
        "suite-xdist-groups-lost",
        "tests/conftest.py",
        "                item._id = NodeId.parse(grouped)  # type: ignore[attr-defined]",
        "                pass",
        ("tests/test_suite_groups.py",),
        "The suite's workers keep a module's tests together: a module-scoped server starts once (issue 21).",
    ),
    Mutation(
        "fingerprint-cache-ignores-file-changes",
        "ketta/core/patching.py",
        'return f"{path}|{stat.st_size}|{stat.st_mtime_ns}|',
        'return f"{path}|0|0|',
        ("tests/test_start_cost.py::test_a_warm_fingerprint_cache_still_sees_an_edited_upstream_file",),
        "The start's fingerprint cache never hides an edited upstream file: a changed patched target still refuses the start.",
    ),
    Mutation(
        "fingerprint-cache-unused",
        "ketta/core/patching.py",
        "    if key is not None and key in _fingerprint_cache:",
        "    if False:",
        ("tests/test_start_cost.py::test_a_warm_fingerprint_cache_still_sees_an_edited_upstream_file",),
        "A start does not re-read the source of an unchanged patched target (about 0.3-0.8 s of CPU per start).",
    ),
    Mutation(
        "patch-on-import-never-applied",
        "ketta/core/patching.py",
        "        for patch in _pending_on_import.pop(self._name, []):\n            apply(patch)",
        "        for patch in _pending_on_import.pop(self._name, []):\n            pass",
        ("tests/test_usage.py::test_embedding_calls_are_recorded_to_the_token",
         "tests/test_start_cost.py::test_a_patch_applied_on_import_is_in_place_before_anyone_uses_the_module"),
        "A patch of a module imported only when a request needs it (the OpenAI SDK's resources) is in place at its first use: embedding calls are recorded.",
    ),
    Mutation(
        "patch-on-import-survives-revert",
        "ketta/core/patching.py",
        "    if patch in waiting:\n        waiting.remove(patch)",
        "    if False:\n        waiting.remove(patch)",
        ("tests/test_start_cost.py::test_a_patch_reverted_before_the_import_is_never_applied",),
        "Reverting the patches (stock behaviour) also cancels those still waiting for their module's import.",
    ),
    Mutation(
        "workers-share-one-socket",
        "ketta/core/serving.py",
        "target=self.target, sockets=[own])",
        "target=self.target, sockets=self.sockets[:1])",
        ("tests/test_auth.py::test_two_workers_accept_the_same_generated_token",),
        "`ketta server --workers N`: each worker listens on a socket of its own, so connections opened together are spread over the workers.",
    ),
    Mutation(
        "workers-claim-no-address",
        "ketta/core/serving.py",
        'claim.bind(f"\\0ketta-serving-{host}-{port}")',
        'claim.bind("")',
        ("tests/test_serving.py::test_a_second_multi_worker_ketta_on_the_same_address_is_refused_before_it_binds",),
        "Two `ketta server --workers N` on one port: the second is refused, though SO_REUSEPORT would let it bind beside the first.",
    ),
    Mutation(
        "worker-bind-failure-as-traceback",
        "ketta/core/serving.py",
        "    except OSError as exc:\n        for sock in sockets:",
        "    except PermissionError as exc:\n        for sock in sockets:",
        ("tests/test_serving.py::test_a_port_bound_since_the_check_is_refused_in_one_line_and_the_claim_let_go",),
        "A worker socket that cannot be bound (port taken since the check) is a one-line refusal, not an OSError traceback.",
    ),
    Mutation(
        "in-lists-rendered-per-length",
        "ketta/db/engine.py",
        "            in_lists.install(engine)",
        "            pass",
        ("tests/test_round_trips.py::test_a_message_costs_at_most_its_statements_and_transactions",),
        "Letta's sessions send an IN list as one array parameter: the in-context messages' read is one statement for every context length.",
    ),
    Mutation(
        "in-list-array-not-a-clone",
        "ketta/db/in_lists.py",
        "    array = right._clone()  #",
        "    array = elements.BindParameter(right.key, right.value, unique=True)  #",
        ("tests/test_in_lists.py::test_every_list_length_is_one_statement_with_the_same_rows",),
        "A query shape compiled once (SQLAlchemy's cache) gets each execution's own list, not the first one's.",
    ),
    Mutation(
        "in-lists-enums-as-arrays",
        "ketta/db/in_lists.py",
        "    if isinstance(item, sqltypes.Enum) or not isinstance(item, (sqltypes.String, sqltypes.Integer)):",
        "    if not isinstance(item, (sqltypes.String, sqltypes.Integer)):",
        ("tests/test_in_lists.py::test_other_in_shapes_are_rendered_as_sqlalchemy_renders_them",),
        "Only plain strings and integers become arrays; enums, subqueries, tuples and literal_execute lists are rendered as SQLAlchemy renders them.",
    ),
    Mutation(
        "route-fields-built-at-construction",
        "ketta/letta_modifications/server/rest_api/route_fields.py",
        "replacement=nothing_at_construction,",
        "replacement=_build_with_fastapis_post_init,",
        ("tests/test_start_cost.py::test_route_fields_build_their_adapters_at_first_use_and_behave_as_stock",),
        "A route field's TypeAdapter is built at its first use, not when Letta makes the route (~1.7 s of CPU per start).",
    ),
    Mutation(
        "route-field-adapter-never-built",
        "ketta/api/route_fields.py",
        "        self._build(field)\n",
        "        pass\n",
        ("tests/test_start_cost.py::test_route_fields_build_their_adapters_at_first_use_and_behave_as_stock",),
        "The deferred adapter is FastAPI's own, built at first use: requests validate and responses serialize as stock.",
    ),
    Mutation(
        "route-fields-patched-after-letta",
        "ketta/letta_modifications/__init__.py",
        '    "ketta.letta_modifications.server.rest_api.route_fields",  # second: before any Letta route is made\n',
        "",
        ("tests/test_start_cost.py::test_route_fields_build_their_adapters_at_first_use_and_behave_as_stock",),
        "The route-field patches are applied before any patch module imports Letta's routers.",
    ),
    Mutation(
        "tool-python-without-server-packages",
        "ketta/security/tool_isolation.py",
        'entries = [*env.get("PYTHONPATH", "").split(os.pathsep), paths["purelib"], paths["platlib"]]',
        'entries = [*env.get("PYTHONPATH", "").split(os.pathsep)]',
        ("tests/test_tool_isolation.py::test_another_interpreter_finds_the_server_s_packages_when_the_server_has_a_pythonpath",),
        "KETTA_TOOL_PYTHON's interpreter finds the server's packages even when the server runs with a PYTHONPATH (which Letta hands the tool).",
    ),
)


def _scratch_copy(destination: Path) -> None:
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, destination / name)


def _apply(mutation: Mutation, root: Path) -> str | None:
    """Apply in the scratch copy; an error message if the mutation no longer applies."""
    target = root / mutation.path
    text = target.read_text()
    count = text.count(mutation.old)
    if count != 1:
        return f"expected the original text once in {mutation.path}, found it {count} times"
    target.write_text(text.replace(mutation.old, mutation.new))
    return None


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _imports_scratch_copy(root: Path) -> bool:
    probe = subprocess.run([sys.executable, "-c", "import ketta; print(ketta.__file__)"], cwd=root, env=_env(root),
                           capture_output=True, text=True)
    return probe.stdout.strip().startswith(str(root))


def _pytest(root: Path, selection: tuple[str, ...], timeout_s: float) -> tuple[str, str]:
    """(outcome, pytest's summary line): passed, failed, timeout or broken (nothing ran)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *selection]
    try:
        result = subprocess.run(command, cwd=root, env=_env(root), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "timeout", f"tests timed out after {timeout_s:g} s"
    last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    if result.returncode == 0:
        return "passed", last
    if result.returncode in (4, 5):  # usage error / nothing collected: the listed tests are wrong
        return "broken", f"pytest exit {result.returncode}: {last}"
    failed = [line for line in result.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return "failed", "; ".join([last, *failed])  # which test failed: a baseline failure must say


def run(mutation: Mutation | None, selection: tuple[str, ...], timeout_s: float) -> tuple[str, str]:
    """Run ``selection`` in a scratch copy with ``mutation`` applied (None: unchanged)."""
    with tempfile.TemporaryDirectory(prefix=f"ketta-mutant-{mutation.id if mutation else 'baseline'}-") as tmp:
        root = Path(tmp)
        _scratch_copy(root)
        problem = _apply(mutation, root) if mutation else None
        if problem:
            return "broken", problem
        if not _imports_scratch_copy(root):
            return "broken", "the scratch copy is not what Python imports (PYTHONPATH)"
        return _pytest(root, selection, timeout_s)


def baseline_selections(chosen: list[Mutation]) -> list[tuple[str, ...]]:
    """The chosen mutations' tests, unmutated, in as few pytest runs as possible (each run of
    server tests starts a server): plain test ids together, selections with options apart."""
    plain = list(dict.fromkeys(t for m in chosen if not any(a.startswith("-") for a in m.tests) for t in m.tests))
    files = {t for t in plain if "::" not in t}
    plain = [t for t in plain if "::" not in t or t.split("::")[0] not in files]  # a file covers its tests
    optioned = list(dict.fromkeys(m.tests for m in chosen if any(a.startswith("-") for a in m.tests)))
    return ([tuple(plain)] if plain else []) + optioned


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ids", nargs="*", help="mutation ids (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutation's test run")
    parser.add_argument("--no-baseline", action="store_true", help="skip running the tests unmutated first")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.ids or m.id in args.ids]
    unknown = set(args.ids) - {m.id for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation ids: {', '.join(sorted(unknown))}")
    if args.list:
        for m in chosen:
            print(f"{m.id:<34} {m.path}\n{'':<34} {m.why}\n{'':<34} tests: {' '.join(m.tests)}")
        return 0
    if not args.no_baseline:  # the tests must pass unmutated, or a kill would mean nothing
        for selection in baseline_selections(chosen):
            started = time.monotonic()
            outcome, detail = run(None, selection, args.timeout)
            print(f"BASELINE  {time.monotonic() - started:6.1f} s  {outcome}: {detail}  [{' '.join(selection)}]", flush=True)
            if outcome != "passed":
                return 1
    rows: list[tuple[str, str, str, float, str]] = []
    for m in chosen:
        started = time.monotonic()
        outcome, detail = run(m, m.tests, args.timeout)
        verdict = {"failed": "killed", "timeout": "killed", "passed": "survived"}.get(outcome, "broken")
        rows.append((m.id, " ".join(m.tests), verdict, time.monotonic() - started, detail))
        print(f"{verdict.upper():<9} {m.id:<34} {rows[-1][3]:6.1f} s  {detail}", flush=True)
    print("\n| mutation | tests run | outcome | time (s) | pytest |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} | {row[3]:.0f} | {row[4]} |")
    counts = {v: sum(1 for r in rows if r[2] == v) for v in ("killed", "survived", "broken")}
    print(f"\n{counts['killed']} killed, {counts['survived']} survived, {counts['broken']} broken")
    return 0 if not counts["survived"] and not counts["broken"] else 1


if __name__ == "__main__":
    sys.exit(main())
