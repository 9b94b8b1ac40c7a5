"""ONNX backend node test cases, re-stamped so that onnxruntime runs them (see DEVELOPERS.md)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
from onnx.backend.test.case.test_case import TestCase

__all__ = [
    "node_cases",
    "restamp",
    "run_in_onnxruntime",
    "onnxruntime_refusal",
    "assert_outputs_match",
]

# The newest IR version the installed onnxruntime reads; models are stamped no higher.
_ORT_MAX_IR_VERSION = 11
_ORT_MIN_OPSET = 7


@functools.cache
def _all_node_cases() -> tuple[TestCase, ...]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(collect_testcases(None))


def node_cases(*prefixes: str) -> list[TestCase]:
    """Backend node test cases whose name starts with one of `prefixes`, re-stamped."""
    selected = [case for case in _all_node_cases() if case.name.startswith(prefixes)]
    return [
        TestCase(**{**case.__dict__, "model": restamp(case.model)}) for case in selected
    ]


def _graph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graph_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graph_nodes(sub)


def _widened_types_only(newer: onnx.defs.OpSchema, older: onnx.defs.OpSchema) -> bool:
    """True when `newer` only adds allowed types to `older` (same attributes, inputs, outputs)."""
    def signature(schema):
        attrs = {name: attr.default_value.SerializeToString() for name, attr in schema.attributes.items()}
        return attrs, [i.name for i in schema.inputs], [o.name for o in schema.outputs]

    if signature(newer) != signature(older):
        return False
    older_types = {c.type_param_str: set(c.allowed_type_strs) for c in older.type_constraints}
    return all(
        older_types.get(c.type_param_str, set()) <= set(c.allowed_type_strs)
        for c in newer.type_constraints
    )


def _lowest_opset_for(node: onnx.NodeProto, opset: int) -> int:
    schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    while schema.since_version > 1:
        try:
            older = onnx.defs.get_schema(node.op_type, schema.since_version - 1, node.domain)
        except onnx.defs.SchemaError:  # the op did not exist before
            break
        if not _widened_types_only(schema, older):
            break
        schema = older
    return schema.since_version


def restamp(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower the default-domain opset to the newest `since_version` among the schemas used.

    A schema that did not change between two opsets means the same at both, so the lowered model
    has the generator's semantics while staying inside what onnxruntime implements. A schema
    revision that only widened the allowed types (bfloat16 additions, for example) means the same
    for the types the older one allows, so it is stepped over too; the checker then confirms the
    case's types are allowed by the older schema, else the case keeps its stamp.
    """
    stamped = onnx.ModelProto()
    stamped.CopyFrom(model)
    default = next(o for o in stamped.opset_import if o.domain in ("", "ai.onnx"))
    nodes = [n for n in _graph_nodes(stamped.graph) if n.domain in ("", "ai.onnx")]
    chosen = {id(n): _lowest_opset_for(n, default.version) for n in nodes}
    lowest = max(chosen.values(), default=1)
    # onnxruntime only guarantees opset >= 7; go there when every node keeps its schema.
    raised = max(lowest, _ORT_MIN_OPSET)
    if all(onnx.defs.get_schema(n.op_type, raised).since_version == chosen[id(n)] for n in nodes):
        lowest = raised
    default.version = lowest
    stamped.ir_version = min(
        _ORT_MAX_IR_VERSION,
        max(model.ir_version, onnx.helper.find_min_ir_version_for(list(stamped.opset_import))),
    )
    try:
        onnx.checker.check_model(stamped, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return model
    return stamped


def run_in_onnxruntime(model: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run `model` on positional `inputs` (matched to the graph inputs in order)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {name: np.asarray(value) for name, value in zip(names, inputs)})


def onnxruntime_refusal(model: onnx.ModelProto) -> str | None:
    """onnxruntime's message when it cannot load `model` (a newer opset, a missing kernel), else None."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises several unrelated exception types
        return str(error).splitlines()[0][:300]
    return None


def assert_outputs_match(
    actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], rtol: float, atol: float
) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        want = np.asarray(want)
        assert got.shape == want.shape, (got.shape, want.shape)
        if want.dtype.kind in "biu":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
