"""The command reference, generated from the commands' option models at build time.

Every console script of ``pyproject.toml`` is an entry point ``otrain.cli.<name>:main`` that
hands one pydantic option model to :func:`otrain.cli.app.run_command`. This extension finds
that model in the entry module (the class whose ``command`` is the script's name), so it needs
no list of models of its own, and writes one section per command: what it does (the model's
docstring), its usage, and a table of every option with its spellings, type, default and
description, plus the checks of its value and the rules that tie options together.

The ``otrain-commands`` directive inserts the reference; :func:`reference` returns it as
reStructuredText (the test of the reference reads that).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel

from otrain.cli.app import type_label

__all__ = ["Command", "Option", "commands", "reference", "setup"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Option:
    """One option of a command, as the reference shows it."""

    name: str
    flags: tuple[str, ...]
    type: str
    default: str
    description: str
    checks: tuple[str, ...]


@dataclass(frozen=True)
class Command:
    """One command: its name, what it does, its options and the rules between them."""

    name: str
    entry_point: str
    model: type[BaseModel]
    summary: str
    options: tuple[Option, ...]
    rules: str


def _scripts(pyproject: Path) -> dict[str, str]:
    return tomllib.loads(pyproject.read_text())["project"]["scripts"]


def _model_of(name: str, entry_point: str) -> type[BaseModel]:
    module = importlib.import_module(entry_point.partition(":")[0])
    found = {
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseModel) and getattr(value, "command", None) == name
    }
    if len(found) != 1:
        raise RuntimeError(f"{entry_point}: expected one option model whose command is {name!r}, found {len(found)}")
    return found.pop()


def _checks(annotation: Any, metadata: list[Any]) -> tuple[str, ...]:
    """Return the value checks of an option: the names of its validators (their messages say the rule)."""
    found: list[Any] = []

    def walk(node: Any) -> None:
        origin = typing.get_origin(node)
        if origin is typing.Annotated:
            inner, *extra = typing.get_args(node)
            walk(inner)
            found.extend(item for item in extra if hasattr(item, "func"))
        elif origin is not typing.Literal:
            for member in typing.get_args(node):
                walk(member)

    walk(annotation)
    found.extend(item for item in metadata if hasattr(item, "func"))
    return tuple(dict.fromkeys(validator.func.__name__.strip("_").replace("_", " ") for validator in found))


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _option(model: type[BaseModel], name: str) -> Option:
    field = model.model_fields[name]
    shown = model.flag_of(name)  # type: ignore[attr-defined]
    spellings = [shown]
    if isinstance(field.validation_alias, AliasChoices):
        for alias in field.validation_alias.choices:
            spelled = "--" + str(alias).replace("_", "-")
            if alias != name and spelled not in spellings:
                spellings.append(spelled)
    kind = type_label(field.annotation)  # as --help names it
    if field.is_required():
        default = "required"
    elif kind == "":
        default = "on" if field.default else "off"
        if field.default:
            spellings[0] = "--no-" + spellings[0].removeprefix("--")
    elif field.default is None or field.default == ():
        default = "none"
    elif isinstance(field.default, tuple | list):
        default = " ".join(_number(value) for value in field.default)
    else:
        default = str(field.default)
    return Option(
        name=name,
        flags=tuple(spellings),
        type=kind,
        default=default,
        description=field.description or "",
        checks=_checks(field.annotation, list(field.metadata)),
    )


def _rules(model: type[BaseModel]) -> str:
    """Return the docstring of the model's own ``check_option_rules`` (the rules between options), if any."""
    for klass in model.__mro__:
        if "check_option_rules" in vars(klass):
            doc = inspect.getdoc(vars(klass)["check_option_rules"])
            if klass.__name__ != "CommandConfig" and doc:
                return doc.split("\n\n")[0]
            return ""
    return ""


def commands(pyproject: Path = ROOT / "pyproject.toml") -> list[Command]:
    """Return every command of ``pyproject.toml``'s console scripts, read from its option model.

    Parameters
    ----------
    pyproject : pathlib.Path
        The project file whose ``[project.scripts]`` lists the commands.

    Returns
    -------
    list of Command
        In the order of the scripts; required options first, as ``--help`` lists them.
    """
    found = []
    for name, entry_point in _scripts(pyproject).items():
        model = _model_of(name, entry_point)
        names = sorted(model.model_fields, key=lambda key: not model.model_fields[key].is_required())
        found.append(
            Command(
                name=name,
                entry_point=entry_point,
                model=model,
                summary=inspect.cleandoc(model.__doc__ or ""),
                options=tuple(_option(model, key) for key in names),
                rules=_rules(model),
            )
        )
    return found


def _escape(text: str) -> str:
    """Escape text for reStructuredText so that it shows as typed (no markup, no references)."""
    text = re.sub(r"([\\`*_|\[\]<>])", r"\\\1", text)
    return re.sub(r"^(\s*)([-+#=:.0-9])", r"\1\\\2", text, flags=re.MULTILINE)


def _cell(text: str) -> str:
    return _escape(" ".join(text.split())) or r"\ "


def _section(command: Command) -> list[str]:
    required = " ".join(
        f"{option.flags[0]} {option.type}" for option in command.options if option.default == "required"
    )
    lines = [
        f".. _cmd-{command.name}:",
        "",
        command.name,
        "-" * len(command.name),
        "",
        f"Entry point ``{command.entry_point}``, options :class:`{command.model.__module__}.{command.model.__name__}`.",
        "",
        "::",
        "",
        f"   {command.name} {required} [options]".replace("  [", " ["),
        "",
    ]
    lines += [_escape(line) if line else "" for line in command.summary.splitlines()]
    lines += [
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 22 14 10 54",
        "   :class: otrain-options",
        "",
        "   * - Option",
        "     - Type",
        "     - Default",
        "     - Meaning",
    ]
    for option in command.options:
        meaning = _cell(option.description)
        if option.checks:
            meaning += " *Checked: " + _cell("; ".join(option.checks)) + ".*"
        lines += [
            "   * - " + ", ".join(f"``{flag}``" for flag in option.flags),
            "     - " + (f"``{option.type}``" if option.type else "switch"),
            "     - " + (f"``{option.default}``" if option.default not in ("required", "none") else option.default),
            "     - " + meaning,
        ]
    lines.append("")
    if command.rules:
        lines += ["Rules between options: " + _cell(command.rules), ""]
    return lines


def reference(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """Return the command reference as reStructuredText, one section per command.

    Parameters
    ----------
    pyproject : pathlib.Path
        The project file whose ``[project.scripts]`` lists the commands.

    Returns
    -------
    str
        The sections, each with a ``cmd-<command>`` label.
    """
    lines: list[str] = []
    for command in commands(pyproject):
        lines += _section(command)
    return "\n".join(lines) + "\n"


def _directive() -> type:
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective
    from sphinx.util.nodes import nested_parse_with_titles

    class CommandsDirective(SphinxDirective):
        """``.. otrain-commands::``: the reference of every command."""

        def run(self) -> list[Any]:
            from docutils import nodes

            self.env.note_dependency(str(ROOT / "pyproject.toml"))
            for command in commands():
                for klass in command.model.__mro__:
                    source = getattr(sys.modules[klass.__module__], "__file__", None)
                    if source and Path(source).is_relative_to(ROOT):
                        self.env.note_dependency(source)
            text = reference()
            container = nodes.section()
            container.document = self.state.document
            nested_parse_with_titles(self.state, StringList(text.splitlines(), source="otrain-commands"), container)
            return container.children

    return CommandsDirective


def setup(app: Any) -> dict[str, Any]:
    """Register the ``otrain-commands`` directive with Sphinx."""
    app.add_directive("otrain-commands", _directive())
    return {"parallel_read_safe": True, "parallel_write_safe": True}
