"""`graphfix apply` end to end through subprocess: the main job, its options, every bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO, SAMPLES, graphfix_cli, run, sample_data

SAMPLE = SAMPLES / "superpoint_head.onnx"


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    copy = tmp_path / "model.onnx"
    shutil.copy(SAMPLE, copy)
    return copy


def _fails_cleanly(result, message: str, folder: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphfix: error:"), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not list(folder.glob("*.fixed.onnx")) and not list(folder.glob(".*.tmp"))


def test_apply_fixes_the_sample_prints_the_table_and_matches(sample):
    before = sample.read_bytes()
    result = graphfix_cli("apply", str(sample), "--target", "trt8.0", "--report", str(sample.with_suffix(".json")))
    assert result.returncode == 0, result.stderr
    assert "fix_clip_bounds" in result.stdout and "verified" in result.stdout and "trt8.0" in result.stdout
    fixed = sample.with_name("model.fixed.onnx")
    onnx.checker.check_model(str(fixed), full_check=True)
    assert sample.read_bytes() == before
    feeds, data = sample_data("superpoint_head")
    for got, want in zip(run(onnx.load(fixed), feeds), run(onnx.load(sample), feeds)):
        np.testing.assert_array_equal(got, want)
    report = json.loads(sample.with_suffix(".json").read_text())
    [clip] = [p for p in report["passes"] if p["name"] == "fix_clip_bounds"]
    assert clip["matches"] == 4 and clip["status"] == "verified"
    assert report["target"] == "trt8.0" and report["verification"]["full_runs"] == 2


def test_output_is_byte_identical_across_runs(sample, tmp_path):
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert graphfix_cli("apply", str(sample), "-o", str(first)).returncode == 0
    assert graphfix_cli("apply", str(sample), "-o", str(second)).returncode == 0
    assert first.read_bytes() == second.read_bytes()


def test_refuses_to_overwrite_the_input(sample):
    result = graphfix_cli("apply", str(sample), "-o", str(sample))
    assert result.returncode == 2 and "refusing to overwrite the input" in result.stderr


def test_dry_run_lists_matches_and_writes_nothing(sample):
    result = graphfix_cli("apply", str(sample), "--dry-run", "--target", "trt8.0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("fix_clip_bounds: ") == 4 and "Max" in result.stdout
    assert not sample.with_name("model.fixed.onnx").exists()


def test_explain_shows_the_nearest_miss(sample):
    result = graphfix_cli("explain", str(sample), "fix_clip_bounds")
    assert result.returncode == 0 and "fix_clip_bounds" in result.stdout
    static = graphfix_cli("explain", str(SAMPLES / "hf_cumsum_text.onnx"), "fix_clip_bounds")
    assert "no candidate node" in static.stdout


def test_user_rules_load_from_files_in_both_styles(sample, tmp_path):
    out = tmp_path / "out.onnx"
    result = graphfix_cli(
        "apply", str(sample), "-o", str(out), "--rules", str(SAMPLES / "custom_rule.py"),
        "--only", "decompose_reduce_l2", "--only", "drop_identity",
    )
    assert result.returncode == 0, result.stderr
    assert "decompose_reduce_l2" in result.stdout and "verified" in result.stdout
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert "ReduceL2" not in ops and "Sqrt" in ops
    listed = graphfix_cli("rules", "--rules", str(SAMPLES / "custom_rule.py"))
    assert "decompose_reduce_l2" in listed.stdout and "drop_identity" in listed.stdout


def test_version():
    result = graphfix_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("graphfix ")


# ----------------------------------------------------------------------------- bad input


def test_missing_path(tmp_path):
    _fails_cleanly(graphfix_cli("apply", str(tmp_path / "nope.onnx")), "no such file", tmp_path)


def test_directory(tmp_path):
    _fails_cleanly(graphfix_cli("apply", str(tmp_path)), "is a directory", tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    _fails_cleanly(graphfix_cli("apply", str(path)), "empty file", tmp_path)


def test_random_bytes(tmp_path):
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _fails_cleanly(graphfix_cli("apply", str(path)), "not an ONNX model", tmp_path)


def test_truncated_protobuf(tmp_path):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(SAMPLE.read_bytes()[: SAMPLE.stat().st_size // 3])
    _fails_cleanly(graphfix_cli("apply", str(path)), "truncated or not ONNX", tmp_path)


def test_protobuf_that_is_not_a_model(tmp_path):
    path = tmp_path / "tensor.onnx"
    path.write_bytes(onnx.numpy_helper.from_array(np.ones(4, np.float32)).SerializeToString())
    _fails_cleanly(graphfix_cli("apply", str(path)), "not an ONNX model", tmp_path)


def _external(tmp_path: Path) -> Path:
    model = onnx.load(SAMPLE)
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    return path


def test_missing_external_data(tmp_path):
    path = _external(tmp_path)
    (tmp_path / "ext.onnx.data").unlink()
    _fails_cleanly(graphfix_cli("apply", str(path)), "is missing", tmp_path)


def test_short_external_data(tmp_path):
    path = _external(tmp_path)
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    _fails_cleanly(graphfix_cli("apply", str(path)), "shorter than", tmp_path)


def test_external_data_round_trips(tmp_path):
    path = _external(tmp_path)
    out = tmp_path / "out.onnx"
    result = graphfix_cli("apply", str(path), "-o", str(out), "--target", "trt8.0")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.onnx.data").stat().st_size > 1000
    onnx.checker.check_model(str(out), full_check=True)


def test_opset_newer_than_onnxruntime(tmp_path):
    model = onnx.load(SAMPLE)
    model.opset_import[0].version = 99
    path = tmp_path / "future.onnx"
    onnx.save(model, path)
    _fails_cleanly(graphfix_cli("apply", str(path)), "newer than onnxruntime runs", tmp_path)


def test_model_failing_the_checker_needs_force(tmp_path):
    model = onnx.load(SAMPLE)
    next(n for n in model.graph.node if n.input).input[0] = "does_not_exist"
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    _fails_cleanly(graphfix_cli("apply", str(path)), "fails onnx.checker", tmp_path)


def test_broken_rule_file_is_named_with_its_line(sample, tmp_path):
    rules = tmp_path / "bad_rules.py"
    rules.write_text("import graphfix as gf\n\nx = 1 / 0\n")
    _fails_cleanly(graphfix_cli("apply", str(sample), "--rules", str(rules)), "bad_rules.py: failed to import (line 3): ZeroDivisionError", tmp_path)


def test_rule_that_raises_is_named(sample, tmp_path):
    rules = tmp_path / "raising.py"
    rules.write_text(
        "import graphfix as gf\n\n"
        "@gf.rule(pattern=lambda op, x: op.Relu(x))\n"
        "def explode(op, x):\n    raise RuntimeError('kaput')\n"
    )
    _fails_cleanly(graphfix_cli("apply", str(sample), "--rules", str(rules), "--only", "explode"), "rule explode raised RuntimeError", tmp_path)


def test_unknown_rule_name(sample, tmp_path):
    _fails_cleanly(graphfix_cli("apply", str(sample), "--only", "no_such_rule"), "no rule named 'no_such_rule'", tmp_path)


def test_entry_point_rule_packs_load_and_a_broken_pack_only_warns(sample, tmp_path):
    site = tmp_path / "site"
    package = site / "acme_rules"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import graphfix as gf\n\n"
        "@gf.rule(pattern=lambda op, x: op.Tanh(x))\n"
        "def acme_tanh(op, x):\n    '''Tanh through Sigmoid.'''\n"
        "    two = op.constant(__import__('numpy').float32(2))\n"
        "    one = op.constant(__import__('numpy').float32(1))\n"
        "    return op.Sub(op.Mul(two, op.Sigmoid(op.Mul(two, x))), one)\n"
    )
    (package / "broken.py").write_text("raise ImportError('missing native library')\n")
    dist = site / "acme_rules-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-rules\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[graphfix.rules]\nacme = acme_rules\nbroken = acme_rules.broken\n")
    env = {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    listed = graphfix_cli("rules", env=env)
    assert "acme_tanh" in listed.stdout and "entry point acme" in listed.stdout
    assert "broken" in listed.stdout and "missing native library" in listed.stdout
    result = graphfix_cli("apply", str(sample), "--only", "acme_tanh", env=env)
    assert result.returncode == 0, result.stderr
    assert "acme_tanh" in result.stdout and "verified" in result.stdout


def test_interrupted_save_leaves_no_partial_file(tmp_path):
    """SIGTERM while writing: the output is either absent or complete, and no temp file stays."""
    import signal
    import subprocess
    import sys
    import time

    big = tmp_path / "big.onnx"
    _write_big_model(big, megabytes=300)
    out = tmp_path / "out.onnx"
    process = subprocess.Popen(
        [sys.executable, "-m", "graphfix", "apply", str(big), "-o", str(out), "--no-verify"],
        cwd=REPO / "tests", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".out.onnx.*")):
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    leftovers = list(tmp_path.glob(".out.onnx.*"))
    assert not leftovers, leftovers
    if out.exists():
        onnx.checker.check_model(str(out))
    else:
        assert process.returncode != 0


def _write_big_model(path: Path, megabytes: int) -> None:
    from onnx import helper

    count = megabytes // 4
    nodes, inits, prev = [], [], "x"
    for i in range(count):
        inits.append(onnx.numpy_helper.from_array(np.full((1024, 256), i, np.float32), f"w{i}"))
        nodes.append(helper.make_node("Add", [prev, f"w{i}"], [f"a{i}"]))
        prev = f"a{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", 1, [1024, 256])],
                              [helper.make_tensor_value_info(prev, 1, [1024, 256])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_simplify_runs_onnxsim_after_the_repairs_and_is_verified(tmp_path):
    out = tmp_path / "out.onnx"
    result = graphfix_cli("apply", str(SAMPLES / "hf_superpoint.onnx"), "-o", str(out), "--simplify",
                          "--target", "trt10.16", "--report", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    passes = json.loads((tmp_path / "r.json").read_text())["passes"]
    names = [p["name"] for p in passes]
    from graphfix._loader import load_rules

    repairs = {r.name for r in load_rules(entry_points=False).rules.values() if r.stage == "repair"}
    assert "batch_unbatched_pooling" in repairs and set(names[: names.index("onnxsim")]) == repairs
    onnxsim_pass = passes[names.index("onnxsim")]
    assert onnxsim_pass["status"] == "verified" and onnxsim_pass["detail"] == "by the end-to-end run"
    assert len(onnx.load(out).graph.node) < len(onnx.load(SAMPLES / "hf_superpoint.onnx").graph.node)
