"""Filesystem access for plain objects (landing files, reports) on file:// or s3://."""

from __future__ import annotations

import math
import uuid
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
        timeouts = settings.timeouts
        attempts = _s3_retry_attempts(timeouts.object_store_retry_s)
        kwargs: dict[str, object] = {
            "region": settings.s3_region,
            # The SDK's default of 3 attempts gave up on refused connections within 1-3 s.
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
            "connect_timeout": float(timeouts.object_store_connect_s),
            "request_timeout": float(timeouts.object_store_request_s),
        }
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


def _s3_retry_attempts(retry_s: float) -> int:
    """Attempts of the AWS SDK's standard retry strategy that keep retrying for about ``retry_s``.

    Unlike object_store's, the SDK's retries are bounded by count only. Its standard strategy
    waits a random 0-1 s times 2**retry, at most 20 s: the first six waits sum to about 29 s
    on average, each later one about 19 s. With the default 120 s that is 12 attempts,
    waiting 123 s on average and less than 60 s about once in 10**5 (simulated); an outage's
    end is noticed within 20 s. (The default strategy's waits, 25 ms * 2**retry, have no cap;
    the standard one stops early once a filesystem has spent 100 retries: ``filesystem`` gives
    every call its own.)
    """
    return 7 + max(0, math.ceil((retry_s - 29) / 19))


def put_object(settings: Settings, uri: str, data: bytes) -> None:
    """Write one object under the lake (file:// or s3://); never visible half-written."""
    fs, path = filesystem(settings, uri)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)  # rename: atomic on one filesystem
    else:
        with fs.open_output_stream(path) as out:  # an object PUT is atomic
            out.write(data)


# -- drift reports ------------------------------------------------------------------------
REPORTS_PREFIX = "reports/drift"  # under the use case's lake root: the only files the Sluice view serves


def reports_root(settings: Settings) -> str:
    """``<lake root>/reports/drift``: the prefix every drift report of the use case lies under."""
    return f"{settings.lake_root}/{REPORTS_PREFIX}"


def report_uri(settings: Settings, ds: str, name: str = "report.html") -> str:
    """The drift report file ``name`` of day ``ds``: ``<lake root>/reports/drift/ds=<ds>/<name>``."""
    from sluice.edges.lake import check_day  # (deltalake: only when a report is asked for)

    return f"{reports_root(settings)}/ds={check_day(ds)}/{name}"
