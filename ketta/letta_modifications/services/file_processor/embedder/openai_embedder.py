"""Fix of letta-ai/letta#3164 (``letta/services/file_processor/embedder/openai_embedder.py``).

Letta embeds an uploaded file's chunks with ``OpenAIEmbedder``, whatever the embedding config,
and that embedder always builds an OpenAI client: an Azure embedding config then sends
``POST {endpoint}/embeddings`` with a bearer token, which Azure answers 404 (it serves
``/openai/deployments/{deployment}/embeddings?api-version=...`` with an ``api-key`` header), so
every file upload of an agent on Azure embeddings fails (upstream issue letta-ai/letta#3163).

The patch gives the embedder the client Letta itself uses for that embedding config everywhere
else (archival memory, ``PassageManager``): ``LLMClient.create`` of the config's endpoint type,
which is Azure's client for ``azure`` and the OpenAI client for every type without one of its own.

Letta builds that client without an actor ("not necessary": stock Letta sent OPENAI_API_KEY from
the environment). Ketta gives a call only the stored key of the provider named in the handle, in
the caller's organization, so without an actor an uploaded file's chunks went out with no key
and a provider with a stored key answered 401 (every upload failed). ``generate_embedded_passages``
is given the uploading user: the client gets it as its actor, so the embedding provider's key
of that user's organization is used (never another organization's, never an env key).
"""

from __future__ import annotations

from typing import Any

from ketta.core import patching
from ketta.core.patching import Patch

TARGET = "letta.services.file_processor.embedder.openai_embedder:OpenAIEmbedder.__init__"
PASSAGES_TARGET = "letta.services.file_processor.embedder.openai_embedder:OpenAIEmbedder.generate_embedded_passages"


def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
    from letta.llm_api.llm_client import LLMClient

    patching.original(TARGET)(self, *args, **kwargs)
    own = LLMClient.create(provider_type=self.embedding_config.embedding_endpoint_type, put_inner_thoughts_first=False, actor=None)
    if own is not None:
        self.client = own


async def generate_embedded_passages(self: Any, file_id: str, source_id: str, chunks: Any, actor: Any, *args: Any, **kwargs: Any) -> Any:
    """Letta's embedding of an uploaded file, its client acting for the uploading user."""
    client = getattr(self, "client", None)
    if client is not None and getattr(client, "actor", None) is None:
        client.actor = actor
    return await patching.original(PASSAGES_TARGET)(self, file_id, source_id, chunks, actor, *args, **kwargs)


PATCHES = [
    Patch(
        target=PASSAGES_TARGET,
        replacement=generate_embedded_passages,
        fingerprint="eab245e012e8b674",
        setting="unified_providers",
        why="An uploaded file is embedded with the stored key of its embedding provider in the uploader's organization "
            "(Letta's file embedder had no actor: no key was found and every upload to a provider with a key failed).",
    ),
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
