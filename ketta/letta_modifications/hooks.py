"""The changes to Letta and its process that are not attribute swaps, declared beside the patches.

Patches (the ``PATCHES`` of the other modules here) replace an attribute of a Letta module or
class. Some changes cannot be one: an environment variable Letta reads at import, a wrapper put
on one client instance, middleware and handlers of the built app, the log record factory, a
subclass overriding Letta's methods. They are listed here so that this package stays the whole
map of what Ketta changes: ``ketta patches`` lists them with the function that makes each change,
and ``ketta patches verify`` (and the start) checks the fingerprint of the Letta code a hook
overrides or relies on, as for a patch. The functions named in ``installed_by`` are called by
:mod:`ketta.app` (``prepare``/``create_app``) and by the patches that own the objects they wrap.
"""

from __future__ import annotations

from ketta.core.patching import Hook

KIMI_OVERRIDE_WHY = ("KimiClient (a subclass of Letta's OpenAIClient, used for provider type 'kimi') overrides this "
                     "method for the requests Moonshot accepts; written against Letta's version of it.")
OPENAI_CLIENT = "letta.llm_api.openai_client:OpenAIClient"
KIMI_CLIENT = "ketta.providers.kimi_client:KimiClient"

HOOKS = [
    # --- environment edits (made before Letta is imported: it reads them at import)
    Hook(name="env LETTA_DIR, MEMGPT_CONFIG_PATH, TOOL_EXEC_DIR, XDG_CACHE_HOME", kind="environment",
         installed_by="ketta.core.home:contain_letta", setting="contain_letta_files",
         why="Letta's directory, config path, tool directory and libraries' caches go under KETTA_HOME (files 0600)."),
    Hook(name="env LETTA_SERVER_SECURE (removed)", kind="environment",
         installed_by="ketta.security.auth:neutralise_letta_secure_mode", setting="",
         why="Letta's own password middleware must not run beside Ketta's login (it prints its password)."),
    Hook(name="env LETTA_SERVER_PASSWORD (during Letta's app import only)", kind="environment",
         installed_by="ketta.app:_import_letta_app", setting="",
         why="Letta's app is built with the server token, so its secure mode never generates and prints one."),
    Hook(name="env ACCEPTABLE_ORIGINS", kind="environment", installed_by="ketta.security.cors:settle_origins", setting="",
         why="Browser origins Letta's CORS middleware allows: Klui's web build on this host by default."),
    Hook(name="env telemetry opt-outs (onnxruntime, HF, ...)", kind="environment",
         installed_by="ketta.core.offline:stay_offline", setting="offline",
         why="Letta's dependencies phone home on their own; their documented opt-outs are set."),
    Hook(name="env PYTHONWARNINGS", kind="environment", installed_by="ketta.core.logging_setup:configure", setting="",
         why="Dependency warnings a user cannot act on stay off the console (workers inherit the filter)."),
    Hook(name="env LETTA_PG_URI", kind="environment", installed_by="ketta.db.database:ensure_database", setting="",
         why="Letta reads its database from LETTA_PG_URI: the external server's, or the embedded one Ketta started."),
    Hook(name="env LETTA_ENCRYPTION_KEY", kind="environment", installed_by="ketta.security.keyring.key_files:activate",
         setting="", why="Letta encrypts stored secrets only with a key: Ketta's keyring provides one by default."),
    Hook(name="env secrets taken out (LETTA_PG_URI, LETTA_ENCRYPTION_KEY, *_API_KEY, ...)", kind="environment",
         installed_by="ketta.app:_secrets_out_of_environment", setting="secrets_out_of_environment",
         why="Once Letta has read them, the secrets live in memory only: tool processes inherit no key."),
    Hook(name="letta.settings model_settings/tool_settings credentials emptied", kind="environment",
         installed_by="ketta.app:_operator_keys_out_of_letta", setting="unified_providers",
         why="Letta's clients would send the operator's env keys for any keyless call: kept in Ketta's memory instead."),
    # --- run-time wrappers of Letta objects
    Hook(name="LLM client instances: request_async, stream_async, request_embeddings, request wrapped", kind="wrapper",
         installed_by="ketta.providers.routing:instrument", setting="llm_routing",
         why="Every LLM call is recorded for provider health and routed (fallback handles, pools); called from the "
         "patched LLMClientBase.__init__."),
    Hook(name="LLM client instances: request_async, stream_async recorded in the usage ledger (inside routing)", kind="wrapper",
         installed_by="ketta.usage.ledger:wrap", setting="usage_ledger",
         why="Each LLM call attempt (own provider, pool member, fallback) is a ketta_usage row with the provider's token "
         "report; a spent hard budget refuses it before it is sent. Applied by ketta.providers.routing."),
    Hook(name="an agent's LLM client: build_request_data wrapped, fallback handles attached", kind="wrapper",
         installed_by="ketta.providers.fallback:attach", setting="provider_fallback",
         why="A failed request can be rebuilt for the next handle; called from the patched LettaAgentV2 set-up."),
    Hook(name="an agent loop's step/stream wrapped", kind="wrapper",
         installed_by="ketta.letta_modifications.agents.agent_loop:_check_first", setting="unified_providers",
         why="An agent whose provider row was not read yet checks and retargets it before running (404/400 early)."),
    # --- app-level changes (on the app Letta builds)
    Hook(name="middleware ProviderSecretsFilter, ErrorScrubber; exception handlers wrapped", kind="app",
         installed_by="ketta.security.redaction:install_response_scrubbing", setting="",
         why="No key in a provider response or an error body."),
    Hook(name="logging.setLogRecordFactory (key scrubbing)", kind="app",
         installed_by="ketta.security.redaction:install_log_scrubbing", setting="",
         why="No key in a log line, whichever library logs it."),
    Hook(name="middleware TokenAuth", kind="app", installed_by="ketta.security.auth:install", setting="",
         why="Login on by default (not installed only with KETTA_INSECURE_NO_LOGIN=true)."),
    Hook(name="middleware WebLogin", kind="app", installed_by="ketta.api.web_login:install", setting="web_app_dir",
         why="Klui's web build served behind a login page and a session cookie."),
    Hook(name="middleware CancelOnDisconnect", kind="app", installed_by="ketta.api.disconnect:CancelOnDisconnect",
         setting="cancel_on_disconnect", why="A request's work (and its upstream call) ends when its client goes away."),
    Hook(name="middleware order: CORS outermost", kind="app", installed_by="ketta.security.cors:outermost", setting="",
         why="Preflights never meet a login check."),
    Hook(name="routes: Letta's Anthropic and Z.ai proxies removed", kind="app",
         installed_by="ketta.api.closed_routes:drop_letta_proxy_routes", setting="",
         why="They forward the caller's token and the operator's env key to a fixed public host."),
    Hook(name="routes: /v1/ketta/tokens, /v1/pools/, /v1/providers/{id}/health, GET /v1/models/ listing",
         kind="app", installed_by="ketta.app:create_app", setting="",
         why="Ketta's own routers (ketta.api) and the embedding listing (ketta.providers.model_listing)."),
    Hook(name="routes: GET /v1/usage/ (+ CSV), /v1/ketta/budgets, /v1/ketta/prices; handler: BudgetExceeded -> 429",
         kind="app", installed_by="ketta.api.usage:install", setting="usage_ledger",
         why="Asking what providers, agents and users spend; a refused call names its budget and when it resets."),
    Hook(name="console: client errors one line", kind="app", installed_by="ketta.core.console:register_app", setting="",
         why="A 4xx is one console line (its traceback stays in Letta's log)."),
    # --- a subclass overriding Letta's methods (KimiClient), one entry per overridden method
    *[
        Hook(name=f"{KIMI_CLIENT}.{method}", kind="subclass", installed_by=KIMI_CLIENT, setting="kimi_provider",
             why=KIMI_OVERRIDE_WHY, upstream=f"{OPENAI_CLIENT}.{method}", fingerprint=fingerprint)
        for method, fingerprint in (
            ("build_request_data", "47c4f720957b9e05"),
            ("request_async", "f77ad08d868247ad"),
            ("stream_async", "8b75265bd7405077"),
            ("request", "d8a554240aa1d1b3"),
            ("convert_response_to_chat_completion", "93d16aed08c0a25b"),
            ("handle_llm_error", "0d667e5384692a75"),
        )
    ],
]
