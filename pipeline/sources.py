"""The ingest stage with remote demo sources: ``s3://bucket/key`` fetched through pipeline/storage.py.

The library reads local files only and stages/ may not use the object store, so dvc.yaml runs the ingest
stage through this module (``python -m pipeline.sources``): it runs ``stages.ingest.run`` with :func:`fetch`,
which downloads an ``s3://`` source with the same endpoint, region and credential rules as the DVC remote
(``OGPO_S3_ENDPOINT``/``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``OGPO_S3_REGION``/``AWS_REGION``/
``AWS_DEFAULT_REGION``, ``AWS_PROFILE`` or keys) into a temporary file that the library reads and deletes.
Local and ``scripted:`` sources run exactly as under ``python -m stages.ingest``. A failure is one line on
stderr and exit 1, as for every stage.
"""

from __future__ import annotations

from pathlib import Path

from ogpo.errors import ConfigError
from pipeline import storage


def fetch(uri: str, dest: Path) -> Path:
    """Copy the remote demo source ``uri`` to the local file ``dest`` (``s3://`` only)."""
    if not uri.startswith("s3://"):
        scheme = uri.partition("://")[0]
        raise ConfigError(f"ingest.source {uri!r}: {scheme}:// sources are not supported (use s3://bucket/key)")
    storage.parse_s3_uri(uri)  # a malformed URI fails before any client is made
    return storage.download(uri, dest, client=storage.s3_client(storage.access_from_env()))


def main() -> None:
    from stages.common import stage_main
    from stages.ingest import run

    stage_main(lambda: run(fetch=fetch), name="stages.ingest")


if __name__ == "__main__":
    main()
