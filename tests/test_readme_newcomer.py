"""The README a newcomer follows (issue 22): its sample start block is today's (patch count, schema
head), read from the README, not copied."""

from __future__ import annotations

import re

from conftest import REPO


def readme_block(marker: str) -> str:
    """The fenced block right after ``<!-- readme-test: MARKER ... -->``."""
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- readme-test: " + re.escape(marker) + r"\b[^>]*-->\n```\w*\n(.*?)\n```", text, re.S)
    assert found, f"README has no block marked readme-test: {marker}"
    return found.group(1)


def test_the_sample_start_block_shows_todays_patch_count_and_schema() -> None:
    from ketta import letta_modifications
    from ketta.settings import KettaSettings

    block = readme_block("start-block")
    enabled = sum(1 for row in letta_modifications.status_from_source(KettaSettings()) if row.enabled)
    assert f"  patches:  {enabled} applied ('ketta patches' lists them)" in block.splitlines(), (enabled, block)
    head = sorted(p.stem for p in (REPO / "ketta" / "migrations" / "versions").glob("0*.py"))[-1]
    assert re.search(r"^  database: .*, schema " + re.escape(head) + "$", block, re.M), (head, block)
    assert block.splitlines()[0].startswith("Starting Ketta "), "the line said at once comes first"
