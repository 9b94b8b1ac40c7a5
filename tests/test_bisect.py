"""`graphfix bisect`: pairing by name and by structure, the first divergence, bounded memory, the
CLI, and both debugging commands (`bisect`, `fp16-guard`) on every committed sample."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, graphfix_cli, parse
from rulecheck import rewrite

import graphfix as gf
from graphfix import fp16
from graphfix.bisect import BY_NAME, BY_STRUCTURE, bisect, first_divergence, parse_size
from graphfix.errors import UsageError
from graphfix.verify import Tolerance

SAMPLE = SAMPLES / "superpoint_head.onnx"


def _feeds(stem: str) -> dict[str, np.ndarray]:
    data = np.load(SAMPLES / f"{stem}.npz")
    return {k.removeprefix("input:"): data[k] for k in data.files if k.startswith("input:")}


@pytest.fixture(scope="module")
def original() -> onnx.ModelProto:
    return onnx.load(SAMPLE)


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    return _feeds("superpoint_head")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    return result


def _with_bias_changed(model: onnx.ModelProto, conv: str, delta: float) -> onnx.ModelProto:
    """`model` with every bias of the Conv named `conv` moved by `delta`."""
    result = _copy(model)
    [node] = [n for n in result.graph.node if n.name == conv]
    [bias] = [t for t in result.graph.initializer if t.name == node.input[2]]
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + np.float32(delta), bias.name))
    return result


def _with_op_changed(model: onnx.ModelProto, node_name: str, op_type: str) -> onnx.ModelProto:
    result = _copy(model)
    [node] = [n for n in result.graph.node if n.name == node_name]
    node.op_type = op_type
    return result


def _renamed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every node, intermediate tensor and initializer renamed (graph inputs and outputs keep
    their names), as a tool that re-exports a graph does."""
    result = _copy(model)
    graph = result.graph
    interface = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}
    for tensor in graph.initializer:
        names[tensor.name] = f"w{len(names)}"
        tensor.name = names[tensor.name]
    for index, node in enumerate(graph.node):
        node.name = f"renamed_node_{index}"
        for k, name in enumerate(node.output):
            if name and name not in interface:
                names[name] = f"t{index}_{k}"
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    del graph.value_info[:]
    return result


def test_identical_models_do_not_diverge(original, feeds):
    report = bisect(original, _copy(original), feeds)
    assert report.first is None and report.differing == 0 and report.complete
    assert report.paired_by_name == report.compared == len([n for node in original.graph.node for n in node.output if n])
    assert report.paired_by_structure == 0 and report.unpaired_a == report.unpaired_b == 0
    assert {o.tensor_a for o in report.outputs} == {"heatmap", "keypoints", "scores", "descriptors"}
    assert all(o.ok and o.max_abs == 0 for o in report.outputs)


def test_a_changed_conv_bias_is_the_first_divergence(original, feeds):
    report = bisect(original, _with_bias_changed(original, "/convDa/Conv", 0.5), feeds)
    first = report.first.diff
    assert (first.node_a, first.op_a, first.tensor_a) == ("/convDa/Conv", "Conv", "/convDa/Conv_output_0")
    assert first.paired_by == BY_NAME and first.max_abs == pytest.approx(0.5, rel=1e-5)
    assert len(report.divergences) == 1  # everything else that differs follows from it
    path = report.first.path
    assert path[0].op_a == "Conv" and path[0].node_a == "/conv1a/Conv"  # the first node after the image
    assert path[-1] == first and all(step.ok for step in path[:-1])
    assert [o.tensor_a for o in report.outputs if not o.ok] == ["descriptors"]
    assert "first divergence at tensor '/convDa/Conv_output_0'" in report.first.describe()


def test_a_rewrite_that_renamed_everything_still_pins_the_changed_conv(original, feeds):
    fixed, _ = rewrite(original, "fix_clip_bounds", target="trt8.0")  # a real rewrite: 4 Clips change
    changed = _renamed(_with_bias_changed(fixed, "/convDa/Conv", 0.5))
    report = bisect(original, changed, feeds)
    first = report.first.diff
    assert (first.node_a, first.tensor_a, first.paired_by) == ("/convDa/Conv", "/convDa/Conv_output_0", BY_STRUCTURE)
    [producer] = [n for n in changed.graph.node if first.tensor_b in n.output]
    assert first.node_b == producer.name and producer.op_type == "Conv" and producer.name.startswith("renamed_node_")
    assert len(report.divergences) == 1 and report.paired_by_structure > 100
    assert [o.tensor_a for o in report.outputs if not o.ok] == ["descriptors"]


def test_the_unchanged_rewrite_pairs_by_structure_and_agrees(original, feeds):
    fixed, _ = rewrite(original, "fix_clip_bounds", target="trt8.0")
    report = bisect(original, _renamed(fixed), feeds)
    assert report.first is None and report.differing == 0 and all(o.ok for o in report.outputs)
    assert report.unpaired_a == 0 and report.compared == 144  # every tensor computed from the image


@pytest.mark.parametrize("renamed", [False, True], ids=["same names", "renamed"])
def test_an_add_swapped_for_a_sub_is_the_first_divergence(original, feeds, renamed):
    changed = _with_op_changed(original, "/Add_3", "Sub")  # sub-pixel offset + coarse keypoint position
    report = bisect(original, _renamed(changed) if renamed else changed, feeds)
    first = report.first.diff
    assert (first.node_a, first.op_a, first.op_b) == ("/Add_3", "Add", "Sub")
    assert first.paired_by == (BY_STRUCTURE if renamed else BY_NAME)
    assert not {o.tensor_a for o in report.outputs if not o.ok} - {"keypoints", "descriptors"}


def test_first_divergence_is_the_library_entry_point(original, feeds):
    assert first_divergence(original, _copy(original), feeds) is None
    found = first_divergence(original, _with_bias_changed(original, "/conv3a/Conv", 1e-3), feeds, Tolerance(1e-5, 1e-4))
    assert found.diff.node_a == "/conv3a/Conv"
    assert first_divergence(original, _with_bias_changed(original, "/conv3a/Conv", 1e-3), feeds, Tolerance(1e-2, 1e-2)) is None


@gf.rule(pattern=lambda op, a, b: op.Add(a, b))
def add_to_sub(op, a, b):
    """Deliberately wrong: Add becomes Sub."""
    return op.Sub(a, b)


def test_first_divergence_names_the_node_a_wrong_rule_rewrote(original, feeds):
    """What the pass manager's blame message can say when it rolls a pass back."""
    wrong, _ = rewrite(original, "add_to_sub", extra_rules=[add_to_sub], verify=False)
    found = first_divergence(original, wrong, feeds)
    assert (found.diff.op_a, found.diff.op_b) == ("Add", "Sub")
    assert found.diff.node_b.startswith(f"add_to_sub/{found.diff.node_a}/")  # the builder's provenance name
    assert found.describe().startswith(f"first divergence at tensor {found.diff.tensor_a!r} of node {found.diff.node_a!r} (Add in A, Sub in B)")


def test_inputs_and_outputs_pair_by_position_when_renamed():
    a = parse("""<ir_version: 8, opset_import: ["" : 17]> g (float[4] x) => (float[4] y) {
        t = Relu(x)
        y = Add(t, t)
    }""")
    b = parse("""<ir_version: 8, opset_import: ["" : 17]> g (float[4] input) => (float[4] output) {
        u = Relu(input)
        output = Sub(u, u)
    }""")
    report = bisect(a, b, {"x": np.array([1, -2, 3, 4], np.float32)})
    first = report.first.diff
    assert (first.tensor_a, first.tensor_b, first.op_b, first.paired_by) == ("y", "output", "Sub", BY_STRUCTURE)
    assert [step.tensor_a for step in report.first.path] == ["t", "y"]


def test_a_small_budget_takes_more_windows_holds_less_and_finds_the_same(original, feeds):
    changed = _with_bias_changed(original, "/convDa/Conv", 0.5)
    whole = bisect(original, changed, feeds)
    budget = 512 << 10  # the largest tensor is 192 KiB; all of them 1.5 MB
    small = bisect(original, changed, feeds, budget=budget)
    assert whole.windows == 1 and small.windows > 3
    assert small.peak_bytes <= budget < whole.peak_bytes
    assert small.first == whole.first and small.differing == whole.differing and small.compared == whole.compared


def test_fp16_form_diverges_first_at_the_overflowing_attention_logits():
    model, feeds = onnx.load(SAMPLES / "fp16_overflow.onnx"), _feeds("fp16_overflow")
    report = bisect(model, fp16.emulated_fp16(model, feeds), feeds, fp16.FP16_TOLERANCE, scaled=True)
    first = report.first.diff
    assert (first.node_a, first.op_a, first.max_abs) == ("/Einsum", "Einsum", float("inf"))
    assert "Inf" in first.reason and all(step.ok for step in report.first.path[:-1])
    assert len(report.divergences) == 1 and not any(o.ok for o in report.outputs)  # the NaN reaches every output
    attention_in_fp32 = fp16.emulated_fp16(model, feeds, keep_fp32=["/Einsum", "/Div", "/Softmax"])
    second = first_divergence(model, attention_in_fp32, feeds, fp16.FP16_TOLERANCE, scaled=True).diff
    assert (second.node_a, second.op_a, second.max_abs) == ("/Mul_4", "Mul", float("inf"))  # the box areas


def test_sizes_parse():
    assert parse_size("2GiB") == 2 << 30 and parse_size("512MiB") == 512 << 20 and parse_size("64k") == 64 << 10
    assert parse_size("1000") == 1000 and parse_size("1.5G") == 3 << 29
    with pytest.raises(UsageError, match="not a size"):
        parse_size("lots")


# ----------------------------------------------------------------------------- through the CLI


def test_cli_prints_the_first_divergence_and_writes_json(original, tmp_path):
    changed = tmp_path / "changed.onnx"
    onnx.save(_renamed(_with_bias_changed(original, "/convDa/Conv", 0.5)), changed)
    report = tmp_path / "report.json"
    result = graphfix_cli("bisect", str(SAMPLE), str(changed), "--inputs", str(SAMPLES / "superpoint_head.npz"), "--json", str(report))
    assert result.returncode == 0, result.stderr
    assert "first divergence: /convDa/Conv_output_0" in result.stdout and "structure" in result.stdout
    data = json.loads(report.read_text())
    assert data["divergences"][0]["diff"]["node_a"] == "/convDa/Conv"
    assert data["divergences"][0]["diff"]["paired_by"] == "structure"


def test_cli_refuses_bad_usage_in_one_line(original):
    for args, message in ((("bisect", str(SAMPLE)), "give two models"), (("bisect", str(SAMPLE), str(SAMPLE), "--fp16"), "give two models"),
                          (("bisect", str(SAMPLE), "--fp16", "--budget", "lots"), "not a size")):
        result = graphfix_cli(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


ALL_SAMPLES = sorted(p.stem for p in SAMPLES.glob("*.onnx"))


def _guard(model: str, inputs: str, report: Path) -> subprocess.CompletedProcess:
    return graphfix_cli("fp16-guard", model, "--inputs", inputs, "--max-steps", "2", "--json", str(report), timeout=240)


@pytest.mark.parametrize("sample", ALL_SAMPLES)
def test_both_commands_work_on_every_sample(sample, tmp_path):
    """fp16-guard and bisect --fp16 on each committed sample. A sample onnxruntime cannot run as
    exported fails in one line and is then repaired by `graphfix apply` first (what a user
    does); skipped, saying why, if that does not make it runnable."""
    model, inputs = str(SAMPLES / f"{sample}.onnx"), str(SAMPLES / f"{sample}.npz")
    guard_json, bisect_json = tmp_path / "guard.json", tmp_path / "bisect.json"
    guarded = _guard(model, inputs, guard_json)
    if guarded.returncode == 2 and "cannot run" in guarded.stderr:
        assert guarded.stderr.count("\n") == 1 and "Traceback" not in guarded.stderr, guarded.stderr
        model = str(tmp_path / f"{sample}.fixed.onnx")
        repaired = graphfix_cli("apply", str(SAMPLES / f"{sample}.onnx"), "-o", model, "--no-verify", timeout=240)
        if repaired.returncode != 0:
            pytest.skip(f"onnxruntime cannot run {sample} and graphfix apply does not repair it: {repaired.stderr.strip()}")
        guarded = _guard(model, inputs, guard_json)
        if guarded.returncode == 2 and "cannot run" in guarded.stderr:
            pytest.skip(f"onnxruntime cannot run {sample}, even repaired: {guarded.stderr.strip()}")
    assert guarded.returncode == 0, guarded.stderr
    assert "FP32 set:" in guarded.stdout and "outputs against FP32" in guarded.stdout
    guard = json.loads(guard_json.read_text())
    assert guard["mixed"] and len(guard["fp32_nodes"]) <= guard["convertible"] and guard["peak_bytes"] <= guard["budget"]
    bisected = graphfix_cli("bisect", model, "--fp16", "--inputs", inputs, "--json", str(bisect_json), timeout=240)
    assert bisected.returncode == 0, bisected.stderr
    assert "graphfix bisect" in bisected.stdout and "outputs" in bisected.stdout
    report = json.loads(bisect_json.read_text())
    assert report["complete"] and report["compared"] > 0 and report["outputs"] and report["peak_bytes"] <= report["budget"]
