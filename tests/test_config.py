"""Settings from the environment: defaults, secrets, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from routined.config import ConfigError, Secret, Settings


def test_defaults_put_everything_under_routined_home(tmp_path: Path) -> None:
    settings = Settings.from_env({"ROUTINED_HOME": str(tmp_path / "h")})
    assert settings.database_url.reveal() == f"sqlite:///{tmp_path / 'h' / 'routined.db'}"
    assert settings.public_url == "http://127.0.0.1:8080"
    assert settings.anthropic_base_url == "https://api.anthropic.com"
    assert settings.runs_dir == tmp_path / "h" / "runs"
    assert settings.run_files_max_age == 7 * 24 * 3600
    assert Settings.from_env({"ROUTINED_RUN_FILES_MAX_AGE": "inf"}).run_files_max_age == float(
        "inf"
    )


def test_the_public_url_follows_the_listen_address_unless_set() -> None:
    settings = Settings.from_env({})
    assert settings.with_listen_address("0.0.0.0", 9000, {}).public_url == "http://127.0.0.1:9000"
    assert settings.with_listen_address("::1", 9000, {}).public_url == "http://[::1]:9000"
    fixed = {"ROUTINED_PUBLIC_URL": "https://routines.example.com/"}
    assert settings.with_listen_address("0.0.0.0", 9000, fixed).public_url == (
        "https://routines.example.com"
    )


def test_secrets_hide_themselves_and_can_come_from_files(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-ant-from-file\n")
    settings = Settings.from_env({"ANTHROPIC_API_KEY_FILE": str(key_file)})
    assert settings.anthropic_api_key.reveal() == "sk-ant-from-file"
    assert "sk-ant" not in repr(settings) and "sk-ant" not in str(settings.anthropic_api_key)
    assert repr(Secret("x")) == "Secret('**********')"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"ROUTINED_PORT": "eighty"}, "ROUTINED_PORT: 'eighty' is not a number"),
        ({"ROUTINED_WORKERS": "0"}, "ROUTINED_WORKERS: must be at least 1"),
        ({"ROUTINED_RUN_FILES_MAX_AGE": "-1"}, "ROUTINED_RUN_FILES_MAX_AGE: must be at least 0"),
        ({"ROUTINED_RUN_FILES_MAX_AGE": "a week"}, "ROUTINED_RUN_FILES_MAX_AGE: 'a week' is not"),
        ({"ROUTINED_RUN_TIMEOUT": "nan"}, "ROUTINED_RUN_TIMEOUT: 'nan' is not a number"),
        ({"ANTHROPIC_API_KEY_FILE": "/nonexistent/key"}, "ANTHROPIC_API_KEY_FILE: cannot read"),
        (
            {"ANTHROPIC_BASE_URL": "api.anthropic.com"},
            "ANTHROPIC_BASE_URL: 'api.anthropic.com' is not an http",
        ),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings.from_env(env)


def test_every_setting_is_documented() -> None:
    from routined.config import SETTINGS

    documented = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    assert [s.name for s in SETTINGS if f"`{s.name}`" not in documented] == []
