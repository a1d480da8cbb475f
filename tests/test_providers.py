"""Provider rules shared by the patches (ketta/providers/rules.py): names and the env fallback key."""

from __future__ import annotations

import pytest

from ketta.providers.rules import MAX_NAME_LENGTH, ProviderInputError, clean_provider_name, env_key_name


def test_a_name_of_exactly_the_limit_is_kept_and_one_more_is_refused() -> None:
    assert MAX_NAME_LENGTH == 100
    longest = "n" * MAX_NAME_LENGTH
    assert clean_provider_name(f"  {longest} ") == longest
    with pytest.raises(ProviderInputError) as refused:
        clean_provider_name(longest + "x")
    assert refused.value.status_code == 422
    assert "at most 100 characters (got 101)" in refused.value.detail


@pytest.mark.parametrize("name", ["", "   ", None, "a/b"])
def test_empty_names_and_slashes_are_refused(name: str | None) -> None:
    with pytest.raises(ProviderInputError):
        clean_provider_name(name)


def test_env_key_name_is_the_upper_case_name_with_underscores() -> None:
    assert env_key_name("My Kimi") == "MY_KIMI_API_KEY"
    assert env_key_name("ketta fallback demo") == "KETTA_FALLBACK_DEMO_API_KEY"
