"""The keyed aggregation with ``s3://`` checkpoints: a local moto S3 server, or real S3.

    python examples/s3_checkpoints.py                          # starts moto on 127.0.0.1
    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
        python examples/s3_checkpoints.py --bucket my-bucket --prefix raykv/demo
    python examples/s3_checkpoints.py --bucket b --endpoint-url http://minio:9000   # MinIO
    python examples/s3_checkpoints.py --bucket b --prefix p --resume   # continue that run

Without ``--bucket`` the example starts ``moto``'s S3 server on a free port of 127.0.0.1
and creates a bucket there. With ``--bucket`` it uses that bucket (it must exist) through
s3fs: credentials come from the ``AWS_*`` variables or the instance profile, never from
the command line; ``--endpoint-url`` (or ``RAYKV_S3_ENDPOINT_URL``) selects an
S3-compatible service. Shard actors upload their engine files to the bucket themselves,
so on a multi-node cluster every node needs the same credentials.

The pipeline (``Aggregate(user: amount sum/count/max)`` over a deterministic zipf stream)
commits an epoch every 2 batches; one shard actor is killed after epoch 2 commits, so the
run restores from S3 and replays. At the end the store is listed and verified (every file
of every retained epoch read back and checksummed) and the final aggregates are checked
against ``pyarrow`` ``group_by``.

Exit codes: 0 exact, 1 wrong result or corrupt store (names the object), 2 bad input (no
checkpoints to resume, a prefix already holding a run), 3 S3 cannot be reached, the bucket
is missing or the credentials are refused (reported within seconds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
from _common import (
    EXIT_OK,
    connect_ray,
    disconnect_ray,
    guarded,
    kill_and_wait,
    require_checkpoints,
    table_diff,
    verdict,
)

import raykv
from raykv.checkpointing import CheckpointStore
from raykv.operators import Aggregate
from raykv.sources import GeneratorSource
from raykv.tools.demo import ZipfEvents

AGGS = {"amount": ["sum", "count", "max"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bucket", help="existing S3 bucket (default: start a local moto server)")
    p.add_argument("--prefix", default=None, help="key prefix (default: runs/<random>)")
    p.add_argument("--endpoint-url", default=os.environ.get("RAYKV_S3_ENDPOINT_URL"),
                   help="S3-compatible endpoint (env RAYKV_S3_ENDPOINT_URL)")
    p.add_argument("--region", default=None, help="S3 region (default: AWS_DEFAULT_REGION)")
    p.add_argument("--events", type=int, default=100_000, help="events in the stream")
    p.add_argument("--keys", type=int, default=2_000, help="distinct users")
    p.add_argument("--batch-size", type=int, default=5_000, help="events per batch")
    p.add_argument("--shards", type=int, default=2, help="shard actors")
    p.add_argument("--engine", default="lsm", help="hybridlog, lsm, appendlog, memonly")
    p.add_argument("--no-kill", action="store_true", help="do not kill a shard")
    p.add_argument("--resume", action="store_true",
                   help="continue the run under --bucket/--prefix from its latest epoch")
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    return p.parse_args(argv)


def start_moto() -> tuple[Any, dict[str, Any]]:
    """Start moto's S3 server on a free port of 127.0.0.1; return it and storage options."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing",
               "secret": "testing"}
    return server, options


def run(args: argparse.Namespace) -> int:
    server = None
    if args.bucket is None:
        if args.resume:
            msg = "--resume needs --bucket and --prefix of an earlier run (moto's data is gone)"
            raise ValueError(msg)
        server, options = start_moto()
        bucket = "raykv-example"
        import s3fs

        s3fs.S3FileSystem(**options).mkdir(bucket)
        print(f"moto S3 server at {options['endpoint_url']}, bucket {bucket}")
    else:
        bucket = args.bucket
        options = {}
        if args.endpoint_url:
            options["endpoint_url"] = args.endpoint_url
        if args.region:
            options["client_kwargs"] = {"region_name": args.region}
    prefix = args.prefix or f"runs/{uuid.uuid4().hex[:8]}"
    url = f"s3://{bucket}/{prefix.strip('/')}"
    tmp = tempfile.mkdtemp(prefix="raykv-s3-")
    started = False
    try:
        if args.resume:
            require_checkpoints(url, options)  # writes nothing; names a corrupt object
        else:
            CheckpointStore(url, options)  # probe first: endpoint, bucket, credentials
        gen = ZipfEvents(events=args.events, keys=args.keys, batch_size=args.batch_size)
        started = connect_ray(args.address)
        killed: list[str] = []

        def kill_once(ev: raykv.ProgressEvent) -> None:
            if not args.no_kill and ev.kind == "barrier" and ev.epoch == 2 and not killed:
                name = sorted(ev.shards)[-1]
                killed.append(name)
                kill_and_wait(ev.shards[name])

        pipeline = raykv.Pipeline(
            source=GeneratorSource(gen, limit=gen.num_batches),
            stages=[Aggregate("user", AGGS)],
            num_shards=args.shards, engine=args.engine, checkpoint=url,
            storage_options=options, checkpoint_interval=None, epoch_every_batches=2,
            retain=3, local_dir=str(Path(tmp) / "state"), on_progress=kill_once,
        )
        summary = pipeline.run(resume=args.resume)
        print(summary)
        if killed:
            print(f"killed {killed[0]} after epoch 2 committed: {summary.restarts} recovery "
                  "from the S3 checkpoint")
        store = CheckpointStore(url, options)
        epochs = store.epochs()
        store.verify()
        print(f"{url}: retained epochs {epochs}, {store.store_bytes() / 2**20:.2f} MiB, "
              "every file verified")
        aggs = [(c, op) for c, ops in AGGS.items() for op in ops]
        want = pa.TableGroupBy(gen.table(), "user", use_threads=False).aggregate(aggs)
        final = summary.output_by_epoch.get(summary.last_epoch) if summary.last_epoch else None
        if args.resume and not summary.epochs_committed:
            print(f"the run in {url} had already finished at epoch {summary.last_epoch}")
            return EXIT_OK
        problem = table_diff(final, want, "user")
        return verdict(problem, f"{want.num_rows:,} users match pyarrow group_by over "
                       f"{args.events:,} events", killed=bool(killed),
                       restarts=summary.restarts)
    finally:
        disconnect_ray(started)
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the example; return the exit code."""
    args = parse_args(argv)
    return guarded("s3_checkpoints", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
