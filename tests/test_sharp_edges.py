"""Sharp edges (#36): each test fails when its edge comes back."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_image_folder
from fewshot import FewShotClassifier
from fewshot.cli import main
from fewshot.errors import FewshotError

MODEL = ["--backbone", "conv4", "--head", "protonet", "--image-size", "16", "--backbone-option", "width=8",
         "--no-progress"]


def test_an_unknown_model_name_lists_the_recipes():
    import re

    from fewshot.model.recipes import RECIPES

    with pytest.raises(FewshotError, match=re.escape(f"a model is a recipe ({', '.join(RECIPES)};")):
        FewShotClassifier("nosuchrecipe")


def test_predict_unknown_auto_reuses_its_threshold_across_processes(tmp_path, capsys, monkeypatch):
    import fewshot.inference.classifier_estimates as classifier_module

    root = tmp_path / "support"
    make_image_folder(root, classes=4, per_class=6, size=16, noise=4.0)
    query = sorted((root / "class00").iterdir())[0]
    runs = []
    original = classifier_module.estimate_open_set
    monkeypatch.setattr(classifier_module, "estimate_open_set", lambda *a, **k: runs.append(1) or original(*a, **k))
    answers = []
    for _ in range(2):  # two CLI calls: two classifiers, as two processes would build them
        torch.manual_seed(0)
        assert main(["predict", *MODEL, "--support", str(root), "--query", str(query), "--unknown", "auto",
                     "--unknown-score", "distance", "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out)[0])
    assert len(runs) == 1, "the second call read the stored estimate"
    assert answers[0]["unknown_threshold"] == answers[1]["unknown_threshold"]
    make_image_folder(tmp_path / "more", classes=1, per_class=1, size=16, noise=4.0, seed=3)
    (tmp_path / "more" / "class00" / next((tmp_path / "more" / "class00").iterdir()).name).rename(
        root / "class00" / "extra.png")  # the support set changes: a new estimate
    torch.manual_seed(0)
    assert main(["predict", *MODEL, "--support", str(root), "--query", str(query), "--unknown", "auto",
                 "--unknown-score", "distance", "--json"]) == 0
    assert len(runs) == 2


def test_held_bytes_count_the_joined_copy_the_fitted_state_and_the_mahalanobis_precision(tmp_path):
    root = tmp_path / "support"
    make_image_folder(root, classes=3, per_class=4, size=16)
    torch.manual_seed(0)
    clf = FewShotClassifier(backbone="conv4", head="protonet", image_size=16, backbone_options={"width": 8},
                            unknown_score="mahalanobis", calibration="table").fit(root)
    examples = sum(e.images.numel() + e.features.numel() * 4 for e in clf.examples_.values())
    assert clf.held_bytes() == examples
    features, labels = clf.support_features()
    assert clf.held_bytes() == examples + features.numel() * 4 + labels.numel() * 8, "the joined copy"
    precision = clf.fitted_.unknown["precision"]
    assert precision.shape == (features.shape[1],) * 2
    assert clf.held_bytes() >= examples + features.numel() * 4 + precision.numel() * 4


def test_the_export_child_runs_isolated_and_its_stderr_cannot_block(tmp_path, monkeypatch):
    pytest.importorskip("fastapi", reason="needs fewshot[serve]")
    import subprocess
    import sys
    import threading

    from fewshot.serve import jobs

    job = tmp_path / "job" / "export.pt"
    job.parent.mkdir()
    job.write_bytes(b"not a job")  # the child fails with one line on stderr
    seen = {}
    original = subprocess.Popen

    def spy(command, **kwargs):
        seen.update(command=command, **kwargs)
        return original(command, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    with pytest.raises(FewshotError, match="the export failed: "):
        jobs.run_export_process(job, threading.Event(), timeout=120)
    assert seen["cwd"] == job.parent and seen["stderr"] is not subprocess.PIPE, "no pipe left unread"
    assert ("-P" in seen["command"]) == (sys.version_info >= (3, 11)), "the server's folder is not on the path"
    assert not list(job.parent.glob("*.stderr")), "the child's stderr file is removed"


def test_a_fitted_classifier_is_scored_on_a_labelled_test_folder(tmp_path, capsys):
    make_image_folder(tmp_path / "all", classes=3, per_class=10, size=16, noise=4.0)
    for name in ("class00", "class01", "class02"):
        files = sorted((tmp_path / "all" / name).iterdir())
        for part, chosen in (("support", files[:4]), ("test", files[4:])):
            (tmp_path / part / name).mkdir(parents=True)
            for file in chosen:
                file.rename(tmp_path / part / name / file.name)
    torch.manual_seed(0)
    clf = FewShotClassifier(backbone="conv4", head="protonet", image_size=16, backbone_options={"width": 8})
    found = clf.fit(tmp_path / "support").score(tmp_path / "test")
    predicted = clf.predict(sorted((tmp_path / "test").rglob("*.png")))
    truth = [p.parent.name for p in sorted((tmp_path / "test").rglob("*.png"))]
    right = sum(a == b for a, b in zip(predicted, truth))
    assert found.images == 18 and found.accuracy == pytest.approx(100 * right / 18)
    assert found.low <= found.accuracy <= found.high and found.high - found.low > 5
    assert sum(map(sum, found.report["confusion"])) == 18
    assert [row["queries"] for row in found.report["classes"]] == [6, 6, 6]
    out = tmp_path / "score.json"
    assert main(["eval", *MODEL, "--support", str(tmp_path / "support"), "--test", str(tmp_path / "test"),
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "95% interval" in printed and "precision" in printed
    assert json.loads(out.read_text())["images"] == 18
    (tmp_path / "test" / "stranger").mkdir()
    sorted((tmp_path / "test" / "class00").iterdir())[0].rename(tmp_path / "test" / "stranger" / "x.png")
    with pytest.raises(FewshotError, match="test class 'stranger' is not among the classifier's"):
        clf.score(tmp_path / "test")
    assert main(["eval", *MODEL, "--test", str(tmp_path / "test")]) == 2
    assert "--support and --test go together" in capsys.readouterr().err


def test_startup_removes_only_dead_servers_work(tmp_path):
    pytest.importorskip("fastapi", reason="needs fewshot[serve]")
    import os
    import subprocess
    import sys

    from fewshot.serve.app import remove_stale_work

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(finished.stdout), os.getppid()
    tmp = tmp_path / "tmp"
    for pid in (dead, alive, os.getpid()):
        (tmp / str(pid) / "export-work").mkdir(parents=True)
        (tmp / str(pid) / "export-work" / "job.pt").write_bytes(b"in flight")
    remove_stale_work(tmp)
    assert not (tmp / str(dead)).exists(), "a killed server's leftovers go"
    assert (tmp / str(alive) / "export-work" / "job.pt").exists(), "another running server's export stays"
    assert (tmp / str(os.getpid()) / "export-work" / "job.pt").exists()


def test_upload_file_names_are_capped_like_class_names():
    pytest.importorskip("fastapi", reason="needs fewshot[serve]")
    from fewshot.serve.uploads import MAX_NAME_LENGTH, display_name

    long = display_name("C:\\photos\\" + "leaf " * 80 + ".jpeg")
    assert len(long) == MAX_NAME_LENGTH and long.endswith("\u2026.jpeg") and long.startswith("leaf leaf")
    assert display_name("x" * 300) == "x" * (MAX_NAME_LENGTH - 1) + "\u2026"
    assert display_name("short.png") == "short.png" and display_name("  ") == "image"


def test_http_errors_speak_no_python(tmp_path):
    pytest.importorskip("fastapi", reason="needs fewshot[serve]")
    from serving import Server

    running = Server(tmp_path / "data").start()
    try:
        client = running.client()
        pid = client.post("/api/v1/projects", json={"name": "p"}).json()["id"]
        answers = [client.post(f"/api/v1/projects/{pid}/predict", params={"unknown": "maybe"}),
                   client.post("/api/v1/projects", json={"name": None}),
                   client.post(f"/api/v1/projects/{pid}/estimate", json={"repeats": None})]
        for answer in answers:
            assert answer.status_code == 400, answer.text
            message = answer.json()["error"]
            assert not any(term in message for term in ("None", "Traceback", "NoneType", "dict", "str(")), message
        log = running.output()
        assert f"POST /api/v1/projects/{pid}/predict 400" in log  # errors are logged by default, one line each
        assert "GET /api/v1/info 200" not in log  # quick successes are not
    finally:
        running.stop()


def test_every_request_is_one_log_line_with_its_status_duration_and_size():
    import io

    pytest.importorskip("fastapi", reason="needs fewshot[serve]")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from fewshot.serve.request_log import RequestLog

    app = FastAPI()

    @app.get("/ok")
    def ok() -> dict:
        return {"answer": "x" * 1500}

    clock = iter([0.0, 0.035, 1.0, 3.5])
    stream = io.StringIO()
    quiet = TestClient(RequestLog(app, stream=stream, clock=lambda: next(clock)))
    assert quiet.get("/ok?name=secret").status_code == 200 and stream.getvalue() == ""  # fast and fine: no line
    assert quiet.get("/ok").status_code == 200  # 2.5 s: slow, logged
    assert stream.getvalue().split()[1:] == ["testclient", "GET", "/ok", "200", "2500", "ms", "1.5", "kB"]
    every = io.StringIO()
    TestClient(RequestLog(app, every_request=True, stream=every)).get("/missing?token=secret")
    assert " GET /missing 404 " in every.getvalue() and "secret" not in every.getvalue()


def test_an_ensembles_export_says_what_size_each_member_runs_at():
    from fewshot.config import ModelConfig
    from fewshot.model.network import build_model
    from fewshot.inference.export.onnx import member_sizes

    model = build_model(ModelConfig(backbone="ensemble:efficientnet_lite0+conv4", head="protonet"), 3, 64)
    assert json.loads(member_sizes(model)["member_sizes"]) == {"efficientnet_lite0": 224, "conv4": None}
    plain = build_model(ModelConfig(backbone="conv4", head="protonet", backbone_options={"width": 8}), 3, 32)
    assert member_sizes(plain) == {}


def test_read_only_arrays_and_tensors_leak_no_warning():
    import warnings

    import numpy as np

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (20, 20, 3), dtype=np.uint8) for _ in range(4)]
    for image in images:
        image.setflags(write=False)
    batch = np.stack(images)
    batch.setflags(write=False)
    scaled = (batch[0] / 255.0).astype(np.float32)
    scaled.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch's "non-writable" UserWarning would fail here
        clf = FewShotClassifier(backbone="conv4", head="protonet", image_size=16, backbone_options={"width": 8}).fit(images, ["a", "a", "b", "b"])
        assert len(clf.predict(batch)) == 4 and len(clf.predict([scaled])) == 1
        assert clf.predict_proba(torch.from_numpy(batch[0].copy()).permute(2, 0, 1)).shape == (1, 2)
