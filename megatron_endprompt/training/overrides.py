"""Recipe reading and `--section.key value` overrides, with values converted to the dataclass field types.

Accepted override forms: `--optimizer.lr 1e-4`, `--optimizer.lr=1e-4`, `--lr 1e-4` (a key unique across sections),
`--model.rope_scaling.factor 8`, dashes or underscores (`--data.micro-batch-size 2`), and a bare boolean flag
(`--parallel.sequence_parallel`). Lists: `a,b` or `[a, b]`; None: `none` / `null`.
A recipe may start from other recipes: `base: other.yaml` (a path relative to the recipe, or a list of them),
deep-merged, the recipe's own keys winning.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from megatron_endprompt.model.config import ModelConfig, RopeScaling

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null", "~", ""}


def read_recipe(path: str | Path, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a YAML recipe, resolving `base:` inheritance (cycles refused)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config: recipe {path} does not exist")
    if str(path.resolve()) in _seen:
        raise ValueError(f"--config: recipe inheritance cycle through {path}")
    raw = _parse_yaml_file(path) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"--config: {path} must contain a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("base", None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, read_recipe(path.parent / base, (*_seen, str(path.resolve()))))
    return _deep_merge(merged, raw)


def _parse_yaml_file(path: Path) -> Any:
    """yaml.safe_load of a recipe; a syntax error becomes a ValueError `file:line: problem` (exit 2, no traceback)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.MarkedYAMLError as e:
        mark, ctx = e.problem_mark or e.context_mark, e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = e.problem or e.context or type(e).__name__
        if e.problem and e.context:
            what += f" ({e.context}" + (f" started at line {ctx.line + 1})" if ctx is not None else ")")
        raise ValueError(f"{where}: YAML syntax error: {what}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: YAML syntax error: {e}") from None


def _parse_yaml_value(text: str, flag: str) -> Any:
    """A `[...]` or `{...}` override value; a syntax error names the flag."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ValueError(f"{flag}: cannot parse {text!r} as YAML ({problem})") from None


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = (
            _deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def apply_overrides(raw: dict[str, Any], args: list[str], sections: dict[str, type]) -> None:
    """Write `--key value` pairs into the nested recipe dict `raw` (values stay strings until build_section).

    sections: the recipe's section dataclasses by name (`training.config.SECTIONS`; passed in, so that this
    module does not import the config it builds).
    """
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"unexpected argument {token!r}; overrides look like --section.key value")
        key, has_eq, value = token[2:].partition("=")
        if not has_eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                value = "true"  # bare boolean flag
        path = _resolve_key(key.replace("-", "_"), sections)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--{key}: {part} is not a section")
        node[path[-1]] = value
        i += 1


def _resolve_key(key: str, sections: dict[str, type]) -> list[str]:
    """`optimizer.lr` -> [optimizer, lr]; a bare `lr` -> the one section that has it; errors suggest names."""
    parts = key.split(".")
    if parts[0] in sections:
        if len(parts) < 2:
            raise ValueError(f"--{key}: give a key, e.g. --{key}.<field>")
        return parts
    owners = [name for name, cls in sections.items() if parts[0] in _field_names(cls)]
    if parts[0] in _field_names(ModelConfig) and "model" not in owners:
        owners.append("model")
    if len(owners) == 1:
        return [owners[0], *parts]
    if len(owners) > 1:
        raise ValueError(f"--{key} is ambiguous; write one of " + ", ".join(f"--{o}.{key}" for o in owners))
    known = [f"{s}.{f}" for s, cls in sections.items() for f in _field_names(cls)]
    hint = difflib.get_close_matches(key, known + [k.split(".")[1] for k in known], n=3)
    raise ValueError(
        f"unknown flag --{key}" + (f"; did you mean {', '.join('--' + h for h in hint)}?" if hint else "")
    )


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build_section(name: str, cls: type, raw: dict[str, Any]) -> Any:
    """Instantiate section `cls` from `raw`, converting each value; unknown keys are errors naming the flag."""
    if not isinstance(raw, dict):
        raise ValueError(f"--{name}: expected a mapping of keys, got {raw!r}")
    raw = {k.replace("-", "_"): v for k, v in raw.items()}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        if key in hints and key != "overrides":
            kwargs[key] = convert(value, hints[key], f"--{name}.{key}")
        elif name == "model":
            extra[key] = value
        else:
            hint = difflib.get_close_matches(key, list(hints), n=1)
            raise ValueError(
                f"unknown flag --{name}.{key}" + (f"; did you mean --{name}.{hint[0]}?" if hint else "")
            )
    if name == "model":
        overrides = dict(raw.get("overrides") or {})
        overrides.update(extra)
        kwargs["overrides"] = _convert_model_overrides(overrides)
    return cls(**kwargs)


def _convert_model_overrides(raw: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(ModelConfig)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key = key.replace("-", "_")
        if key == "rope_scaling":
            rope_hints = typing.get_type_hints(RopeScaling)
            if not isinstance(value, dict):
                raise ValueError(
                    f"--model.rope_scaling: expected a mapping (or --model.rope_scaling.<key>), got {value!r}"
                )
            out[key] = {}
            for sub, sub_value in value.items():
                sub = sub.replace("-", "_")
                if sub not in rope_hints:
                    raise ValueError(f"unknown flag --model.rope_scaling.{sub}; fields: {sorted(rope_hints)}")
                out[key][sub] = convert(sub_value, rope_hints[sub], f"--model.rope_scaling.{sub}")
        elif key in hints:
            out[key] = convert(value, hints[key], f"--model.{key}")
        else:
            hint = difflib.get_close_matches(key, list(hints), n=1)
            raise ValueError(
                f"unknown flag --model.{key}" + (f"; did you mean --model.{hint[0]}?" if hint else "")
            )
    return out


def convert(value: Any, tp: Any, flag: str) -> Any:
    """Convert a YAML or command-line value to type `tp` (int, float, bool, str, Literal, Optional, list, dict)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return convert(value, inner[0], flag) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{flag}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if isinstance(value, str):
            text = value.strip()
            value = (
                _parse_yaml_value(text, flag)
                if text.startswith("[")
                else [v for v in text.split(",") if v.strip()]
            )
        if not isinstance(value, list):
            value = [value]
        return [
            convert(v.strip() if isinstance(v, str) else v, args[0] if args else Any, flag) for v in value
        ]
    if origin is dict or tp is dict:
        value = _parse_yaml_value(value, flag) if isinstance(value, str) else value
        if not isinstance(value, dict):
            raise ValueError(f"{flag}: expected a mapping, got {value!r}")
        return value
    return _convert_scalar(value, tp, flag)


def _convert_scalar(value: Any, tp: Any, flag: str) -> Any:
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, bool):
                raise ValueError(value)
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError(value)
            return int(as_float)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{flag}: expected {tp.__name__}, got {value!r}") from None
    return value
