"""Stage helpers: params are rejected before any work with the key named; outputs are written atomically."""

from __future__ import annotations

import importlib
import json
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

import pytest
import yaml

from ogpo.errors import ConfigError, OGPOError
from stages.common import (
    Timer,
    atomic_path,
    check_device,
    check_device_name,
    git_revision,
    load_params,
    param,
    parse_params,
    stage_main,
    write_json_atomic,
    write_text_atomic,
)


class Kind(Enum):
    FLOW = "flow"
    DIFFUSION = "diffusion"


@dataclass
class Net:
    hidden: list[int] = param(default_factory=lambda: [64, 64], ge=1)
    kind: Kind = Kind.FLOW


@dataclass
class Agent:
    task: str  # required: no default
    G: int = param(8, ge=2)
    lr: float = param(3e-4, gt=0)
    steps: int = param(1000, ge=0)
    variant: Literal["ogpo", "ogpo+", "ogpo+ca"] = "ogpo+ca"
    adv_clip_min: float | None = None
    use_ema: bool = True
    net: Net = field(default_factory=Net)
    seeds: tuple[int, ...] = (0,)
    extra: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        if self.steps and self.steps < self.G:
            raise ConfigError(f"steps must be >= G ({self.G}), got {self.steps}")
        if self.variant == "ogpo" and self.adv_clip_min is not None:
            raise ConfigError("an adv_clip_min needs an OGPO+ variant")


def _params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def _load(tmp_path: Path, body: str, section: str = "finetune") -> Agent:
    return load_params(section, Agent, _params(tmp_path, body))


def test_load_params_full(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        """
finetune:
  task: lift
  G: 16
  lr: 1e-4          # YAML 1.1 would read this as a string; DVC (YAML 1.2) reads a float
  steps: 5000
  variant: ogpo+
  adv_clip_min: 0
  net: {hidden: [32, 16], kind: diffusion}
  seeds: [0, 1, 2]
  extra: {beta: 2}
other: {ignored: true}
""",
    )
    assert cfg == Agent(
        task="lift",
        G=16,
        lr=1e-4,
        steps=5000,
        variant="ogpo+",
        adv_clip_min=0.0,
        net=Net(hidden=[32, 16], kind=Kind.DIFFUSION),
        seeds=(0, 1, 2),
        extra={"beta": 2.0},
    )
    assert isinstance(cfg.lr, float) and isinstance(cfg.adv_clip_min, float)


def test_defaults_and_dotted_section(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "stages:\n  finetune:\n    task: can\n", section="stages.finetune")
    assert cfg == Agent(task="can")
    assert parse_params(None, Net, "net") == Net()  # an empty section means all defaults


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("finetune: {task: lift, GG: 4}", r"unknown key finetune\.GG \(did you mean finetune\.G\?\)"),
        ("finetune: {task: lift, net: {hiden: [8]}}", r"unknown key finetune\.net\.hiden"),
        ("finetune: {task: lift, G: '8'}", r"finetune\.G must be an integer, got '8' \(str\)"),
        ("finetune: {task: lift, G: 8.0}", r"finetune\.G must be an integer, got 8\.0 .*decimal point"),
        ("finetune: {task: lift, steps: 1e6}", r"finetune\.steps must be an integer"),
        ("finetune: {task: lift, G: true}", r"finetune\.G must be an integer, got True"),
        ("finetune: {task: lift, use_ema: 1}", r"finetune\.use_ema must be true or false"),
        ("finetune: {task: lift, lr: fast}", r"finetune\.lr must be a number, got 'fast'"),
        ("finetune: {task: lift, lr: .nan}", r"finetune\.lr must be a number, got NaN"),
        ("finetune: {task: 3}", r"finetune\.task must be a string"),
        ("finetune: {G: 4}", r"finetune\.task is required"),
        ("finetune: {task: lift, steps: -5}", r"finetune\.steps must be >= 0, got -5"),
        ("finetune: {task: lift, G: 1}", r"finetune\.G must be >= 2, got 1"),
        ("finetune: {task: lift, lr: 0}", r"finetune\.lr must be > 0"),
        ("finetune: {task: lift, net: {hidden: [8, 0]}}", r"finetune\.net\.hidden\[1\] must be >= 1, got 0"),
        ("finetune: {task: lift, net: {hidden: 8}}", r"finetune\.net\.hidden must be a list"),
        ("finetune: {task: lift, net: {kind: gan}}", r"finetune\.net\.kind must be one of 'flow', 'diffusion'"),
        ("finetune: {task: lift, net: [1]}", r"finetune\.net must be a mapping"),
        ("finetune: {task: lift, variant: ppo}", r"finetune\.variant must be one of 'ogpo', 'ogpo\+'"),
        ("finetune: {task: lift, adv_clip_min: x}", r"finetune\.adv_clip_min must be a number"),
        ("finetune: {task: lift, seeds: [0, a]}", r"finetune\.seeds\[1\] must be an integer"),
        ("finetune: {task: lift, extra: {beta: b}}", r"finetune\.extra\.beta must be a number"),
        # errors raised by the dataclass's own validate() are located too
        ("finetune: {task: lift, G: 8, steps: 4}", r"finetune\.steps must be >= G \(8\), got 4"),
        ("finetune: {task: lift, variant: ogpo, adv_clip_min: 0}", r"finetune: an adv_clip_min needs"),
        ("finetune: [1, 2]", r"finetune must be a mapping"),
    ],
)
def test_bad_params_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _load(tmp_path, body)
    assert str(info.value).startswith(str(tmp_path / "params.yaml") + ": ")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    body = "finetune: {task: lift, GG: 4, G: 1, lr: 0, net: {hidden: [8, 0], kindd: flow}}"
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, body)
    parts = str(info.value).split("; ")
    # unknown keys first (a typo explains the rest), outermost first; then pydantic's order of fields
    assert parts[0].endswith("unknown key finetune.GG (did you mean finetune.G?)")
    assert parts[2] == "unknown key finetune.net.kindd (did you mean finetune.net.kind?)"
    assert parts[4:] == [
        "finetune.G must be >= 2, got 1",
        "finetune.lr must be > 0, got 0",
        "finetune.net.hidden[1] must be >= 1, got 0",
    ]
    assert "\n" not in str(info.value)


@dataclass
class Inner:
    a: int = param(1, ge=1)

    def __post_init__(self) -> None:
        if self.a == 5:
            raise ValueError("a must not be 5")


@dataclass
class Misc:
    pair: tuple[int, str] = (1, "x")
    out: Path = Path("out")
    either: int | str = 0
    inner: Inner | None = None
    inners: list[Inner] = field(default_factory=list)
    maybe: float | None = param(None, gt=0)
    by_name: dict[str, Inner] = field(default_factory=dict)


def test_other_annotations() -> None:
    data = {"pair": [2, "y"], "out": "runs/a", "either": "s", "inner": {"a": 2}, "inners": [{}], "maybe": 1}
    data["by_name"] = {"k": {"a": 3}}
    cfg = parse_params(data, Misc, "misc")
    assert cfg == Misc((2, "y"), Path("runs/a"), "s", Inner(2), [Inner()], 1.0, {"k": Inner(3)})
    assert parse_params({"maybe": None}, Misc, "misc") == Misc()
    for data, message in [
        ({"pair": [1]}, r"misc\.pair must be a list of 2 values, got 1$"),
        ({"pair": [1, "a", 2]}, r"misc\.pair must be a list of 2 values, got 3$"),
        ({"pair": [1, 2]}, r"misc\.pair\[1\] must be a string, got 2 \(int\)$"),
        ({"out": ""}, r"misc\.out must be a non-empty path string, got '' \(str\)$"),
        ({"either": 1.5}, r"misc\.either must be int \| str, got 1\.5 \(float\)$"),
        ({"inner": {"a": 5}}, r"misc\.inner\.a must not be 5$"),  # __post_init__, located
        ({"inner": {"a": 0}}, r"misc\.inner\.a must be >= 1, got 0$"),
        ({"inners": [{"a": 1}, {"b": 1}]}, r"unknown key misc\.inners\[1\]\.b; known keys: a$"),
        ({"maybe": 0}, r"misc\.maybe must be > 0, got 0$"),
        ({"by_name": {"k": {"a": 5}}}, r"misc\.by_name\.k\.a must not be 5$"),
        ({"by_name": {3: {}}}, r"misc\.by_name\[3\] key must be a string, got 3 \(int\)$"),
        ({3: 1}, r"unknown key misc\.3; known keys: pair, out"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_params(data, Misc, "misc")


ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "profiles").glob("*.yaml"))
SECTIONS = {  # params section -> (stage module, params class); as stages.profile.schemas(), importing lazily
    "ingest": ("stages.ingest", "IngestParams"),
    "pretrain_bc": ("stages.pretrain_bc", "PretrainParams"),
    "fit_critic": ("stages.fit_critic", "CriticParams"),
    "finetune": ("stages.finetune", "FinetuneParams"),
    "evaluate": ("stages.evaluate", "EvaluateParams"),
    "report": ("stages.report", "ReportParams"),
}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_every_profile_has_the_stage_sections(profile: Path) -> None:
    assert set(yaml.safe_load(profile.read_text())) == set(SECTIONS)


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_every_profile_loads(profile: Path, section: str) -> None:
    """Every section of every profile parses into its stage's params class on this host (a profile for a GPU
    machine too: only the spelling of ``device`` is checked here; whether it exists, when the stage starts)."""
    module, name = SECTIONS[section]
    if section == "finetune":
        # finetune.agent is validated by the chosen algorithm's config class (ogpo.algos); stages/finetune.py
        # is being rewritten around that registry, so this section is skipped while its loader is missing.
        try:
            from stages.finetune import load_finetune_params
        except ImportError as exc:
            pytest.skip(f"stages.finetune is mid-rewrite: {exc}")
        cfg, _spec, _agent = load_finetune_params(profile)
    else:
        cfg = load_params(section, getattr(importlib.import_module(module), name), profile)
    assert type(cfg).__name__ == name


def test_check_device(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    assert check_device("cpu") == "cpu"
    for bad in ("gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "", 0, "auto"):
        with pytest.raises(ConfigError, match=r"^device must be one of cpu, cuda, cuda:N, got "):
            check_device(bad)
    check_device_name("auto", allow_auto=True)
    with pytest.raises(ConfigError, match=r"^x\.device must be one of cpu, cuda, cuda:N or auto, got 'tpu'$"):
        check_device_name("tpu", "x.device", allow_auto=True)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ConfigError) as info:
        check_device("cuda", "params.yaml: pretrain_bc.device")
    assert str(info.value) == (
        f"params.yaml: pretrain_bc.device cuda requested but this host has no CUDA GPU "
        f"(torch {torch.__version__} is a CPU-only build); use cpu"
    )
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match=r"^device cuda:0 requested but this host has no CUDA GPU \(CUDA_VIS"):
        check_device("cuda:0")
    assert check_device("auto", allow_auto=True) == "cpu"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda") == "cuda" and check_device("cuda:0") == "cuda:0"
    assert check_device("auto", allow_auto=True) == "cuda"
    with pytest.raises(ConfigError, match=r"^device cuda:1 requested but this host has 1 CUDA GPU \(cuda:0\)$"):
        check_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(ConfigError, match=r"has 4 CUDA GPUs \(cuda:0 to cuda:3\)$"):
        check_device("cuda:4")


def test_missing_section_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing section 'finetune' \(top level has: evaluate, report\)"):
        _load(tmp_path, "report: {}\nevaluate: {}\n")
    with pytest.raises(ConfigError, match=r"missing section 'stages.finetune' \(stages has: bc\)"):
        _load(tmp_path, "stages: {bc: {}}\n", section="stages.finetune")
    with pytest.raises(ConfigError, match="params file not found"):
        load_params("finetune", Agent, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 3, column 1: expected ',' or ']'") as info:
        _load(tmp_path, "finetune:\n  task: [lift\n")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        _load(tmp_path, "- 1\n- 2\n")


def test_write_json_atomic(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    out = tmp_path / "metrics" / "eval.json"
    write_json_atomic(out, {"success": np.float32(0.5), "n": np.int64(10), "curve": np.arange(3), "p": out})
    assert json.loads(out.read_text()) == {"success": 0.5, "n": 10, "curve": [0, 1, 2], "p": str(out)}
    assert stat.S_IMODE(out.stat().st_mode) & 0o044, "outputs must be readable like any file, not 0600"
    with pytest.raises(OGPOError, match=r"eval\.json: refusing to write a non-finite number at bc\.loss\[1\]"):
        write_json_atomic(out, {"bc": {"loss": [0.1, float("nan")]}})
    assert json.loads(out.read_text())["n"] == 10, "a failed write must leave the previous file untouched"
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.json"], "no temporary file left behind"


def test_atomic_path_keeps_old_file_on_error(tmp_path: Path) -> None:
    out = write_text_atomic(tmp_path / "report.html", "old")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        assert tmp.parent == out.parent and tmp.suffix == ".html"
        tmp.write_text("half written")
        raise RuntimeError("crash mid-write")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_stage_main_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    def bad() -> None:
        raise ConfigError("params.yaml: report.max_videos must be >= 0, got -1")

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        stage_main(bad, name="stages.report")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err == "stages.report: error: params.yaml: report.max_videos must be >= 0, got -1\n"
    with pytest.raises(SystemExit) as info:
        stage_main(interrupted, name="stages.report")
    assert info.value.code == 130
    with pytest.raises(SystemExit) as info:
        stage_main(lambda: None)
    assert info.value.code == 0


def test_stage_main_in_a_real_process(tmp_path: Path) -> None:
    # Through `python -c` as a stage would run: one line on stderr, no traceback, exit status 1.
    code = (
        "from stages.common import stage_main\n"
        "from ogpo.errors import CheckpointError\n"
        "def main():\n    raise CheckpointError('models/bc.safetensors: missing')\n"
        "stage_main(main, name='stages.demo')\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "stages.demo: error: models/bc.safetensors: missing"


def test_timer_and_git_revision(tmp_path: Path) -> None:
    with Timer() as t:
        time.sleep(0.02)
        assert t.elapsed > 0
    assert 0.015 < t.wall_time_s < 2.0
    assert git_revision(tmp_path) == "unknown"
    rev = git_revision(Path(__file__).parent)
    assert rev == "unknown" or (len(rev) == 40 and int(rev, 16) >= 0)
