"""The server under heavy jobs, memory pressure and races (issue #24): predictions go before background work,
heavy jobs are limited (429 + Retry-After) and cancelled with their client, memory is bounded by
configuration, reads are consistent, and the small messages say what is true."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="needs the fewshot[serve] extra")
httpx = pytest.importorskip("httpx", reason="needs the fewshot[test-serve] extra")
from serving import Server, colour_png  # noqa: E402

from fewshot import FewShotClassifier  # noqa: E402
from fewshot.serve.engine import Engine  # noqa: E402
from fewshot.serve.jobs import Busy, Cancelled, ComputeLock, JobSlots  # noqa: E402
from fewshot.serve.store import NewImage, Store  # noqa: E402
from fewshot.serve.uploads import Limits, check_image  # noqa: E402


def test_waiting_predictions_go_before_waiting_background_passes():
    lock, order = ComputeLock(), []
    holder = threading.Event()

    def hold():
        with lock.interactive():
            holder.set()
            time.sleep(0.3)

    def background():
        with lock.background():
            order.append("background")

    def interactive():
        with lock.interactive():
            order.append("interactive")

    first = threading.Thread(target=hold)
    first.start()
    holder.wait()
    waiting_background = threading.Thread(target=background)
    waiting_background.start()
    time.sleep(0.05)  # the background pass queued first
    waiting_interactive = threading.Thread(target=interactive)
    waiting_interactive.start()
    for thread in (first, waiting_background, waiting_interactive):
        thread.join(5)
    assert order == ["interactive", "background"]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        with lock.background(cancel):
            pass


def test_heavy_job_slots_refuse_past_the_limit():
    slots = JobSlots(1)
    with slots.hold("estimate"):
        with pytest.raises(Busy, match="busy with 1 heavy job.*--max-jobs 1") as busy:
            with slots.hold("export"):
                pass
        assert busy.value.retry_after > 0
    with slots.hold("export"):  # free again
        pass


def png_bytes(colour: str, seed: int) -> bytes:
    return colour_png(colour, seed)


def stored(store: Store, project: int, klass: int, colour: str, seed: int) -> None:
    checked = check_image(png_bytes(colour, seed), f"{colour}{seed}.png", Limits())
    store.add_images(project, klass, [NewImage(checked.data, checked.sha256, checked.name, checked.format,
                                               checked.width, checked.height, checked.kept)], 100)


def test_a_project_read_is_one_snapshot_even_when_a_class_is_added_between_its_queries(tmp_path, monkeypatch):
    store = Store(tmp_path / "data")
    project = store.create_project("p")
    stored(store, project, store.create_class(project, "red"), "red", 0)
    original = store._connect
    interleaved = []

    class Interleaving:
        """A connection that, right after the project row is read, lets another writer add a class with an
        image (what a concurrent upload does), before the classes and images are read."""

        def __init__(self, connection):
            self.connection = connection

        def execute(self, sql, *args):
            result = self.connection.execute(sql, *args)
            if sql.startswith("SELECT id, name, revision") and not interleaved:
                interleaved.append(1)
                writer = threading.Thread(target=lambda: stored(store, project,
                                                                store.create_class(project, "blue"), "blue", 1))
                writer.start()
                writer.join(10)
            return result

        def __getattr__(self, name):
            return getattr(self.connection, name)

    monkeypatch.setattr(store, "_connect", lambda: Interleaving(original()))
    seen = store.project(project)  # the old three autocommit reads raised KeyError here (HTTP 500)
    assert interleaved and [c["name"] for c in seen["classes"]] == ["red"]
    monkeypatch.undo()
    assert [c["name"] for c in store.project(project)["classes"]] == ["red", "blue"]


def test_project_caches_stay_under_the_configured_memory(tmp_path):
    store = Store(tmp_path / "data")
    base = FewShotClassifier(backbone="conv4", head="protonet", image_size=32, backbone_options={"width": 8})
    engine = Engine(base, store, cache_mb=0.05)  # room for one of these projects (12 images, 37 KB)
    projects = []
    for n in range(3):
        project = store.create_project(f"p{n}")
        for colour in ("red", "blue"):
            klass = store.create_class(project, colour)
            for seed in range(6):
                stored(store, project, klass, colour, 10 * n + seed)
        projects.append(project)
        engine.classifier(project)
    one = engine.cached_bytes()
    assert 0.05 * 2**20 / 2 < one <= 0.05 * 2**20, "room for one project and not two: the others were dropped"
    assert list(engine._cache) == [projects[-1]]  # the least recently used went first
    engine.classifier(projects[0])  # rebuilt from the store (embeddings cached on disk: nothing re-embedded)
    assert engine.embedded_images == 36


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("hardening") / "data", "--max-jobs", "1", "--max-inflight-mb", "1").start()
    yield running
    running.stop()


def make_project(client, name: str, per_class: int = 4) -> int:
    pid = client.post("/api/v1/projects", json={"name": name}).json()["id"]
    for colour in ("red", "green", "blue"):
        cid = client.post(f"/api/v1/projects/{pid}/classes", json={"name": colour}).json()["id"]
        files = [("files", (f"{colour}{i}.png", png_bytes(colour, i), "image/png")) for i in range(per_class)]
        assert client.post(f"/api/v1/projects/{pid}/classes/{cid}/images", files=files).status_code == 201
    return pid


def export_children() -> list[str]:
    found = subprocess.run(["pgrep", "-f", "fewshot.serve.jobs"], capture_output=True, text=True).stdout
    return found.split()


def test_an_export_runs_apart_is_limited_and_predictions_are_answered_meanwhile(server):
    client = server.client()
    pid = make_project(client, "jobs")
    query = [("files", ("q.png", png_bytes("green", 99), "image/png"))]
    result = {}
    exporting = threading.Thread(target=lambda: result.setdefault(
        "export", client.get(f"/api/v1/projects/{pid}/export", params={"format": "torchscript"})))
    exporting.start()
    deadline = time.time() + 30
    while not export_children() and time.time() < deadline:
        time.sleep(0.05)
    assert export_children(), "the export runs in a child process"
    second = client.post(f"/api/v1/projects/{pid}/estimate", json={"repeats": 5})
    assert second.status_code == 429 and int(second.headers["Retry-After"]) > 0, second.text
    assert "--max-jobs 1" in second.json()["error"]
    answered = client.post(f"/api/v1/projects/{pid}/predict", files=query)
    assert answered.status_code == 200 and answered.json()["predictions"][0]["predicted"] == "green"
    exporting.join(120)
    assert result["export"].status_code == 200, result["export"].text
    exported = torch.jit.load(io.BytesIO(result["export"].content))
    assert exported(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape == (1, 3)
    assert client.post(f"/api/v1/projects/{pid}/estimate", json={"repeats": 5}).status_code == 200
    too_many = client.post(f"/api/v1/projects/{pid}/estimate", json={"repeats": 1000})
    assert too_many.status_code == 400 and "repeats" in too_many.json()["error"]


def test_an_export_is_stopped_when_its_client_goes_away(server):
    """The child is caught alive while its client waits and frozen (SIGSTOP), so it cannot finish by itself: only
    the server's kill on disconnect removes it."""
    client = server.client()
    pid = make_project(client, "cancel")
    frozen = []

    def freeze_the_child():
        deadline = time.time() + 60
        while not frozen and time.time() < deadline:
            for child in export_children():
                os.kill(int(child), signal.SIGSTOP)
                frozen.append(int(child))
            time.sleep(0.05)

    watcher = threading.Thread(target=freeze_the_child)
    watcher.start()
    try:
        with pytest.raises(httpx.TimeoutException):
            server.client().get(f"/api/v1/projects/{pid}/export", params={"format": "torchscript"}, timeout=10.0)
        watcher.join()
        assert frozen, "no export child was running while its client waited"
        deadline = time.time() + 20
        while export_children() and time.time() < deadline:
            time.sleep(0.1)
        assert not export_children(), "the export child outlived its client"
    finally:
        for child in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
    for _ in range(50):
        if not [p for p in (server.data_dir / "tmp").rglob("*") if p.is_file()]:
            break
        time.sleep(0.1)
    assert not [p for p in (server.data_dir / "tmp").rglob("*") if p.is_file()]
    assert client.get("/api/v1/info").status_code == 200


def test_uploads_being_received_at_once_are_bounded(server):
    client = server.client()
    pid = make_project(client, "inflight", per_class=1)
    cid = client.get(f"/api/v1/projects/{pid}").json()["classes"][0]["id"]
    url = f"{server.url}/api/v1/projects/{pid}/classes/{cid}/images"
    started = threading.Event()

    def slow_body():  # a chunked body (no length) that takes its time
        started.set()
        yield b"--x\r\n"
        time.sleep(2)
        yield b"--x--\r\n"

    slow = threading.Thread(target=lambda: httpx.post(url, content=slow_body(), timeout=30,
                                                      headers={"Content-Type": "multipart/form-data; boundary=x"}))
    slow.start()
    started.wait()
    time.sleep(0.3)
    refused = client.post(url, files=[("files", ("g.png", png_bytes("green", 7), "image/png"))])
    slow.join(30)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "5", refused.text
    assert client.post(url, files=[("files", ("g.png", png_bytes("green", 7), "image/png"))]).status_code == 201


def test_small_messages_say_what_is_true(server):
    client = server.client()
    pid = make_project(client, "messages", per_class=1)
    cid = client.get(f"/api/v1/projects/{pid}").json()["classes"][0]["id"]
    url = f"/api/v1/projects/{pid}/classes/{cid}/images"
    long_name = client.post(url, files=[("files", ("x" * 6000 + ".png", png_bytes("red", 5), "image/png"))])
    assert long_name.status_code == 400 and "file name" in long_name.json()["error"]
    invisible = client.post(f"/api/v1/projects/{pid}/classes", json={"name": "\u200b"})
    assert invisible.status_code == 400 and "invisible" in invisible.json()["error"]
    twin = client.post("/api/v1/projects", json={"name": "MESSAGES"})
    assert twin.status_code == 409 and "already exists" in twin.json()["error"]
    renamed = client.post("/api/v1/projects", json={"name": "other"}).json()["id"]
    assert client.patch(f"/api/v1/projects/{renamed}", json={"name": "messages"}).status_code == 409
    broken = client.post("/api/v1/projects", content=b"{bad", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"].startswith("the body is not valid JSON")
    from PIL import Image

    ico = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(ico, format="ICO")
    answer = client.post(url, files=[("files", ("a.ico", ico.getvalue(), "image/x-icon"))])
    assert "is an ICO file" in answer.json()["error"]
    info = client.get("/api/v1/info").json()
    assert info["int8_note"] and "faster" not in info["int8_note"].split(":")[0]


def test_sizes_print_exact_bytes():
    from fewshot.serve.uploads import size_text

    assert size_text(22_000_000) == "22,000,000 bytes (21.0 MiB)"
    assert size_text(20 * 2**20) == "20,971,520 bytes (20.0 MiB)"
    assert size_text(52_429) != size_text(52_428)
    assert np.isclose(float(size_text(2**20).split("(")[1].split()[0]), 1.0)
