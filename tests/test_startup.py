"""Start-up: the parser, ``--help``, ``fewshot recipes`` and argument errors import no torch, because registries and
capabilities are read from their declarations (``fewshot/declared.py``), which must agree with the imported ones."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fewshot import declared
from fewshot.backbones import BACKBONES
from fewshot.inference.embedding import RUNTIMES
from fewshot.heads import HEADS
from fewshot.model.recipes import RECIPES
from fewshot.model.transforms import TRANSFORMS, TTA

CAPABILITIES = ("adapts_backbone", "exportable", "explainable", "transductive", "inductive_form", "meta_trainable",
                "feature_map")
PROBE = """
import contextlib, io, json, sys
from fewshot.cli import main
seen = {}
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    seen[" ".join(argv)] = {"code": code, "torch": "torch" in sys.modules, "out": out.getvalue(), "err": err.getvalue()}
print(json.dumps(seen))
"""


def test_help_recipes_and_argument_errors_import_no_torch(tmp_path):
    commands = [["--help"], ["recipes"], ["predict", "--help"], ["train", "--help"], ["eval", "--help"],
                ["predict", "--bogus"], ["eval", "--ways", "1"], ["predict", "--support", str(tmp_path / "none"),
                                                                  "--query", "x.jpg"]]
    found = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True,
                           timeout=120, check=True)
    seen = json.loads(found.stdout)
    for argv, result in seen.items():
        assert not result["torch"], f"fewshot {argv} imported torch"
    assert seen["--help"]["code"] == 0 and "predict" in seen["--help"]["out"]
    assert seen["recipes"]["code"] == 0 and "transductive  (transductive)" in seen["recipes"]["out"]
    assert "nearest class mean" in seen["recipes"]["out"]
    assert all(name in seen["predict --help"]["out"] for name in list(HEADS)[:3])
    assert seen["predict --bogus"]["code"] == 2 and "error: the following arguments are required" in \
        seen["predict --bogus"]["err"]
    assert seen["eval --ways 1"]["code"] == 2
    missing = seen[f"predict --support {tmp_path / 'none'} --query x.jpg"]
    assert missing["code"] == 2 and "does not exist" in missing["err"]


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_capabilities_read_from_the_sources_equal_the_imported_classes(capability):
    entries = declared.registry_entries("fewshot.heads", "HEADS")
    assert list(entries) == list(HEADS)
    for name, node in entries.items():
        assert declared.class_attribute("fewshot.heads", node.id, capability) == getattr(HEADS[name], capability), name


def test_registry_names_read_from_the_sources_equal_the_imported_registries():
    for module, registry, live in (("fewshot.backbones", "BACKBONES", BACKBONES), ("fewshot.heads", "HEADS", HEADS),
                                   ("fewshot.model.transforms", "TRANSFORMS", TRANSFORMS), ("fewshot.model.transforms", "TTA", TTA),
                                   ("fewshot.inference.embedding", "RUNTIMES", RUNTIMES)):
        assert list(declared.registry_entries(module, registry)) == list(live), registry
    assert {recipe.head for recipe in RECIPES.values()} <= set(HEADS)


def test_a_registered_head_is_seen_once_the_registry_is_imported(monkeypatch):
    monkeypatch.setitem(HEADS, "my_head", HEADS["protonet"])
    assert "my_head" in declared.names("fewshot.heads", "HEADS")
    assert declared.capability("fewshot.heads", "HEADS", "my_head", "transductive") is False
