"""Ketta: a drop-in Letta 0.16.8 server where every LLM provider is a database row.

Importing this package must stay cheap and must not import ``letta``: some patches
(the ``kimi`` provider type) have to land before Letta builds its pydantic schemas.
"""

__version__ = "0.1.0"
LETTA_VERSION = "0.16.8"
