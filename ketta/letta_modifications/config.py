"""Patches for ``letta/config.py``: no ``~/.letta/config`` file.

Letta's server saves a config file at start whose only content Ketta cares about is the
database URI, with the embedded PostgreSQL's password in it, written 0644 under ``~/.letta``
(a path fixed when ``letta.constants`` is imported, whatever ``LETTA_DIR`` says). Nothing in
the server reads it back for Ketta (the URI comes from ``LETTA_PG_URI``), so it is not written,
nor the empty directories Letta makes next to it.
"""

from __future__ import annotations

import logging

from ketta.core.patching import Patch

log = logging.getLogger("ketta")


def save(self: object) -> None:
    log.debug("Ketta: Letta's config file is not written (the database URI stays out of files)")


def create_config_dir() -> None:
    return None


PATCHES = [
    Patch(
        target="letta.config:LettaConfig.save",
        replacement=save,
        fingerprint="c71701ca09a524da",
        setting="contain_letta_files",
        why="Letta writes ~/.letta/config (0644) holding the database URI with its password; Ketta writes nothing outside KETTA_HOME.",
    ),
    Patch(
        target="letta.config:LettaConfig.create_config_dir",
        replacement=staticmethod(create_config_dir),
        fingerprint="984751bdac04edf5",
        setting="contain_letta_files",
        why="Letta makes empty ~/.letta/{personas,humans,...} directories at every start; Ketta writes nothing outside KETTA_HOME.",
    ),
]
