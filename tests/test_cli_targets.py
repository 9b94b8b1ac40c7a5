"""`graphfix check`, `apply --target`, `build` and `trtexec-args` through the command line."""

from __future__ import annotations

import importlib.util
import json
import shutil

import onnx
import pytest
from conftest import SAMPLES, graphfix_cli, parse

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None

# GridSample-20 spells bilinear "linear"; 8.5+ parsers import any unknown mode string as nearest.
GRIDSAMPLE_LINEAR_20 = """
<ir_version: 9, opset_import: ["" : 20]>
g (float[1,1,4,4] x, float[1,2,2,2] grid) => (float[1,1,2,2] y) {
    y = GridSample<mode = "linear">(x, grid)
}
"""

# RoiAlign without sampling_ratio: ONNX means 0 (adaptive), 8.5+ parsers use 1.
ROIALIGN_DEFAULT_SAMPLING = """
<ir_version: 8, opset_import: ["" : 16]>
g (float[1,1,8,8] x, float[2,4] rois, int64[2] batch) => (float[2,1,2,2] y) {
    y = RoiAlign<output_height = 2, output_width = 2>(x, rois, batch)
}
"""

# A custom-domain op and a NonZero inside the branches of an If.
IF_WITH_CUSTOM_DOMAIN = """
<ir_version: 8, opset_import: ["" : 13, "com.example" : 2]>
g (float[4] x, bool c) => (float[M] y) {
    flat_shape = Constant<value = int64[1] {-1}>()
    y = If(c) <then_branch = then_g () => (float[M] a) {
                    a = com.example.Scale<factor = 2.0>(x)
                },
                else_branch = else_g () => (float[M] b) {
                    nz = NonZero(x)
                    flat = Reshape(nz, flat_shape)
                    b = Cast<to=1>(flat)
                }>
}
"""


def check_json(model, target, *extra):
    """Run `graphfix check --json`; returns (exit code, report)."""
    result = graphfix_cli("check", str(model), "--target", target, "--json", *extra)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def saved(tmp_path, text, name="model.onnx"):
    path = tmp_path / name
    onnx.save(parse(text), path)
    return path


def findings(report, op):
    return report["ops"].get(op, [])


# ---------------------------------------------------------------------------------- check on samples
def test_clip_with_computed_max_fails_trt80_and_passes_after_apply(tmp_path):
    code, report = check_json(SAMPLES / "superpoint_head.onnx", "trt8.0")
    assert code == 1 and report["target"] == "trt8.0" and not report["clean"]
    clips = findings(report, "Clip")
    assert [c["node"] for c in clips] == ["/Clip", "/Clip_1", "/Clip_3", "/Clip_4"]
    assert clips[0]["reason"] == "input 2 (max) is computed by node /Cast_4 (Cast), not an initializer"
    assert {(c["kind"], c["limitation"], c["fix"]) for c in clips} == {
        ("unsupported", "clip.bounds_not_weights", "fix_clip_bounds")}

    fixed = tmp_path / "superpoint_head.fixed.onnx"
    applied = graphfix_cli("apply", str(SAMPLES / "superpoint_head.onnx"), "--target", "trt8.0", "-o", str(fixed))
    assert applied.returncode == 0, applied.stderr
    assert "graphfix apply [target trt8.0]" in applied.stdout
    assert "check [target trt8.0]" in applied.stdout
    code, after = check_json(fixed, "trt8.0")
    assert "Clip" not in after["ops"]
    # What stays has no rule, and apply printed it.
    assert all(f["fix"] == "no rule" for found in after["ops"].values() for f in found)
    assert all(f"{f['node']} ({f['op_type']})" in applied.stdout for found in after["ops"].values() for f in found)


def test_human_table_names_target_node_reason_and_rule():
    result = graphfix_cli("check", str(SAMPLES / "superpoint_head.onnx"), "--target", "8.0")
    assert result.returncode == 1
    out = result.stdout
    assert "[target trt8.0: TensorRT 8.0]" in out
    for text in ("op", "node", "kind", "reason", "fixing rule", "/Clip_1", "fix_clip_bounds", "unsupported",
                 "decompose_mod", "decompose_xor"):
        assert text in out
    assert "trt8.0: not clean:" in out


def test_nonzero_fails_trt84_passes_trt85():
    code, report = check_json(SAMPLES / "hf_superpoint.onnx", "trt8.4")
    nonzero = findings(report, "NonZero")
    assert code == 1 and len(nonzero) == 3
    assert {(f["kind"], f["limitation"]) for f in nonzero} == {("unsupported", "nonzero.missing")}
    assert "TensorRT 8.4 has no importer for NonZero" in nonzero[0]["reason"]
    _, report = check_json(SAMPLES / "hf_superpoint.onnx", "trt8.5")
    assert "NonZero" not in report["ops"]


def test_einsum_ellipsis_fails_trt86_and_accepted_equations_pass():
    code, report = check_json(SAMPLES / "einsum_ellipsis.onnx", "trt8.6")
    einsums = findings(report, "Einsum")
    assert code == 1 and einsums
    assert {(f["kind"], f["limitation"]) for f in einsums} == {("unsupported", "einsum.ellipsis")}
    assert "uses ellipsis" in einsums[0]["reason"]
    _, newer = check_json(SAMPLES / "einsum_ellipsis.onnx", "trt10.16")
    assert "Einsum" not in newer["ops"]
    # SuperGlue's 'bdhn,bdhm->bhnm' is taken as it is by 8.2+.
    _, superglue = check_json(SAMPLES / "superglue_attention.onnx", "trt8.6")
    assert "Einsum" not in superglue["ops"]


@pytest.mark.parametrize("target", ["trt8.6", "trt10.16"])
def test_gridsample_linear_is_a_silent_mismatch(tmp_path, target):
    code, report = check_json(saved(tmp_path, GRIDSAMPLE_LINEAR_20), target)
    grid, = findings(report, "GridSample")
    assert code == 1 and grid["kind"] == "silent" and grid["limitation"] == "gridsample.mode_string_ignored"
    assert grid["reason"] == 'mode "linear" (opset 20 spelling) is imported as nearest'
    bilinear = saved(tmp_path, GRIDSAMPLE_LINEAR_20.replace('"" : 20', '"" : 16').replace('"linear"', '"bilinear"'), "b.onnx")
    assert check_json(bilinear, target)[1]["ops"].get("GridSample") is None


def test_topk_smallest_is_silent_on_trt84_only():
    code, report = check_json(SAMPLES / "topk_smallest.onnx", "trt8.4")
    topk = findings(report, "TopK")
    assert code == 1 and len(topk) == 2 and report["counts"]["silent"] >= 2
    assert {(f["kind"], f["limitation"]) for f in topk} == {("silent", "topk.largest_ignored")}
    assert "largest=0 is ignored" in topk[0]["reason"]
    assert "TopK" not in check_json(SAMPLES / "topk_smallest.onnx", "trt8.5")[1]["ops"]


def test_roialign_without_sampling_ratio_is_silent_from_trt85(tmp_path):
    model = saved(tmp_path, ROIALIGN_DEFAULT_SAMPLING)
    for target in ("trt8.5", "trt10.16"):
        silent = [f for f in findings(check_json(model, target)[1], "RoiAlign") if f["kind"] == "silent"]
        assert [f["limitation"] for f in silent] == ["roialign.sampling_ratio_default"]
        assert "sampling_ratio absent: TensorRT uses 1, ONNX means 0" in silent[0]["reason"]
    assert {f["limitation"] for f in findings(check_json(model, "trt8.4")[1], "RoiAlign")} == {"roialign.missing"}
    # maskrcnn_tiny writes sampling_ratio=2 on its RoiAligns.
    _, maskrcnn = check_json(SAMPLES / "maskrcnn_tiny.onnx", "trt8.5")
    assert "RoiAlign" not in maskrcnn["ops"]


def test_subgraphs_and_custom_domains(tmp_path):
    _, report = check_json(saved(tmp_path, IF_WITH_CUSTOM_DOMAIN), "trt8.4")
    assert set(report["ops"]) == {"NonZero", "Scale"}
    assert all(f["in_subgraph"] for found in report["ops"].values() for f in found)
    assert report["ops"]["Scale"][0]["limitation"] == "custom_op.unknown"
    # maskrcnn_tiny's NonMaxSuppression sits in an If branch; 8.0-8.4 pad its output.
    _, maskrcnn = check_json(SAMPLES / "maskrcnn_tiny.onnx", "trt8.4")
    nms = findings(maskrcnn, "NonMaxSuppression")
    assert nms and all(f["in_subgraph"] and f["limitation"] == "nms.padded_plugin" for f in nms)
    # mmdeploy ops: mappable to ONNX from 8.5, unknown before.
    _, mmcv = check_json(SAMPLES / "mmcv_ops.onnx", "trt8.5")
    assert {f["limitation"] for f in findings(mmcv, "grid_sampler")} == {"custom_op.mmcv_grid_sampler"}
    _, mmcv = check_json(SAMPLES / "mmcv_ops.onnx", "trt8.4")
    assert {f["limitation"] for f in findings(mmcv, "MMCVRoiAlign")} == {"custom_op.unknown"}


# ---------------------------------------------------------------------------------- JSON and exit codes
def test_json_structure():
    code, report = check_json(SAMPLES / "topk_smallest.onnx", "trt8.4")
    assert set(report) == {"model", "target", "target_label", "clean", "nodes", "counts", "ops", "parser"}
    assert report["target_label"] == "TensorRT 8.4" and report["nodes"] > 100
    assert set(report["counts"]) == {"unsupported", "silent", "plugin"}
    assert sum(report["counts"].values()) == sum(len(found) for found in report["ops"].values())
    for op, found in report["ops"].items():
        for finding in found:
            assert set(finding) == {"node", "op_type", "kind", "limitation", "reason", "advice", "rules", "fix",
                                    "in_subgraph"}
            assert finding["op_type"] == op
    assert report["parser"] is None or HAS_TENSORRT


def test_exit_codes(tmp_path):
    assert graphfix_cli("check", str(SAMPLES / "superpoint_head.onnx"), "--target", "trt8.5").returncode == 0
    assert graphfix_cli("check", str(SAMPLES / "superpoint_head.onnx"), "--target", "trt8.0").returncode == 1
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    bad_rules = tmp_path / "rules.py"
    bad_rules.write_text("raise RuntimeError('broken')\n")
    for args, message in (
        ((str(tmp_path / "missing.onnx"),), "no such file"),
        ((str(not_onnx),), "not an ONNX model"),
        ((str(SAMPLES / "superpoint_head.onnx"), "--target", "trt9.9"), "unknown TensorRT target"),
        ((str(SAMPLES / "superpoint_head.onnx"), "--rules", str(bad_rules)), "failed to import"),
    ):
        result = graphfix_cli("check", *args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(HAS_TENSORRT, reason="the installed tensorrt decides the default target")
def test_default_target_is_portable_and_said():
    result = graphfix_cli("check", str(SAMPLES / "superpoint_head.onnx"))
    assert result.returncode == 1
    assert "[target portable: portable (every profile)]" in result.stdout
    assert "portable: not clean" in result.stdout


# ---------------------------------------------------------------------------------- trtexec-args
ONNX_CUMSUM = str(SAMPLES / "hf_cumsum_text.onnx")
CUMSUM_SHAPES = ["--minShapes=input_ids:1x1,attention_mask:1x1",
                 "--optShapes=input_ids:1x128,attention_mask:1x128",
                 "--maxShapes=input_ids:8x512,attention_mask:8x512"]


def trtexec_args(*args):
    result = graphfix_cli("trtexec-args", *args)
    assert result.returncode == 0, result.stderr
    line, = result.stdout.splitlines()
    return line, result.stderr


def test_trtexec_args_trt84():
    line, said = trtexec_args(ONNX_CUMSUM, "--target", "trt8.4", "-o", "m.engine", "--fp16", "--workspace", "2048",
                              "--layer-precisions", "/roberta/Softmax:fp32", "--plugins", "libcustom.so")
    assert line.split() == ["trtexec", f"--onnx={ONNX_CUMSUM}", "--saveEngine=m.engine", *CUMSUM_SHAPES, "--fp16",
                            "--precisionConstraints=obey", "--layerPrecisions=/roberta/Softmax:fp32",
                            "--memPoolSize=workspace:2048", "--plugins=libcustom.so"]
    assert "target trt8.4" in said


def test_trtexec_args_trt1016():
    line, said = trtexec_args(ONNX_CUMSUM, "--target", "10.16", "-o", "m.engine", "--fp16", "--workspace", "2048",
                              "--plugins", "libcustom.so", "--timing-cache", "cache.bin")
    assert line.split() == ["trtexec", f"--onnx={ONNX_CUMSUM}", "--saveEngine=m.engine", *CUMSUM_SHAPES, "--fp16",
                            "--memPoolSize=workspace:2048", "--staticPlugins=libcustom.so",
                            "--timingCacheFile=cache.bin"]
    assert "target trt10.16" in said


def test_trtexec_args_trt11_is_strongly_typed():
    line, _ = trtexec_args(ONNX_CUMSUM, "--target", "trt11", "-o", "m.engine")
    assert line.split() == ["trtexec", f"--onnx={ONNX_CUMSUM}", "--saveEngine=m.engine", *CUMSUM_SHAPES]
    for refused in (["--fp16"], ["--layer-precisions", "/roberta/Softmax:fp32"]):
        result = graphfix_cli("trtexec-args", ONNX_CUMSUM, "--target", "trt11", *refused)
        assert result.returncode == 2 and result.stdout == ""
        assert "strongly typed only" in result.stderr


def test_trtexec_args_needs_a_range_for_unnamed_dims():
    topk = str(SAMPLES / "topk_smallest.onnx")
    result = graphfix_cli("trtexec-args", topk, "--target", "trt8.6")
    assert result.returncode == 2
    assert "input 'points' dim 2 ('num_points')" in result.stderr and "--shapes" in result.stderr
    line, _ = trtexec_args(topk, "--target", "trt8.6", "-o", "p.engine", "--shapes", "points:1x3x16:2x3x1024:4x3x4096")
    assert line.split()[3:] == ["--minShapes=points:1x3x16", "--optShapes=points:2x3x1024",
                                "--maxShapes=points:4x3x4096"]


def test_trtexec_args_needs_one_release():
    result = graphfix_cli("trtexec-args", ONNX_CUMSUM, "--target", "portable")
    assert result.returncode == 2 and "pick one to build for" in result.stderr


# ---------------------------------------------------------------------------------- build
@pytest.mark.skipif(HAS_TENSORRT or shutil.which("trtexec") is not None, reason="TensorRT can build here")
def test_build_without_tensorrt_prints_the_command(tmp_path):
    engine = tmp_path / "model.engine"
    result = graphfix_cli("build", ONNX_CUMSUM, "-o", str(engine), "--target", "trt10.16", "--fp16")
    assert result.returncode == 4
    assert result.stdout.split() == ["trtexec", f"--onnx={ONNX_CUMSUM}", f"--saveEngine={engine}", *CUMSUM_SHAPES,
                                     "--fp16"]
    assert "not built: the tensorrt Python package does not import and trtexec is not on PATH" in result.stderr
    assert "TensorRT 10.16" in result.stderr and not engine.exists()


def test_build_refuses_bad_plans(tmp_path):
    result = graphfix_cli("build", ONNX_CUMSUM, "--target", "trt8.6", "--bf16")
    assert result.returncode == 2 and "no BF16" in result.stderr
    result = graphfix_cli("build", ONNX_CUMSUM, "--target", "trt8.6", "-o", str(tmp_path / "nowhere" / "m.engine"))
    assert result.returncode == 2 and "folder does not exist" in result.stderr


# ---------------------------------------------------------------------------------- real TensorRT
@pytest.mark.tensorrt
def test_check_asks_the_installed_parser(tmp_path):
    trt = pytest.importorskip("tensorrt")
    code, report = check_json(SAMPLES / "superpoint_head.onnx", trt.__version__)
    assert report["parser"]["version"] == trt.__version__ and report["parser"]["compared"]
    assert report["parser"]["disagreements"] == [] or code == 1


@pytest.mark.tensorrt
def test_build_with_the_installed_tensorrt(tmp_path):
    pytest.importorskip("tensorrt")
    engine = tmp_path / "model.engine"
    result = graphfix_cli("build", str(SAMPLES / "superpoint_head.onnx"), "-o", str(engine),
                          "--shapes", "image:1x1x64x96:1x1x64x96:1x1x128x192")
    assert result.returncode == 0, result.stderr
    assert engine.stat().st_size > 0 and "with the tensorrt Python API" in result.stdout
