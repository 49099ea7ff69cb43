"""Commands generated from experiment configs: one option per config field, nothing declared twice.

For a registered experiment (:mod:`alignscope.experiments`) the command's options are its config's fields,
their defaults the config's own defaults and their help the config's ``Attributes:`` docstring; nested configs
(``GCGAttackConfig.gcg``) get prefixed options (``--gcg-num-steps``). Every command also takes ``--config FILE``
and ``--set KEY=VALUE`` (nested keys dotted: ``gcg.search_width=64``), ``--out`` and ``--resume``. Precedence:
the config's defaults, then ``--config``, then ``--set``, then options given on the command line.

The config is built (and so checked) before the run directory is made or any model loads; errors name the
option.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from alignscope.cli.common import console, done, handle_errors
from alignscope.config_io import ConfigIO, config_fields, jsonable, load_config_file, parse_assignments
from alignscope.experiments import Experiment
from alignscope.validation import OptionError

_ATTRIBUTE = re.compile(r"^\s{8}(\w+(?:\s*/\s*\w+)*):\s*(.*)$")


def field_docs(cls: type[Any]) -> dict[str, str]:
    """Field name -> the first sentence-ish line(s) of its entry in the ``Attributes:`` of the class docstring
    or, for a field it inherits (:class:`~alignscope.config_io.RunSettings`), of the nearest base's."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(_own_field_docs(klass))
    return out


def _own_field_docs(cls: type[Any]) -> dict[str, str]:
    """Field name -> its entry in ``cls``'s own docstring's ``Attributes:``."""
    lines = (vars(cls).get("__doc__") or "").splitlines()
    out: dict[str, str] = {}
    current: list[str] = []
    names: list[str] = []
    in_attrs = False
    for line in lines:
        if line.strip() == "Attributes:":
            in_attrs = True
            continue
        if not in_attrs:
            continue
        m = _ATTRIBUTE.match(line)
        if m:
            for name in names:
                out[name] = " ".join(current)
            names = [n.strip() for n in m.group(1).split("/")]
            current = [m.group(2).strip()]
        elif line.startswith(" " * 12) and names:
            current.append(line.strip())
        elif line.strip() == "":
            continue
        else:
            break
    for name in names:
        out[name] = " ".join(current)
    return out


@dataclass(frozen=True)
class _Leaf:
    """One option: the config field path, its Python parameter name, flag, type and default."""

    path: tuple[str, ...]
    param: str
    flag: str
    annotation: Any
    default: Any
    help: str
    kind: str  # "plain", "ints", "floats", "range", "strs", "bool"


def _unwrap_optional(t: Any) -> tuple[Any, bool]:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return t, False


def _leaves(
    cls: type[Any], prefix: tuple[str, ...] = (), aliases: Mapping[str, str] | None = None
) -> list[_Leaf]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    default = cls()
    out: list[_Leaf] = []
    for f in config_fields(cls):
        t, optional = _unwrap_optional(hints[f.name])
        path = (*prefix, f.name)
        value = getattr(default, f.name)
        if isinstance(t, type) and issubclass(t, ConfigIO) and dataclasses.is_dataclass(t):
            out += _leaves(t, path, aliases)
            continue
        dotted = ".".join(path)
        flag = (aliases or {}).get(dotted) or "--" + "-".join(path).replace("_", "-")
        param = "__".join(path)
        origin = typing.get_origin(t)
        if origin is tuple:
            (item, *_rest) = typing.get_args(t)
            if typing.get_args(t) == (int, int):  # an inclusive range, "--initial-range 6-20"
                shown = f"{value[0]}-{value[1]}" if value is not None else None
                out.append(_Leaf(path, param, flag, str | None, shown, _help(docs, f.name), "range"))
            elif item in (int, float):  # numbers: one comma-separated option, "--ks 0,5,10"
                shown = ",".join(str(v) for v in value) if value is not None else None
                kind = "ints" if item is int else "floats"
                out.append(_Leaf(path, param, flag, str | None, shown, _help(docs, f.name), kind))
            else:  # strings (suite specs may hold commas): a repeatable option, "--suite a --suite b"
                default_txt = f" [default: {', '.join(value)}]" if value else ""
                out.append(
                    _Leaf(
                        path, param, flag, list[str] | None, None, _help(docs, f.name) + default_txt, "strs"
                    )
                )
            continue
        if t is bool:
            out.append(_Leaf(path, param, flag, bool, value, _help(docs, f.name), "bool"))
            continue
        if origin is Literal:
            t = str
        annotation = (t | None) if optional else t
        out.append(_Leaf(path, param, flag, annotation, value, _help(docs, f.name), "plain"))
    return out


def _help(docs: Mapping[str, str], name: str) -> str:
    """A field's docstring entry as option help: RST markup dropped, first letter capitalised."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", docs.get(name, "")).replace("``", "")
    return text[:1].upper() + text[1:]


def _parse(leaf: _Leaf, raw: Any) -> Any:
    if raw is not None and leaf.kind == "range":
        first, sep, last = str(raw).replace(",", "-").partition("-")
        if not (sep and first.strip().isdigit() and last.strip().isdigit()) or int(first) > int(last):
            raise OptionError(leaf.flag, "expects START-END, e.g. 6-20", raw)
        return [int(first), int(last)]
    if raw is None or leaf.kind not in ("ints", "floats"):
        return list(raw) if leaf.kind == "strs" and raw is not None else raw
    parts = [p.strip() for p in str(raw).split(",") if p.strip()]
    number = int if leaf.kind == "ints" else float
    try:
        return [number(p) for p in parts]
    except ValueError:
        what = "integers" if leaf.kind == "ints" else "numbers"
        raise OptionError(leaf.flag, f"must be comma-separated {what}", raw) from None


def _set_path(values: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = values
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise OptionError(
                "--set " + ".".join(path), "sets a field inside a value that is not a config", value
            )
    node[path[-1]] = value


def config_values(
    config_file: str | Path | None,
    sets: list[str] | None,
    given: Mapping[tuple[str, ...], Any],
) -> dict[str, Any]:
    """The config dict: ``--config`` file, then ``--set`` (dotted keys into nested configs), then ``given``."""
    values: dict[str, Any] = jsonable(load_config_file(config_file)) if config_file else {}
    for key, value in parse_assignments(sets or []).items():
        _set_path(values, tuple(key.split(".")), value)
    for path, value in given.items():
        _set_path(values, path, value)
    return values


def _decl(leaf: _Leaf) -> str:
    """The option declaration: booleans get both forms (``--resume/--no-resume``)."""
    if leaf.kind == "bool":
        return f"{leaf.flag}/--no-{leaf.flag[2:]}"
    return leaf.flag


def _flag_for(e: OptionError, flag_of: Mapping[str, str]) -> str:
    """The option of the config field an error names (``GCGConfig.num_steps`` -> ``--gcg-num-steps``)."""
    if e.option.startswith("-"):
        return e.option
    matches = [
        flag for dotted, flag in flag_of.items() if dotted == e.field or dotted.endswith("." + e.field)
    ]
    return matches[0] if len(matches) == 1 else f"--set {e.field}"


def experiment_command(exp: Experiment, aliases: Mapping[str, str] | None = None) -> Callable[..., None]:
    """A Typer command running ``exp`` with options generated from its config (see the module docstring)."""
    cls = exp.config_class
    leaves = _leaves(cls, aliases=aliases)
    by_param = {leaf.param: leaf for leaf in leaves}
    flag_of = {".".join(leaf.path): leaf.flag for leaf in leaves}
    params = [
        inspect.Parameter(
            leaf.param,
            inspect.Parameter.KEYWORD_ONLY,
            default=leaf.default,
            annotation=Annotated[leaf.annotation, typer.Option(_decl(leaf), help=leaf.help)],
        )
        for leaf in leaves
    ]
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        *params,
    ]
    params += [
        inspect.Parameter(
            "config_file",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[Path | None, typer.Option("--config", help="JSON file of config fields.")],
        ),
        inspect.Parameter(
            "sets",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                list[str] | None,
                typer.Option(
                    "--set", help="Config field as KEY=VALUE (JSON values; nested: gcg.topk=64); repeatable."
                ),
            ],
        ),
        inspect.Parameter(
            "out",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None, typer.Option(help="Run directory (default: runs/<command>-<time>).")
            ],
        ),
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[
                bool, typer.Option(help="Continue the run in --out, skipping finished samples.")
            ],
        ),
    ]

    def command(ctx: typer.Context, **kwargs: Any) -> None:
        from alignscope.runs.store import RunDir

        given = {}
        for name, value in kwargs.items():
            leaf = by_param.get(name)
            source = ctx.get_parameter_source(name)
            if leaf is not None and source is not None and source.name == "COMMANDLINE":
                given[leaf.path] = _parse(leaf, value)
        values = config_values(kwargs["config_file"], kwargs["sets"], given)
        try:
            config = cls.from_dict(values)
        except OptionError as e:
            raise e.renamed(_flag_for(e, flag_of)) from None
        config.preflight()
        run = RunDir.create(exp.command, config.to_dict(), out=kwargs["out"], resume=kwargs["resume"])
        result = exp.runner(config, run)
        summary = getattr(result, "summary", None)
        if callable(summary):
            typer.echo(summary())
        done(run)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = exp.summary[0].upper() + exp.summary[1:] + "."
    command.__name__ = exp.name.replace("-", "_")
    return handle_errors(command)


__all__ = ["config_values", "console", "experiment_command", "field_docs"]
