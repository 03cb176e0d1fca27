"""The settings object (service/settings.py): defaults, environment parsing, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


@pytest.fixture(autouse=True)
def no_ocellus_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: the caller's own OCELLUS_ variables would leak in."""
    import os

    for name in [n for n in os.environ if n.startswith("OCELLUS_")]:
        monkeypatch.delenv(name)


def test_every_setting_has_a_default_that_works() -> None:
    s = Settings()
    assert (s.host, s.port, s.models, s.registry, s.admin_token, s.api_keys) == (
        "127.0.0.1", 8000, [], None, None, [])
    assert s.max_request_bytes == s.max_upload_bytes * s.max_files + 64 * 1024


def test_environment_variables_carry_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCELLUS_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("MAX_BATCH_SIZE", "2")  # no prefix: not ours
    assert Settings().max_batch_size == 4
    assert Settings(max_batch_size=3).max_batch_size == 3  # a flag overrides the variable


@pytest.mark.parametrize(("value", "keys"), [
    ("k1,k2", ["k1", "k2"]),
    (" k1 , k2 ,", ["k1", "k2"]),
    ('["k1", "k,2"]', ["k1", "k,2"]),  # JSON: a key may hold a comma
    ("", []),
])
def test_api_keys_from_a_comma_list_or_json(monkeypatch, value: str, keys: list[str]) -> None:
    monkeypatch.setenv("OCELLUS_API_KEYS", value)
    assert [k.get_secret_value() for k in Settings().api_keys] == keys


@pytest.mark.parametrize("value", ["", "   "])
def test_a_blank_admin_token_means_the_admin_api_is_off(monkeypatch, value: str) -> None:
    monkeypatch.setenv("OCELLUS_ADMIN_TOKEN", value)
    assert Settings().admin_token is None
    assert Settings(admin_token=value).admin_token is None


def test_an_admin_token_is_kept_secret(monkeypatch) -> None:
    monkeypatch.setenv("OCELLUS_ADMIN_TOKEN", "s3cret")
    s = Settings()
    assert s.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())


@pytest.mark.parametrize(("value", "paths"), [
    ("a,b", [Path("a"), Path("b")]),
    ("a,,b,", [Path("a"), Path("b")]),
    ('["a,1", "b"]', [Path("a,1"), Path("b")]),
])
def test_models_from_a_comma_list_or_json(monkeypatch, value: str, paths: list[Path]) -> None:
    monkeypatch.setenv("OCELLUS_MODELS", value)
    assert Settings().models == paths


@pytest.mark.parametrize(("setting", "value", "says"), [
    ("port", 70000, "less than or equal to 65535"),
    ("max_batch_size", 0, "greater than 0"),
    ("max_queue", -1, "greater than 0"),
    ("max_delay_ms", -1, "greater than or equal to 0"),
    ("request_timeout_s", 0, "greater than 0"),
    ("max_upload_bytes", 0, "greater than 0"),
    ("render_max_side", 70_000, "less than or equal to 65500"),
    ("torch_threads", -2, "greater than or equal to 0"),
    ("registry_poll_seconds", -1, "greater than or equal to 0"),
    ("device", "tpu", "'cpu' or 'cuda'"),
    ("backend", "fast", "'auto', 'eager', 'compiled', 'bf16' or 'int8'"),
])
def test_a_bad_value_is_refused_naming_the_setting_and_what_it_takes(
        setting: str, value: object, says: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**{setting: value})
    (error,) = refused.value.errors()
    assert error["loc"] == (setting,) and says in error["msg"], error
    assert setting in str(refused.value)


def test_a_bad_environment_variable_names_the_setting(monkeypatch) -> None:
    monkeypatch.setenv("OCELLUS_MAX_FILES", "lots")
    with pytest.raises(ValidationError, match=r"max_files\n.*valid integer.*'lots'"):
        Settings()
