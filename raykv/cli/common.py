"""Shared pieces of the command line: exit codes, storage options, error reporting."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # a check ran and failed: corrupt store, wrong result
EXIT_USAGE = 2  # bad arguments or input: no checkpoints, unknown epoch, bad URL
EXIT_UNAVAILABLE = 3  # the store cannot be reached (endpoint down, bucket missing, credentials)


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """Add the flags that build ``storage_options`` for S3-compatible stores."""
    group = parser.add_argument_group("S3 options (credentials come from AWS_* variables)")
    group.add_argument("--endpoint-url", default=os.environ.get("RAYKV_S3_ENDPOINT_URL"),
                       help="S3-compatible endpoint (MinIO, Ceph, moto); env RAYKV_S3_ENDPOINT_URL")
    group.add_argument("--anon", action="store_true", help="anonymous access (public buckets)")
    group.add_argument("--region", default=None, help="S3 region (default: AWS_DEFAULT_REGION)")


def storage_options(args: argparse.Namespace) -> dict[str, Any]:
    """Build fsspec ``storage_options`` from flags; secrets stay in the environment.

    Keys and secrets are read by s3fs/botocore from ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` or an instance profile; they are
    never taken from the command line, so they never show in ``ps`` or in output.
    """
    url = getattr(args, "url", "") or ""
    if not str(url).startswith("s3://"):
        return {}
    opts: dict[str, Any] = {}
    if args.endpoint_url:
        opts["endpoint_url"] = args.endpoint_url
    if args.anon:
        opts["anon"] = True
    if args.region:
        opts["client_kwargs"] = {"region_name": args.region}
    return opts


def fail(code: int, message: str) -> int:
    """Print ``raykv: <message>`` to stderr and return ``code``."""
    print(f"raykv: {message}", file=sys.stderr)
    return code


def run_guarded(fn: Callable[[], int]) -> int:
    """Run a command body, turning raykv's errors into a message and an exit code."""
    from raykv.errors import (
        CheckpointNotFoundError,
        CorruptionError,
        StoreUnavailableError,
    )

    try:
        return fn()
    except StoreUnavailableError as err:
        return fail(EXIT_UNAVAILABLE, str(err))
    except CorruptionError as err:
        return fail(EXIT_CHECK_FAILED, str(err))
    except CheckpointNotFoundError as err:
        return fail(EXIT_USAGE, str(err))
    except (ValueError, TypeError, FileNotFoundError) as err:
        return fail(EXIT_USAGE, str(err))


def human_bytes(n: float) -> str:
    """Render a byte count with a binary unit (``1.5 MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
