"""Stage `check_params`: every section of params.yaml validated before any other stage runs.

`dvc repro` deletes a stage's outputs before it runs the stage's command, so a stage that rejects a bad param
itself would do so only after its previous outputs are gone. Every other stage depends on this stage's output,
and DVC runs it first whenever params.yaml (or the code that validates it) changed: a bad param stops the
pipeline here and every previous output stays as it was. The output's content never changes, so a params edit
re-runs only the stages whose own params changed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ogpo.errors import ConfigError
from stages.common import stage_main, write_text_atomic
from stages.profile import validate_params_file

PARAMS = Path("params.yaml")
OK = Path("checks/params.ok")


def run() -> None:
    try:
        validate_params_file(PARAMS)
    except yaml.YAMLError as exc:  # validate_params_file's section listing parses the file itself
        raise ConfigError(f"{PARAMS}: not valid YAML ({str(exc).splitlines()[0]})") from None
    write_text_atomic(OK, "params.yaml passed every stage's validation\n")


if __name__ == "__main__":
    stage_main(run)
