"""Object-store settings from the environment and the DVC remote they produce (no server needed)."""

import pytest

from ogpo.errors import ConfigError, StorageError
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


def test_access_needs_no_bucket_and_follows_the_same_rules():
    """Demo sources and the DVC remote read one set of variables (the bucket is the URI's for a source)."""
    assert storage.access_from_env({}) == storage.S3Access(endpoint_url=None, region="us-east-1", profile=None)
    env = {"AWS_ENDPOINT_URL": "http://c:3", "AWS_ENDPOINT_URL_S3": "http://b:2", "AWS_DEFAULT_REGION": "us-west-2"}
    assert storage.access_from_env(env).endpoint_url == "http://b:2"
    assert storage.access_from_env({**env, "OGPO_S3_ENDPOINT": "http://a:1"}).endpoint_url == "http://a:1"
    assert storage.access_from_env(env).region == "us-west-2"
    assert storage.access_from_env({**env, "AWS_REGION": "eu-west-1", "OGPO_S3_REGION": "eu-north-1"}).region == (
        "eu-north-1"
    )
    assert storage.access_from_env({"AWS_PROFILE": "lab"}).profile == "lab"
    full = storage.settings_from_env({"OGPO_S3_BUCKET": "ogpo", "AWS_PROFILE": "lab", **env})
    assert (full.endpoint_url, full.region, full.profile) == ("http://b:2", "us-west-2", "lab")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OGPO_S3_ENDPOINT": "notaurl"}, "OGPO_S3_ENDPOINT='notaurl' must start with http:// or https://"),
        ({"AWS_ENDPOINT_URL_S3": "127.0.0.1:8333"}, "AWS_ENDPOINT_URL_S3='127.0.0.1:8333' must start with http://"),
        ({"AWS_SECRET_ACCESS_KEY": KEYS["AWS_SECRET_ACCESS_KEY"]}, "must be set together"),
        ({"AWS_PROFILE": "lab", **KEYS}, "not both"),
    ],
)
def test_bad_access_is_one_line_naming_the_variable_and_no_secret(env, message):
    with pytest.raises(ConfigError, match=message) as err:
        storage.access_from_env(env)
    assert "\n" not in str(err.value) and KEYS["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


def test_s3_client_on_keys_or_profile(tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    creds = tmp_path / "credentials"
    creds.write_text("[lab]\naws_access_key_id = AKIDLAB\naws_secret_access_key = lab-secret-value\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    access = storage.S3Access(endpoint_url="http://127.0.0.1:9", region="eu-west-1", profile="lab")
    client = storage.s3_client(access)
    assert (client.meta.endpoint_url, client.meta.region_name) == ("http://127.0.0.1:9", "eu-west-1")
    assert client._request_signer._credentials.access_key == "AKIDLAB"
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    client = storage.s3_client(storage.S3Access(endpoint_url="http://127.0.0.1:9"))
    assert client._request_signer._credentials.access_key == KEYS["AWS_ACCESS_KEY_ID"]
    with pytest.raises(ConfigError, match="cannot make an S3 client: ProfileNotFound") as err:
        storage.s3_client(storage.S3Access(profile="nope"))
    assert KEYS["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


def test_s3_uris():
    assert storage.parse_s3_uri("s3://b/k/x.hdf5") == storage.S3Uri("b", "k/x.hdf5")
    assert str(storage.parse_s3_uri("s3://b/k/x.hdf5")) == "s3://b/k/x.hdf5"
    for bad in ("http://b/k", "s3://", "s3://b", "s3://b/dir/"):
        with pytest.raises(StorageError, match="s3://"):
            storage.parse_s3_uri(bad)


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (404, "404", "bucket 'ogpo' does not exist at http://127.0.0.1:4035"),
        (403, "403", "http://127.0.0.1:4045 refused the credentials for bucket 'ogpo'"),
        (400, "BadRequest", "object store answered BadRequest"),
    ],
)
def test_check_bucket_classifies_the_answer_not_the_port(status, code, message):
    from botocore.exceptions import ClientError

    port = 4035 if status == 404 else 4045  # ports that read like the other status
    settings = storage.S3Settings(bucket="ogpo", endpoint_url=f"http://127.0.0.1:{port}")

    class Client:
        def head_bucket(self, Bucket):
            raise ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "HeadBucket")

    with pytest.raises(StorageError, match=message):
        storage.check_bucket(settings, client=Client())
