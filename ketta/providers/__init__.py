"""Providers as database rows: rules and the validation of a provider request, keys read at call
time, the class registry (Kimi, pools), model storage, key binding, health, fallback handles,
pools and the routing of each LLM call (pool member choice included).

Imports :mod:`ketta.usage`, :mod:`ketta.llm`, :mod:`ketta.security`, :mod:`ketta.db`, :mod:`ketta.core`; never a patch
module (the patches in :mod:`ketta.letta_modifications` import this package, not the reverse).
"""
