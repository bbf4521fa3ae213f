"""The API's settings refuse values that would break its limits or let uploads escape the documents folder."""

from __future__ import annotations

import pytest

from config import SettingsError, load_settings


@pytest.mark.parametrize(
    ("api", "field"),
    [
        ({"uploads_dir": "../elsewhere"}, "api.uploads_dir"),
        ({"uploads_dir": "/tmp/uploads"}, "api.uploads_dir"),
        ({"max_upload_mb": 0}, "api.max_upload_mb"),
        ({"max_body_kb": 0}, "api.max_body_kb"),
        ({"max_upload_files": 0}, "api.max_upload_files"),
        ({"port": 70000}, "api.port"),
        ({"engine_check_s": 0}, "api.engine_check_s"),
    ],
)
def test_bad_api_settings_are_refused_naming_the_field(api: dict[str, object], field: str) -> None:
    with pytest.raises(SettingsError, match=field.replace(".", r"\.")):
        load_settings("test", api=api)


def test_api_defaults_are_loopback_without_cors() -> None:
    api = load_settings("test").api
    assert api.host == "127.0.0.1" and api.cors_origins == [] and api.api_key is None
