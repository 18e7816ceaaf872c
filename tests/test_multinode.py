"""A Ray cluster of three nodes (``ray.cluster_utils.Cluster``) in a subprocess.

The session fixture already runs a local Ray in the test process, and a process can
drive only one Ray instance, so the cluster, its driver and the checks run in a child
Python process that prints a JSON verdict. Nodes of one CPU each (shards take no CPU
reservation). One cluster serves both runs (its start is most of their time):

1. Readers and shards spread over the three nodes; the node of a reader is removed
   mid-run; the output is exact and nothing runs on the removed node at the end.
2. On the two nodes left: shards of one stage land on different nodes (``SPREAD``);
   when the worker node is removed mid-run, its shard dies, the coordinator replaces
   every shard on the remaining node (which restores from the checkpoint), and the
   output is exactly the output of a run without failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import json, sys, time
    import pyarrow as pa
    import ray
    from ray.cluster_utils import Cluster

    import raykv
    from raykv.operators import Aggregate
    from raykv.sources import TableSource
    from raykv.testing import zipf_events
    from tests.test_recovery import BATCH, EVERY, N, KEYS, assert_exact

    tmp = sys.argv[1]
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    cluster.wait_for_nodes()


    def wait_nodes(n):
        deadline = time.monotonic() + 60  # the scheduler's view of a node may lag
        while ray.cluster_resources().get("CPU", 0) != n or len(
                [x for x in ray.nodes() if x["Alive"] and x["Resources"].get("CPU")]) != n:
            assert time.monotonic() < deadline, f"the cluster never had {n} nodes"
            time.sleep(0.2)
        time.sleep(1.0)


    # ---- 1: three nodes, the node of a reader is removed
    wait_nodes(3)
    t = zipf_events(N, KEYS, seed=43)
    seen = {}

    def on_progress(ev):
        if ev.kind == "started" and "placed" not in seen:
            stats = {n: ray.get(h.stats.remote()) for n, h in ev.actors.items()
                     if n.startswith("reader-")}
            stats.update({n: ray.get(h.stats.remote()) for n, h in ev.shards.items()})
            seen["placed"] = {n: st["node_id"] for n, st in stats.items()}
        if ev.kind == "committed" and ev.epoch == 2 and "removed" not in seen:
            # the worker node that hosts a reader dies with it (and with what else is there)
            readers = [n for n in seen["placed"] if n.startswith("reader-")]
            victim = next(w for w in workers
                          if any(seen["placed"][r] == w.node_id for r in readers))
            seen["removed"] = victim
            cluster.remove_node(victim)

    p = raykv.Pipeline(
        source=TableSource(t, batch_size=BATCH // 3),  # 24 batches: 6 epochs of 2 x 2
        stages=[Aggregate("user", {"amount": ["sum", "count"]})],
        num_shards=2, source_parallelism=2, engine="lsm", checkpoint=tmp + "/ckpt3",
        local_dir=tmp + "/local3", epoch_every_batches=EVERY, retain=10, max_pending_epochs=1,
        on_progress=on_progress, faults=raykv.testing.Faults(process_delay=0.1),
    )
    s = p.run()
    changelog = pa.concat_tables([s.output_by_epoch[e] for e in sorted(s.output_by_epoch)])
    got = {r["user"]: [r["amount_sum"], r["amount_count"]] for r in changelog.to_pylist()}
    g = t.group_by("user").aggregate([("amount", "sum"), ("amount", "count")])
    want = {u: [a, c] for u, a, c in zip(g["user"].to_pylist(), g["amount_sum"].to_pylist(),
                                         g["amount_count"].to_pylist())}
    exact = got.keys() == want.keys() and all(
        abs(got[u][0] - want[u][0]) < 1e-6 * max(1.0, abs(want[u][0])) and got[u][1] == want[u][1]
        for u in want)
    three = {"placed": seen["placed"], "removed": seen["removed"].node_id,
             "nodes": [cluster.head_node.node_id] + [w.node_id for w in workers],
             "restarts": s.restarts, "exact": exact, "rows_in": s.rows_in,
             "final": sorted({st["node_id"] for st in
                              [*s.shards.values(), *s.readers.values()]})}

    # ---- 2: the two nodes left, the worker node is removed with its shard
    worker = next(w for w in workers if w is not seen["removed"])
    wait_nodes(2)
    t = zipf_events(N, KEYS, seed=41)
    seen = {}

    def on_progress(ev):
        if ev.kind == "started":
            stats = ray.get([h.stats.remote() for h in ev.shards.values()])
            seen.setdefault("nodes", []).append(sorted(s["node_id"] for s in stats))
        if ev.kind == "committed" and ev.epoch == 2 and "removed" not in seen:
            seen["removed"] = worker.node_id
            cluster.remove_node(worker)   # the node dies with its shard

    p = raykv.Pipeline(
        source=TableSource(t, batch_size=BATCH),
        stages=[Aggregate("user", {"amount": ["sum", "count"]})],
        num_shards=2, engine="lsm", checkpoint=tmp + "/ckpt2", local_dir=tmp + "/local2",
        epoch_every_batches=EVERY, retain=10, on_progress=on_progress,
        faults=raykv.testing.Faults(process_delay=0.1), source_parallelism=1,
        max_pending_epochs=1,
    )
    s = p.run()
    assert_exact(s.output_by_epoch, t)
    two = {"nodes": seen["nodes"], "removed": seen["removed"],
           "head": cluster.head_node.node_id, "restarts": s.restarts,
           "final_nodes": sorted(st["node_id"] for st in s.shards.values())}
    print(json.dumps({"three": three, "two": two}))
    ray.shutdown()
    cluster.shutdown()
""")


def run_script(text: str, tmp_path: Path) -> dict[str, Any]:
    """Run a cluster script in a child Python; return the JSON verdict it prints last."""
    script = tmp_path / "multinode.py"
    script.write_text(text)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    verdict: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return verdict


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both runs of :data:`SCRIPT` on one cluster: ``{"three": ..., "two": ...}``."""
    return run_script(SCRIPT, tmp_path_factory.mktemp("multinode"))


def test_readers_and_shards_on_three_nodes_survive_losing_a_reader_node(
        verdicts: dict[str, Any]) -> None:
    """Readers and shards spread over 3 nodes; the node of a reader is removed mid-run."""
    v = verdicts["three"]
    assert set(v["placed"].values()) == set(v["nodes"])  # every node hosts an actor
    assert v["restarts"] >= 1 and v["exact"], v
    assert v["removed"] not in v["final"] and len(v["final"]) == 2


def test_shards_on_two_nodes_survive_a_node_failure(verdicts: dict[str, Any]) -> None:
    verdict = verdicts["two"]
    first = verdict["nodes"][0]
    assert len(set(first)) == 2  # one shard per node
    assert verdict["removed"] in first and verdict["removed"] != verdict["head"]
    assert verdict["restarts"] >= 1
    assert verdict["final_nodes"] == [verdict["head"], verdict["head"]]
