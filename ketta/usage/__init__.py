"""What every provider, agent and user spends (issue 23).

- :mod:`ketta.usage.tokens`: the tokens of a call from the provider's own usage report.
- :mod:`ketta.usage.ledger`: one ``ketta_usage`` row per LLM call attempt (hooked in by
  :mod:`ketta.providers.routing`; agent and run from :mod:`ketta.usage.context`).
- :mod:`ketta.usage.prices`: cost from the operator's prices, else the genai-prices catalog.
- :mod:`ketta.usage.budgets`: hard and soft limits, counted in PostgreSQL for every worker.
Its REST routes (``GET /v1/usage/`` and CSV, ``/v1/ketta/budgets``, ``/v1/ketta/prices``) and the
refusal's answer are :mod:`ketta.api.usage`.
"""
