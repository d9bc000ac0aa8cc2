"""Soak test of ``fewshot serve`` on loopback: many projects, every kind of request, for minutes, with the
server's memory watched.

Starts ``fewshot serve`` on 127.0.0.1 at a free port with a fresh data folder, then:

1. build: PROJECTS projects of IMAGES generated photo-like images (3 classes each), uploaded 50 per request;
2. idle latency: one-image predictions on the first project back to back (p50);
3. predictions while heavy jobs run: the same predictions while an ONNX export of that project runs, and while
   its estimate (200 splits) runs; p50 / max, and the ratio to idle;
4. soak: CLIENTS clients for SECONDS seconds, each sending its next request when the last one answered:
   55 % one-image predictions, 10 % explained predictions, 20 % uploads (one new image), 10 % estimates
   (20 splits), 5 % ONNX exports, over random projects.

The server's resident memory (its process and any export child) is sampled every 0.5 s. A 429 answer (busy:
too many heavy jobs) is counted apart and is not an error; an error is any other non-2xx answer or a
transport failure. Loopback only; every phase is bounded in requests and time.

    python benchmarks/serve_soak.py --recipe fast --projects 10 --images 500 --seconds 600
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, photo  # noqa: E402

KINDS = (("predict", 0.55), ("explain", 0.10), ("upload", 0.20), ("estimate", 0.10), ("export", 0.05))


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children, MB."""
    total = 0.0
    found = subprocess.run(["ps", "-o", "rss=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    for value in [Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0], *found]:
        total += int(value) / 1024
    return total


class Watcher(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.server_peak, self.samples, self.stopped = pid, 0.0, 0.0, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                value = rss_mb(self.pid)
                alone = int(Path(f"/proc/{self.pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
            except (OSError, IndexError):
                return
            self.peak, self.server_peak = max(self.peak, value), max(self.server_peak, alone)
            self.samples.append((time.time(), alone))
            time.sleep(0.5)


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ms = np.array(values) * 1000
    return f"{np.percentile(ms, 50):.0f} / {np.percentile(ms, 99):.0f} / {ms.max():.0f}"


def predict_latencies(client: httpx.Client, project: int, query: bytes, seconds: float, stop=None) -> list[float]:
    times, end = [], time.time() + seconds
    while time.time() < end and not (stop is not None and stop.is_set()):
        started = time.perf_counter()
        answer = client.post(f"/api/v1/projects/{project}/predict", files=[("files", ("q.jpg", query, "image/jpeg"))])
        answer.raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def during(client: httpx.Client, project: int, query: bytes, job) -> tuple[list[float], float]:
    """Prediction latencies while ``job()`` runs in another thread, and the job's seconds."""
    stop, took = threading.Event(), {}

    def run() -> None:
        started = time.perf_counter()
        job()
        took["s"] = time.perf_counter() - started
        stop.set()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.05)
    latencies = predict_latencies(client, project, query, 600, stop)
    thread.join()
    return latencies, took["s"]


def build(client: httpx.Client, projects: int, images: int, prefix: str = "soak") -> list[dict]:
    built = []
    for p in range(projects):
        pid = client.post("/api/v1/projects", json={"name": f"{prefix} {p}"}).json()["id"]
        classes = []
        for label in range(3):
            cid = client.post(f"/api/v1/projects/{pid}/classes", json={"name": f"class {label}"}).json()["id"]
            classes.append(cid)
            count = images // 3 + (label < images % 3)
            for start in range(0, count, 50):
                files = [("files", (f"{n}.jpg", photo(p * 10**6 + label * 10**4 + n, label), "image/jpeg"))
                         for n in range(start, min(count, start + 50))]
                client.post(f"/api/v1/projects/{pid}/classes/{cid}/images", files=files).raise_for_status()
        built.append({"id": pid, "classes": classes, "next": 10**5})
        print(f"  project {p + 1}/{projects} built", flush=True)
    return built


def soak(url: str, projects: list[dict], clients: int, seconds: float, seed: int) -> dict:
    results = {kind: [] for kind, _ in KINDS}
    busy = {kind: 0 for kind, _ in KINDS}
    errors: list[str] = []
    lock = threading.Lock()
    end = time.time() + seconds

    def client_loop(number: int) -> None:
        rng = random.Random(seed + number)
        with httpx.Client(base_url=url, timeout=900) as client:
            while time.time() < end:
                kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
                project = rng.choice(projects)
                label = rng.randrange(3)
                started = time.perf_counter()
                try:
                    answer = send(client, kind, project, label, rng)
                    failed = None if answer.status_code < 300 or answer.status_code == 429 else \
                        f"{kind}: {answer.status_code} {answer.text[:200]}"
                except httpx.HTTPError as exc:
                    answer, failed = None, f"{kind}: {type(exc).__name__}: {exc}"
                with lock:
                    if failed:
                        errors.append(failed)
                    elif answer.status_code == 429:
                        busy[kind] += 1
                    else:
                        results[kind].append(time.perf_counter() - started)

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": results, "busy": busy, "errors": errors}


def send(client: httpx.Client, kind: str, project: dict, label: int, rng: random.Random) -> httpx.Response:
    pid = project["id"]
    if kind in ("predict", "explain"):
        query = photo(rng.randrange(10**9), label)
        return client.post(f"/api/v1/projects/{pid}/predict", params={"explain": kind == "explain"},
                           files=[("files", ("q.jpg", query, "image/jpeg"))])
    if kind == "upload":
        project["next"] += 1
        body = photo(pid * 10**7 + project["next"], label)
        return client.post(f"/api/v1/projects/{pid}/classes/{project['classes'][label]}/images",
                           files=[("files", (f"u{project['next']}.jpg", body, "image/jpeg"))])
    if kind == "estimate":
        return client.post(f"/api/v1/projects/{pid}/estimate", json={"repeats": 20, "seed": rng.randrange(10**6)})
    return client.get(f"/api/v1/projects/{pid}/export", params={"format": "onnx"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--cache-mb", type=float, default=1024)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, "-m", "fewshot", "serve", "--recipe", args.recipe, "--data-dir", f"{work}/data",
                   "--port", str(port), "--cache-mb", str(args.cache_mb)]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            run(server, url, args)
        finally:
            server.terminate()
            server.wait(30)


def run(server: subprocess.Popen, url: str, args: argparse.Namespace) -> None:
    client = httpx.Client(base_url=url, timeout=900)
    for _ in range(600):
        try:
            if client.get("/api/v1/info").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    watcher = Watcher(server.pid)
    watcher.start()
    print(f"# python benchmarks/serve_soak.py {' '.join(sys.argv[1:])}; {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    started = time.time()
    projects = build(client, args.projects, args.images)
    print(f"built {args.projects} projects x {args.images} images in {time.time() - started:.0f} s; "
          f"peak RSS so far {watcher.peak:.0f} MB", flush=True)
    first, query = projects[0], photo(424242, 1)
    client.post(f"/api/v1/projects/{first['id']}/predict", files=[("files", ("q.jpg", query, "image/jpeg"))])
    idle = predict_latencies(client, first["id"], query, 8)
    export_times, export_s = during(client, first["id"], query, lambda: client.get(
        f"/api/v1/projects/{first['id']}/export", params={"format": "onnx"}).raise_for_status())
    estimate_times, estimate_s = during(client, first["id"], query, lambda: client.post(
        f"/api/v1/projects/{first['id']}/estimate", json={"repeats": 200}).raise_for_status())
    idle_p50 = np.median(idle)
    print(f"| one-image predict ({args.images}-image project) | p50 ms | max ms | p50 / idle p50 | job took s |\n"
          "|---|---:|---:|---:|---:|")
    for name, values, took in (("idle", idle, 0), ("during an ONNX export", export_times, export_s),
                               ("during an estimate (200 splits)", estimate_times, estimate_s)):
        if values:
            print(f"| {name} | {np.median(values) * 1000:.0f} | {max(values) * 1000:.0f} | "
                  f"{np.median(values) / idle_p50:.2f} | {took:.1f} |", flush=True)
        else:
            print(f"| {name} | - | - | - | {took:.1f} (over before a prediction was sent) |", flush=True)
    outcome = soak(url, projects, args.clients, args.seconds, 0)
    watcher.stopped.set()
    print(f"\nsoak: {args.clients} clients, {args.seconds:.0f} s, {args.projects} projects x {args.images}+ images, "
          f"--cache-mb {args.cache_mb:.0f}; peak RSS: server {watcher.server_peak:.0f} MB, server + export child "
          f"{watcher.peak:.0f} MB; server at the end {watcher.samples[-1][1]:.0f} MB; errors {len(outcome['errors'])}")
    print("| request | answered | busy (429) | p50 / p99 / max ms |\n|---|---:|---:|---:|")
    for kind, _ in KINDS:
        print(f"| {kind} | {len(outcome['latencies'][kind])} | {outcome['busy'][kind]} | "
              f"{percentiles(outcome['latencies'][kind])} |")
    for line in outcome["errors"][:10]:
        print("error:", line)
    print(json.dumps({"peak_rss_mb": round(watcher.peak), "server_peak_rss_mb": round(watcher.server_peak),
                      "errors": len(outcome["errors"]),
                      "answered": {k: len(v) for k, v in outcome["latencies"].items()}, "busy": outcome["busy"]}))


if __name__ == "__main__":
    main()
