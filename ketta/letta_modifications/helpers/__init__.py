"""Patches of modules under ``letta/helpers/``."""
