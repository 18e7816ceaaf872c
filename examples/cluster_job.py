"""The job to submit to a Ray cluster: a checkpointed keyed aggregation that checks itself.

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env-json '{"env_vars": {"RAYKV_CHECKPOINT_URL": "s3://bucket/raykv/job1",
                                          "RAYKV_OUTPUT_URL": "s3://bucket/raykv/job1-out"}}' \\
        -- python examples/cluster_job.py --events 5000000
    python examples/cluster_job.py          # no cluster: runs on a local Ray

Configuration comes from the environment (so the same script runs anywhere):

* ``RAYKV_CHECKPOINT_URL``: the checkpoint store (default: ``<tmp>/raykv-cluster-job/
  checkpoints``, a local folder: fine on one machine; a multi-node cluster needs ``s3://``
  or a folder on storage every node mounts);
* ``RAYKV_OUTPUT_URL``: where the ``ParquetSink`` publishes output (default: beside the
  default checkpoints);
* ``RAYKV_S3_ENDPOINT_URL``: an S3-compatible endpoint for both (credentials: ``AWS_*``
  variables or the nodes' instance profile).

It connects with ``ray.init(address="auto")`` (the cluster it was submitted to, or the one
``ray start`` runs on this machine) and falls back to a local Ray. The pipeline resumes
from the latest committed epoch, so resubmitting a failed or stopped job continues it.
Shard actors are spread over the nodes (``SPREAD``). At the end the published output's
final epoch is compared with ``pyarrow`` ``group_by`` over the same events and one line
``RAYKV_RESULT {json}`` reports rows, epochs, the nodes the shards ran on and the verdict.

Exit codes: 0 exact, 1 mismatch or corrupt checkpoint, 2 bad input, 3 store unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
from _common import EXIT_CHECK_FAILED, EXIT_OK, guarded, table_diff

import raykv
from raykv.checkpointing import CheckpointStore
from raykv.operators import Aggregate
from raykv.sinks import ParquetSink
from raykv.sources import GeneratorSource
from raykv.tools.demo import ZipfEvents
from raykv.tools.drill import read_published

AGGS = {"amount": ["sum", "count", "max"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000, help="events in the stream")
    p.add_argument("--keys", type=int, default=50_000, help="distinct users (zipf)")
    p.add_argument("--batch-size", type=int, default=50_000, help="events per batch")
    p.add_argument("--every", type=int, default=2, help="batches per epoch")
    p.add_argument("--shards", type=int, default=None,
                   help="shard actors (default: one per alive node, at least 2)")
    p.add_argument("--engine", default="hybridlog", help="hybridlog, lsm, appendlog, memonly")
    return p.parse_args(argv)


def connect() -> str:
    """Connect to the cluster this runs in (``address="auto"``), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return "already connected"
    try:
        ray.init(address="auto", configure_logging=False, log_to_driver=False)
        return "cluster"
    except ConnectionError:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
        return "local"


def run(args: argparse.Namespace) -> int:
    import ray

    default_root = Path(tempfile.gettempdir()) / "raykv-cluster-job"
    ckpt = os.environ.get("RAYKV_CHECKPOINT_URL") or f"file://{default_root / 'checkpoints'}"
    out = os.environ.get("RAYKV_OUTPUT_URL") or str(default_root / "output")
    options: dict[str, Any] = {}
    if os.environ.get("RAYKV_S3_ENDPOINT_URL"):
        options["endpoint_url"] = os.environ["RAYKV_S3_ENDPOINT_URL"]
    CheckpointStore(ckpt, options if ckpt.startswith("s3://") else None)  # fail fast
    mode = connect()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    shards = args.shards or max(2, len(nodes))
    print(f"raykv cluster job: {mode} Ray with {len(nodes)} node(s), {shards} shards, "
          f"checkpoints {ckpt}, output {out}", flush=True)
    gen = ZipfEvents(events=args.events, keys=args.keys, batch_size=args.batch_size)
    pipeline = raykv.Pipeline(
        source=GeneratorSource(gen, limit=gen.num_batches),
        stages=[Aggregate("user", AGGS)],
        sink=ParquetSink(out, storage_options=options if out.startswith("s3://") else None),
        num_shards=shards, engine=args.engine, checkpoint=ckpt,
        storage_options=options if ckpt.startswith("s3://") else None,
        checkpoint_interval=None, epoch_every_batches=args.every,
    )
    summary = pipeline.run(resume=True)
    print(summary, flush=True)
    published = read_published(out, options if out.startswith("s3://") else None)
    aggs = [(c, op) for c, ops in AGGS.items() for op in ops]
    want = pa.TableGroupBy(gen.table(), "user", use_threads=False).aggregate(aggs)
    final_epoch = max(published) if published else None
    problem = table_diff(published.get(final_epoch) if published else None, want, "user")
    shard_nodes = {name: st.get("node_id") for name, st in sorted(summary.shards.items())}
    result = {
        "ok": problem is None, "problem": problem, "mode": mode, "nodes": len(nodes),
        "shard_nodes": shard_nodes, "rows_in": summary.rows_in,
        "epochs_committed": summary.epochs_committed, "restored_from": summary.restored_from,
        "final_epoch": final_epoch, "users": want.num_rows, "checkpoint": ckpt,
        "output": out, "wall_time": round(summary.wall_time, 3),
    }
    print("RAYKV_RESULT " + json.dumps(result, sort_keys=True), flush=True)
    if problem is not None:
        print(f"MISMATCH in the final epoch {final_epoch} of {out}: {problem}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"exact: {want.num_rows:,} users match pyarrow group_by over {args.events:,} events; "
          f"shards ran on {len(set(shard_nodes.values()))} node(s)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the job; return the exit code."""
    args = parse_args(argv)
    return guarded("cluster_job", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
