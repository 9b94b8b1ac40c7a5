"""graphfix: repair exported ONNX models so that TensorRT takes them, verifying every rewrite.

Public API for users and rule authors::

    import graphfix as gf

    @gf.rule(limitation="clip.bounds_not_weights")
    class MyRule: ...

    model = gf.load("model.onnx")
    report = gf.apply(model, gf.ApplyOptions(target="trt8.6"))
    gf.save(model, "model.fixed.onnx")
"""

from __future__ import annotations

from graphfix.api import ApplyOptions, apply, apply_file, build_passes, select_rules
from graphfix.builder import AXES_INPUT_SINCE, SLICE_TO_END
from graphfix.context import Context
from graphfix.errors import (
    GraphfixError,
    InputError,
    RuleError,
    RuleLoadError,
    UsageError,
    VerificationError,
)
from graphfix.ir import Model, load, save
from graphfix.pattern import variadic
from graphfix.passes import Pass, PassManager, RulePass, SimplifyPass
from graphfix.rule import Accept, Reject, Rule, accept, reject, rule

__version__ = "0.1.0"

__all__ = [
    "AXES_INPUT_SINCE",
    "SLICE_TO_END",
    "Accept",
    "ApplyOptions",
    "Context",
    "GraphfixError",
    "InputError",
    "Model",
    "Pass",
    "PassManager",
    "Reject",
    "Rule",
    "RuleError",
    "RuleLoadError",
    "RulePass",
    "SimplifyPass",
    "UsageError",
    "VerificationError",
    "__version__",
    "accept",
    "apply",
    "apply_file",
    "build_passes",
    "load",
    "reject",
    "rule",
    "save",
    "select_rules",
    "variadic",
]
