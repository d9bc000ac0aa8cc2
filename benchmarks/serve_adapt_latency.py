"""Prediction latency of ``fewshot serve`` while a project adapts in the background (#35 item 4): a real server
process (default recipe), one project of 5 classes x 5 images; one-image predictions measured idle, then while the
project's adaptation job runs (``PUT .../adaptation {"adapt": "top"}``), then from the adapted model. Run::

    python benchmarks/serve_adapt_latency.py --support ../shared/data/crossdomain/gtsrb
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def files(*items: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def start(recipe: str, port: int = 8765) -> subprocess.Popen:
    data = Path(tempfile.mkdtemp()) / "data"
    process = subprocess.Popen([sys.executable, "-m", "fewshot", "serve", "--recipe", recipe, "--data-dir", str(data),
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/info", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not start")


def timed(client, pid: int, query: bytes) -> tuple[float, dict]:
    start = time.perf_counter()
    answer = client.post(f"/api/v1/projects/{pid}/predict", files=files(("q.png", query))).json()["predictions"][0]
    return (time.perf_counter() - start) * 1000, answer


def summary(values: list[float]) -> str:
    values = sorted(values)
    return f"median {statistics.median(values):.0f} ms, p90 {values[int(0.9 * (len(values) - 1))]:.0f} ms ({len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--support", required=True, help="a folder of class folders (the first 5, 5 images each)")
    parser.add_argument("--recipe", default="default")
    args = parser.parse_args()
    folders = sorted(p for p in Path(args.support).iterdir() if p.is_dir())[:5]
    query = sorted(folders[0].iterdir())[5].read_bytes()
    server = start(args.recipe)
    try:
        with httpx.Client(base_url="http://127.0.0.1:8765", timeout=600) as client:
            pid = client.post("/api/v1/projects", json={"name": "bench"}).json()["id"]
            for folder in folders:
                cid = client.post(f"/api/v1/projects/{pid}/classes", json={"name": folder.name}).json()["id"]
                client.post(f"/api/v1/projects/{pid}/classes/{cid}/images",
                            files=files(*[(p.name, p.read_bytes()) for p in sorted(folder.iterdir())[:5]]))
            timed(client, pid, query)  # the project's classifier is built
            idle = [timed(client, pid, query)[0] for _ in range(15)]
            started = time.perf_counter()
            client.put(f"/api/v1/projects/{pid}/adaptation", json={"adapt": "top"})
            during = []
            while True:
                ms, answer = timed(client, pid, query)
                if answer["adaptation"]["answers_from"] == "adapted":
                    break
                during.append(ms)
                time.sleep(0.25)
            took = time.perf_counter() - started
            adapted = [timed(client, pid, query)[0] for _ in range(15)]
        print(f"idle: {summary(idle)}\nwhile adapting: {summary(during)}\nadapted: {summary(adapted)}\n"
              f"adaptation job (model + three folds, 160 steps): {took:.1f} s")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
