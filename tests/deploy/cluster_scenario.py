"""distsel runs, one after another, on one multi-node Ray made by `ray.cluster_utils.Cluster`, in
its own process (the test session already holds a Ray): a head without CPUs and two worker nodes
of one CPU each, all on 127.0.0.1. Prints one JSON line: per run, the manifest, the worker and
head node ids and the node removed, if any.

    python tests/deploy/cluster_scenario.py CONFIG.json [CONFIG.json ...] [--remove-worker-after N
        --stage NAME]

With --remove-worker-after, one worker node is removed (its processes killed) once N parts of
the stage are scored in the last run, and that run carries on with the other.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from distsel.app import pipeline
from distsel.core.config import parse_config


def remove_when_scored(cluster: Cluster, node, markers: Path, count: int, removed: list) -> None:
    while len(list(markers.glob("*.parquet.json"))) < count:
        time.sleep(0.05)
    cluster.remove_node(node, allow_graceful=False)
    removed.append(node.node_id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("configs", type=Path, nargs="+")
    parser.add_argument("--remove-worker-after", type=int, default=0)
    parser.add_argument("--stage", default="embed")
    args = parser.parse_args()
    configs = [parse_config(json.loads(path.read_text())) for path in args.configs]

    # A removed node is declared dead after about a second instead of Ray's default fifteen.
    health = {"health_check_period_ms": 500, "health_check_failure_threshold": 2}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": health}
    )
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    outcome = []
    for index, config in enumerate(configs):
        removed: list[str] = []
        if args.remove_worker_after and index == len(configs) - 1:
            markers = Path(config.output.path) / "_state" / args.stage
            threading.Thread(
                target=remove_when_scored,
                args=(cluster, workers[1], markers, args.remove_worker_after, removed),
                daemon=True,
            ).start()
        manifest = pipeline.run(config)
        outcome.append(
            {
                "manifest": manifest,
                "head": cluster.head_node.node_id,
                "workers": [worker.node_id for worker in workers],
                "removed": removed,
            }
        )
    print(json.dumps(outcome))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
