"""The CLI checks what it was given before it loads a model, names recipes it almost recognises, shows progress
on long work, and exports in one default format everywhere (issue #24)."""

from __future__ import annotations

import pytest

import fewshot.cli.common as cli_module
from conftest import make_image_folder
from fewshot import FewShotClassifier
from fewshot.cli import build_parser, main
from fewshot.errors import FewshotError

TINY = ["--backbone", "conv4", "--head", "protonet", "--image-size", "32"]


@pytest.fixture
def loads(monkeypatch):
    """Counts model loads (every command builds its model through these two)."""
    called = []
    for name in ("model_from_args", "classifier_from_args"):
        original = getattr(cli_module, name)
        monkeypatch.setattr(cli_module, name, lambda *a, _original=original, **k: called.append(1) or _original(*a, **k))
    return called


@pytest.fixture(scope="module")
def support(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "support"
    make_image_folder(root, classes=3, per_class=40, size=32)
    return root


def test_paths_are_checked_before_any_model_loads(support, tmp_path, loads, capsys):
    (tmp_path / "classes" / "a").mkdir(parents=True)
    (tmp_path / "classes" / "b").mkdir()
    cases = [
        (["predict", *TINY, "--support", str(tmp_path / "missing"), "--query", str(support)], "does not exist"),
        (["predict", *TINY, "--support", str(support), "--query", str(tmp_path / "nope.png")], "does not exist"),
        (["predict", *TINY, "--support", str(support), "--query", str(tmp_path / "classes")],
         "subfolders (a, b) are not searched"),
        (["estimate", *TINY, "--support", str(tmp_path / "missing")], "does not exist"),
        (["export", *TINY, "--support", str(tmp_path / "classes"), "--out", str(tmp_path / "m.onnx")], "no images"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not loads, "a model was loaded before the inputs were checked"
    assert main(["predict", *TINY, "--support", str(support), "--query", str(support / "class00"), "--json",
                 "--no-progress"]) == 0 and loads, "the spies are on the path"


def test_a_recipe_name_is_recognised_and_a_typo_suggests_it(support, capsys):
    for argv in (["predict", "defualt", "--support", str(support), "--query", str(support / "class00")],
                 ["predict", "--recipe", "defualt", "--support", str(support), "--query", str(support / "class00")]):
        assert main(argv) == 2
        assert "did you mean the recipe 'default'?" in capsys.readouterr().err
    with pytest.raises(FewshotError, match="did you mean the recipe 'fast'"):
        FewShotClassifier("fsat")
    with pytest.raises(FewshotError, match="both name a recipe"):
        cli_module.model_from_args(build_parser().parse_args(["predict", "fast", "--recipe", "default", "--support",
                                                              "x", "--query", "y"]))


def test_one_default_export_format_everywhere(tmp_path):
    import inspect

    pytest.importorskip("fastapi", reason="needs the fewshot[serve] extra")
    from fewshot.serve.app import create_app
    from fewshot.serve.engine import Engine
    from fewshot.serve.store import Store

    parsed = build_parser().parse_args(["export", "--support", "s", "--out", "m"])
    assert parsed.format == "onnx"
    assert inspect.signature(FewShotClassifier.export).parameters["format"].default == "onnx"
    app = create_app(Engine(FewShotClassifier(backbone="conv4", head="protonet", image_size=32), Store(tmp_path)))
    route = app.fastapi.openapi()["paths"]["/api/v1/projects/{project_id}/export"]["get"]
    assert next(p for p in route["parameters"] if p["name"] == "format")["schema"]["default"] == "onnx"


def test_long_work_shows_progress(support, tmp_path, capsys):
    assert main(["estimate", *TINY, "--support", str(support), "--repeats", "3"]) == 0
    err = capsys.readouterr().err
    assert "embedding" in err and "estimate" in err and "split" in err  # tqdm bars on stderr
    assert main(["estimate", *TINY, "--support", str(support), "--repeats", "3", "--no-progress"]) == 0
    assert "embedding" not in capsys.readouterr().err


def test_every_command_keeps_its_flags_and_help():
    """``tests/data/cli_flags.json`` was written from the single-file CLI before it became a package of one
    module per command: every flag, default, choice and help text is the same."""
    import json
    from pathlib import Path

    def flags(parser):
        commands = parser._subparsers._group_actions[0].choices
        return {name: sorted([[sorted(a.option_strings), a.dest, repr(a.default), a.help, repr(a.choices), a.nargs,
                               a.metavar] for a in sub._actions if a.dest != "help"], key=str)
                for name, sub in commands.items()}

    recorded = json.loads((Path(__file__).parent / "data" / "cli_flags.json").read_text())
    assert json.loads(json.dumps(flags(build_parser()))) == recorded
