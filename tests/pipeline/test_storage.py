"""Object-store settings from the environment and the DVC remote they produce (no server needed)."""

import pytest

from ogpo.errors import ConfigError
from pipeline import storage

KEYS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value-never-logged"}


def test_settings_for_seaweed_and_for_aws():
    local = storage.settings_from_env({"OGPO_S3_BUCKET": "ogpo", "OGPO_S3_ENDPOINT": "http://127.0.0.1:8333", **KEYS})
    assert local.remote_url == "s3://ogpo/dvc" and local.endpoint_url == "http://127.0.0.1:8333"
    aws = storage.settings_from_env({"OGPO_S3_BUCKET": "lab-ogpo", "AWS_PROFILE": "lab", "AWS_REGION": "eu-west-1"})
    assert aws.endpoint_url is None and aws.profile == "lab" and aws.region == "eu-west-1"
    opts = storage.dvc_remote_config(aws)
    assert opts["profile"] == "lab" and "endpointurl" not in opts


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({}, "OGPO_S3_BUCKET"),
        ({"OGPO_S3_BUCKET": "Bad_Bucket"}, "Bad_Bucket"),
        ({"OGPO_S3_BUCKET": "ogpo", "OGPO_S3_ENDPOINT": "127.0.0.1:8333"}, "OGPO_S3_ENDPOINT"),
        ({"OGPO_S3_BUCKET": "ogpo", "AWS_ACCESS_KEY_ID": "x"}, "set together"),
        ({"OGPO_S3_BUCKET": "ogpo", "AWS_PROFILE": "p", **KEYS}, "not both"),
    ],
)
def test_bad_settings_name_the_variable(env, needle):
    with pytest.raises(ConfigError, match=needle):
        storage.settings_from_env(env)


def test_dvc_remote_config_has_no_secret_and_keeps_other_sections(tmp_path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config.local").write_text("[cache]\n    dir = /somewhere\n[core]\n    remote = old\n")
    settings = storage.settings_from_env({"OGPO_S3_BUCKET": "ogpo", "OGPO_S3_ENDPOINT": "http://127.0.0.1:9", **KEYS})
    path = storage.configure_dvc_remote(tmp_path, settings)
    text = path.read_text()
    assert "s3://ogpo/dvc" in text and "endpointurl = http://127.0.0.1:9" in text
    assert "remote = s3" in text and "remote = old" not in text and "dir = /somewhere" in text
    assert KEYS["AWS_SECRET_ACCESS_KEY"] not in text and KEYS["AWS_ACCESS_KEY_ID"] not in text


def test_redact_hides_secrets():
    msg = f"failed with key {KEYS['AWS_ACCESS_KEY_ID']} and {KEYS['AWS_SECRET_ACCESS_KEY']}"
    out = storage.redact(msg, KEYS)
    assert KEYS["AWS_SECRET_ACCESS_KEY"] not in out and "***" in out
