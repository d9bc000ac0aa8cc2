"""Recipes: named bundles of backbone + weights + resolution + test-time augmentation + feature transform +
head, the way timm names pretrained configurations. A recipe is one entry in ``RECIPES``.

``default`` is the most accurate *inductive* recipe (a query is classified on its own, so it works with a
single query image and with any number of shots per class, unbalanced included); ``transductive`` is the
most accurate recipe that also uses the episode's unlabelled queries (it needs several queries per class).
``fewshot predict --support DIR --query IMG`` and ``fewshot eval --data DIR ...`` use ``default`` when no
model is named; ``--recipe NAME`` picks another; ``fewshot recipes`` lists them with what they measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import FewshotError


@dataclass(frozen=True)
class Recipe:
    """A model built without training; ``measured`` maps a benchmark to its accuracy line."""

    description: str
    backbone: str
    head: str
    weights: str = "imagenet"
    image_size: int | None = None  # None: the backbone's native size
    transform: str = "none"
    tta: str = "none"
    head_options: dict = field(default_factory=dict)
    temperature: dict = field(default_factory=dict)  # {shots: temperature}, fitted by benchmarks/calibration.py
    measured: dict = field(default_factory=dict)
    adapt: str = "none"  # adapting the backbone's top to each support set (fewshot/inference/adaptation.py)

    def overrides(self) -> list[str]:
        """The recipe as config overrides (``--set`` syntax)."""
        items = [f"model.backbone={self.backbone}", f"model.weights={self.weights}", f"model.head={self.head}",
                 f"model.transform={self.transform}", f"model.tta={self.tta}", "data.channels=3"]
        items += [f"data.image_size={self.image_size}"] if self.image_size else []
        items += [f"model.head_options.{key}={value}" for key, value in self.head_options.items()]
        items += [f"model.temperature={self.temperature}"] if self.temperature else []
        items += [f"model.adapt={self.adapt}"] if self.adapt != "none" else []
        return items


BENCH = "tinyimagenet-fs test, 5-way, 600 episodes, 15 queries (benchmarks/accuracy.py)"
CROSS = "4 crossdomain domains, 5-way, 10 queries (benchmarks/crossdomain.py)"
IMBALANCED = "tinyimagenet-fs test, 5-way, 400 episodes, 75 queries (benchmarks/imbalanced.py)"
# temperatures minimising the NLL on tinyimagenet-fs *val* episodes (benchmarks/calibration.py): pooled ECE on its
# test classes at most 0.016 for 1-10 shots, but per support set on other domains 0.05-0.11 at 5-10 shots and 0.2-0.3
# at one shot; FewShotClassifier checks the table on the user's own images (benchmarks/RESULTS.md, "Promises")

RECIPES: dict[str, Recipe] = {
    "default": Recipe(
        "EfficientNet-Lite0 (224 px) and -Lite2 (260 px) ImageNet features, each L2-normalized and concatenated; "
        "power transform + support-centred L2 normalization; a logistic-regression probe fitted on the support "
        "set. Inductive", "ensemble:efficientnet_lite0+efficientnet_lite2", "linear_probe", transform="power_cl2n",
        temperature={1: 3.79, 2: 3.22, 5: 2.64, 10: 2.39},
        measured={BENCH: "1-shot 78.87 ± 0.81, 5-shot 92.38 ± 0.36 %"}),
    "transductive": Recipe(
        "EfficientNet-Lite2 ImageNet features at 260 px, power transform + CL2N, LaplacianShot over the episode's "
        "queries (nearby queries share labels; no assumption on how the queries spread over the classes, so it "
        "holds on realistic, imbalanced query sets where PT-MAP loses 20 points); images classified one at a time "
        "use its inductive form (nearest class mean)", "efficientnet_lite2", "laplacianshot", transform="power_cl2n",
        temperature={1: 7.2, 2: 8.0, 5: 7.9, 10: 7.5},  # fitted at head temperature 10: {1: 0.72, ...}, x 10
        measured={IMBALANCED: "Dirichlet(2) queries: 1-shot 86.09 ± 1.14, 5-shot 92.06 ± 0.51 %; balanced: "
                              "1-shot 87.28 ± 1.00, 5-shot 92.13 ± 0.46 %"}),
    "adapt": Recipe(
        "The default recipe whose Lite0 member adapts its last two stages to your support set (40 steps of Adam on "
        "augmented maps of your images; Lite2 stays frozen) when your own held-out images show that it helps "
        "(three folds, each adapted without what it holds out: the right classes more probable, no fewer right); "
        "for classes unlike ImageNet's. Seconds to a minute "
        "of CPU per support set. Inductive", "ensemble:efficientnet_lite0+efficientnet_lite2", "linear_probe",
        transform="power_cl2n", temperature={1: 3.79, 2: 3.22, 5: 2.64, 10: 2.39}, adapt="auto",
        measured={CROSS: "5-shot +3.2 points over default (10 episodes a domain, paired: traffic signs +7.6, "
                         "characters +5.8, fruits 0.0, faces -0.6; ImageNet classes +0.2); 1-shot: as default (one "
                         "image per class leaves nothing to hold out)"}),
    "fast": Recipe(
        "EfficientNet-Lite0 ImageNet features at 224 px (about 3x cheaper than the default), power transform + "
        "CL2N, prototypes. Inductive", "efficientnet_lite0", "protonet", transform="power_cl2n",
        temperature={1: 7.06, 2: 9.94, 5: 12.94, 10: 14.05},
        measured={BENCH: "1-shot 73.76 ± 0.86, 5-shot 89.36 ± 0.43 %"}),
}


def did_you_mean(name: str) -> str:
    """``" (did you mean the recipe 'default'?)"`` when ``name`` is close to a recipe's name, else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), list(RECIPES), n=1, cutoff=0.6)
    return f" (did you mean the recipe '{close[0]}'?)" if close else ""


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise FewshotError(f"unknown recipe '{name}'{did_you_mean(name)}; choose one of {', '.join(RECIPES)} "
                           "(fewshot recipes lists them)")
    return RECIPES[name]
