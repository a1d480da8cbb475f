"""Fix of letta-ai/letta#3164 (``letta/services/file_processor/embedder/openai_embedder.py``).

Letta embeds an uploaded file's chunks with ``OpenAIEmbedder``, whatever the embedding config,
and that embedder always builds an OpenAI client: an Azure embedding config then sends
``POST {endpoint}/embeddings`` with a bearer token, which Azure answers 404 (it serves
``/openai/deployments/{deployment}/embeddings?api-version=...`` with an ``api-key`` header), so
every file upload of an agent on Azure embeddings fails (upstream issue letta-ai/letta#3163).

The patch gives the embedder the client Letta itself uses for that embedding config everywhere
else (archival memory, ``PassageManager``): ``LLMClient.create`` of the config's endpoint type,
which is Azure's client for ``azure`` and the OpenAI client for every type without one of its own.
"""

from __future__ import annotations

from typing import Any

from ketta.core import patching
from ketta.core.patching import Patch

TARGET = "letta.services.file_processor.embedder.openai_embedder:OpenAIEmbedder.__init__"


def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
    from letta.llm_api.llm_client import LLMClient

    patching.original(TARGET)(self, *args, **kwargs)
    own = LLMClient.create(provider_type=self.embedding_config.embedding_endpoint_type, put_inner_thoughts_first=False, actor=None)
    if own is not None:
        self.client = own


PATCHES = [
    Patch(
        target=TARGET,
        replacement=__init__,
        fingerprint="5bcc75e92fa19977",
        setting="letta_fixes",
        kind="fix",
        upstream="letta-ai/letta#3164",
        why="Uploaded files are embedded with the client of their embedding config's type (Azure's for azure), as "
            "archival memory is, instead of always the OpenAI client (404 from Azure: every file upload failed).",
    ),
]
