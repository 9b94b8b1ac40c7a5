"""Finds rules: the built-in library, installed rule packs, and `--rules FILE`.

Importing a rule module changes no global state: the loader collects the `Rule` objects a
module defines. A rule pack from an entry point that fails to load fails alone, with a
warning; a file named on the command line that fails is an error naming the file.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import pkgutil
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from graphfix.errors import RuleLoadError
from graphfix.rule import Rule

__all__ = ["RuleSet", "load_rules", "builtin_rules", "rules_in_module", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "graphfix.rules"
logger = logging.getLogger(__name__)


@dataclass
class RuleSet:
    """Every rule found, by name, and the warnings of rule packs that failed to load."""

    rules: dict[str, Rule] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add(self, rule: Rule, origin: str) -> None:
        if rule.name in self.rules:
            raise RuleLoadError(
                f"rule name {rule.name!r} is defined twice: in {self.origins[rule.name]} and in {origin}"
            )
        self.rules[rule.name] = rule
        self.origins[rule.name] = origin


def rules_in_module(module: ModuleType) -> list[Rule]:
    """The `Rule` objects a module defines at top level, in definition order."""
    return [value for value in vars(module).values() if isinstance(value, Rule)]


def builtin_rules() -> list[Rule]:
    """Every rule of `graphfix.rules` (the repository's rules/ folder)."""
    package = importlib.import_module("graphfix.rules")
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"graphfix.rules.{info.name}")
        found.extend(rules_in_module(module))
    return found


def _entry_point_rules(rule_set: RuleSet) -> None:
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = f"entry point {entry_point.name} ({entry_point.value})"
        try:
            loaded = entry_point.load()
            rules = _rules_from(loaded)
        except Exception as error:  # a broken third-party pack must not stop graphfix
            rule_set.warnings.append(f"rule pack {origin} failed to load: {type(error).__name__}: {error}")
            continue
        for rule in rules:
            rule_set.add(rule, origin)


def _rules_from(loaded: object) -> list[Rule]:
    if isinstance(loaded, ModuleType):
        return rules_in_module(loaded)
    if isinstance(loaded, Rule):
        return [loaded]
    if callable(loaded):
        loaded = loaded()
    if isinstance(loaded, Iterable):
        rules = list(loaded)
        if all(isinstance(r, Rule) for r in rules):
            return rules
    raise TypeError("an entry point must name a module, a Rule, or a function returning Rules")


def _file_rules(path: Path) -> list[Rule]:
    if not path.is_file():
        raise RuleLoadError(f"--rules {path}: no such file")
    module_name = f"graphfix_user_rules_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RuleLoadError(f"--rules {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a user's rule file may raise anything
        del sys.modules[module_name]
        line = _user_line(error, path)
        raise RuleLoadError(f"--rules {path}: failed to import{line}: {type(error).__name__}: {error}") from error
    rules = rules_in_module(module)
    if not rules:
        raise RuleLoadError(f"--rules {path}: defines no rule (decorate a class or function with @graphfix.rule)")
    return rules


def _user_line(error: Exception, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == path]
    return f" (line {frames[-1].lineno})" if frames else ""


def load_rules(files: Iterable[str | Path] = (), *, entry_points: bool = True) -> RuleSet:
    """Built-in rules, then installed rule packs, then `files`; names must be unique.

    Raises:
        RuleLoadError: a file fails to import or defines no rule, or two rules share a name.
    """
    rule_set = RuleSet()
    for rule in builtin_rules():
        rule_set.add(rule, f"built-in ({rule.source})")
    if entry_points:
        _entry_point_rules(rule_set)
    for path in files:
        for rule in _file_rules(Path(path)):
            rule_set.add(rule, str(path))
    for warning in rule_set.warnings:
        logger.warning(warning)
    return rule_set
