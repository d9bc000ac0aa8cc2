"""The method zoo (#28): each new head against its paper's formula on a small case, and each trained, evaluated,
used for prediction and exported through the same paths as the others."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_image_folder
from fewshot import FewShotClassifier
from fewshot.errors import FewshotError
from fewshot.heads import HEADS, build_head
from fewshot.heads.pt_map import sinkhorn


def test_r2d2_is_the_ridge_regression_solution():
    torch.manual_seed(0)
    head = build_head("r2d2", 6, (6,), regularization=0.5, scale=2.0)
    with torch.no_grad():
        head.bias.fill_(0.25)
    support, labels, query = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1]), torch.randn(4, 6)
    x, y = support.double(), torch.nn.functional.one_hot(labels, 3).double()
    primal = torch.linalg.solve(x.T @ x + 0.5 * torch.eye(6, dtype=torch.float64), x.T @ y)  # (E, ways)
    state = head.fit(support, labels, 3)
    assert torch.allclose(state["weight"].double(), primal, atol=1e-5)
    assert torch.allclose(head.classify(state, query).double(), 2.0 * query.double() @ primal + 0.25, atol=1e-4)
    head(support, labels, query, 3).sum().backward()  # the regulariser is learned through the solve
    assert head.log_lambda.grad is not None and head.log_lambda.grad.abs() > 0


def test_matching_networks_vote_by_cosine_attention():
    head = build_head("matching", 2, (2,), temperature=3.0)
    support, labels = torch.tensor([[2.0, 0.0], [0.0, 5.0]]), torch.tensor([0, 1])
    probabilities = head.probabilities(head(support, labels, torch.tensor([[1.0, 0.0], [1.0, 1.0]]), 2))
    assert probabilities[0, 0].item() == pytest.approx(math.exp(3) / (math.exp(3) + 1), rel=1e-5)
    assert probabilities[1].tolist() == pytest.approx([0.5, 0.5], rel=1e-5)
    two_shots = head.probabilities(head(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0, 1]),
                                        torch.tensor([[1.0, 1.0]]), 2))
    assert two_shots[0].tolist() == pytest.approx([2 / 3, 1 / 3], rel=1e-5), "each support image votes once"


def test_matching_networks_full_context_classifies_each_query_alone_and_learns():
    torch.manual_seed(0)
    head = build_head("matching", 8, (8,), full_context=True, steps=2)
    support, labels, query = torch.randn(6, 8), torch.arange(3).repeat_interleave(2), torch.randn(5, 8)
    state = head.fit(support, labels, 3)
    together = head.classify(state, query)
    alone = torch.cat([head.classify(state, query[i:i + 1]) for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-5)
    torch.nn.functional.cross_entropy(head(support, labels, query, 3), torch.tensor([0, 1, 2, 0, 1])).backward()
    assert head.query_cell.weight_ih.grad.abs().sum() > 0 and head.support_lstm.weight_ih_l0.grad.abs().sum() > 0


def test_dn4_sums_the_k_nearest_local_descriptors_of_each_class():
    head = build_head("dn4", 2, (2, 1, 2), neighbors=1, temperature=1.0)
    s = 2 ** -0.5
    support = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]],  # class 0: descriptors (1, 0) and (0, 1)
                            [[[s, -1.0]], [[s, 0.0]]]])  # class 1: (s, s) and (-1, 0)
    query = torch.tensor([[[[3.0, 1.0]], [[0.0, 0.0]]]])  # two descriptors, both along (1, 0)
    logits = head(support, torch.tensor([0, 1]), query, 2)
    assert logits[0].tolist() == pytest.approx([1.0, s], rel=1e-5)  # mean over the query's descriptors
    head.neighbors = 2
    assert head(support, torch.tensor([0, 1]), query, 2)[0].tolist() == pytest.approx([1.0, s - 1.0], rel=1e-5)


@pytest.mark.parametrize("head, options", [("r2d2", {}), ("matching", {"full_context": True}), ("dn4", {}),
                                           ("metaoptnet", {"max_steps": 20}), ("frn", {}), ("feat", {})])
def test_new_heads_train_evaluate_predict_and_export(tmp_path, head, options):
    from fewshot.config import config_from_dict
    from fewshot.training.train import train

    root = tmp_path / "fs"
    make_image_folder(root / "train", classes=6, per_class=8, size=32, seed=1)
    make_image_folder(root / "val", classes=4, per_class=8, size=32, seed=2)
    backbone = {"width": 8, **HEADS[head].quick_backbone_options}
    raw = {"data": {"root": str(root), "split": {"train": "train", "val": "val"}, "image_size": 32},
           "model": {"backbone": "conv4", "head": head, "backbone_options": backbone, "head_options": options},
           "train": {"ways": 3, "shots": 2, "queries": 3, "episodes": 6, "val_every": 6, "val_episodes": 5,
                     "log_every": 2},
           "eval": {"ways": 3, "shots": 1, "queries": 3}, "seed": 0}
    summary = train(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *_: None)
    validations = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["kind"] == "val"]
    assert summary["episodes"] == 6 and len(validations) == 1
    assert summary["best_validation"]["accuracy"] == validations[0]["accuracy"] > 100 / 3, "above chance, recorded"
    clf = FewShotClassifier(tmp_path / "run").fit(root / "val")
    query = sorted((root / "val" / "class01").iterdir())[0]
    assert clf.predict_proba(query).shape == (1, 4)
    assert clf.export(tmp_path / f"{head}.pt", "torchscript").is_file()


def test_tensorboard_logger_mirrors_the_metrics(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the fewshot[tensorboard] extra (.ci/run installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fewshot.cli import main
    from fewshot.config import config_from_dict
    from fewshot.errors import FewshotError

    root = tmp_path / "fs"
    make_image_folder(root / "train", classes=5, per_class=8, size=16, seed=1)
    make_image_folder(root / "val", classes=4, per_class=8, size=16, seed=2)
    args = ["train", "--data", str(root), "--backbone", "conv4", "--head", "protonet", "--image-size", "16",
            "--set", "model.backbone_options={width: 8}", "--set", "train.episodes=4", "--set", "train.ways=3",
            "--set", "train.shots=1", "--set", "train.queries=2", "--set", "train.val_every=2",
            "--set", "train.val_episodes=4", "--set", "train.log_every=2", "--set", "eval.ways=3",
            "--set", "eval.shots=1", "--set", "eval.queries=2", "--logger", "tensorboard", "--no-progress",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "train/lr", "val/accuracy", "val/ci95"} <= tags
    assert [e.step for e in events.Scalars("val/accuracy")] == [2, 4]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("val/accuracy")] == pytest.approx(
        [r["accuracy"] for r in logged if r["kind"] == "val"])
    with pytest.raises(FewshotError, match="unknown logger 'wandb'"):
        config_from_dict({"train": {"loggers": ["wandb"]}})


def test_alpha_tim_uses_tsallis_entropies_and_tends_to_tim_as_alpha_tends_to_one():
    head = build_head("alpha_tim", 4, (4,), alpha=2.0)
    uniform, certain = torch.full((3,), 1 / 3), torch.tensor([1.0, 0.0, 0.0])
    assert head.entropy(uniform).item() == pytest.approx(1 - 1 / 3) and head.entropy(certain).item() == 0.0
    torch.manual_seed(0)
    support, labels, query = torch.randn(6, 4), torch.arange(3).repeat_interleave(2), torch.randn(9, 4)
    options = dict(steps=20, lr=1e-2, ce_weight=0.1, conditional_weight=0.1, marginal_weight=1.0)
    near_shannon = build_head("alpha_tim", 4, (4,), alpha=1.0001, **options)(support, labels, query, 3)
    tim = build_head("tim", 4, (4,), **options)(support, labels, query, 3)
    assert torch.allclose(near_shannon, tim, atol=1e-2)
    with pytest.raises(Exception, match="other than 1"):
        build_head("alpha_tim", 4, (4,), alpha=1.0)


def test_pt_map_centres_support_and_queries_separately_by_default_and_tim_offers_cosine_logits():
    torch.manual_seed(0)
    support, labels = torch.randn(6, 5) + 2.0, torch.arange(3).repeat_interleave(2)
    query = torch.randn(9, 5) - 2.0  # a shift between support and queries: the two centrings differ
    still = dict(steps=1, alpha=1e-9)  # the prototypes stay where they start: the logits are the first plan's
    separate = build_head("pt_map", 5, (5,), **still)(support, labels, query, 3)
    joint = build_head("pt_map", 5, (5,), centring="joint", **still)(support, labels, query, 3)
    assert build_head("pt_map", 5, (5,)).centring == "separate" and not torch.allclose(separate, joint)
    norm = torch.nn.functional.normalize
    s, q = norm(support, dim=-1), norm(query, dim=-1)
    s, q = norm(s - s.mean(0), dim=-1), norm(q - q.mean(0), dim=-1)
    prototypes = torch.stack([s[labels == c].mean(0) for c in range(3)])
    distances = torch.cdist(q, prototypes).pow(2)
    plan = sinkhorn(torch.exp(-10.0 * (distances - distances.amin(-1, keepdim=True))), 3.0, 50)
    assert torch.allclose(separate, plan.clamp_min(1e-12).log(), atol=1e-4)
    tim = build_head("tim", 5, (5,), steps=0, logits="cosine", temperature=4.0)
    cosine = norm(q, dim=-1) @ norm(torch.stack([norm(support, dim=-1)[labels == c].mean(0) for c in range(3)]),
                                    dim=-1).T
    assert torch.allclose(tim.logits(q[None], tim.fit(support, labels, 3)["prototypes"][None])[0], 4.0 * cosine,
                          atol=1e-5)


def test_metaoptnet_svm_solves_the_crammer_singer_dual_to_a_zero_duality_gap():
    torch.manual_seed(0)
    head = build_head("metaoptnet", 6, (6,), C=0.5, max_steps=5000, tolerance=1e-9)
    labels = torch.arange(3).repeat_interleave(3)
    x = (3 * torch.randn(3, 6)[labels] + torch.randn(9, 6)).double()  # three separable clusters
    head = head.double()
    targets = torch.nn.functional.one_hot(labels, 3).double()
    dual = head.solve(x @ x.T, targets)
    assert torch.allclose(dual.sum(-1), torch.zeros(9, dtype=torch.float64), atol=1e-9)  # feasible
    assert (dual <= 0.5 * targets + 1e-9).all()
    weight = x.T @ dual  # (E, ways)
    scores = x @ weight  # (S, ways)
    margins = 1 - targets + scores - (scores * targets).sum(-1, keepdim=True)
    primal = 0.5 * weight.pow(2).sum() + 0.5 * margins.amax(-1).clamp_min(0).sum()
    dual_value = -(0.5 * (dual * (x @ x.T @ dual)).sum() - (targets * dual).sum())
    assert abs(float(primal - dual_value)) < 1e-4 * max(1.0, abs(float(primal)))
    assert (scores.argmax(-1) == labels).all()  # separable clusters: the SVM classifies its own support right
    fast = build_head("metaoptnet", 6, (6,), max_steps=30)
    fast(torch.randn(6, 6), torch.arange(3).repeat_interleave(2), torch.randn(4, 6), 3).sum().backward()
    assert fast.log_scale.grad is not None  # differentiable through the unrolled solver


def test_laplacianshot_pulls_a_query_to_its_neighbours_label():
    head = build_head("laplacianshot", 2, (2,), lam=0.0, temperature=1.0, rectify=False, centre=False)
    support, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    queries = torch.tensor([[1.0, 0.9], [1.0, 0.05], [1.0, 0.1], [1.0, 0.0]])  # the first is nearly in between
    alone = head(support, labels, queries, 2)
    assert torch.allclose(alone, head.classify(head.fit(support, labels, 2), queries).log_softmax(-1), atol=1e-5)
    assert alone[0].argmax() == 0
    head.lam, head.neighbors = 5.0, 2  # its two nearest queries are clearly class 0, and so the tie tips further
    pulled = head(support, labels, queries, 2).softmax(-1)
    assert pulled[0, 0] > alone.softmax(-1)[0, 0] and pulled[1:, 0].min() > 0.5


def test_laplacianshot_rectify_starts_from_bd_cspn_prototypes_computed_by_hand():
    torch.manual_seed(3)
    support, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    queries = torch.randn(6, 3)
    head = build_head("laplacianshot", 3, (3,), lam=0.0, temperature=2.0, rectify=True, centre=False)
    unit = torch.nn.functional.normalize
    s, q = unit(support, dim=-1), unit(queries, dim=-1)
    shifted = q + s.mean(0) - q.mean(0)  # BD-CSPN's cross-class shift, 6 queries >= 2 classes
    means = unit(torch.stack([s[:2].mean(0), s[2:].mean(0)]), dim=-1)
    rectified = []
    for c in range(2):  # exp(cosine)-weighted mean of the class's support and of the queries pseudo-labelled c
        members = [x for x, y in zip(s, labels) if y == c]
        members += [x for x in shifted if int((unit(x, dim=0) @ means.T).argmax()) == c]
        weights = torch.stack([(unit(x, dim=0) @ means[c]).exp() for x in members])
        rectified.append(unit((weights[:, None] * torch.stack(members)).sum(0) / weights.sum(), dim=0))
    expected = (-2.0 * torch.cdist(q, torch.stack(rectified)).pow(2)).log_softmax(-1)
    assert torch.allclose(head(support, labels, queries, 2), expected, atol=1e-5)
    with pytest.raises(FewshotError, match="rectify must be true or false"):
        build_head("laplacianshot", 3, (3,), rectify="yes")


def test_laplacianshot_centres_features_that_all_point_one_way():
    torch.manual_seed(0)
    offset = torch.tensor([20.0, 0.0, 0.0, 0.0])  # post-ReLU features share a large common direction
    classes = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    support, labels = offset + classes, torch.arange(3)
    truth = torch.arange(3).repeat_interleave(10)
    queries = offset + classes[truth] + 0.3 * torch.randn(30, 4)
    centred = build_head("laplacianshot", 4, (4,))
    assert (centred(support, labels, queries, 3).argmax(-1) == truth).float().mean() > 0.9
    state = centred.fit(support, labels, 3)
    plain = build_head("laplacianshot", 4, (4,), centre=False)
    spread = [float((logits.amax(-1) - logits.amin(-1)).mean()) for logits in
              (centred.classify(state, queries), plain.classify(plain.fit(support, labels, 3), queries))]
    assert spread[0] > 50 * spread[1]  # uncentred, the unaries barely differ and the Laplacian term decides alone
    assert torch.allclose(state["centre"], torch.nn.functional.normalize(support, dim=-1).mean(0, keepdim=True))
    assert (centred.classify(state, queries).argmax(-1) == truth).float().mean() > 0.9  # the inductive form too


def test_frn_reconstructs_a_query_map_by_ridge_regression_on_each_class():
    torch.manual_seed(0)
    head = build_head("frn", 4, (4, 2, 2)).double()
    with torch.no_grad():
        head.alpha.fill_(0.3)
        head.beta.fill_(-0.2)
    support = torch.randn(3, 4, 2, 2, dtype=torch.float64)  # class 0: images 0 and 1, class 1: image 2 (unbalanced)
    labels, query = torch.tensor([0, 0, 1]), torch.randn(1, 4, 2, 2, dtype=torch.float64)
    logits = head(support, labels, query, 2)
    q = query[0].flatten(1).T  # (hw, D)
    for c, images in ((0, support[:2]), (1, support[2:])):
        s = images.permute(0, 2, 3, 1).reshape(-1, 4)  # (n_c, D)
        ridge = len(s) / 4 * torch.exp(torch.tensor(0.3, dtype=torch.float64))
        rebuilt = torch.exp(torch.tensor(-0.2, dtype=torch.float64)) * q @ s.T @ torch.linalg.solve(
            s @ s.T + ridge * torch.eye(len(s), dtype=torch.float64), s)
        assert logits[0, c].item() == pytest.approx(-(q - rebuilt).pow(2).sum(-1).mean().item(), rel=1e-6)


def test_feat_starts_as_protonet_and_adapts_prototypes_equivariantly_once_trained():
    torch.manual_seed(0)
    feat, protonet = build_head("feat", 8, (8,), temperature=1.0), build_head("protonet", 8, (8,))
    support, labels, query = torch.randn(6, 8), torch.arange(3).repeat_interleave(2), torch.randn(4, 8)
    assert torch.allclose(feat(support, labels, query, 3), protonet(support, labels, query, 3), atol=1e-5)
    torch.nn.functional.cross_entropy(feat(support, labels, query, 3), torch.tensor([0, 1, 2, 0])).backward()
    assert feat.attention.out_proj.weight.grad.abs().sum() > 0  # the set-to-set function learns
    with torch.no_grad():
        torch.nn.init.normal_(feat.attention.out_proj.weight)
        feat.norm_gain.fill_(0.5)
    adapted = feat.fit(support, labels, 3)["prototypes"]
    order = torch.tensor([2, 0, 1])  # relabel the classes: the adapted prototypes follow them
    swapped = feat.fit(support, order[labels], 3)["prototypes"]
    assert torch.allclose(swapped[order], adapted, atol=1e-5)
    assert not torch.allclose(adapted, protonet.fit(support, labels, 3)["prototypes"], atol=1e-3)


def test_baseline_pp_fits_a_cosine_classifier_that_separates_its_support():
    torch.manual_seed(0)
    head = build_head("baseline_pp", 8, (8,), steps=50, lr=0.05, scale=10.0)
    centres = torch.randn(3, 8) * 2
    labels = torch.arange(3).repeat_interleave(4)
    support = centres[labels] + torch.randn(12, 8)
    state = head.fit(support, labels, 3)
    logits = head.classify(state, support)
    norm = torch.nn.functional.normalize
    assert torch.allclose(logits, 10.0 * norm(support, dim=-1) @ norm(state["weight"], dim=-1).T, atol=1e-5)
    start = build_head("baseline_pp", 8, (8,), steps=0).fit(support, labels, 3)
    loss = lambda s: torch.nn.functional.cross_entropy(head.classify(s, support), labels)  # noqa: E731
    assert loss(state) < loss(start) and (logits.argmax(-1) == labels).all()
