"""Who may do what, and what never leaves the server: login and tokens, the URL guard, redaction,
the encryption keyring, the server's secrets, tool-code isolation, browser origins.

Imports :mod:`ketta.db` and :mod:`ketta.core` only; the provider and LLM packages build on it.
"""
