"""An uploaded file is embedded with its embedding provider's stored key (of the uploader's
organization), not with no key at all.

Letta's file embedder builds its client without an actor; Ketta gives a call only the stored key
of the provider named in the handle, in the caller's organization, so an upload to a folder whose
embedding provider has a key failed with that provider's 401. The upload runs as a user token of
an organization of its own, against a mock that accepts only the provider's key.
"""

from __future__ import annotations

import time
import uuid

import httpx

from conftest import KettaProcess
from mock_openai import MockOpenAI

KEY = "sk-file-upload-key"
WORDS = "Ketta keeps every key with its own provider. " * 40


def test_an_uploaded_file_is_embedded_with_the_provider_s_key(shared_server: KettaProcess) -> None:
    with shared_server.client() as admin:
        org = admin.post("/v1/admin/orgs/", json={"name": f"upload-{uuid.uuid4().hex[:6]}"}).json()
        user = admin.post("/v1/admin/users/", json={"name": "uploader", "organization_id": org["id"]}).json()
        token = admin.post("/v1/ketta/tokens/", json={"user_id": user["id"]}).json()["token"]
    with MockOpenAI(api_key=KEY) as llm, \
            httpx.Client(base_url=shared_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        name = f"upload-{uuid.uuid4().hex[:6]}"
        made = client.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": KEY, "base_url": llm.base_url})
        assert made.status_code == 200, made.text
        folder = client.post("/v1/folders/", json={"name": name, "embedding": f"{name}/text-embedding-3-small"})
        assert folder.status_code == 200, folder.text
        llm.clear()
        uploaded = client.post(f"/v1/folders/{folder.json()['id']}/upload", files={"file": ("notes.txt", WORDS.encode(), "text/plain")})
        assert uploaded.status_code == 200, uploaded.text
        file_id = uploaded.json()["id"]
        deadline = time.monotonic() + 180
        while True:  # processed in the background after the upload answers
            status = client.get(f"/v1/folders/{folder.json()['id']}/files/{file_id}").json()
            if status["processing_status"] in ("completed", "error") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    embedded = llm.requests_to("/embeddings", "POST")
    assert embedded and {r.api_key for r in embedded} == {KEY}, [r.api_key for r in embedded]
    assert status["processing_status"] == "completed", status
