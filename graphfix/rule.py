"""What a rule is: a pattern, an optional condition, a rewrite, and what it is for.

A rule reads as target pattern + condition + replacement (onnxscript's rewriter). Two ways to
write one, both giving a `Rule`:

    @gf.rule(limitation="clip.bounds_not_weights")
    class FoldClipBounds:
        '''One-line summary.

        TensorRT limitation: ...
        '''
        def pattern(self, op, x, lo, hi): ...
        def check(self, ctx, x, lo, hi): ...      # optional
        def rewrite(self, op, x, lo, hi, **values): ...

    @gf.rule(pattern=lambda op, x, y: op.Add(x, y), limitation=None)
    def add_to_sub(op, x, y):
        '''One-line summary.'''
        return op.Sub(x, y)

Bindings flow by parameter name; `check` hands computed values to `rewrite` through
`accept(**values)`. This module applies nothing (see driver.py).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from graphfix.pattern import Pattern, PatternBuilder, Var

__all__ = ["Rule", "rule", "accept", "reject", "Accept", "Reject", "STAGES", "call_with_bindings"]

# Passes run stage by stage: export repairs first (they make the model runnable, so later passes
# can be verified), then folds, then lowerings, then fusions into plugins.
STAGES = ("repair", "fold", "lower", "fuse")


@dataclass(frozen=True)
class Accept:
    """A check that passed; `values` are handed to the rewrite by name."""

    values: Mapping[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True)
class Reject:
    """A check that failed: why, and where (a node or tensor name)."""

    reason: str
    where: str | None = None
    quiet: bool = False

    def __bool__(self) -> bool:
        return False


def accept(**values: Any) -> Accept:
    """The check passes; `values` become extra keyword arguments of the rewrite."""
    return Accept(values)


def reject(reason: str, where: Any = None, *, quiet: bool = False) -> Reject:
    """The check fails with `reason` at `where` (a node, a tensor or a name).

    `quiet=True` for "not my business" rejections of rules whose pattern matches broadly: they
    rank below every real near miss in `graphfix explain`.
    """
    name = getattr(where, "name", where)
    return Reject(reason, None if name is None else str(name), quiet)


@dataclass(frozen=True)
class Rule:
    """A rewrite rule. Build one with `@rule`; the driver applies it."""

    name: str
    summary: str
    doc: str
    limitations: tuple[str, ...]
    pattern_fn: Callable[..., Any] | None = field(default=None, repr=False)
    rewrite_fn: Callable[..., Any] | None = field(default=None, repr=False)
    transform_fn: Callable[..., Any] | None = field(default=None, repr=False)
    check_fn: Callable[..., Any] | None = field(default=None, repr=False)
    reference_fn: Callable[..., Any] | None = field(default=None, repr=False)
    opt_in: bool = False
    stage: str = "lower"
    exclusive: bool = True
    option_defaults: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def limitation_text(self) -> str:
        """The docstring's "TensorRT limitation:" paragraph ('' when absent)."""
        match = re.search(r"TensorRT limitation:(.*?)(?:\n\s*\n|\Z)", self.doc, re.S)
        return " ".join(match.group(1).split()) if match else ""

    @property
    def is_model_rule(self) -> bool:
        """A whole-model rule (`transform(ctx, proto)`), verified end to end, not per region."""
        return self.transform_fn is not None

    @property
    def has_reference(self) -> bool:
        """The rule changes results on purpose and supplies the semantics to verify against."""
        return self.reference_fn is not None

    def option(self, key: str) -> Any:
        return self.options.get(key, self.option_defaults[key])

    def with_options(self, **options: Any) -> Rule:
        """A copy with options set; unknown option names raise ValueError."""
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            known = ", ".join(sorted(self.option_defaults)) or "none"
            raise ValueError(f"rule {self.name} has no option {unknown[0]!r} (options: {known})")
        coerced = {k: _coerce(v, self.option_defaults[k]) for k, v in options.items()}
        return replace(self, options={**self.options, **coerced})

    def build_pattern(self) -> Pattern:
        """Call the pattern function with a builder and one variable per parameter."""
        names = _parameter_names(self.pattern_fn)[1:]
        return Pattern(self.pattern_fn(PatternBuilder(), *(Var(n) for n in names)))


def _coerce(value: Any, default: Any) -> Any:
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if isinstance(default, (tuple, list)):
        return tuple(v for v in value.split(",") if v)
    return type(default)(value)


def _parameter_names(fn: Callable[..., Any]) -> list[str]:
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY, p.KEYWORD_ONLY)
    ]


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _summary(doc: str) -> str:
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def rule(
    target: Any = None,
    *,
    name: str | None = None,
    limitation: str | tuple[str, ...] | None = None,
    pattern: Callable[..., Any] | None = None,
    check: Callable[..., Any] | None = None,
    reference: Callable[..., Any] | None = None,
    opt_in: bool = False,
    stage: str = "lower",
    exclusive: bool = True,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """Make a `Rule` from a class (methods pattern/check/rewrite/reference) or a rewrite function.

    Args:
        target: the decorated class or function (when used without parentheses).
        name: defaults to the snake_case class name or the function name.
        limitation: the limitation key(s) (see graphfix.targets.LIMITATIONS) the rule fixes;
            a target runs the rule when one of them is active there. None: every target.
        pattern: the pattern function (function style only).
        check: the condition (function style only).
        reference: for rules that change results on purpose, the semantics to verify against:
            called with the values of the bindings, returns the root's expected outputs.
        opt_in: run only when asked for by name (`--only` / `--enable`).
        stage: one of STAGES; orders passes.
        exclusive: require that matched interior nodes have no consumers outside the match.
        options: option names and defaults, settable with `--rule-option name.key=value`.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")

    def make(obj: Any) -> Rule:
        doc = inspect.getdoc(obj) or ""
        limitations = (limitation,) if isinstance(limitation, str) else tuple(limitation or ())
        common = dict(
            summary=_summary(doc),
            doc=doc,
            limitations=limitations,
            opt_in=opt_in,
            stage=stage,
            exclusive=exclusive,
            source=getattr(obj, "__module__", "") or "",
        )
        if inspect.isclass(obj):
            instance = obj()
            model_rule = callable(getattr(instance, "transform", None))
            for method in () if model_rule else ("pattern", "rewrite"):
                if not callable(getattr(instance, method, None)):
                    raise TypeError(f"rule class {obj.__name__} needs a {method}() method (or transform())")
            return Rule(
                name=name or _snake_case(obj.__name__),
                pattern_fn=getattr(instance, "pattern", None) if not model_rule else None,
                rewrite_fn=getattr(instance, "rewrite", None) if not model_rule else None,
                transform_fn=getattr(instance, "transform", None),
                check_fn=getattr(instance, "check", None),
                reference_fn=getattr(instance, "reference", None),
                option_defaults=dict(options or getattr(obj, "options", {}) or {}),
                **common,
            )
        if pattern is None:
            raise TypeError(f"function rule {obj.__name__} needs pattern=")
        return Rule(
            name=name or obj.__name__,
            pattern_fn=pattern,
            rewrite_fn=obj,
            check_fn=check,
            reference_fn=reference,
            option_defaults=dict(options or {}),
            **common,
        )

    return make(target) if target is not None else make


def call_with_bindings(fn: Callable[..., Any], first: Any, values: Mapping[str, Any]) -> Any:
    """Call `fn(first, **values)`, passing only the names `fn` declares (all with **kwargs)."""
    takes_all, wanted = _accepted_names(fn)
    if takes_all:
        return fn(first, **values)
    return fn(first, **{k: values[k] for k in wanted if k in values})


@functools.lru_cache(maxsize=1024)
def _accepted_names(fn: Callable[..., Any]) -> tuple[bool, tuple[str, ...]]:
    """Whether `fn` takes **kwargs, and the names after its first parameter (inspect is slow,
    and rules are called once per candidate node)."""
    params = inspect.signature(fn).parameters.values()
    return any(p.kind is p.VAR_KEYWORD for p in params), tuple(_parameter_names(fn)[1:])
