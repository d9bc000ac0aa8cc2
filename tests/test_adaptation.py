"""Adapting the backbone's top to one support set (#35): only a copy changes, episodes do not leak into each
other, ``auto`` refuses where the support's held-out images show no gain, and exports and saved classifiers
reproduce the adapted predictions."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from fewshot import FewShotClassifier
from fewshot.inference.adaptation import (AdaptSettings, adapt_model, augmented, decide_adaptation, fold_groups,
                                model_for_support)
from fewshot.cli import main
from fewshot.config import config_from_dict
from fewshot.model.network import build_model

LITE = dict(backbone="efficientnet_lite0", head="linear_probe", image_size=32, transform="l2n")  # power_cl2n:
# a random network's features are near 0, where the square root turns float noise into different answers


def lite_model(adapt: str = "none"):
    config = config_from_dict({}, ["model.backbone=efficientnet_lite0", "model.head=linear_probe",
                                   "model.transform=power_cl2n", "data.image_size=32", "data.channels=3",
                                   f"model.adapt={adapt}", "model.adapt_steps=5"])
    torch.manual_seed(0)
    return build_model(config.model, 3, 32).eval()


def coloured(ways: int, shots: int, seed: int = 0, noise: float = 60.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``ways`` classes of noisy uniform colours, ``(ways*shots, 3, 32, 32)`` uint8, labels class-major."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(ways, 3, 1, 1, generator=torch.Generator().manual_seed(99)) * 255
    images = colours.repeat_interleave(shots, 0) + noise * torch.randn(ways * shots, 3, 32, 32, generator=generator)
    return images.clamp(0, 255).to(torch.uint8), torch.arange(ways).repeat_interleave(shots)


def test_adapting_changes_only_a_copys_top():
    model = lite_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = coloured(3, 4)
    with torch.inference_mode():  # as in evaluation: the copy still trains
        adapted = adapt_model(model, images, labels, 3, AdaptSettings(steps=5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the shared model untouched
    changed = {k for k, v in adapted.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith(("backbone._blocks.11", "backbone._blocks.12", "backbone._blocks.13",
                                         "backbone._blocks.14", "backbone._blocks.15", "backbone._conv_head",
                                         "backbone._bn1")) for k in changed), sorted(changed)[:5]
    assert not any(k.endswith(("running_mean", "running_var")) for k in changed)  # BatchNorm statistics frozen
    assert adapted.adapt == "none" and not any(p.requires_grad for p in adapted.parameters())


def test_the_l2_sp_anchor_keeps_the_adapted_top_near_the_pretrained_weights():
    """The anchor term pulls the fine-tuned weights back: with it the top moves less than without, and the
    bf16 setting trains too (autocast around the top's forward)."""
    model = lite_model()
    images, labels = coloured(3, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def moved(settings: AdaptSettings) -> float:
        adapted = adapt_model(model, images, labels, 3, settings)
        return sum(float(((v - before[k]) ** 2).sum()) for k, v in adapted.state_dict().items()
                   if v.is_floating_point())

    free, anchored = moved(AdaptSettings(steps=8, lr=1e-2, anchor=0.0)), moved(AdaptSettings(steps=8, lr=1e-2, anchor=10.0))
    assert 0 < anchored < 0.5 * free, (anchored, free)
    assert moved(AdaptSettings(steps=2, precision="bf16")) > 0


def test_map_augmentation_keeps_shape_and_varies():
    maps = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    first = augmented(maps, torch.Generator().manual_seed(0))
    second = augmented(maps, torch.Generator().manual_seed(1))
    assert first.shape == maps.shape and not torch.equal(first, second)
    assert first.min() >= maps.min() and first.max() <= maps.max()  # crops of the map, resampled inside it


def test_folds_hold_out_every_image_once_and_part_of_every_class():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    groups = fold_groups(labels, 3)
    assert len(groups) == 3 and sorted(torch.cat(groups).tolist()) == list(range(12))
    assert all(set(labels[g].tolist()) == {0, 1, 2} for g in groups)
    assert len(fold_groups(torch.tensor([0, 0, 1, 1]), 3)) == 2  # no more folds than the smallest class allows


def test_auto_refuses_to_adapt_without_a_measured_gain():
    model = lite_model("auto")
    images, labels = coloured(3, 4, noise=5.0)  # separable as they are: adapting cannot show a gain
    chosen, decision, folds = model_for_support(model, images, labels, 3)
    assert chosen is model and not decision.adapt and "not adapted" in decision.reason
    assert decision.frozen_accuracy == 100.0 and folds.frozen.shape == (12, 3)
    one_shot, decision, _ = model_for_support(model, *coloured(3, 1), 3)
    assert one_shot is model and not decision.adapt and "single image" in decision.reason


def test_auto_adapts_when_the_held_out_gain_is_clear(monkeypatch):
    import fewshot.inference.adaptation as adaptation

    model = lite_model("auto")
    images, labels = coloured(3, 4)

    def rigged(model_, images_, labels_, held, ways):  # the adapted copies answer right, the frozen model wrong
        right = labels_[held]
        wrong = (right + 1) % ways
        chosen = right if getattr(model_, "adapted_to_support", False) else wrong
        return torch.nn.functional.one_hot(chosen, ways).float()

    monkeypatch.setattr(adaptation, "held_out_logits", rigged)
    decision, _ = decide_adaptation(model, images, labels, 3, AdaptSettings(steps=1))
    assert decision.adapt and decision.gain == 100.0 and decision.reason.endswith("adapted")


def rig_held_out(monkeypatch, adapted_logits):
    """Held-out logits rigged: the frozen model's are ``one_hot(truth)``; adapted copies' are ``adapted_logits(truth,
    ways)``."""
    import fewshot.inference.adaptation as adaptation

    def rigged(model_, images_, labels_, held, ways):
        right = torch.nn.functional.one_hot(labels_[held], ways).float()
        return adapted_logits(labels_[held], ways) if getattr(model_, "adapted_to_support", False) else right

    monkeypatch.setattr(adaptation, "held_out_logits", rigged)


def test_auto_adapts_when_held_out_images_become_more_probable_at_the_same_accuracy(monkeypatch):
    """Both answer every held-out image right; the adapted copies give the right class more probability: the
    log-probability shows the gain that accuracy cannot."""
    rig_held_out(monkeypatch, lambda truth, ways: (3 + torch.arange(len(truth)).float()[:, None] / len(truth))
                 * torch.nn.functional.one_hot(truth, ways).float())
    decision, _ = decide_adaptation(lite_model("auto"), *coloured(3, 4), 3, AdaptSettings(steps=1))
    assert decision.adapt and decision.gain == 0.0 and decision.likelihood_gain > 0.4


def test_auto_refuses_a_likelier_but_less_accurate_adaptation(monkeypatch):
    """More probability on the right class for most held-out images, but one answer lost: not adapted."""
    def adapted(truth, ways):
        logits = 4 * torch.nn.functional.one_hot(truth, ways).float()
        logits[0] = 0.0
        logits[0, truth[0]], logits[0, (truth[0] + 1) % ways] = 2.0, 2.1  # a near tie, lost
        return logits

    rig_held_out(monkeypatch, adapted)
    decision, _ = decide_adaptation(lite_model("auto"), *coloured(3, 4), 3, AdaptSettings(steps=1))
    assert decision.likelihood_gain > 0 and decision.gain < 0 and not decision.adapt
    assert "fewer held-out images answered right" in decision.reason


def test_adapted_episodes_do_not_leak_into_each_other(tmp_path):
    from episodes import EpisodeSampler, SplitSpec, open_split

    from fewshot.evaluation.episodic import evaluate_drawn

    root = tmp_path / "data"
    make_image_folder(root, classes=4, per_class=6, size=32, noise=30.0)
    split = open_split(SplitSpec((str(root),)), image_size=32, channels=3, workers=1, progress=False)
    model = lite_model("top")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = EpisodeSampler(split.class_sizes, 3, 2, 2, seed=0)
    drawn = [sampler.sample(i) for i in range(3)]
    together = evaluate_drawn(model, split, drawn, progress=False).accuracies
    alone = evaluate_drawn(model, split, drawn[2:], progress=False).accuracies
    reversed_ = evaluate_drawn(model, split, drawn[::-1], progress=False).accuracies
    assert together[2] == alone[0] == reversed_[0]  # episode 2 learns nothing from episodes 0 and 1
    assert np.array_equal(together, reversed_[::-1])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture
def support(tmp_path):
    root = tmp_path / "support"
    make_image_folder(root, classes=3, per_class=4, size=32, noise=40.0)
    return root


def test_an_adapted_classifier_exports_saves_and_estimates_what_it_predicts(support, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime
    from PIL import Image

    adapted = FewShotClassifier(**LITE, adapt="top").fit(support)
    frozen = FewShotClassifier(**LITE).fit(support)
    queries = sorted(p for c in sorted(support.iterdir()) for p in c.iterdir())
    probabilities = adapted.predict_proba(queries)
    assert adapted.model_ is not adapted.base_model_ and frozen.model_ is frozen.base_model_
    assert not np.allclose(probabilities, frozen.predict_proba(queries), atol=1e-3)  # adapting changed something
    session = onnxruntime.InferenceSession(str(adapted.export(tmp_path / "a.onnx")))
    exported = np.concatenate([session.run(None, {session.get_inputs()[0].name:
                                                  np.asarray(Image.open(q).convert("RGB"))[None]})[0] for q in queries])
    np.testing.assert_allclose(exported, probabilities, atol=2e-3)
    found = adapted.estimate(open_set=False)
    assert found.repeats == 3 and found.adaptation["adapted"] and "adapted without" in found.summary()
    loaded = FewShotClassifier.load(adapted.save(tmp_path / "a.fewshot"))
    np.testing.assert_allclose(loaded.predict_proba(queries), probabilities, atol=1e-5)
    again = loaded.estimate(open_set=False)
    assert again.accuracy == found.accuracy and again.adaptation == found.adaptation  # the folds came along


def test_cli_adapts_on_request_and_refuses_a_backbone_that_cannot(support, tmp_path, capsys):
    out = tmp_path / "estimate.json"
    assert main(["estimate", "--backbone", "efficientnet_lite0", "--head", "linear_probe", "--image-size", "32",
                 "--adapt", "auto", "--support", str(support), "--no-open-set", "--no-progress",
                 "--json", str(out)]) == 0
    found = json.loads(out.read_text())
    assert "adaptation" in found and "held-out accuracy" in found["adaptation"]["reason"]
    assert "adapting the features to your images" in capsys.readouterr().out
    code = main(["predict", "--backbone", "conv4", "--head", "protonet", "--image-size", "32", "--adapt", "top",
                 "--support", str(support), "--query", str(next((support / "class00").iterdir())), "--no-progress"])
    assert code != 0
    assert "declares no part that adapts" in capsys.readouterr().err


def test_serve_adapts_a_project_in_the_background(tmp_path):
    """A project's adaptation setting (new projects take --adapt's) runs as a job: predictions come from the frozen
    model until it finishes, then from the adapted one, and say which; a bad setting is a 400 naming the choices;
    the export carries the adapted weights (its answers are the server's)."""
    pytest.importorskip("fastapi", reason="needs fewshot[serve]")
    import time

    from serving import Server, colour_png, files

    server = Server(tmp_path / "data", "--backbone", "efficientnet_lite0", "--head", "linear_probe",
                    "--transform", "l2n", "--adapt", "top").start()
    try:
        with server.client() as client:
            pid = client.post("/api/v1/projects", json={"name": "p"}).json()["id"]
            assert client.get(f"/api/v1/projects/{pid}").json()["adapt"] == "top"
            assert client.get(f"/api/v1/projects/{pid}/adaptation").json()["state"] == "needs images"
            for colour in ("red", "green", "blue"):
                cid = client.post(f"/api/v1/projects/{pid}/classes", json={"name": colour}).json()["id"]
                client.post(f"/api/v1/projects/{pid}/classes/{cid}/images",
                            files=files(*[(f"{colour}{i}.png", colour_png(colour, i)) for i in range(3)]))
            picture = colour_png("green", 777)
            query = files(("q.png", picture))
            first = client.post(f"/api/v1/projects/{pid}/predict", files=query).json()["predictions"][0]
            assert first["adaptation"]["answers_from"] == "frozen"  # the job has just started
            for _ in range(600):
                state = client.get(f"/api/v1/projects/{pid}/adaptation").json()
                if state["state"] not in ("waiting", "adapting"):
                    break
                time.sleep(0.2)
            assert state["state"] == "adapted" and state["steps_done"] == state["steps"] > 0, state
            adapted = client.post(f"/api/v1/projects/{pid}/predict", files=query).json()["predictions"][0]
            assert adapted["adaptation"]["answers_from"] == "adapted"
            assert adapted["probabilities"] != first["probabilities"]  # another model answered
            script = client.get(f"/api/v1/projects/{pid}/export", params={"format": "torchscript"}, timeout=600)
            assert script.status_code == 200, script.text
            (tmp_path / "m.pt").write_bytes(script.content)
            pixels = np.array(Image.open(io.BytesIO(picture)))
            exported = torch.jit.load(str(tmp_path / "m.pt"))(torch.from_numpy(pixels).permute(2, 0, 1)[None])
            names = sorted(adapted["probabilities"])
            assert [float(p) for p in exported[0]] == pytest.approx([adapted["probabilities"][n] for n in names],
                                                                    abs=1e-4)
            bad = client.put(f"/api/v1/projects/{pid}/adaptation", json={"adapt": "always"})
            assert bad.status_code == 400 and "none, top, auto" in bad.json()["error"]
            off = client.put(f"/api/v1/projects/{pid}/adaptation", json={"adapt": "none"}).json()
            assert off["state"] == "off"
            again = client.post(f"/api/v1/projects/{pid}/predict", files=query).json()["predictions"][0]
            assert "adaptation" not in again and again["probabilities"] == pytest.approx(first["probabilities"])
    finally:
        server.stop()


def test_paced_job_lets_predictions_in_between_its_steps():
    """The adaptation job holds the compute lock one step at a time: a prediction waiting meanwhile gets it
    after at most one step, long before the job ends."""
    import threading
    import time

    from fewshot.serve.adapting import Paced
    from fewshot.serve.jobs import ComputeLock

    compute, log, started = ComputeLock(), [], threading.Event()

    def job():
        with Paced(compute, threading.Event()) as paced:
            for n in range(30):
                started.set()
                time.sleep(0.02)
                log.append(n)
                paced.step()

    worker = threading.Thread(target=job)
    worker.start()
    started.wait()
    with compute.interactive():
        log.append("predict")
    worker.join()
    assert log.index("predict") <= 3 and len(log) == 31, log
