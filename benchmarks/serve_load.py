"""Load test of ``fewshot serve`` on loopback: concurrent clients uploading and predicting.

Starts ``fewshot serve`` on 127.0.0.1 at a free port with a fresh data folder, builds a project (CLASSES classes
of IMAGES generated photos-like images), then:

1. capacity: one client, predictions back to back -> the requests/s the CPU carries (C);
2. closed loop: CLIENTS clients, each sending its next request when the last one answered, 80 % predictions
   (one image) and 20 % uploads (one new image to a random class);
3. overload: an open loop at 4 x C requests/s for SECONDS seconds (requests are sent on schedule whatever the
   answers), the same mix; latency counted from the scheduled send, so queueing shows;
4. crash: the same open loop with half uploads, the server SIGKILLed halfway and restarted on the same folder.

Every phase reports requests/s, p50 / p99 latency and errors (any non-2xx answer or transport failure); at the
end (after the restart) every acknowledged upload must be in the project (GET) and its file readable. Bounded: each phase stops
at its request count or its time limit. Loopback only.

    python benchmarks/serve_load.py --recipe fast
    python benchmarks/serve_load.py --tiny          # random Conv4, for a quick check of the harness
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def photo(seed: int, label: int, size: int = 160) -> bytes:
    """A JPEG of smooth colour blobs, the class deciding the palette."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(label).random((3, 3)) * 255
    coarse = rng.random((6, 6, 1)) * palette[0] + (1 - rng.random((6, 6, 1))) * palette[1]
    pixels = np.kron(coarse, np.ones((size // 6 + 1, size // 6 + 1, 1)))[:size, :size]
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


class Payloads:
    """Request bodies made before the clock starts, so the client (on the same cores) spends its time sending."""

    def __init__(self, classes: int, uploads: int, queries: int = 64):
        self.uploads = [[photo(10**6 + label * 10**4 + n, label) for n in range(uploads)] for label in range(classes)]
        self.queries = [[photo(2 * 10**6 + label * 10**4 + n, label) for n in range(queries)] for label in range(classes)]
        self.next_upload = [0] * classes

    def upload(self, label: int) -> bytes:
        n = self.next_upload[label]
        self.next_upload[label] += 1
        return self.uploads[label][n % len(self.uploads[label])]  # past the pool: duplicates, answered "skipped"


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.uploaded: list[int] = []

    def add(self, latency: float, error: str | None = None, image_id: int | None = None):
        with self.lock:
            self.latencies.append(latency)
            if error:
                self.errors.append(error)
            if image_id is not None:
                self.uploaded.append(image_id)

    def summary(self, wall: float) -> dict:
        values = np.array(self.latencies) * 1000
        return {"requests": len(values), "errors": len(self.errors), "wall_s": round(wall, 2),
                "requests_per_s": round(len(values) / wall, 2),
                "p50_ms": round(float(np.percentile(values, 50)), 1) if len(values) else None,
                "p99_ms": round(float(np.percentile(values, 99)), 1) if len(values) else None,
                "max_ms": round(float(values.max()), 1) if len(values) else None}


class Load:
    def __init__(self, url: str, project: int, classes: list[int], seed: int, payloads: Payloads):
        self.url, self.project, self.classes, self.payloads = url, project, classes, payloads
        self.counter = iter(range(10**9))
        self.counter_lock = threading.Lock()
        self.rng = random.Random(seed)
        self.local = threading.local()

    def client(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(base_url=self.url, timeout=600)
        return self.local.client

    def one(self, recorder: Recorder, upload_share: float, scheduled: float | None = None) -> None:
        with self.counter_lock:
            n = next(self.counter)
            upload = self.rng.random() < upload_share
            label = self.rng.randrange(len(self.classes))
            body = self.payloads.upload(label) if upload else self.payloads.queries[label][n % 64]
        start = scheduled if scheduled is not None else time.perf_counter()
        try:
            if upload:
                answer = self.client().post(
                    f"/api/v1/projects/{self.project}/classes/{self.classes[label]}/images",
                    files=[("files", (f"load{n}.jpg", body, "image/jpeg"))])
            else:
                answer = self.client().post(f"/api/v1/projects/{self.project}/predict",
                                            files=[("files", ("q.jpg", body, "image/jpeg"))])
            latency = time.perf_counter() - start
            if answer.status_code >= 300:
                recorder.add(latency, f"{answer.status_code} {answer.text[:200]}")
            else:
                added = answer.json()["added"] if upload else []
                recorder.add(latency, None, added[0]["id"] if added else None)
        except httpx.HTTPError as exc:
            recorder.add(time.perf_counter() - start, f"{type(exc).__name__}: {exc}")


def closed_loop(load: Load, clients: int, requests: int, limit_s: float, upload_share: float) -> tuple[dict, Recorder]:
    recorder, begun = Recorder(), time.perf_counter()
    left = iter(range(requests))
    lock = threading.Lock()

    def worker():
        while time.perf_counter() - begun < limit_s:
            with lock:
                if next(left, None) is None:
                    return
            load.one(recorder, upload_share)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return recorder.summary(time.perf_counter() - begun), recorder


def open_loop(load: Load, rate: float, seconds: float, upload_share: float, workers: int = 256
              ) -> tuple[dict, Recorder]:
    recorder, begun = Recorder(), time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for k in range(int(rate * seconds)):
            due = begun + k / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(load.one, recorder, upload_share, due)
    summary = recorder.summary(time.perf_counter() - begun)
    summary["offered_per_s"] = round(rate, 2)
    return summary, recorder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--recipe", default="fast", help="recipe the server uses (default fast)")
    model.add_argument("--tiny", action="store_true", help="random Conv4 + ProtoNet at 32 px instead of a recipe")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--images", type=int, default=10, help="images per class in the project")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients")
    parser.add_argument("--requests", type=int, default=200, help="requests per closed-loop phase (bound)")
    parser.add_argument("--seconds", type=float, default=20, help="length of the overload phase")
    parser.add_argument("--overload", type=float, default=4.0, help="overload factor over the measured capacity")
    parser.add_argument("--limit-s", type=float, default=180, help="time bound of each closed-loop phase")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    port = free_port()
    data = tempfile.mkdtemp(prefix="serve-load-")
    model_flags = ["--backbone", "conv4", "--head", "protonet", "--image-size", "32"] if args.tiny \
        else ["--recipe", args.recipe]
    url = f"http://127.0.0.1:{port}"

    def start() -> tuple[subprocess.Popen, dict]:
        process = subprocess.Popen([sys.executable, "-m", "fewshot", "serve", *model_flags, "--device", "cpu",
                                    "--data-dir", data, "--port", str(port), "--max-images", "100000"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for _ in range(1200):
            try:
                return process, httpx.get(f"{url}/api/v1/info", timeout=2).json()
            except httpx.HTTPError:
                if process.poll() is not None:
                    raise SystemExit("the server exited while starting")
                time.sleep(0.25)
        raise SystemExit("the server did not start")

    server, info = start()
    try:
        client = httpx.Client(base_url=url, timeout=600)
        project = client.post("/api/v1/projects", json={"name": "load"}).json()["id"]
        classes = []
        for label in range(args.classes):
            cid = client.post(f"/api/v1/projects/{project}/classes", json={"name": f"class {label}"}).json()["id"]
            classes.append(cid)
            client.post(f"/api/v1/projects/{project}/classes/{cid}/images",
                        files=[("files", (f"{i}.jpg", photo(label * 1000 + i, label), "image/jpeg"))
                               for i in range(args.images)]).raise_for_status()
        load = Load(url, project, classes, seed=0, payloads=Payloads(args.classes, 200))
        load.one(Recorder(), 0.0)  # warm-up: the classifier is built once
        results = {"model": info["model"], "cpu_count": os.cpu_count(), "project": f"{args.classes} classes x "
                   f"{args.images} images", "torch_threads": "default"}
        print(f"model {info['model']}; project {results['project']}", flush=True)

        capacity, _ = closed_loop(load, 1, max(20, args.requests // 4), args.limit_s, 0.0)
        results["capacity_predict_1_client"] = capacity
        print("capacity (1 client, predictions):", capacity, flush=True)
        mixed, rec_mixed = closed_loop(load, args.clients, args.requests, args.limit_s, 0.2)
        results[f"closed_loop_{args.clients}_clients_20pct_uploads"] = mixed
        print(f"closed loop ({args.clients} clients, 20% uploads):", mixed, flush=True)
        rate = args.overload * mixed["requests_per_s"]
        over, rec_over = open_loop(load, rate, args.seconds, 0.2)
        results[f"open_loop_{args.overload:g}x"] = over
        print(f"open loop at {args.overload:g}x the closed-loop throughput ({rate:.1f}/s offered):", over, flush=True)

        # a crash under load: SIGKILL the server in the middle of an overload, restart it on the same folder
        stopper = threading.Timer(args.seconds / 2, server.kill)
        stopper.start()
        crash, rec_crash = open_loop(load, rate, args.seconds, 0.5)
        stopper.join()
        server.wait(30)
        server, _ = start()
        client = httpx.Client(base_url=url, timeout=600)  # the old connections died with the server
        results["crash_under_load"] = {"uploads_acknowledged_before_kill": len(rec_crash.uploaded),
                                       "requests_failed_by_the_kill": len(rec_crash.errors)}

        acknowledged = rec_mixed.uploaded + rec_over.uploaded + rec_crash.uploaded
        stored = {i["id"] for c in client.get(f"/api/v1/projects/{project}").json()["classes"] for i in c["images"]}
        lost = [i for i in acknowledged if i not in stored]
        unreadable = [i for i in acknowledged[:50]
                      if client.get(f"/api/v1/projects/{project}/images/{i}/file").status_code != 200]
        results["uploads_acknowledged"], results["uploads_lost"] = len(acknowledged), len(lost) + len(unreadable)
        print(f"uploads acknowledged {len(acknowledged)}, lost {len(lost)}, unreadable {len(unreadable)}; errors: "
              f"{len(rec_mixed.errors) + len(rec_over.errors)}", flush=True)
        for message in (rec_mixed.errors + rec_over.errors)[:5]:
            print("  error:", message)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"crash under load: {len(rec_crash.uploaded)} uploads acknowledged before the SIGKILL, "
              f"{len(rec_crash.errors)} requests cut off by it; after the restart lost "
              f"{len([i for i in rec_crash.uploaded if i not in stored])}", flush=True)
        ok = not (rec_mixed.errors or rec_over.errors or lost or unreadable)
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    sys.exit(main())
