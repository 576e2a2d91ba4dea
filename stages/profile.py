"""Select a params profile: ``python -m stages.profile <name>`` validates profiles/<name>.yaml against every
stage's schema and only then writes it to params.yaml (so a broken profile never replaces a working file).

Profiles: tiny (tests, about a minute), cpu (the default), can (Can on CPU, about 70 min), square_cpu (Square on
CPU, about 85 min), square / transport / tool_hang (paper scale, GPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ogpo.errors import ConfigError
from stages.common import load_params, stage_main, write_text_atomic

PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def schemas() -> dict[str, type]:
    from stages.evaluate import EvaluateParams
    from stages.finetune import FinetuneParams
    from stages.fit_critic import CriticParams
    from stages.ingest import IngestParams
    from stages.pretrain_bc import PretrainParams
    from stages.report import ReportParams

    return {
        "ingest": IngestParams,
        "pretrain_bc": PretrainParams,
        "fit_critic": CriticParams,
        "finetune": FinetuneParams,
        "evaluate": EvaluateParams,
        "report": ReportParams,
    }


def validate_params_file(path: Path) -> None:
    """Every stage section must parse; unknown top-level sections are rejected too."""
    import yaml

    sections = schemas()
    for name, schema in sections.items():  # first: load_params reports a missing file or invalid YAML clearly
        load_params(name, schema, path)
    doc = yaml.safe_load(path.read_text()) or {}
    extra = sorted(set(doc) - set(sections))
    if extra:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(extra)}; known: {', '.join(sections)}")
    from stages.finetune import load_finetune_params

    load_finetune_params(path)  # finetune.agent against the chosen algorithm's config class


def main() -> None:
    names = sorted(p.stem for p in PROFILES.glob("*.yaml"))
    if len(sys.argv) != 2 or sys.argv[1] not in names:
        raise ConfigError(f"usage: python -m stages.profile <{'|'.join(names)}>")
    src = PROFILES / f"{sys.argv[1]}.yaml"
    validate_params_file(src)
    write_text_atomic("params.yaml", src.read_text())
    print(f"params.yaml <- {src.name}")


if __name__ == "__main__":
    stage_main(main)
