"""What every stage needs: typed params, atomic writes, a CLI wrapper, wall-clock timing, the git revision.

A stage reads exactly one section of ``params.yaml`` into a dataclass. ``load_params`` checks the whole
section (unknown keys, types, ranges, the dataclass's own ``validate()``) before the stage does any work,
and names the offending key as ``section.key`` so a typo costs seconds, not a failed hour-long run.
Outputs are written to a temporary file in the same directory and renamed into place, so a crash or
Ctrl-C never leaves a half-written artifact that DVC or the next stage would trust.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar, Union

import yaml

from ogpo.errors import ConfigError, OGPOError

T = TypeVar("T")

# ----------------------------------------------------------------------------------------------- params


class _ParamsLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` and ``3e5`` as floats.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-4``) and ``1e-4`` is a *string*; DVC reads
    the same file with YAML 1.2 rules, where it is a float. Without this, ``lr: 1e-4`` would be rejected
    here as a string while ``dvc params diff`` shows a number.
    """


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def param(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with bounds that ``load_params`` enforces (on each element of a list value).

    Example: ``steps: int = param(1000, ge=1)``. Bounds that depend on other fields belong in the
    dataclass's ``validate()`` method instead.
    """
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"bounds": bounds})


def load_params(section: str, schema: type[T], path: str | os.PathLike[str] = "params.yaml") -> T:
    """Read ``section`` (dotted for nesting, e.g. ``finetune.agent``) of a YAML params file into ``schema``.

    Raises ConfigError naming the file and ``section.key`` for: a missing file or section, invalid YAML,
    unknown keys (with a close-match suggestion), missing required keys, wrong types, values outside the
    bounds declared with ``param(...)``, and anything the dataclass's ``__post_init__`` or ``validate()``
    raises as ConfigError/ValueError. An empty section (``report:``) means "all defaults".
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found (cwd {Path.cwd()})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read params file: {exc.strerror}") from None
    try:
        doc = yaml.load(text, Loader=_ParamsLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML{_yaml_where(exc)}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(doc).__name__}")
    node: Any = doc
    for depth, part in enumerate(section.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(section.split(".")[:depth]) or "top level"
            have = sorted(map(str, node)) if isinstance(node, dict) else []
            raise ConfigError(f"{path}: missing section '{section}' ({where} has: {', '.join(have) or 'nothing'})")
        node = node[part]
    try:
        return parse_params(node, schema, section)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _yaml_where(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: ' at line L, column C: problem (context)'."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{where}: {problem}" + (f" ({context})" if context else "")


def parse_params(data: Any, schema: type[T], where: str) -> T:
    """Build ``schema`` from already-parsed data (e.g. Prefect flow parameters), with load_params' checks.

    ``where`` is the name used in messages (``where.key``).
    """
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    return _build(schema, {} if data is None else data, where)


def _build(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [str(k) for k in data if k not in fields]
    if unknown:
        hints_txt = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hints_txt.append(f"{where}.{key}" + (f" (did you mean {where}.{close[0]}?)" if close else ""))
        raise ConfigError(f"unknown key {', '.join(hints_txt)}; known keys: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key} is required ({_type_name(hints[name])})")
            continue
        value = _convert(data[name], hints[name], key)
        _check_bounds(value, f.metadata.get("bounds", {}), key)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()
    except (ConfigError, ValueError) as exc:
        raise ConfigError(_locate(str(exc), where, fields)) from None
    return obj


def _locate(message: str, where: str, fields: dict[str, Any]) -> str:
    """Prefix a validate() message: 'G must be >= 2' -> 'finetune.G must be >= 2', else 'finetune: ...'."""
    m = re.match(r"[A-Za-z_]\w*", message)
    if m and m.group(0) in fields:
        return f"{where}.{message}"
    return f"{where}: {message}"


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in that type (int -> float, list -> tuple)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(options) == 1:
            raise errors[0]
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return value
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {_describe(value)}")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {_describe(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key} must be a list of {len(args)} values, got {len(value)}")
            items = [_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {_describe(value)}")
        k_tp, v_tp = args if args else (Any, Any)
        return {_convert(k, k_tp, f"{key} key"): _convert(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in tp)
            raise ConfigError(f"{key} must be one of {choices}, got {_describe(value)}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        hint = " (write it without a decimal point or exponent)" if isinstance(value, float) else ""
        raise ConfigError(f"{key} must be an integer, got {_describe(value)}{hint}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isnan(value):
                raise ConfigError(f"{key} must be a number, got NaN")
            return float(value)
        raise ConfigError(f"{key} must be a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {_describe(value)}")
    if tp is Path:
        if isinstance(value, str) and value:
            return Path(value)
        raise ConfigError(f"{key} must be a non-empty path string, got {_describe(value)}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {_describe(value)}")
    raise TypeError(f"{key}: unsupported annotation {tp!r} in a params dataclass")


def _check_bounds(value: Any, bounds: dict[str, float], key: str) -> None:
    if not bounds or value is None:
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_bounds(v, bounds, f"{key}[{i}]")
        return
    tests = {
        "ge": (lambda v, b: v >= b, ">="),
        "gt": (lambda v, b: v > b, ">"),
        "le": (lambda v, b: v <= b, "<="),
        "lt": (lambda v, b: v < b, "<"),
    }
    for name, bound in bounds.items():
        ok, symbol = tests[name]
        if not ok(value, bound):
            raise ConfigError(f"{key} must be {symbol} {bound}, got {value!r}")


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
            tp.__name__, tp.__name__
        )
    return str(tp).replace("typing.", "")


# ------------------------------------------------------------------------------------------ atomic I/O


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``, on error delete it.

    For writers that want a file name (pandas ``to_csv``, safetensors, PIL): the temporary name keeps the
    suffix. The rename is atomic on POSIX within one file system, so readers see the old file or the new
    one, never a torn one. Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should be readable like any file
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON (what ``dvc metrics`` parses) atomically; returns the path.

    numpy/torch scalars and arrays (anything with ``tolist()``) and paths are converted. NaN or inf is
    refused with an OGPOError naming the key: JSON has no NaN, and a NaN metric means something upstream
    went wrong and must not be hidden as ``null``.
    """
    try:
        text = json.dumps(obj, indent=indent, allow_nan=False, default=_json_default)
    except ValueError:
        bad = _find_non_finite(obj, "")
        raise OGPOError(f"{path}: refusing to write a non-finite number at {bad or 'the top level'}") from None
    return write_text_atomic(path, text + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON: {o!r}")


def _find_non_finite(obj: Any, where: str) -> str | None:
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "."
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _find_non_finite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            found = _find_non_finite(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: some file systems refuse fsync on a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------ running a stage


def stage_main(fn: Callable[[], int | None], name: str | None = None) -> NoReturn:
    """Run a stage's main function as a CLI: ``if __name__ == "__main__": stage_main(main)``.

    An OGPOError (bad params, a missing or corrupt input, a diverged run) is an expected failure: print
    its message on one line to stderr, without a traceback, and exit 1. Ctrl-C exits 130 (the shell
    convention) so callers can tell an interrupt from a failure. Anything else is a bug and keeps its
    traceback.
    """
    name = name or _stage_name()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = fn()
    except OGPOError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def _stage_name() -> str:
    """'stages.report' under ``python -m stages.report`` (where the function's module is '__main__')."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    return Path(sys.argv[0]).stem or "stage"


class Timer:
    """Wall-clock timer for a stage's ``wall_time_s`` metric: ``with Timer() as t: ...; t.wall_time_s``.

    ``elapsed`` reads the running time inside the block (for throughput logging).
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self.wall_time_s: float = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_time_s = self.elapsed

    @property
    def elapsed(self) -> float:
        if self._start is None:
            return 0.0
        return time.perf_counter() - self._start


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str:
    """The commit hash of HEAD, or "unknown" outside a git checkout (or without git installed)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", rev) else "unknown"
