"""What every stage needs: typed params, atomic writes, a CLI wrapper, wall-clock timing, the git revision.

A stage reads exactly one section of ``params.yaml`` into a dataclass. ``load_params`` checks (with pydantic) the whole
section (unknown keys, types, ranges, the dataclass's own ``validate()``) before the stage does any work,
and names the offending key as ``section.key`` so a typo costs seconds, not a failed hour-long run.
Outputs are written to a temporary file in the same directory and renamed into place, so a crash or
Ctrl-C never leaves a half-written artifact that DVC or the next stage would trust.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
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
from typing import Annotated, Any, Literal, NoReturn, TypeVar, Union

import annotated_types
import pydantic
import pydantic_core
import typing_extensions
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

    ``where`` is the name used in messages (``where.key``). Every problem in the section is reported at once,
    one ``where.key ...`` clause each, separated by "; ".
    """
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    try:
        return _adapter(schema).validate_python({} if data is None else data)
    except pydantic.ValidationError as exc:
        messages = _messages(exc.errors(include_url=False), schema, where)
    more = f"; and {len(messages) - _MAX_MESSAGES} more" if len(messages) > _MAX_MESSAGES else ""
    raise ConfigError("; ".join(messages[:_MAX_MESSAGES]) + more)


# How params are checked: each params dataclass is mirrored by a TypedDict of its init fields (required where
# the field has no default) whose annotations carry the ``param(...)`` bounds, validated by pydantic in strict
# mode (no str -> int, no bool for int; an int is accepted for a float) with unknown keys forbidden. Only the
# keys present are passed to the dataclass, so its own defaults apply; an after-validator builds the dataclass
# and runs its ``validate()``, innermost first. pydantic's errors (loc, type, ctx, input) are then turned into
# one-line messages that name the dotted key, with a did-you-mean for unknown keys.
# Why a mirror and not TypeAdapter(schema, config=...) over the dataclass itself: pydantic refuses a config for
# a dataclass type (it would be its own), and a bound on a list field applies to each element, which needs the
# element annotation rewritten; the library's config classes stay plain dataclasses that import no pydantic.

_MAX_MESSAGES = 8
_CONFIG = pydantic.ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
_BOUNDS = {  # param(...) keyword -> (constraint, symbol in messages)
    "ge": (annotated_types.Ge, ">="),
    "gt": (annotated_types.Gt, ">"),
    "le": (annotated_types.Le, "<="),
    "lt": (annotated_types.Lt, "<"),
}


@functools.cache
def _adapter(schema: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(_mirror(schema))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _mirror(cls: type) -> Any:
    """The pydantic type for dataclass ``cls``: a TypedDict of its init fields that validates into ``cls``."""
    hints = _hints(cls)
    keys = {}
    for name, f in _init_fields(cls).items():
        tp = _annotation(hints[name], f.metadata.get("bounds", {}))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        keys[name] = typing_extensions.Required[tp] if required else typing_extensions.NotRequired[tp]
    mirror = typing_extensions.TypedDict(cls.__name__, keys)  # pydantic needs typing_extensions' on 3.11
    mirror.__pydantic_config__ = _CONFIG  # type: ignore[attr-defined]
    return Annotated[mirror, pydantic.AfterValidator(functools.partial(_construct, cls))]


def _construct(cls: type[T], kwargs: dict[str, Any]) -> T:
    """Build the dataclass from its validated keys and run its ``validate()`` (ValueError -> a value_error)."""
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _annotation(tp: Any, bounds: dict[str, float]) -> Any:
    """The annotation ``tp`` as pydantic should validate it, with ``bounds`` on every number inside it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return Annotated[(_annotation(args[0], bounds), *tp.__metadata__)]
    if tp is Any:
        return tp
    if origin is Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        union = Union[tuple(_annotation(a, bounds) for a in options)]  # noqa: UP007 (a runtime tuple of types)
        if len(options) > 1:  # one message for the union, not one per member
            union = Annotated[union, pydantic.WrapValidator(functools.partial(_one_of, _type_name(tp)))]
        return union | None if type(None) in args else union
    if origin is Literal:
        return tp
    if origin is list or tp is list:
        return list[_annotation(args[0], bounds)] if args else list
    if origin is tuple or tp is tuple:
        if not args:
            items: Any = (Any, ...)
        elif len(args) == 2 and args[1] is Ellipsis:
            items = (_annotation(args[0], bounds), ...)
        else:
            items = tuple(_annotation(a, bounds) for a in args)
        return Annotated[tuple[items], pydantic.Strict(False)]  # YAML has lists; the items stay strict
    if origin is dict or tp is dict:
        key_tp, value_tp = args if args else (Any, Any)
        return dict[key_tp, _annotation(value_tp, bounds)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _mirror(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return Annotated[tp, pydantic.Strict(False)]  # by value
    if tp is Path:
        return Annotated[Path, pydantic.PlainValidator(_path)]
    if tp is float:
        tp = Annotated[float, pydantic.AfterValidator(_not_nan)]
    elif not isinstance(tp, type):
        raise TypeError(f"unsupported annotation {tp!r} in a params dataclass")
    # int, float, str, bool; any other class is checked with isinstance (arbitrary_types_allowed)
    return Annotated[(tp, *(_BOUNDS[k][0](v) for k, v in bounds.items()))] if bounds else tp


def _one_of(expected: str, value: Any, handler: Callable[[Any], Any]) -> Any:
    try:
        return handler(value)
    except pydantic.ValidationError:
        raise pydantic_core.PydanticCustomError("union_type", "must be {expected}", {"expected": expected}) from None


def _not_nan(value: float) -> float:
    if math.isnan(value):
        raise pydantic_core.PydanticCustomError("nan", "must be a number, got NaN")
    return value


def _path(value: Any) -> Path:
    if isinstance(value, Path) or (isinstance(value, str) and value):
        return Path(value)
    raise pydantic_core.PydanticCustomError("path_type", "must be a non-empty path string")


# ------------------------------------------------------------------------------- pydantic errors -> messages


def _messages(errors: list[Any], schema: type, where: str) -> list[str]:
    """One message per pydantic error; unknown keys first (a typo explains the rest), one message per mapping."""
    unknown: dict[tuple, list[str]] = {}
    out: list[str] = []
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden" or (err["type"] == "invalid_key" and not _is_dict(schema, loc[:-1])):
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
        else:
            out.append(_message(err, loc, schema, where))
    first = [
        _unknown_keys(keys, _type_at(schema, loc), _key(where, loc))
        for loc, keys in sorted(unknown.items(), key=lambda item: len(item[0]))
    ]
    return first + out


def _is_dict(schema: type, loc: tuple) -> bool:
    return typing.get_origin(_strip(_type_at(schema, loc))) is dict


def _unknown_keys(keys: list[str], cls: Any, where: str) -> str:
    fields = list(_init_fields(cls)) if isinstance(cls, type) and dataclasses.is_dataclass(cls) else []
    named = []
    for key in keys:
        close = difflib.get_close_matches(key, fields, n=1)
        named.append(f"{where}.{key}" + (f" (did you mean {where}.{close[0]}?)" if close else ""))
    return f"unknown key {', '.join(named)}; known keys: {', '.join(fields)}"


def _message(err: Any, loc: tuple, schema: type, where: str) -> str:
    key, kind, value, ctx = _key(where, loc), err["type"], err.get("input"), err.get("ctx") or {}
    tp = _type_at(schema, loc)
    got = f", got {_describe(value)}"
    if kind == "missing":
        if loc and isinstance(loc[-1], int):  # a fixed-length tuple given too few values
            size = len(typing.get_args(_strip(_type_at(schema, loc[:-1]))))
            return f"{_key(where, loc[:-1])} must be a list of {size} values, got {len(value)}"
        return f"{key} is required ({_type_name(tp)})"
    if kind == "int_type":
        hint = " (write it without a decimal point or exponent)" if isinstance(value, float) else ""
        return f"{key} must be an integer{got}{hint}"
    if kind == "float_type":
        return f"{key} must be a number{got}"
    if kind == "bool_type":
        return f"{key} must be true or false{got}"
    if kind == "string_type":
        return f"{key} must be a string{got}"
    if kind in ("list_type", "tuple_type"):
        tp = _strip(tp)
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis and isinstance(value, list):
            return f"{key} must be a list of {len(args)} values, got {len(value)}"
        return f"{key} must be a list{got}"
    if kind == "too_long":  # a fixed-length tuple given too many values
        return f"{key} must be a list of {ctx.get('max_length')} values, got {ctx.get('actual_length')}"
    if kind in ("dict_type", "model_type", "dataclass_type"):
        return f"{key} must be a mapping of keys to values{got}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        ((bound_name, bound),) = ctx.items()
        return f"{key} must be {_BOUNDS[bound_name][1]} {bound}, got {value!r}"
    if kind in ("literal_error", "enum"):
        tp = _strip(tp)
        choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else [m.value for m in tp]
        return f"{key} must be one of {', '.join(map(repr, choices))}{got}"
    if kind == "nan":
        return f"{key} must be a number, got NaN"
    if kind in ("value_error", "assertion_error"):
        error = ctx.get("error")
        text = str(error) if error is not None else err["msg"]
        cls = _strip(tp)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            return _locate(text, key, _init_fields(cls))
        return f"{key}: {text}"
    if kind == "is_instance_of":
        return f"{key} must be {_type_name(_strip(tp))}{got}"
    return f"{key} {err['msg']}{got}"  # custom errors (union_type, path_type) read "must be ..."


def _locate(message: str, where: str, fields: dict[str, Any]) -> str:
    """Prefix a validate() message: 'G must be >= 2' -> 'finetune.G must be >= 2', else 'finetune: ...'.

    A message that already names the section's last part ('gcp.K must be ...' under 'pretrain_bc.gcp') is
    joined on it: 'pretrain_bc.gcp.K must be ...'.
    """
    m = re.match(r"[A-Za-z_]\w*", message)
    if m and m.group(0) in fields:
        return f"{where}.{message}"
    last = where.rsplit(".", 1)[-1]
    m = re.match(rf"{re.escape(last)}\.([A-Za-z_]\w*)", message)
    if m and m.group(1) in fields:
        return f"{where}{message[len(last) :]}"
    return f"{where}: {message}"


def _key(where: str, loc: tuple) -> str:
    """'finetune.net.hidden[1]' for loc ('net', 'hidden', 1); a mapping's key is 'finetune.extra.3 key'."""
    names = {"[key]": " key"}
    return where + "".join(f"[{p}]" if isinstance(p, int) else names.get(p, f".{p}") for p in loc)


def _strip(tp: Any) -> Any:
    """``tp`` without Annotated and without an Optional around a single type."""
    while True:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Annotated:
            tp = args[0]
        elif (origin is Union or origin is types.UnionType) and len(
            options := [a for a in args if a is not type(None)]
        ) == 1:
            tp = options[0]
        else:
            return tp


def _type_at(tp: Any, loc: tuple) -> Any:
    """The annotation at ``loc`` (pydantic's error location) inside dataclass ``tp``; None when unknown."""
    if loc[-1:] == ("[key]",):  # a mapping's key: (..., mapping, key value, "[key]")
        args = typing.get_args(_strip(_type_at(tp, loc[:-2])))
        return args[0] if args else None
    for part in loc:
        tp = _strip(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            tp = _hints(tp).get(part) if isinstance(part, str) else None
        elif origin is list or origin is tuple:
            if not args or not isinstance(part, int):
                return None
            tp = args[0] if args[-1] is Ellipsis or origin is list else (args[part] if part < len(args) else None)
        elif origin is dict:
            tp = args[1] if args else Any
        else:
            return None
        if tp is None:
            return None
    return tp


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    tp = _strip(tp) if typing.get_origin(tp) is Annotated else tp
    if isinstance(tp, type) and not typing.get_args(tp):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
            tp.__name__, tp.__name__
        )
    return str(tp).replace("typing.", "")


# -------------------------------------------------------------------------------------------- devices

_DEVICE = re.compile(r"cpu|cuda(?::(\d+))?")


def check_device_name(name: Any, key: str = "device", *, allow_auto: bool = False) -> None:
    """ConfigError unless ``name`` is cpu, cuda or cuda:N (or auto); the same on every host.

    For a params dataclass's ``validate()``, so that a profile for a GPU machine still validates on a laptop;
    whether the device exists here is ``check_device``'s job, when the stage starts.
    """
    if not (isinstance(name, str) and (_DEVICE.fullmatch(name) or (allow_auto and name == "auto"))):
        choices = "cpu, cuda, cuda:N" + (" or auto" if allow_auto else "")
        raise ConfigError(f"{key} must be one of {choices}, got {name!r}")


def check_device(name: str, key: str = "device", *, allow_auto: bool = False) -> str:
    """The torch device name to run on, checked against this host before any work (ConfigError if absent).

    ``cpu``; ``cuda`` (the current GPU) and ``cuda:N`` need that GPU here; ``auto`` (with ``allow_auto``) is
    cuda when this host has one, else cpu. ``key`` names the setting in messages, e.g.
    ``params.yaml: pretrain_bc.device cuda requested but this host has no CUDA GPU (...)``.
    """
    check_device_name(name, key, allow_auto=allow_auto)
    if name == "cpu":
        return name
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        return "cuda" if count else "cpu"
    if count == 0:
        if torch.version.cuda is None:
            why = f"torch {torch.__version__} is a CPU-only build"
        elif os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            why = f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}"
        else:
            why = "torch finds no GPU or driver"
        raise ConfigError(f"{key} {name} requested but this host has no CUDA GPU ({why}); use cpu")
    index = _DEVICE.fullmatch(name).group(1)
    if index is not None and int(index) >= count:
        have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise ConfigError(f"{key} {name} requested but this host has {count} CUDA GPU{'s' * (count > 1)} ({have})")
    return name


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
