"""Patch of ``letta/schemas/providers/azure.py``: the Azure key check says "valid" only for a 2xx.

Stock ``AzureProvider.check_api_key`` lists the models and treats any failure but 401/403 as an
empty list, so a redirect, an outage or a server that is not Azure at all answered 200 "Valid api
key". Here one request to the endpoint's model list (the deployments list for ``/openai/v1``
endpoints, as Letta lists them) with the key, through the URL guard, no redirect followed:
2xx valid; 401/403 refused in Azure's words; a redirect or a 5xx 502; no answer 504; another 4xx
400.
"""

from __future__ import annotations

import httpx
from fastapi import HTTPException

from letta.errors import ErrorCode, LLMAuthenticationError, LLMPermissionDeniedError
from letta.schemas.providers.azure import AzureProvider

from ketta.core.patching import Patch
from ketta.security.url_guard import guarded_async_client

TARGET = "letta.schemas.providers.azure:AzureProvider.check_api_key"
CHECK_TIMEOUT_S = 20.0


def _check_url(provider: AzureProvider) -> str:
    if provider._is_v1_endpoint(provider.base_url):
        return f"{provider._get_resource_base_url()}/openai/deployments?api-version=2023-03-15-preview"
    return provider.get_azure_model_list_endpoint()


async def check_api_key(self: AzureProvider) -> None:
    key = await self.api_key_enc.get_plaintext_async() if self.api_key_enc else None
    if not key:
        raise ValueError("No API key provided")
    try:
        async with guarded_async_client(timeout=CHECK_TIMEOUT_S) as client:
            response = await client.get(_check_url(self), headers={"api-key": key})
    except httpx.TimeoutException:
        raise HTTPException(status_code=504, detail=f"Azure at {self.base_url} did not answer within {CHECK_TIMEOUT_S:g} s") from None
    except httpx.HTTPError as exc:
        raise HTTPException(status_code=502, detail=f"Azure at {self.base_url} is unreachable ({type(exc).__name__})") from None
    status = response.status_code
    if status == 401:
        raise LLMAuthenticationError(message=f"Azure refused the API key (401): {response.text[:300]}", code=ErrorCode.UNAUTHENTICATED)
    if status == 403:
        raise LLMPermissionDeniedError(message=f"Azure refused the API key (403): {response.text[:300]}", code=ErrorCode.PERMISSION_DENIED)
    if 300 <= status < 400:
        raise HTTPException(status_code=502, detail=f"Azure at {self.base_url} answered a redirect ({status}); redirects are not "
                                                    "followed (a key is not sent on): set base_url to the final address.")
    if status >= 500:
        raise HTTPException(status_code=502, detail=f"Azure at {self.base_url} answered {status}.")
    if status >= 400:
        raise HTTPException(status_code=400, detail=f"Azure at {self.base_url} answered {status}: {response.text[:300]}")


PATCHES = [
    Patch(
        target=TARGET,
        replacement=check_api_key,
        fingerprint="9653c850e00626e8",
        setting="unified_providers",
        why="An Azure key check is valid only when Azure answers 2xx (stock: any failure but 401/403, a redirect included, was 'valid').",
    ),
]
