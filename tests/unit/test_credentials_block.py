"""The flow's credentials parameter: a Prefect block's document as S3 storage options (the documents' fields as
prefect-aws's AwsCredentials and MinIOCredentials and Prefect's Secret store them). Reading them from a real server
is tested end to end in tests/e2e/test_deployment.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.medallion import credentials_from_block
from lakehouse.errors import ConfigError

CLIENT = {"endpoint_url": "http://127.0.0.1:9000", "use_ssl": True, "verify": True}


def test_aws_credentials_fields_become_storage_options() -> None:
    data = {"aws_access_key_id": "AKIA", "aws_secret_access_key": "s3cr3t", "aws_session_token": None,
            "profile_name": None, "region_name": "eu-west-1", "aws_client_parameters": CLIENT,
            "assume_role_arn": None, "assume_role_kwargs": {}}
    assert credentials_from_block("aws-credentials/lake", data) == {
        "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    with pytest.raises(ConfigError, match="assume_role_arn"):
        credentials_from_block("aws-credentials/lake", {**data, "assume_role_arn": "arn:aws:iam::1:role/x"})


def test_minio_credentials_and_a_secret_holding_json() -> None:
    minio = {"minio_root_user": "minio", "minio_root_password": "pw", "region_name": None,
             "aws_client_parameters": CLIENT}
    assert credentials_from_block("minio-credentials/lake", minio) == {
        "AWS_ACCESS_KEY_ID": "minio", "AWS_SECRET_ACCESS_KEY": "pw", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    # a Secret's value: a JSON text or an object, keys as the AWS variables or boto3's names
    text = '{"aws_access_key_id": "k", "AWS_SECRET_ACCESS_KEY": "s", "region_name": "us-east-1"}'
    wanted = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}
    assert credentials_from_block("secret/lake", {"value": text}) == wanted
    assert credentials_from_block("secret/lake", {"value": {"AWS_ACCESS_KEY_ID": "k", "aws_secret_access_key": "s",
                                                            "region": "us-east-1"}}) == wanted


def test_a_bad_secret_is_refused_without_showing_its_value() -> None:
    for value in ("not-json-canary-4d1", '["canary-4d1"]'):
        with pytest.raises(ConfigError, match="must be a JSON object") as e:
            credentials_from_block("secret/lake", {"value": value})
        assert "canary" not in str(e.value)
    with pytest.raises(ConfigError, match=r"unknown keys \['PASSWORD'\]") as e:
        credentials_from_block("secret/lake", {"value": {"password": "canary-4d1"}})
    assert "canary" not in str(e.value)


def test_a_block_reference_names_its_type() -> None:
    from flows.medallion import block_credentials

    for ref in ("lake", "s3-bucket/lake", "secret/"):
        with pytest.raises(ConfigError, match="<type>/<name>"):
            block_credentials(ref)


def test_an_aws_credentials_block_naming_a_profile_takes_its_keys_from_the_workers_aws_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "credentials").write_text("[lake]\naws_access_key_id = pk\naws_secret_access_key = ps\n")
    (tmp_path / "config").write_text("[profile lake]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    data = {"aws_access_key_id": None, "aws_secret_access_key": None, "profile_name": "lake", "region_name": None,
            "aws_client_parameters": CLIENT}
    # the profile's keys and region, the block's endpoint over nothing
    assert credentials_from_block("aws-credentials/lake", data) == {
        "AWS_ACCESS_KEY_ID": "pk", "AWS_SECRET_ACCESS_KEY": "ps", "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
