"""``fewshot recipes``: the pretrained recipes and what they measured."""

from __future__ import annotations

import argparse
import shlex


NAME = "recipes"
PARSER = dict(
    help="list the pretrained recipes (no training) with their measured accuracy",
    description="A recipe bundles backbone, weights, resolution, test-time augmentation, feature transform and "
                "head. 'default' is the most accurate inductive one (any shots, a single query works) and is "
                "used by predict and eval when no model is given; 'transductive' also uses the episode's "
                "unlabelled queries.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No flags."""


def run(args: argparse.Namespace) -> int:
    """List the recipes: what each bundles and what it measured."""
    from ..declared import capability
    from ..model.recipes import RECIPES

    for name, recipe in RECIPES.items():
        transductive = capability("fewshot.heads", "HEADS", recipe.head, "transductive")
        print(f"{name}  ({'transductive' if transductive else 'inductive'}): {recipe.description}")
        if transductive:
            form = capability("fewshot.heads", "HEADS", recipe.head, "inductive_form")
            print(f"    fewshot eval uses {recipe.head} over each episode's queries; predict, the Python API, serve "
                  f"and estimate classify images one at a time with its inductive form: {form}; not exportable")
        print(f"    {' '.join('--set ' + shlex.quote(item) for item in recipe.overrides())}")
        for benchmark, line in recipe.measured.items():
            print(f"    {benchmark}: {line}")
    return 0
