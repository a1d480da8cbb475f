"""Talking to LLM endpoints: the shared, bounded HTTP clients and what a caller is told when the
upstream fails (the provider's words, 502/503/504 instead of 500).

Imports :mod:`ketta.security` (the guarded transport) and :mod:`ketta.core`.
"""
