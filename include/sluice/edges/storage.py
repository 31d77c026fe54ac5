"""Filesystem access for plain objects (landing files, reports) on file:// or s3://."""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from pyarrow import fs as pafs

from sluice.settings import Settings


def filesystem(settings: Settings, uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path of ``uri`` within it."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return pafs.LocalFileSystem(), unquote(parsed.path)
    if parsed.scheme == "s3":
        opts = settings.storage_options()
        kwargs: dict[str, object] = {"region": settings.s3_region}
        if settings.s3_endpoint_url:
            endpoint = urlparse(settings.s3_endpoint_url)
            kwargs["endpoint_override"] = endpoint.netloc
            kwargs["scheme"] = endpoint.scheme or "https"
        if "AWS_ACCESS_KEY_ID" in opts:
            kwargs["access_key"] = opts["AWS_ACCESS_KEY_ID"]
            kwargs["secret_key"] = opts.get("AWS_SECRET_ACCESS_KEY")
            kwargs["session_token"] = opts.get("AWS_SESSION_TOKEN")
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}"
    raise ValueError(f"unsupported URI scheme in {uri!r}")
