"""Reliability: unsorted and duplicate-named graphs, --force, --strict, huge models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, graphfix_cli, run, sample_data
from onnx import helper


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _unsorted(tmp_path: Path) -> Path:
    model = onnx.load(SAMPLES / "superpoint_head.onnx")
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    return _save(model, tmp_path / "unsorted.onnx")


def test_unsorted_nodes_are_refused_then_sorted_with_force(tmp_path):
    path = _unsorted(tmp_path)
    refused = graphfix_cli("apply", str(path))
    assert refused.returncode == 2 and "fails onnx.checker" in refused.stderr and "--force" in refused.stderr
    assert not (tmp_path / "unsorted.fixed.onnx").exists()
    forced = graphfix_cli("apply", str(path), "--force", "--target", "trt8.0")
    assert forced.returncode == 0, forced.stderr
    fixed = onnx.load(tmp_path / "unsorted.fixed.onnx")
    onnx.checker.check_model(fixed, full_check=True)
    feeds, data = sample_data("superpoint_head")
    reference = run(onnx.load(SAMPLES / "superpoint_head.onnx"), feeds)
    for got, want in zip(run(fixed, feeds), reference):
        np.testing.assert_array_equal(got, want)


def test_duplicate_tensor_names_are_refused_even_with_force(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])],
        "dup",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "dup.onnx")
    for extra in ((), ("--force",)):
        result = graphfix_cli("apply", str(path), *extra)
        assert result.returncode == 2, result.stderr
        assert "produced twice" in result.stderr or "fails onnx.checker" in result.stderr
        assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("dup.fixed*"))


UNKNOWN_DOMAIN = """
<ir_version: 8, opset_import: ["" : 13, "acme" : 1]>
g (float[2] x, int64[2] s) => (float[2] y) {
    c = acme.Mystery(x)
    one = Constant <value = int64 {1}> ()
    w = Gather <axis = 0> (s, one)
    hi = Cast <to = 1> (w)
    y = Clip(c, , hi)
}
"""


def test_unknown_custom_domain_proceeds_unverified_or_stops_with_strict(tmp_path):
    path = _save(onnx.parser.parse_model(UNKNOWN_DOMAIN), tmp_path / "custom.onnx")
    relaxed = graphfix_cli("apply", str(path), "--target", "trt8.0")
    assert relaxed.returncode == 0, relaxed.stderr
    assert "unverified" in relaxed.stdout and "Mystery" in relaxed.stdout
    assert "│ verified" not in relaxed.stdout  # no pass claims a check that did not run
    (tmp_path / "custom.fixed.onnx").unlink()
    strict = graphfix_cli("apply", str(path), "--target", "trt8.0", "--strict")
    assert strict.returncode == 1 and "--strict" in strict.stderr
    assert not (tmp_path / "custom.fixed.onnx").exists()


@pytest.mark.slow
def test_model_over_2gb_round_trips_with_external_data(tmp_path):
    """Run with `pytest -m slow tests/test_reliability.py` (needs ~7 GB disk, a few minutes)."""
    count = 9  # 9 x 256 MB of weights
    nodes, inits, prev = [], [], "x"
    for i in range(count):
        inits.append(onnx.numpy_helper.from_array(np.full((8192, 8192), i, np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Clip", [f"m{i}", "", "hi"], [f"c{i}"]))
        prev = f"c{i}"
    nodes.insert(0, helper.make_node("Shape", ["x"], ["shape"]))
    nodes.insert(1, helper.make_node("ReduceMax", ["shape"], ["top"], keepdims=0))
    nodes.insert(2, helper.make_node("Cast", ["top"], ["hi"], to=onnx.TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", 1, [1, 8192])],
                              [helper.make_tensor_value_info(prev, 1, [1, 8192])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    source = tmp_path / "huge.onnx"
    onnx.save_model(model, str(source), save_as_external_data=True, location="huge.onnx.data")
    del model, inits
    out = tmp_path / "huge.fixed.onnx"
    result = graphfix_cli("apply", str(source), "-o", str(out), "--target", "trt8.0", "--no-verify", timeout=3600)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "huge.fixed.onnx.data").stat().st_size > 2**31
    onnx.checker.check_model(str(out), full_check=True)
    fixed = onnx.load(str(out), load_external_data=False)
    assert "Clip" in {n.op_type for n in fixed.graph.node} or "Min" in {n.op_type for n in fixed.graph.node}
    assert os.path.getsize(out) < 10_000_000


def test_ir3_models_with_initializers_among_inputs_are_written_valid(tmp_path):
    """Old exports (IR 3) list initializers among the graph inputs; the output is stamped IR 4."""
    from pathlib import Path as _Path

    source = _Path(onnx.__file__).parent / "backend/test/data/pytorch-converted/test_Linear/model.onnx"
    assert onnx.load(source).ir_version == 3
    out = tmp_path / "linear.onnx"
    result = graphfix_cli("apply", str(source), "-o", str(out), "--target", "trt8.6")
    assert result.returncode == 0, result.stderr
    fixed = onnx.load(out)
    assert fixed.ir_version >= 4
    onnx.checker.check_model(fixed, full_check=True)


def test_errors_reach_users_as_their_first_non_blank_line():
    from graphfix.errors import first_line

    assert first_line(RuntimeError("\n  \n  [ONNXRuntimeError] bad node  \n  at frame 3")) == "[ONNXRuntimeError] bad node"
    assert first_line(ValueError("")) == "ValueError"  # an empty message must not raise IndexError
