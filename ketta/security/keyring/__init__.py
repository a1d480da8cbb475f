"""The encryption keyring: which keys read the stored secrets, the start-up check, key rotation.

Letta encrypts every ``*_enc`` column (provider keys, agent and sandbox env vars, MCP tokens and
headers, OAuth tokens) with ``LETTA_ENCRYPTION_KEY``: AES-256-GCM under a key derived by PBKDF2
from the master key and a salt. Ketta reads and writes that format itself, so the start-up check
runs before Letta's slow import, and a rotation derives the new key once for all values.

One module per concern (import the module you need; this package re-exports nothing):

- ``cipher``      Letta's format: encrypt, decrypt, key fingerprints, new keys.
- ``key_files``   where the keys come from (env, ``KETTA_HOME`` key files), the process's keyring,
                  key export/import.
- ``stored``      what the database stores: the ``*_enc`` cells, the check value, decrypting them all.
- ``check``       the start-up check (a wrong key refuses the start in one line), ``ketta keys check``.
- ``rotation``    ``ketta keys rotate``: every stored secret under a new key, in one transaction.
"""
