"""Nothing leaves the machine unless a user's request asks for it.

Letta's dependencies phone home on their own: onnxruntime (loaded by magika, which markitdown
builds when Letta's app is imported) sends telemetry to mobile.events.data.microsoft.com some
seconds after its first inference session, and writes a device id under ``~/.cache/Microsoft``.
Their documented opt-outs are environment variables read when they start, so they are set
before Letta is imported. (Letta's own NLTK download at start is a patch: server/rest_api/app.py.)
"""

from __future__ import annotations

import os

# Opt-outs read by libraries Letta loads; a value the operator set explicitly is kept.
TELEMETRY_OPT_OUTS: dict[str, str] = {
    "ORT_DISABLE_TELEMETRY": "1",  # onnxruntime (1DS telemetry)
    "HF_HUB_OFFLINE": "1",  # huggingface_hub: no model downloads at run time
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",  # the cross-tool convention (consoledonottrack.com)
}


def stay_offline() -> None:
    """Set every telemetry/download opt-out the operator has not set; before Letta is imported."""
    for name, value in TELEMETRY_OPT_OUTS.items():
        os.environ.setdefault(name, value)
