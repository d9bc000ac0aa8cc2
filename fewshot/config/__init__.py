"""Run configuration: YAML files over defaults kept in code, validated on load.

Holds :mod:`.schema` (the sections and their defaults, ranges and choices), :mod:`.checks` (types, ranges and the
rules across keys, as one-line errors naming the key) and :mod:`.loading` (YAML files, ``--set a.b=c``
overrides, the resolved config written back). The names below are the package's public face.

May import: the ground modules, ``episodes`` and, inside the checks, the registries it validates names against
(``backbones``, ``model.transforms``, ``training.loggers``, ``declared``); nothing that imports it back.
"""

from .checks import (build_section, check_config, check_declared, check_sources, check_temperature, in_range,
                     parse_query_sampling, query_concentration, range_text, source_name)
from .loading import apply_overrides, config_from_dict, dump_config, load_config, parse_override, yaml_problem
from .schema import (DEFAULT_IMAGE_SIZE, PHASES, SEED_LIMIT, Config, DataConfig, EvalConfig, ModelConfig, PerPhase,
                     PretrainConfig, SourceConfig, TrainConfig, choice, ranged)

__all__ = ["Config", "DataConfig", "DEFAULT_IMAGE_SIZE", "EvalConfig", "ModelConfig", "PHASES", "PerPhase",
           "PretrainConfig", "SEED_LIMIT", "SourceConfig", "TrainConfig", "apply_overrides", "build_section",
           "check_config", "check_declared", "check_sources", "check_temperature", "choice", "config_from_dict",
           "dump_config", "in_range", "load_config", "parse_override", "parse_query_sampling", "query_concentration",
           "range_text", "ranged", "source_name", "yaml_problem"]
