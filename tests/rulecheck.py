"""Helpers for rule tests: rewrite an in-memory model with named rules, check backend cases."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from backend import assert_outputs_match, run_in_onnxruntime

import graphfix as gf
from graphfix import ir
from graphfix.report import ApplyReport


def rewrite(
    proto: onnx.ModelProto, *rules: str, verify: bool = True, extra_rules: Sequence[gf.Rule] = (), **options
) -> tuple[onnx.ModelProto, ApplyReport]:
    """Apply exactly `rules` to a copy of `proto`; returns the new model and the report."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    model = ir.Model(graph=ir.import_proto(copy), source=copy)
    report = gf.apply(
        model,
        gf.ApplyOptions(only=rules, verify=verify, entry_points=False, extra_rules=tuple(extra_rules), **options),
    )
    result = ir.to_proto(model)
    onnx.checker.check_model(result, full_check=True)
    return result, report


def check_backend_case(case, *rules: str, **options) -> tuple[onnx.ModelProto, ApplyReport]:
    """Rewrite a backend case's model and compare it with the case's expected outputs.

    Verification runs on the case's own first input set (synthesised inputs can be meaningless
    for an op, e.g. a zero divisor for Mod), unless `inputs` is given.
    """
    if "inputs" not in options and case.data_sets:
        options["inputs"] = _case_inputs(case)
    result, report = rewrite(case.model, *rules, **options)
    for inputs, expected in case.data_sets:
        actual = run_in_onnxruntime(result, [np.asarray(v) for v in inputs])
        assert_outputs_match(actual, expected, rtol=max(case.rtol, 1e-5), atol=max(case.atol, 1e-6))
    return result, report


def _case_inputs(case) -> str:
    import tempfile

    names = [i.name for i in case.model.graph.input if i.name not in {t.name for t in case.model.graph.initializer}]
    handle = tempfile.NamedTemporaryFile(suffix=".npz", delete=False)
    np.savez(handle, **{f"input:{n}": np.asarray(v) for n, v in zip(names, case.data_sets[0][0])})
    handle.close()
    return handle.name


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for g in _graphs(model.graph) for n in g.node]


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)
