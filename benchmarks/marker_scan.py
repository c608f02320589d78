"""The driver's scan of per-part markers on an object store: one call after another (each marker
checked, then read: how runner and ingest scanned before) against Store.markers (one read
each, READ_THREADS at a time), side by side on the same markers.

The store is moto's S3 server in its own process on 127.0.0.1, so a call waits on loopback and
moto's CPU, not on a network: on S3 itself each call waits tens of milliseconds, which threads
overlap and a serial scan adds up.

    python benchmarks/marker_scan.py --markers 2000 --repeat 3
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import harness
from harness import positive

from distsel.core.storage import Store


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto(port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("moto's server did not start")


def serial(store: Store, names: list[str]) -> list[Any]:
    return [store.read_json(name) if store.exists(name) else None for name in names]


def main() -> None:
    parser = harness.new_parser(__doc__)
    parser.add_argument("--markers", type=positive, default=2000)
    parser.add_argument("--repeat", type=positive, default=3)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    port = free_port()
    server = start_moto(port)
    try:
        store = Store("s3://markers/out", {"endpoint_url": f"http://127.0.0.1:{port}"})
        store.fs.mkdir("markers")
        names = [f"_state/stage/{i:06d}.json" for i in range(args.markers)]
        for i, name in enumerate(names[: args.markers * 9 // 10]):  # a tenth not yet scored
            store.write_json(name, {"rows": i, "version": "v"})
        expected = serial(store, names)
        walls: dict[str, list[float]] = {"serial": [], "markers": []}
        for _ in range(args.repeat):
            for label, scan in (("serial", serial), ("markers", Store.markers)):
                began = time.perf_counter()
                found = scan(store, names)
                walls[label].append(time.perf_counter() - began)
                assert found == expected, f"{label} read other markers"
        medians = {label: statistics.median(v) for label, v in walls.items()}
        harness.print_table(
            ["scan", "markers", "median wall s", "markers/s"],
            [
                [label, str(len(names)), f"{wall:.2f}", f"{len(names) / wall:,.0f}"]
                for label, wall in medians.items()
            ],
        )
        print(f"ratio serial / markers: {medians['serial'] / medians['markers']:.2f}")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
