"""Reference kernels against independent implementations: onnxruntime, ONNX backend cases, torch fixtures."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from backend import node_cases, onnxruntime_refusal, run_in_onnxruntime
from onnx import TensorProto, helper

from graphfix.kernels import find_kernel, grid_sample, known_ops, msda, nms, roi_align

FIXTURES = Path(__file__).resolve().parent / "data" / "kernels"
F32, F64 = np.float32, np.float64

# --------------------------------------------------------------------------------------------
# helpers


def one_node_model(op: str, inputs: Sequence[tuple[str, int]], outputs: Sequence[tuple[str, int]], opset: int,
                   **attrs) -> onnx.ModelProto:
    """A single-node model whose inputs have element types but no shapes (onnxruntime infers them)."""
    graph = helper.make_graph(
        [helper.make_node(op, [n for n, _ in inputs], [n for n, _ in outputs], **attrs)],
        op,
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 10
    return model


class Session:
    """A cached onnxruntime session over a one-node model, run on positional inputs."""

    def __init__(self, model: onnx.ModelProto):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # RoiAlign max mode warns on every session
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.names, inputs)))


def attributes(node: onnx.NodeProto) -> dict:
    """Node attributes as the executor hands them to kernels (strings decoded)."""
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def fixture(name: str) -> np.lib.npyio.NpzFile:
    return np.load(FIXTURES / f"{name}.npz")


# --------------------------------------------------------------------------------------------
# registry


def test_registry_lists_every_kernel_with_its_domains():
    assert known_ops() == sorted([
        ("*", "EfficientNMS_TRT"), ("*", "MultiscaleDeformableAttnPlugin_TRT"), ("*", "ROIAlign_TRT"),
        ("mmcv", "MMCVMultiScaleDeformableAttention"), ("mmcv", "MMCVRoiAlign"), ("mmcv", "grid_sampler"),
        ("mmdeploy", "MMCVMultiScaleDeformableAttention"), ("mmdeploy", "MMCVRoiAlign"), ("mmdeploy", "grid_sampler"),
    ])


@pytest.mark.parametrize("domain", ["", "ai.onnx", "trt", "mmdeploy", "com.nvidia"])
def test_plugin_kernels_match_any_domain(domain):
    assert find_kernel(domain, "EfficientNMS_TRT") is nms.efficient_nms_trt_kernel
    assert find_kernel(domain, "ROIAlign_TRT") is roi_align.trt_roi_align_kernel
    assert find_kernel(domain, "MultiscaleDeformableAttnPlugin_TRT") is msda.trt_msda_kernel


def test_mmdeploy_kernels_match_only_their_domains():
    for domain in ("mmdeploy", "mmcv"):
        assert find_kernel(domain, "grid_sampler") is grid_sample.mmdeploy_grid_sampler_kernel
        assert find_kernel(domain, "MMCVRoiAlign") is roi_align.mmcv_roi_align_kernel
        assert find_kernel(domain, "MMCVMultiScaleDeformableAttention") is msda.mmcv_msda_kernel
    for domain in ("", "com.microsoft", "trt"):
        assert find_kernel(domain, "grid_sampler") is None
        assert find_kernel(domain, "MMCVRoiAlign") is None
    assert find_kernel("", "GridSample") is None  # standard ops run in onnxruntime
    assert find_kernel("mmdeploy", "TRTBatchedNMS") is None


# --------------------------------------------------------------------------------------------
# GridSample

GS_MODES = {16: ("bilinear", "nearest", "bicubic"), 20: ("linear", "nearest", "cubic")}
PADDINGS = ("zeros", "border", "reflection")


@pytest.fixture(scope="module")
def gridsample_sessions():
    cache: dict = {}

    def get(opset, mode, padding, align, elem=TensorProto.FLOAT):
        key = (opset, mode, padding, align, elem)
        if key not in cache:
            cache[key] = Session(one_node_model("GridSample", [("X", elem), ("grid", elem)], [("Y", elem)], opset,
                                                mode=mode, padding_mode=padding, align_corners=align))
        return cache[key]

    return get


def sample_grid(rng: np.random.Generator, shape: tuple, dtype=F32) -> np.ndarray:
    """Random locations inside and well outside [-1, 1], plus exact -1, 0, 1 and far-away points."""
    grid = rng.uniform(-2.2, 2.2, shape)
    flat = grid.reshape(-1)
    flat[: min(12, flat.size)] = [-1, 1, 0, -1, 1, 1, 0, 0, -5.5, 7.25, -1.0, 1.0][: min(12, flat.size)]
    return grid.astype(dtype)


@pytest.mark.parametrize("opset", [16, 20])
@pytest.mark.parametrize("mode_index", [0, 1, 2], ids=["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align", [0, 1])
def test_gridsample_4d_matches_onnxruntime(gridsample_sessions, opset, mode_index, padding, align):
    mode = GS_MODES[opset][mode_index]
    rng = np.random.default_rng([opset, mode_index, len(padding), align])
    run = gridsample_sessions(opset, mode, padding, align)
    for shape, grid_shape in [((2, 3, 5, 7), (2, 6, 4, 2)), ((1, 4, 1, 9), (1, 3, 5, 2)), ((1, 2, 8, 1), (1, 7, 2, 2))]:
        if align and padding == "reflection" and 1 in shape:
            # onnxruntime reflects about an empty range there (0 / 0) and reads outside the
            # image, multiplied by a zero weight; the kernel reads pixel 0. Not comparable.
            continue
        x = rng.standard_normal(shape).astype(F32)
        grid = sample_grid(rng, grid_shape)
        (expected,) = run(x, grid)
        (actual,) = grid_sample.gridsample_kernel([x, grid], {"mode": mode, "padding_mode": padding, "align_corners": align})
        assert actual.dtype == F32 and actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align", [0, 1])
def test_gridsample_5d_matches_onnxruntime(gridsample_sessions, mode, padding, align):
    rng = np.random.default_rng([5, len(mode), len(padding), align])
    x = rng.standard_normal((2, 3, 4, 5, 6)).astype(F32)
    grid = sample_grid(rng, (2, 3, 4, 5, 3))
    (expected,) = gridsample_sessions(20, mode, padding, align)(x, grid)
    actual = grid_sample.grid_sample(x, grid, mode, padding, bool(align))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding", PADDINGS)
def test_gridsample_float64_matches_onnxruntime(gridsample_sessions, mode, padding):
    rng = np.random.default_rng(64)
    x, grid = rng.standard_normal((1, 2, 6, 5)), sample_grid(rng, (1, 4, 4, 2), F64)
    for align in (0, 1):
        (expected,) = gridsample_sessions(20, mode, padding, align, TensorProto.DOUBLE)(x, grid)
        actual = grid_sample.grid_sample(x, grid, mode, padding, bool(align))
        assert actual.dtype == F64
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("align", [0, 1])
def test_gridsample_nearest_rounds_half_to_even(gridsample_sessions, align):
    # Locations landing exactly on .5 pixel coordinates: ORT uses std::nearbyint (half to even).
    size = 4
    coords = np.array([0.5, 1.5, 2.5, -0.5, 3.5])
    normalised = 2 * coords / (size - 1) - 1 if align else (2 * coords + 1) / size - 1
    grid = np.stack(np.meshgrid(normalised, normalised), axis=-1)[None].astype(F32)
    x = np.arange(16, dtype=F32).reshape(1, 1, 4, 4)
    for padding in PADDINGS:
        (expected,) = gridsample_sessions(20, "nearest", padding, align)(x, grid)
        np.testing.assert_array_equal(grid_sample.grid_sample(x, grid, "nearest", padding, bool(align)), expected)


def test_gridsample_matches_torch_fixture():
    # torch.nn.functional.grid_sample in float64 (tests/data/kernels/make_fixtures.py). This pins
    # bicubic + border to PyTorch's (and onnxruntime's) per-tap padding; onnx's Python reference
    # implementation also clamps the coordinate first and differs there.
    data = fixture("grid_sample")
    names = [k for k in data.files if k.startswith("y")]
    assert len(names) == 18 + 12
    for name in names:
        rank, mode, padding, align = name[1], *name.split("_")[1:]
        actual = grid_sample.grid_sample(data[f"x{rank}"], data[f"grid{rank}"], mode, padding, bool(int(align)))
        np.testing.assert_allclose(actual, data[name], rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("case", node_cases("test_gridsample"), ids=lambda c: c.name)
def test_gridsample_backend_cases(case):
    attrs = attributes(case.model.graph.node[0])
    refusal = onnxruntime_refusal(case.model)
    for inputs, (expected,) in case.data_sets:
        (actual,) = grid_sample.gridsample_kernel(list(inputs), attrs)
        # Some expected outputs were typed with 4-5 decimals; onnxruntime is the tight reference.
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
        if refusal is None:
            np.testing.assert_allclose(actual, run_in_onnxruntime(case.model, inputs)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("interpolation,mode", [(0, "linear"), (1, "nearest"), (2, "cubic")])
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("align", [0, 1])
def test_mmdeploy_grid_sampler_maps_torch_enums(interpolation, mode, padding, align):
    rng = np.random.default_rng([interpolation, padding, align])
    x, grid = rng.standard_normal((1, 3, 6, 5)).astype(F32), sample_grid(rng, (1, 4, 3, 2))
    kernel = find_kernel("mmdeploy", "grid_sampler")
    (actual,) = kernel([x, grid], {"interpolation_mode": interpolation, "padding_mode": padding, "align_corners": align})
    np.testing.assert_array_equal(actual, grid_sample.grid_sample(x, grid, mode, PADDINGS[padding], bool(align)))


def test_mmdeploy_grid_sampler_defaults_and_refusals():
    rng = np.random.default_rng(3)
    x, grid = rng.standard_normal((1, 1, 4, 4)).astype(F32), sample_grid(rng, (1, 2, 2, 2))
    (actual,) = grid_sample.mmdeploy_grid_sampler_kernel([x, grid], {})
    np.testing.assert_array_equal(actual, grid_sample.grid_sample(x, grid, "bilinear", "zeros", False))
    with pytest.raises(ValueError):
        grid_sample.mmdeploy_grid_sampler_kernel([x, grid], {"interpolation_mode": 3})
    with pytest.raises(ValueError, match="4-D"):
        grid_sample.grid_sample(np.zeros((1, 1, 2, 2, 2), F32), np.zeros((1, 1, 1, 1, 3), F32), "cubic")
    with pytest.raises(ValueError):
        grid_sample.grid_sample(x, grid, "area")


# --------------------------------------------------------------------------------------------
# RoiAlign


def random_rois(rng: np.random.Generator, count: int, low: float, high: float, max_size: float | None = None) -> np.ndarray:
    """[count, 4] (x1, y1, x2, y2) with x1 <= x2, y1 <= y2, some outside the image, a few degenerate."""
    start = rng.uniform(low, high, (count, 2))
    size = rng.uniform(0, max_size if max_size else high - low, (count, 2))
    size[: count // 8] = rng.uniform(0, 0.6, (count // 8, 2))
    size[count // 8: count // 8 + 2] = 0
    return np.concatenate([start, start + size], axis=1).astype(F32)


@pytest.fixture(scope="module")
def roialign_session():
    cache: dict = {}

    def get(opset, **attrs):
        key = (opset, tuple(sorted(attrs.items())))
        if key not in cache:
            cache[key] = Session(one_node_model(
                "RoiAlign", [("X", TensorProto.FLOAT), ("rois", TensorProto.FLOAT), ("batch_indices", TensorProto.INT64)],
                [("Y", TensorProto.FLOAT)], opset, **attrs))
        return cache[key]

    return get


@pytest.mark.parametrize("opset,ctm", [(10, None), (16, "half_pixel"), (16, "output_half_pixel")])
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("ratio", [0, 1, 2, 3])
def test_roialign_matches_onnxruntime(roialign_session, opset, ctm, mode, ratio):
    rng = np.random.default_rng([opset, len(ctm or ""), len(mode), ratio])
    x = rng.standard_normal((2, 3, 24, 30)).astype(F32)
    rois = random_rois(rng, 40, -6, 70)  # spatial_scale 0.4: up to ~28 feature px, > 16 points per bin
    batch = rng.integers(0, 2, 40)
    attrs = dict(mode=mode, output_height=3, output_width=5, sampling_ratio=ratio, spatial_scale=0.4)
    if ctm:
        attrs["coordinate_transformation_mode"] = ctm
    (expected,) = roialign_session(opset, **attrs)(x, rois, batch)
    attrs.setdefault("coordinate_transformation_mode", "output_half_pixel")  # opset 10's only behaviour
    (actual,) = roi_align.roialign_kernel([x, rois, batch], attrs)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_roialign_small_grids_are_bitwise_onnxruntime(roialign_session):
    # Up to 16 points per bin the kernel gathers the four corners and adds like onnxruntime.
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 4, 9, 11)).astype(F32)
    rois = random_rois(rng, 30, -2, 12, max_size=6)
    attrs = dict(output_height=2, output_width=3, sampling_ratio=0, spatial_scale=1.0)
    for mode in ("avg", "max"):
        (expected,) = roialign_session(16, mode=mode, **attrs)(x, rois, np.zeros(30, np.int64))
        np.testing.assert_array_equal(roi_align.roi_align(x, rois, np.zeros(30, np.int64), mode=mode, **attrs), expected)


@pytest.mark.parametrize("case", node_cases("test_roialign"), ids=lambda c: c.name)
def test_roialign_backend_cases(case):
    attrs = attributes(case.model.graph.node[0])
    if case.model.opset_import[0].version < 16:
        attrs.setdefault("coordinate_transformation_mode", "output_half_pixel")
    refusal = onnxruntime_refusal(case.model)
    for inputs, (expected,) in case.data_sets:
        (actual,) = roi_align.roialign_kernel(list(inputs), attrs)
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)  # expected typed with 4 decimals
        if refusal is None:
            np.testing.assert_allclose(actual, run_in_onnxruntime(case.model, inputs)[0], rtol=1e-5, atol=1e-6)


def test_roialign_max_mode_is_the_maximum_weighted_corner():
    # The ONNX definition (reference implementation, conformance test, onnxruntime, ROIAlign_TRT):
    # one point in the middle of four pixels gives max(v_i) / 4, not their mean.
    x = np.array([[[[1.0, 2.0], [3.0, 8.0]]]], F32)
    rois = np.array([[0.5, 0.5, 0.5, 0.5]], F32)
    kwargs = dict(output_height=1, output_width=1, sampling_ratio=1, coordinate_transformation_mode="output_half_pixel")
    # output_half_pixel clamps the size to 1: the single point sits at (1.0, 1.0) -> pixel 8 alone.
    assert roi_align.roi_align(x, rois, np.zeros(1, np.int64), mode="max", **kwargs)[0, 0, 0, 0] == 8.0
    rois = np.array([[0.0, 0.0, 2.0, 2.0]], F32)  # half_pixel: centre point (0.5, 0.5)
    onnx_max = roi_align.roi_align(x, rois, np.zeros(1, np.int64), mode="max", output_height=1, output_width=1,
                                   sampling_ratio=1)
    assert onnx_max[0, 0, 0, 0] == 2.0  # max(1, 2, 3, 8) * 0.25
    (mmcv_max,) = roi_align.mmcv_roi_align_kernel([x, np.array([[0, 0, 0, 2, 2]], F32)], dict(
        mode="max", output_height=1, output_width=1, sampling_ratio=1, aligned=1))
    assert mmcv_max[0, 0, 0, 0] == 3.5  # the interpolated value (1 + 2 + 3 + 8) / 4


def test_mmcv_roi_align_is_onnx_roi_align_with_batch_column():
    rng = np.random.default_rng(21)
    x = rng.standard_normal((3, 4, 16, 20)).astype(F32)
    rois = random_rois(rng, 25, -3, 40)
    batch = rng.integers(0, 3, 25)
    mmcv_rois = np.concatenate([batch[:, None].astype(F32), rois], axis=1)
    for aligned, ctm in ((1, "half_pixel"), (0, "output_half_pixel")):
        for ratio in (0, 2):
            (actual,) = find_kernel("mmcv", "MMCVRoiAlign")([x, mmcv_rois], dict(
                output_height=4, output_width=3, spatial_scale=0.5, sampling_ratio=ratio, mode="avg", aligned=aligned))
            expected = roi_align.roi_align(x, rois, batch, 4, 3, ratio, 0.5, ctm, "avg")
            np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("aligned", [0, 1])
def test_mmcv_roi_align_matches_torchvision_fixture(aligned):
    # torchvision.ops.roi_align (float64); max mode from interpolated points (make_fixtures.py).
    data = fixture("roi_align")
    for name in [k for k in data.files if k.startswith(("avg", "max")) and k.split("_")[1] == str(aligned)]:
        mode, _, ratio = name.split("_")
        (actual,) = roi_align.mmcv_roi_align_kernel([data["x"], data["rois"]], dict(
            output_height=3, output_width=4, spatial_scale=0.5, sampling_ratio=int(ratio), mode=mode, aligned=aligned))
        np.testing.assert_allclose(actual, data[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_mmcv_roi_align_mode_spellings_and_defaults():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 20, 20)).astype(F32)
    rois = np.array([[0, 1, 2, 15, 12], [0, 3, 3, 9, 19]], F32)
    (default,) = roi_align.mmcv_roi_align_kernel([x, rois], {})
    assert default.shape == (2, 2, 7, 7)  # mmdeploy plugin default 7x7, avg, aligned
    np.testing.assert_array_equal(default, roi_align.roi_align(x, rois[:, 1:], np.zeros(2, np.int64), 7, 7))
    for text, number in (("max", 0), ("avg", 1)):
        assert np.array_equal(roi_align.mmcv_roi_align_kernel([x, rois], {"mode": text})[0],
                              roi_align.mmcv_roi_align_kernel([x, rois], {"mode": number})[0])


@pytest.mark.parametrize("ctm_field,ctm", [(1, "half_pixel"), (0, "output_half_pixel")])
@pytest.mark.parametrize("mode_field,mode", [(1, "avg"), (0, "max")])
def test_trt_roi_align_maps_integer_fields(ctm_field, ctm, mode_field, mode):
    rng = np.random.default_rng([ctm_field, mode_field])
    x = rng.standard_normal((2, 3, 14, 12)).astype(F32)
    rois = random_rois(rng, 12, -2, 30)
    batch = rng.integers(0, 2, 12).astype(np.int32)
    fields = dict(coordinate_transformation_mode=ctm_field, mode=mode_field, output_height=2, output_width=3,
                  sampling_ratio=2, spatial_scale=0.5)
    (actual,) = find_kernel("", "ROIAlign_TRT")([x, rois, batch], fields)
    np.testing.assert_array_equal(actual, roi_align.roi_align(x, rois, batch, 2, 3, 2, 0.5, ctm, mode))


def test_trt_roi_align_defaults_and_empty_bins():
    x = np.arange(2 * 36, dtype=F32).reshape(1, 2, 6, 6)
    rois = np.array([[1, 1, 4, 5], [2, 2, 2, 2]], F32)  # the second is a point: no samples, adaptive
    (trt,) = roi_align.trt_roi_align_kernel([x, rois, np.zeros(2, np.int32)], {})
    assert trt.shape == (2, 2, 1, 1)  # defaults: 1x1, avg, half_pixel, adaptive, scale 1
    np.testing.assert_array_equal(trt[0], roi_align.roi_align(x, rois[:1], np.zeros(1, np.int64))[0])
    assert np.isnan(trt[1]).all()  # the CUDA kernel divides 0 by a zero sample count
    assert (roi_align.roi_align(x, rois, np.zeros(2, np.int64))[1] == 0).all()  # ONNX reference: count >= 1
    (mmcv_max,) = roi_align.mmcv_roi_align_kernel([x, np.array([[0, 2, 2, 2, 2]], F32)], {"mode": "max"})
    assert (mmcv_max == -np.finfo(F32).max).all()  # mmdeploy's kernel starts its max at -FLT_MAX


def test_roi_align_refuses_bad_inputs():
    x = np.zeros((1, 1, 4, 4), F32)
    with pytest.raises(ValueError, match="batch index"):
        roi_align.roi_align(x, np.zeros((1, 4), F32), np.array([1]))
    with pytest.raises(ValueError):
        roi_align.roi_align(x, np.zeros((1, 4), F32), np.array([0]), coordinate_transformation_mode="asymmetric")
    with pytest.raises(ValueError):
        roi_align.trt_roi_align_kernel([x, np.zeros((1, 4), F32), np.zeros(1, np.int32)], {"mode": 2})


# --------------------------------------------------------------------------------------------
# NonMaxSuppression


@pytest.fixture(scope="module")
def nms_sessions():
    sessions = {}
    for center in (0, 1):
        for with_score in (False, True):
            names = ["boxes", "scores", "max_output", "iou"] + (["score"] if with_score else [])
            types = [TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT64, TensorProto.FLOAT, TensorProto.FLOAT]
            sessions[center, with_score] = Session(one_node_model(
                "NonMaxSuppression", list(zip(names, types)), [("selected", TensorProto.INT64)], 11,
                center_point_box=center))
    return sessions


def random_nms_case(rng: np.random.Generator, center: int) -> tuple[np.ndarray, np.ndarray]:
    batches, classes, count = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 90))
    if center:
        boxes = np.concatenate([rng.uniform(0, 10, (batches, count, 2)), rng.uniform(-0.5, 4, (batches, count, 2))], 2)
    else:
        boxes = rng.uniform(0, 10, (batches, count, 4))  # corners in either order
    boxes[:, : count // 10] = boxes[:, :1]  # identical boxes
    boxes = np.round(boxes, int(rng.integers(0, 3)))  # coarse values: touching and degenerate boxes
    if rng.integers(0, 2):
        scores = rng.integers(0, 6, (batches, classes, count)) / 5  # many ties
    else:
        scores = rng.uniform(size=(batches, classes, count))
    return boxes.astype(F32), scores.astype(F32)


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("with_score", [False, True])
def test_nms_matches_onnxruntime_on_random_boxes(nms_sessions, center, with_score, monkeypatch):
    monkeypatch.setattr(nms, "_BLOCK", 7)  # exercise the blockwise selection across many blocks
    rng = np.random.default_rng([center, with_score])
    for _ in range(150):
        boxes, scores = random_nms_case(rng, center)
        max_output = int(rng.choice([0, 1, 3, 10, 1000]))
        iou = F32(rng.choice([0.0, 0.2, 0.5, 0.9, 1.0]))
        inputs = [boxes, scores, np.array([max_output]), np.array([iou], F32)]
        score = F32(rng.choice([0.0, 0.3, 0.6])) if with_score else None
        if with_score:
            inputs.append(np.array([score], F32))
        (expected,) = nms_sessions[center, with_score](*inputs)
        actual = nms.non_max_suppression(boxes, scores, max_output, float(iou), score, center)
        assert actual.dtype == np.int64
        np.testing.assert_array_equal(actual, expected)


def test_nms_large_inputs_match_onnxruntime(nms_sessions):
    rng = np.random.default_rng(99)
    xy = rng.uniform(0, 600, (1, 3000, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 80, (1, 3000, 2))], axis=2)[..., [1, 0, 3, 2]].astype(F32)
    scores = rng.uniform(size=(1, 5, 3000)).astype(F32)
    for max_output in (100, 3000):
        (expected,) = nms_sessions[0, True](boxes, scores, np.array([max_output]), np.array([0.3], F32),
                                             np.array([0.05], F32))
        np.testing.assert_array_equal(nms.non_max_suppression(boxes, scores, max_output, 0.3, 0.05), expected)


@pytest.mark.parametrize("case", node_cases("test_nonmaxsuppression"), ids=lambda c: c.name)
def test_nms_backend_cases(case):
    attrs = attributes(case.model.graph.node[0])
    for inputs, (expected,) in case.data_sets:
        (actual,) = nms.nonmaxsuppression_kernel(list(inputs), attrs)
        np.testing.assert_array_equal(actual, expected)


def test_nms_optional_inputs():
    boxes = np.array([[[0, 0, 1, 1], [0, 0, 1, 1.1], [5, 5, 6, 6]]], F32)
    scores = np.array([[[0.9, 0.8, 0.7]]], F32)
    assert nms.nonmaxsuppression_kernel([boxes, scores], {})[0].shape == (0, 3)  # max_output defaults to 0
    (selected,) = nms.nonmaxsuppression_kernel([boxes, scores, np.array([5]), None, None], {})
    np.testing.assert_array_equal(selected, [[0, 0, 0], [0, 0, 2]])  # iou_threshold defaults to 0
    (selected,) = nms.nonmaxsuppression_kernel([boxes, scores, np.array([-4]), np.array([0.5], F32)], {})
    assert selected.shape == (0, 3)  # negative counts as 0


# --------------------------------------------------------------------------------------------
# EfficientNMS_TRT against ONNX NMS + top-k composed here


def composed_efficient_nms(boxes, scores, anchors, score_threshold, iou_threshold, max_output_boxes,
                           background_class, score_activation, class_agnostic, box_coding, max_candidates=5000):
    """Per-class (or one agnostic) ONNX NMS on the thresholded candidates, then a global top-k.

    Equal to the plugin where no score equals the threshold and no IoU equals iou_threshold
    (ONNX uses > for both, the plugin >=), which random continuous inputs guarantee.
    """
    batch, count, classes = scores.shape
    boxes = boxes.reshape(batch, count, -1, 4).astype(F64)
    if anchors is not None:
        anchors = np.broadcast_to(anchors, (batch, count, 4)).astype(F64)
        if box_coding == 0:
            boxes = np.sort(boxes.reshape(batch, count, -1, 2, 2), axis=3).reshape(boxes.shape)  # per-axis order
            boxes = boxes + np.sort(anchors.reshape(batch, count, 2, 2), axis=2).reshape(batch, count, 1, 4)
        else:
            a = anchors[:, :, None]
            boxes = np.concatenate([boxes[..., :2] * a[..., 2:] + a[..., :2], a[..., 2:] * np.exp(boxes[..., 2:])], -1)
    if box_coding == 1:  # center-size (c0, c1, s0, s1) to corners
        boxes = np.concatenate([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1)
    probability = 1 / (1 + np.exp(-scores.astype(F64))) if score_activation else scores.astype(F64)
    counts = np.zeros((batch, 1), np.int32)
    out = (np.zeros((batch, max_output_boxes, 4)), np.zeros((batch, max_output_boxes)),
           np.zeros((batch, max_output_boxes), np.int32))
    for b in range(batch):
        element_scores = probability[b].reshape(-1)
        candidates = np.flatnonzero(element_scores >= score_threshold)
        candidates = candidates[candidates % classes != background_class]
        candidates = candidates[np.argsort(-element_scores[candidates], kind="stable")][:max_candidates]
        anchor, klass = candidates // classes, candidates % classes
        element_boxes = boxes[b, anchor, klass if boxes.shape[2] > 1 else 0]
        groups = [np.arange(candidates.size)] if class_agnostic else [np.flatnonzero(klass == c) for c in range(classes)]
        picked = []
        for group in groups:
            if group.size:
                selected = nms.non_max_suppression(element_boxes[None, group].astype(F32),
                                                   element_scores[candidates[group]][None, None].astype(F32),
                                                   max_output_boxes, iou_threshold)
                picked.extend(group[selected[:, 2]])
        picked = sorted(picked, key=lambda i: -element_scores[candidates[i]])[:max_output_boxes]
        counts[b] = len(picked)
        out[0][b, : len(picked)] = element_boxes[picked]
        out[1][b, : len(picked)] = element_scores[candidates[picked]]
        out[2][b, : len(picked)] = klass[picked]
    return counts, *out


def assert_efficient_nms_equal(actual, expected):
    counts, boxes, scores, classes = actual
    assert counts.dtype == np.int32 and classes.dtype == np.int32
    np.testing.assert_array_equal(counts, expected[0])
    np.testing.assert_array_equal(classes, expected[3])
    np.testing.assert_allclose(boxes, expected[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, expected[2], rtol=1e-5, atol=1e-6)


EFFICIENT_NMS_SETTINGS = [
    dict(),
    dict(class_agnostic=1),
    dict(background_class=0),
    dict(score_activation=1, score_threshold=0.4),
    dict(box_coding=1),
    dict(per_class_boxes=True),
    dict(anchors=True),
    dict(anchors=True, box_coding=1),
    dict(max_output_boxes=5, iou_threshold=0.2),
]


@pytest.mark.parametrize("setting", EFFICIENT_NMS_SETTINGS, ids=lambda s: "-".join(s) or "plain")
def test_efficient_nms_matches_composed_onnx_nms(setting):
    setting = dict(setting)
    per_class, with_anchors = setting.pop("per_class_boxes", False), setting.pop("anchors", False)
    fields = {**dict(score_threshold=0.3, iou_threshold=0.45, max_output_boxes=40, background_class=-1,
                     score_activation=0, class_agnostic=0, box_coding=0), **setting}
    rng = np.random.default_rng(zlib.crc32(repr(sorted(setting.items())).encode()))
    for _ in range(20):
        batch, count, classes = 2, int(rng.integers(1, 150)), int(rng.integers(1, 5))
        shape = (batch, count, classes if per_class else 1, 4)
        if fields["box_coding"] == 0:
            boxes = rng.uniform(0, 50, shape)  # corners in random order
        else:
            boxes = np.concatenate([rng.uniform(0, 50, shape[:-1] + (2,)), rng.uniform(1, 20, shape[:-1] + (2,))], -1)
        anchors = None
        if with_anchors:
            if fields["box_coding"] == 0:
                anchors = rng.uniform(0, 50, (1, count, 4)).astype(F32)
                boxes = rng.uniform(-3, 3, shape)
            else:
                anchors = np.concatenate([rng.uniform(0, 50, (1, count, 2)), rng.uniform(2, 20, (1, count, 2))], -1)
                anchors = anchors.astype(F32)
                boxes = rng.uniform(-0.5, 0.5, shape)
        boxes = boxes.astype(F32).reshape(shape if per_class else (batch, count, 4))
        scores = (rng.standard_normal((batch, count, classes)) if fields["score_activation"]
                  else rng.uniform(size=(batch, count, classes))).astype(F32)
        inputs = [boxes, scores] + ([anchors] if anchors is not None else [])
        actual = find_kernel("", "EfficientNMS_TRT")(inputs, fields)
        assert_efficient_nms_equal(actual, composed_efficient_nms(boxes, scores, anchors, **fields))


def test_efficient_nms_candidate_limit(monkeypatch):
    rng = np.random.default_rng(7)
    boxes = rng.uniform(0, 100, (1, 400, 4)).astype(F32)
    scores = rng.uniform(size=(1, 400, 3)).astype(F32)
    fields = dict(score_threshold=0.1, iou_threshold=0.3, max_output_boxes=300, background_class=-1,
                  score_activation=0, class_agnostic=0, box_coding=0)
    actual = nms.efficient_nms(boxes, scores, num_selected_boxes=50, **fields)
    assert_efficient_nms_equal(actual, composed_efficient_nms(boxes, scores, None, max_candidates=50, **fields))
    assert actual[0][0, 0] <= 50


def test_efficient_nms_ties_iou_and_threshold_boundaries():
    # score == threshold is kept (>=); IoU == iou_threshold suppresses (>=), unlike ONNX NMS (>).
    boxes = np.array([[[0, 0, 4, 4], [0, 0, 4, 2], [10, 10, 12, 12], [20, 20, 21, 21]]], F32)  # IoU(0, 1) = 0.5
    scores = np.array([[[0.9], [0.8], [0.5], [0.5]]], F32)
    counts, out_boxes, out_scores, classes = nms.efficient_nms(boxes, scores, score_threshold=0.5, iou_threshold=0.5)
    assert counts[0, 0] == 3
    np.testing.assert_array_equal(out_scores[0, :3], np.array([0.9, 0.5, 0.5], F32))
    np.testing.assert_array_equal(out_boxes[0, 1:3], boxes[0, 2:4])  # equal scores: lower anchor first
    assert (out_boxes[0, 3:] == 0).all() and (out_scores[0, 3:] == 0).all() and (classes[0, 3:] == 0).all()
    onnx_nms = nms.non_max_suppression(boxes, scores.transpose(0, 2, 1), 10, 0.5, 0.49)
    assert onnx_nms.shape[0] == 4  # ONNX keeps box 1: 0.5 is not > 0.5


def test_efficient_nms_dense_path_emits_dropped_entries():
    # score_threshold < 0.007 takes the plugin's dense path (EfficientNMSDenseIndex): below-threshold
    # and background elements are kept in the sorted list with score -32768 and can be output.
    boxes = np.array([[[0, 0, 1, 1], [5, 5, 6, 6]]], F32)
    scores = np.array([[[0.9, 0.001], [0.0001, 0.0005]]], F32)  # 2 anchors x 2 classes
    counts, out_boxes, out_scores, classes = nms.efficient_nms(boxes, scores, score_threshold=0.001, max_output_boxes=4)
    assert counts[0, 0] == 4
    np.testing.assert_array_equal(out_scores[0], np.array([0.9, 0.001, -32768, -32768], F32))
    np.testing.assert_array_equal(classes[0], [0, 1, 0, 1])
    counts, _, out_scores, _ = nms.efficient_nms(boxes, scores, score_threshold=0.01, max_output_boxes=4)
    assert counts[0, 0] == 1 and out_scores[0, 0] == F32(0.9)  # filtered path: dropped for good


def test_efficient_nms_refuses_what_the_plugin_creator_refuses():
    boxes, scores = np.zeros((1, 2, 4), F32), np.zeros((1, 2, 1), F32)
    for fields in ({"iou_threshold": 0.0}, {"score_threshold": -0.1}, {"max_output_boxes": 0}, {"box_coding": 2}):
        with pytest.raises(ValueError):
            nms.efficient_nms_trt_kernel([boxes, scores], fields)


def test_efficient_nms_float16_and_defaults():
    rng = np.random.default_rng(4)
    boxes = rng.uniform(0, 30, (1, 50, 4)).astype(np.float16)
    scores = rng.uniform(size=(1, 50, 2)).astype(np.float16)
    counts, out_boxes, out_scores, classes = nms.efficient_nms_trt_kernel([boxes, scores], {})
    assert out_boxes.shape == (1, 100, 4) and out_boxes.dtype == np.float16 and out_scores.dtype == np.float16
    expected = nms.efficient_nms(boxes.astype(F32), scores.astype(F32))
    np.testing.assert_array_equal(counts, expected[0])
    np.testing.assert_array_equal(out_scores, expected[2].astype(np.float16))


# --------------------------------------------------------------------------------------------
# Multi-scale deformable attention


def msda_by_grid_sample(value, shapes, starts, locations, weights):
    """mmcv's multi_scale_deformable_attn_pytorch loop, on the GridSample kernel, per level."""
    n, _, heads, depth = value.shape
    queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    output = np.zeros((n, queries, heads, depth), F64)
    for level in range(levels):
        h, w = shapes[level]
        rows = value[:, starts[level]:starts[level] + h * w]  # [N, HW, M, D]
        image = rows.transpose(0, 2, 3, 1).reshape(n * heads, depth, h, w)
        grid = (2 * locations[:, :, :, level] - 1).transpose(0, 2, 1, 3, 4).reshape(n * heads, queries, points, 2)
        sampled = grid_sample.grid_sample(image, grid, "bilinear", "zeros", False)  # [N*M, D, Lq, P]
        attention = weights[:, :, :, level].transpose(0, 2, 1, 3).reshape(n * heads, 1, queries, points)
        output += (sampled * attention).sum(-1).reshape(n, heads, depth, queries).transpose(0, 3, 1, 2)
    return output


def random_msda(rng: np.random.Generator, dtype=F32, queries=7):
    shapes = np.array([[7, 9], [4, 5], [2, 3], [1, 1]], np.int32)
    starts = np.concatenate([[0], np.cumsum(shapes.prod(1))[:-1]]).astype(np.int32)
    n, heads, depth, points = 2, 3, 4, 3
    value = rng.standard_normal((n, int(shapes.prod(1).sum()), heads, depth)).astype(dtype)
    locations = rng.uniform(-0.2, 1.2, (n, queries, heads, len(shapes), points, 2)).astype(dtype)
    locations.reshape(-1)[:8] = [0, 1, 0.5, -0.1, 1.0, 0.0, 1 / 9, 1 / 7]
    weights = rng.uniform(size=(n, queries, heads, len(shapes), points)).astype(dtype)
    return value, shapes, starts, locations, weights


def test_msda_matches_grid_sample_loop():
    rng = np.random.default_rng(8)
    for _ in range(5):
        inputs = random_msda(rng)
        (actual,) = find_kernel("", "MultiscaleDeformableAttnPlugin_TRT")(list(inputs), {})
        assert actual.shape == (2, 7, 3, 4) and actual.dtype == F32
        np.testing.assert_allclose(actual, msda_by_grid_sample(*inputs), rtol=1e-5, atol=1e-5)


def test_msda_matches_torch_fixture():
    data = fixture("msda")
    names = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]
    (actual,) = msda.mmcv_msda_kernel([data[k] for k in names], {"im2col_step": 64})
    np.testing.assert_allclose(actual, data["output"], rtol=1e-12, atol=1e-12)


def test_mmcv_msda_flattens_heads_and_chunks_queries(monkeypatch):
    inputs = random_msda(np.random.default_rng(9), F64, queries=11)
    whole = msda.multiscale_deformable_attention(*inputs)
    (flat,) = find_kernel("mmdeploy", "MMCVMultiScaleDeformableAttention")(list(inputs), {})
    np.testing.assert_array_equal(flat, whole.reshape(2, 11, 12))
    monkeypatch.setattr(msda, "_CHUNK_ELEMENTS", 50)
    np.testing.assert_array_equal(msda.multiscale_deformable_attention(*inputs), whole)


def test_msda_refuses_mismatched_levels():
    value, shapes, starts, locations, weights = random_msda(np.random.default_rng(1))
    with pytest.raises(ValueError):
        msda.multiscale_deformable_attention(value, shapes[:3], starts[:3], locations, weights)


# --------------------------------------------------------------------------------------------
# speed on realistic sizes


def best_time(call: Callable[[], object], repeat: int = 2) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def realistic_workloads() -> dict[str, Callable[[], object]]:
    rng = np.random.default_rng(0)
    # Deformable-DETR decoder: 4 levels (S = 5440), M=8, D=32, Lq=300, P=4.
    shapes = np.array([[64, 64], [32, 32], [16, 16], [8, 8]], np.int32)
    starts = np.concatenate([[0], np.cumsum(shapes.prod(1))[:-1]]).astype(np.int32)
    value = rng.standard_normal((1, int(shapes.prod(1).sum()), 8, 32)).astype(F32)
    locations = rng.uniform(0, 1, (1, 300, 8, 4, 4, 2)).astype(F32)
    weights = rng.uniform(size=(1, 300, 8, 4, 4)).astype(F32)
    # Feature warping: 32 channels, 128 x 128 grid.
    image, grid = rng.standard_normal((1, 32, 128, 128)).astype(F32), rng.uniform(-1.1, 1.1, (1, 128, 128, 2)).astype(F32)
    # Mask R-CNN box head on the stride-4 level: 1000 ROIs up to ~60 feature px, 7 x 7.
    features = rng.standard_normal((1, 256, 200, 336)).astype(F32)
    rois = random_rois(rng, 1000, 0, 1300, max_size=240)
    # YOLOv8 head: 8400 boxes, 80 classes.
    xy = rng.uniform(0, 640, (1, 8400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 120, (1, 8400, 2))], axis=2).astype(F32)
    scores = (rng.uniform(size=(1, 8400, 80)) ** 4).astype(F32)
    return {
        "msda": lambda: msda.multiscale_deformable_attention(value, shapes, starts, locations, weights),
        "grid_sample_bilinear": lambda: grid_sample.grid_sample(image, grid, "linear", "zeros"),
        "grid_sample_bicubic": lambda: grid_sample.grid_sample(image, grid, "cubic", "border"),
        "roi_align_sr2": lambda: roi_align.roi_align(features, rois, np.zeros(1000, np.int64), 7, 7, 2, 0.25),
        "roi_align_adaptive": lambda: roi_align.roi_align(features, rois, np.zeros(1000, np.int64), 7, 7, 0, 0.25),
        "mmcv_roi_align_max": lambda: roi_align.mmcv_roi_align_kernel(
            [features, np.concatenate([np.zeros((1000, 1), F32), rois], 1)],
            dict(output_height=7, output_width=7, spatial_scale=0.25, sampling_ratio=2, mode="max")),
        "nms": lambda: nms.non_max_suppression(boxes, scores.transpose(0, 2, 1).copy(), 100, 0.45, 0.25),
        "nms_no_score_threshold": lambda: nms.non_max_suppression(boxes, scores.transpose(0, 2, 1).copy(), 100, 0.45),
        "efficient_nms": lambda: nms.efficient_nms(boxes, scores, score_threshold=0.25, iou_threshold=0.45),
        "efficient_nms_dense": lambda: nms.efficient_nms(boxes, scores, score_threshold=0.001, iou_threshold=0.45),
    }


def test_kernels_are_fast_on_realistic_sizes(record_property):
    # Budget: about a second each (measured 0.01-0.6 s on the development machine); 3 s leaves
    # room for slower CI machines.
    for name, work in realistic_workloads().items():
        seconds = best_time(work)
        record_property(name, round(seconds, 3))
        assert seconds < 3.0, f"{name} took {seconds:.2f} s"
