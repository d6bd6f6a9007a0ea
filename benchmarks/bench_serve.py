"""Load test of ``glip serve`` on loopback: concurrent clients posting images, with and without batching.

The server is a separate process (``python -m glip serve``), so that the clients' threads do not
share its interpreter; each client sends its requests one after another (``POST /detect``,
a Shapes-world scene, the six shape names), all clients at once. One server per ``--max-batch``
value, all started first; the load alternates between them in ``--rounds``, so that a shared
machine's drifting background load falls on each alike. Reported per ``--max-batch``:
requests/s, p50/p95 latency, errors (any status but 200, or a failed connection), the mean batch
(requests / forward passes, from ``/health``) and the server's resident memory when loaded, after
a warm-up round (one request per client) and after each round: flat memory means no growth per request.

    python benchmarks/bench_serve.py [--model glip_nano] [--clients 32] [--requests 20] [--max-batch 8,1]
        [--rounds 4] [--threads 2] [--note "what else ran"] [--write | --out DIR]

Prints a table; writes serve_cpu.{json,md} into benchmarks/results/ with --write (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from results_io import add_output_arguments, write_results

from glip.data.shapes_world import SHAPES, encode_png, render_scene, sample_scene
from glip.serve.client import open_json, post_detect

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (Linux /proc; None elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def get_json(url: str) -> dict:
    status, payload = open_json(url, timeout=30)
    if status != 200:
        raise RuntimeError(f"{url}: HTTP {status}")
    return payload


class Server:
    """``glip serve`` in a child process, up once ``/health`` answers."""

    def __init__(self, model: str, max_batch: int, wait_ms: float, threads: int) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        command = [sys.executable, "-m", "glip", "serve", "--model", model, "--port", port, "--max-batch",
                   str(max_batch), "--batch-wait-ms", str(wait_ms), "--threads", str(threads)]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while True:
            try:
                get_json(self.url + "/health")
                return
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"glip serve did not start: {' '.join(command)}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class Load:
    """What the clients saw, summed over rounds."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        milliseconds = np.array(self.latencies) * 1000
        return {"requests": len(self.latencies), "seconds": self.seconds,
                "requests_per_s": len(self.latencies) / self.seconds,
                "p50_ms": float(np.percentile(milliseconds, 50)), "p95_ms": float(np.percentile(milliseconds, 95)),
                "errors": len(self.errors), "first_errors": self.errors[:3]}


def run_clients(url: str, images: Sequence[bytes], fields: dict[str, str], clients: int, requests: int,
                load: Load) -> None:
    """``clients`` threads, each sending ``requests`` posts in turn, all released at once; adds to ``load``."""
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        barrier.wait()
        for number in range(requests):
            start = time.perf_counter()
            try:
                status, result = post_detect(url, images[(index + number) % len(images)], fields, timeout=600)
                failure = None if status == 200 else f"HTTP {status}: {result.get('error')}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                failure = str(error)
            with lock:
                load.latencies.append(time.perf_counter() - start)
                if failure is not None:
                    load.errors.append(failure)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    load.seconds += time.perf_counter() - start


def measure(args: argparse.Namespace, sizes: Sequence[int], images: Sequence[bytes], fields: dict[str, str]) -> list[dict]:
    """One server per ``--max-batch`` value, all started first; the load runs in rounds that
    alternate between them, so that a shared machine's changing background load falls on each alike."""
    servers = {size: Server(args.model, size, args.batch_wait_ms, args.threads) for size in sizes}
    try:
        rows = {size: {"max_batch": size, "clients": args.clients, "rss_loaded_mib": rss_mib(server.process.pid)}
                for size, server in servers.items()}
        for size, server in servers.items():
            run_clients(server.url, images, fields, args.clients, 1, Load())  # warm-up: every client once
            rows[size].update(rss_warm_mib=rss_mib(server.process.pid), rss_rounds_mib=[],
                              health_before=get_json(server.url + "/health"))
        loads = {size: Load() for size in sizes}
        for _ in range(args.rounds):
            for size, server in servers.items():
                run_clients(server.url, images, fields, args.clients, args.requests // args.rounds, loads[size])
                rows[size]["rss_rounds_mib"].append(rss_mib(server.process.pid))
        for size, server in servers.items():
            before, after = rows[size].pop("health_before"), get_json(server.url + "/health")
            passes = after["forward_passes"] - before["forward_passes"]
            rows[size].update(loads[size].summary(), rss_after_mib=rows[size]["rss_rounds_mib"][-1],
                              mean_batch=(after["requests"] - before["requests"]) / max(passes, 1))
    finally:
        for server in servers.values():
            server.stop()
    return list(rows.values())


def table(rows: Sequence[dict]) -> str:
    def mib(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    lines = ["| max batch | clients x requests | seconds | requests/s | p50 ms | p95 ms | errors | mean batch | "
             "RSS loaded MiB | RSS after warm-up | RSS after each round |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['max_batch']} | {row['clients']} x {row['requests'] // row['clients']} | "
                     f"{row['seconds']:.1f} | {row['requests_per_s']:.2f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | "
                     f"{row['errors']} | {row['mean_batch']:.2f} | {mib(row['rss_loaded_mib'])} | "
                     f"{mib(row['rss_warm_mib'])} | {', '.join(mib(value) for value in row['rss_rounds_mib'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="glip_nano", help="preset or model directory (default glip_nano)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--requests", type=int, default=20, help="requests per client (default 20)")
    parser.add_argument("--max-batch", default="8,1", help="comma-separated --max-batch values (default 8,1)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="the server's --batch-wait-ms (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds alternating between the servers, each --requests/--rounds per client (default 4)")
    parser.add_argument("--note", default="", help="a sentence added to the markdown (e.g. what else ran)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    scenes = [render_scene(sample_scene(7, "test", index)) for index in range(4)]  # all 224 x 224
    images = [encode_png(scene) for scene in scenes]
    fields = {"classes": ",".join(SHAPES)}
    if args.requests % args.rounds:
        parser.error(f"--requests {args.requests} must be a multiple of --rounds {args.rounds}")
    rows = measure(args, [int(size) for size in args.max_batch.split(",")], images, fields)
    meta = {"model": args.model, "batch_wait_ms": args.batch_wait_ms, "threads": args.threads, "rounds": args.rounds,
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version()}
    text = table(rows)
    print(text)
    if any(row["errors"] for row in rows):
        print("errors: " + "; ".join(error for row in rows for error in row["first_errors"]), file=sys.stderr)
    note = f"\n{args.note}\n" if args.note else ""
    write_results(args, {
        "serve_cpu.json": json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n",
        "serve_cpu.md": f"# `glip serve` under load on loopback ({args.model}, CPU)\n\n{text}\n\n{json.dumps(meta)}\n"
                        f"\n{args.clients} clients each post {args.requests} requests in turn, all at once (plus "
                        "one warm-up request each, not counted), a 224 x 224 Shapes-world scene with the six "
                        "shape names; each server runs in its own process, and the load alternates between "
                        f"the servers in {args.rounds} rounds. Mean batch = requests / forward passes (from "
                        "/health).\n" + note,
    })


if __name__ == "__main__":
    main()
