"""A real ``fewshot serve`` process on 127.0.0.1 at a free port, for the API and browser tests."""

from __future__ import annotations

import atexit
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

TINY_MODEL = ["--backbone", "conv4", "--head", "protonet", "--image-size", "32"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``python -m fewshot serve`` with the tiny model; ``client`` talks to it."""

    def __init__(self, data_dir: Path, *extra: str, token: str | None = None):
        self.data_dir, self.extra, self.token = data_dir, list(extra), token
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> "Server":
        self.port = free_port()
        command = [sys.executable, "-m", "fewshot", "serve", *TINY_MODEL, "--device", "cpu", "--data-dir",
                   str(self.data_dir), "--port", str(self.port), *self.extra]
        if self.token:
            command += ["--token", self.token]
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.log = open(self.data_dir.parent / f"server-{self.port}.log", "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        atexit.register(self.kill)  # never leave a server behind, even when the tests are interrupted
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if httpx.get(f"{self.url}/api/v1/info", timeout=2, headers=self._auth()).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server did not start: {self.output()}")

    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def output(self) -> str:
        self.log.flush()
        return (self.data_dir.parent / f"server-{self.port}.log").read_text()

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, timeout=120, headers=headers)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash or an OOM kill."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def colour_png(colour: str, seed: int, size: int = 32, noise: float = 25.0) -> bytes:
    """A PNG of one colour with noise (classes that even a random Conv4 separates)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(COLOURS[colour], float) + rng.normal(0, noise, (size, size, 3)), 0, 255)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def files(*items: tuple[str, bytes]) -> list:
    """httpx multipart ``files=`` from (name, bytes) pairs, all in the field 'files'."""
    return [("files", (name, data, "application/octet-stream")) for name, data in items]
