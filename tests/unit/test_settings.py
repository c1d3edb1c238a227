"""settings_from_env: the one place that reads the environment; tested with an explicit env mapping."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from lakehouse.errors import ConfigError
from lakehouse.settings import RaySettings, Settings, settings_from_env

AWS = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    "AWS_ACCESS_KEY_ID": "key",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}


def test_defaults_with_an_empty_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = settings_from_env(env={})
    assert s.root == os.path.join(str(tmp_path), "lakehouse-data")
    assert s.storage_options == {}
    assert s.ray == RaySettings(address=None, num_cpus=2, object_store_bytes=1 << 30, temp_dir=None)
    assert s.pipeline == "tpch"


def test_root_argument_wins_over_the_environment_and_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert settings_from_env("data", env={"LAKEHOUSE_ROOT": "/elsewhere"}).root == str(tmp_path / "data")
    assert settings_from_env(env={"LAKEHOUSE_ROOT": "/srv/lake"}).root == "/srv/lake"


def test_s3_root_takes_the_aws_options_and_nothing_else() -> None:
    env = {**AWS, "LAKEHOUSE_ROOT": "s3://bucket/lake", "HOME": "/root", "AWS_PROFILE": "ignored"}
    s = settings_from_env(env=env)
    assert s.root == "s3://bucket/lake"
    assert dict(s.storage_options) == AWS


def test_local_root_ignores_aws_options() -> None:
    assert settings_from_env("/srv/lake", env=AWS).storage_options == {}


def test_ray_settings_from_the_environment() -> None:
    env = {
        "RAY_ADDRESS": "ray://head:10001",
        "LAKEHOUSE_RAY_CPUS": "8",
        "LAKEHOUSE_RAY_OBJECT_STORE_BYTES": "123456789",
        "LAKEHOUSE_RAY_TEMP_DIR": "/tmp/r",
        "LAKEHOUSE_RAY_CONNECT_TIMEOUT": "45",
    }
    assert settings_from_env("/l", env=env).ray == RaySettings("ray://head:10001", 8, 123456789, "/tmp/r",
                                                              connect_timeout=45.0)
    assert settings_from_env("/l", env={}).ray.connect_timeout == 30.0
    assert settings_from_env("/l", env={"RAY_ADDRESS": ""}).ray.address is None


def test_overrides_pass_through_and_settings_are_frozen() -> None:
    s = settings_from_env("/l", env={}, pipeline="other", target_file_rows=10)
    assert (s.pipeline, s.target_file_rows) == ("other", 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.root = "/x"  # type: ignore[misc]
    assert s.with_root("/y").root == "/y" and s.root == "/l"
    assert hash(s) == hash(Settings(root="/l", pipeline="other", target_file_rows=10))


def test_does_not_read_os_environ_when_env_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_ROOT", "/from/os/environ")
    monkeypatch.setenv("LAKEHOUSE_RAY_CPUS", "64")
    s = settings_from_env(env={"LAKEHOUSE_ROOT": "/from/mapping"})
    assert s.root == "/from/mapping" and s.ray.num_cpus == 2


def test_per_table_policies_come_from_the_environment() -> None:
    env = {"LAKEHOUSE_LOOKBACK_MONTHS": "orders=2, lineitem=6", "LAKEHOUSE_NEW_COLUMNS": "orders=evolve",
           "LAKEHOUSE_BAD_FILES": "fail"}
    s = settings_from_env("/tmp/lake", env=env)
    assert (s.lookback, s.new_columns, s.bad_files) == ({"orders": 2, "lineitem": 6}, {"orders": "evolve"},
                                                               "fail")
    with pytest.raises(ConfigError, match="LAKEHOUSE_NEW_COLUMNS: cannot read 'orders=maybe'"):
        settings_from_env("/tmp/lake", env={"LAKEHOUSE_NEW_COLUMNS": "orders=maybe"})
    gate = settings_from_env("/tmp/lake", env={"LAKEHOUSE_MAX_QUARANTINED_SHARE": "*=0.01,orders=0.05"})
    assert gate.max_quarantined_share == {"*": 0.01, "orders": 0.05}
    with pytest.raises(ConfigError, match="LAKEHOUSE_MAX_QUARANTINED_SHARE"):
        settings_from_env("/tmp/lake", env={"LAKEHOUSE_MAX_QUARANTINED_SHARE": "orders=5%"})
    with pytest.raises(ConfigError, match="LAKEHOUSE_BAD_FILES"):
        settings_from_env("/tmp/lake", env={"LAKEHOUSE_BAD_FILES": "ignore"})


def test_hot_key_settings_from_the_environment_and_the_config_file(tmp_path: Path) -> None:
    env = {"LAKEHOUSE_SALTS": "user_totals=0,*=8", "LAKEHOUSE_HOT_KEY_SHARE": "*=0.05"}
    s = settings_from_env("/tmp/lake", env=env)
    assert (s.salts, s.hot_key_share) == ({"user_totals": 0, "*": 8}, {"*": 0.05})
    with pytest.raises(ConfigError, match="LAKEHOUSE_SALTS: cannot read 'user_totals=65'"):
        settings_from_env("/tmp/lake", env={"LAKEHOUSE_SALTS": "user_totals=65"})
    (tmp_path / "lakehouse.toml").write_text('root = "lake"\n[settings]\nsalts = { user_totals = 16 }\n'
                                             'hot_key_share = { user_totals = 0.1 }\n')
    project = settings_from_env(env={}, project=str(tmp_path))
    assert (project.salts, project.hot_key_share) == ({"user_totals": 16}, {"user_totals": 0.1})
    (tmp_path / "lakehouse.toml").write_text('root = "lake"\n[settings]\nsalts = { user_totals = -1 }\n')
    with pytest.raises(ConfigError, match=r"salts\.user_totals must be a whole number of tasks"):
        settings_from_env(env={}, project=str(tmp_path))


def test_the_storage_timeout_comes_from_the_environment_and_must_be_seconds() -> None:
    assert settings_from_env("/l", env={}).storage_timeout == 30.0
    assert settings_from_env("/l", env={"LAKEHOUSE_STORAGE_TIMEOUT": "5"}).storage_timeout == 5.0
    with pytest.raises(ConfigError, match="LAKEHOUSE_STORAGE_TIMEOUT must be a number of seconds, not '5s'"):
        settings_from_env("/l", env={"LAKEHOUSE_STORAGE_TIMEOUT": "5s"})


def test_s3_credentials_from_a_profile_a_session_token_and_the_default_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    credentials, config = tmp_path / "credentials", tmp_path / "config"
    credentials.write_text("[lake]\naws_access_key_id = profile-key\naws_secret_access_key = profile-secret\n"
                           "aws_session_token = profile-token\n")
    config.write_text("[profile lake]\nregion = eu-west-1\nendpoint_url = http://127.0.0.1:9000\n")
    files = {"AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_CONFIG_FILE": str(config)}

    s = settings_from_env("s3://bucket/lake", env={"AWS_PROFILE": "lake", **files})
    # the profile is resolved at the edge: every process of the run gets the same keys, and the http endpoint from
    # the profile allows plain HTTP
    assert dict(s.storage_options) == {
        "AWS_ACCESS_KEY_ID": "profile-key", "AWS_SECRET_ACCESS_KEY": "profile-secret",
        "AWS_SESSION_TOKEN": "profile-token", "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true"}
    # explicit keys win over the profile, AWS_DEFAULT_REGION stands in for AWS_REGION
    s = settings_from_env("s3://bucket/lake", env={"AWS_PROFILE": "lake", "AWS_ACCESS_KEY_ID": "k",
                                                   "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-west-2",
                                                   **files})
    assert dict(s.storage_options) == {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                                       "AWS_REGION": "us-west-2"}
    # credentials from a secret store win over the environment
    s = settings_from_env("s3://bucket/lake", env=AWS, credentials={"AWS_SECRET_ACCESS_KEY": "from-block"})
    assert s.storage_options["AWS_SECRET_ACCESS_KEY"] == "from-block"
    assert s.storage_options["AWS_ACCESS_KEY_ID"] == "key"
    with pytest.raises(ConfigError, match="AWS_PROFILE=nosuch"):
        settings_from_env("s3://bucket/lake", env={"AWS_PROFILE": "nosuch", **files})
    with pytest.raises(ConfigError, match="unknown S3 credential keys"):
        settings_from_env("s3://bucket/lake", env={}, credentials={"AWS_SECRET": "x"})


def test_no_secret_in_the_repr_of_settings_or_storage() -> None:
    from lakehouse.storage import Storage

    s = settings_from_env("s3://bucket/lake", env={**AWS, "AWS_SECRET_ACCESS_KEY": "canary-7f3e", "AWS_SESSION_TOKEN":
                                                   "canary-token-9b2"})
    storage = Storage.from_settings(s)
    assert dict(storage.options)["AWS_SESSION_TOKEN"] == "canary-token-9b2"  # still there, to be used
    for text in (repr(s), str(s), repr(storage), f"{storage}", repr([s])):
        assert "canary" not in text, text
