"""samples/mmcv_ops.onnx: a small graph built with onnx.helper that looks like an mmdeploy export, carrying
`mmdeploy::grid_sampler` (3 attribute variants) and `mmdeploy::MMCVRoiAlign` custom nodes.

Run from the repo root:  /work/export-venv/bin/python samples/scripts/export_mmcv_ops.py

Graph (opset ai.onnx 11 + mmdeploy 1, as mmdeploy exports with its default opset 11):
  input [2,3,16,20] -> Conv 3x3 (8) -> Relu -> feat [2,8,16,20]
  theta (spatial-transformer style): GlobalAveragePool(feat) -> Flatten -> Gemm(8->6, weights small, bias =
      1.3 * identity affine + shift) -> Reshape [2,2,3] -> Transpose [2,3,2]
  grid = MatMul(base_grid [1,Ho*Wo,3] (affine_grid's base grid, align_corners=False), theta^T) -> Reshape
      [2,12,14,2]; the grid reaches about +-1.4, i.e. outside [-1, 1], so padding modes matter
  gs_bilinear_zeros    = mmdeploy::grid_sampler(feat, grid, interpolation_mode=0, padding_mode=0, align_corners=0)
  gs_nearest_border    = mmdeploy::grid_sampler(feat, grid, interpolation_mode=1, padding_mode=1, align_corners=1)
  gs_bilinear_reflect  = mmdeploy::grid_sampler(feat, grid, interpolation_mode=0, padding_mode=2, align_corners=0)
  sampled = Conv 1x1 (24 -> 4)(Concat(three grid_sampler outputs))          -> graph output `sampled` [2,4,12,14]
  feat2 = Relu(Conv 3x3 stride 2 (8 -> 8)(feat)) [2,8,8,10]
  roi_feats = mmdeploy::MMCVRoiAlign(feat2, rois, output_height=4, output_width=4, spatial_scale=0.5,
                                     sampling_ratio=2, mode="avg", aligned=1)  [R=6,8,4,4]
  roi_logits = Gemm(Flatten(roi_feats), 128 -> 3)                           -> graph output `roi_logits` [6,3]
  rois [6,5] (graph input): column 0 = batch index (0 or 1), columns 1-4 = x1,y1,x2,y2 in input pixels.
npz: input:input, input:rois, torch:sampled, torch:roi_logits (whole graph in torch with the same weights),
expected:<name> for the four custom-node outputs (F.grid_sample with the matching mode / padding_mode /
align_corners, torchvision.ops.roi_align(..., aligned=True)), plus expected:grid (the computed grid) and
expected:feat2 / expected:feat (their inputs).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

NAME = "mmcv_ops"
N, CIN, H, W = 2, 3, 16, 20
CF = 8
HO, WO = 12, 14
GS_VARIANTS = [  # (output name, interpolation_mode, padding_mode, align_corners, torch mode, torch padding)
    ("gs_bilinear_zeros", 0, 0, 0, "bilinear", "zeros"),
    ("gs_nearest_border", 1, 1, 1, "nearest", "border"),
    ("gs_bilinear_reflect", 0, 2, 0, "bilinear", "reflection"),
]
ROI = dict(output_height=4, output_width=4, spatial_scale=0.5, sampling_ratio=2, mode="avg", aligned=1)


def base_grid(ho, wo):
    """affine_grid's base grid for align_corners=False: [1, ho*wo, 3] rows (x, y, 1)."""
    xs = (np.arange(wo, dtype=np.float32) * 2 + 1) / wo - 1
    ys = (np.arange(ho, dtype=np.float32) * 2 + 1) / ho - 1
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy, np.ones_like(gx)], -1).reshape(1, ho * wo, 3).astype(np.float32)


def main():
    C.seed_all(0)
    rng = np.random.default_rng(0)
    w = {
        "conv1.weight": rng.normal(0, 0.3, (CF, CIN, 3, 3)).astype(np.float32),
        "conv1.bias": rng.normal(0, 0.1, (CF,)).astype(np.float32),
        "theta.weight": rng.normal(0, 0.05, (6, CF)).astype(np.float32),  # Gemm transB=1: [out, in]
        "theta.bias": np.array([1.3, 0.15, 0.1, -0.1, 1.25, -0.05], np.float32),
        "base_grid": base_grid(HO, WO),
        "theta_shape": np.array([-1, 2, 3], np.int64),
        "grid_shape": np.array([-1, HO, WO, 2], np.int64),
        "fuse.weight": rng.normal(0, 0.3, (4, 3 * CF, 1, 1)).astype(np.float32),
        "fuse.bias": rng.normal(0, 0.1, (4,)).astype(np.float32),
        "conv2.weight": rng.normal(0, 0.3, (CF, CF, 3, 3)).astype(np.float32),
        "conv2.bias": rng.normal(0, 0.1, (CF,)).astype(np.float32),
        "cls.weight": rng.normal(0, 0.1, (3, CF * 16)).astype(np.float32),
        "cls.bias": np.zeros(3, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1"], name="Conv_0",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["feat"], name="Relu_1"),
        helper.make_node("GlobalAveragePool", ["feat"], ["gap"], name="GlobalAveragePool_2"),
        helper.make_node("Flatten", ["gap"], ["gap_flat"], name="Flatten_3", axis=1),
        helper.make_node("Gemm", ["gap_flat", "theta.weight", "theta.bias"], ["theta_flat"], name="Gemm_4", transB=1),
        helper.make_node("Reshape", ["theta_flat", "theta_shape"], ["theta"], name="Reshape_5"),
        helper.make_node("Transpose", ["theta"], ["theta_t"], name="Transpose_6", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["base_grid", "theta_t"], ["grid_flat"], name="MatMul_7"),
        helper.make_node("Reshape", ["grid_flat", "grid_shape"], ["grid"], name="Reshape_8"),
    ]
    for i, (out, im, pm, ac, _, _) in enumerate(GS_VARIANTS):
        nodes.append(helper.make_node("grid_sampler", ["feat", "grid"], [out], name=f"grid_sampler_{9 + i}",
                                      domain="mmdeploy", interpolation_mode=im, padding_mode=pm, align_corners=ac))
    nodes += [
        helper.make_node("Concat", [v[0] for v in GS_VARIANTS], ["gs_cat"], name="Concat_12", axis=1),
        helper.make_node("Conv", ["gs_cat", "fuse.weight", "fuse.bias"], ["sampled"], name="Conv_13", kernel_shape=[1, 1]),
        helper.make_node("Conv", ["feat", "conv2.weight", "conv2.bias"], ["conv2"], name="Conv_14",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["conv2"], ["feat2"], name="Relu_15"),
        helper.make_node("MMCVRoiAlign", ["feat2", "rois"], ["roi_feats"], name="MMCVRoiAlign_16", domain="mmdeploy",
                         **ROI),
        helper.make_node("Flatten", ["roi_feats"], ["roi_flat"], name="Flatten_17", axis=1),
        helper.make_node("Gemm", ["roi_flat", "cls.weight", "cls.bias"], ["roi_logits"], name="Gemm_18", transB=1),
    ]
    R = 6
    graph = helper.make_graph(
        nodes, "mmdeploy_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [N, CIN, H, W]),
         helper.make_tensor_value_info("rois", TensorProto.FLOAT, [R, 5])],
        [helper.make_tensor_value_info("sampled", TensorProto.FLOAT, [N, 4, HO, WO]),
         helper.make_tensor_value_info("roi_logits", TensorProto.FLOAT, [R, 3])],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11), helper.make_opsetid("mmdeploy", 1)],
                              producer_name="pytorch", producer_version="1.13.1")
    model.ir_version = 7
    onnx.checker.check_model(model)  # custom domains are not checked beyond structure
    onnx_path = C.path(NAME + ".onnx")
    onnx.save(model, onnx_path)

    # inputs
    x = rng.uniform(0, 1, (N, CIN, H, W)).astype(np.float32)
    rois = np.array([
        [0, 1.0, 2.0, 13.0, 11.0],
        [0, 4.5, 0.0, 19.5, 15.9],
        [1, 0.0, 0.0, 20.0, 16.0],
        [1, 7.3, 3.1, 9.9, 5.2],   # smaller than one feature cell
        [0, -3.0, 10.0, 6.0, 22.0],  # partly outside the image
        [1, 12.0, 6.0, 18.0, 14.0],
    ], np.float32)

    # torch reference of the whole graph
    t = {k: torch.from_numpy(v) for k, v in w.items()}
    with torch.no_grad():
        xt = torch.from_numpy(x)
        feat = F.relu(F.conv2d(xt, t["conv1.weight"], t["conv1.bias"], padding=1))
        theta = F.linear(feat.mean((2, 3)), t["theta.weight"], t["theta.bias"]).reshape(-1, 2, 3)
        grid = torch.matmul(t["base_grid"], theta.transpose(1, 2)).reshape(-1, HO, WO, 2)
        # sanity: equals F.affine_grid(theta, align_corners=False)
        ag = F.affine_grid(theta, [N, CF, HO, WO], align_corners=False)
        assert torch.allclose(ag, grid, atol=1e-6), float((ag - grid).abs().max())
        expected = {"feat": feat, "grid": grid}
        for out, _, _, ac, mode, pad in GS_VARIANTS:
            expected[out] = F.grid_sample(feat, grid, mode=mode, padding_mode=pad, align_corners=bool(ac))
        sampled = F.conv2d(torch.cat([expected[v[0]] for v in GS_VARIANTS], 1), t["fuse.weight"], t["fuse.bias"])
        feat2 = F.relu(F.conv2d(feat, t["conv2.weight"], t["conv2.bias"], padding=1, stride=2))
        roi_feats = torchvision.ops.roi_align(feat2, torch.from_numpy(rois), output_size=(4, 4),
                                              spatial_scale=ROI["spatial_scale"], sampling_ratio=ROI["sampling_ratio"],
                                              aligned=True)
        roi_logits = F.linear(roi_feats.flatten(1), t["cls.weight"], t["cls.bias"])
        expected.update(feat2=feat2, roi_feats=roi_feats)
    g = grid.numpy()
    print(f"grid range [{g.min():.3f}, {g.max():.3f}], {100 * np.mean(np.abs(g) > 1):.1f}% of coordinates outside [-1, 1]")
    # nearest: stay away from exact .5 ties (round-half-even vs round-half-away differ between implementations)
    for ac in (0, 1):
        size = np.array([W, H], np.float32)
        pix = ((g + 1) / 2) * (size - 1) if ac else ((g + 1) * size - 1) / 2
        frac = np.abs(pix - np.floor(pix) - 0.5)
        print(f"align_corners={ac}: min distance of a sampling point to a nearest-rounding tie: {frac.min():.4f}")
    C.describe(onnx_path, interesting=("grid_sampler", "MMCVRoiAlign"))
    C.save_npz(NAME, {"input": x, "rois": rois},
               {"sampled": sampled.numpy(), "roi_logits": roi_logits.numpy()},
               {f"expected:{k}": v.numpy() for k, v in expected.items()})
    C.ort_check(onnx_path, {"input": x, "rois": rois}, {"sampled": sampled.numpy(), "roi_logits": roi_logits.numpy()})
    print("sanity check of the npz expectations: the same graph with standard ops (GridSample opset 16, RoiAlign "
          "half_pixel + Gather/Cast of column 0) in onnxruntime")
    std = standard_equivalent(model)
    C.ort_check(std, {"input": x, "rois": rois},
                {"sampled": sampled.numpy(), "roi_logits": roi_logits.numpy(),
                 **{k: v.numpy() for k, v in expected.items() if k.startswith("gs_") or k == "roi_feats"}})


def standard_equivalent(model):
    """in memory only: the mapping graphfix is expected to do, used here to cross-check the torch expectations."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    new_nodes = []
    for n in m.graph.node:
        a = C.attrs(n)
        if n.op_type == "grid_sampler":
            new_nodes.append(helper.make_node(
                "GridSample", list(n.input), list(n.output), name=n.name,
                mode=["bilinear", "nearest", "bicubic"][a["interpolation_mode"]],
                padding_mode=["zeros", "border", "reflection"][a["padding_mode"]], align_corners=a["align_corners"]))
        elif n.op_type == "MMCVRoiAlign":
            feat, rois = n.input
            m.graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "c0"),
                                        numpy_helper.from_array(np.array([1], np.int64), "c1"),
                                        numpy_helper.from_array(np.array([5], np.int64), "c5")])
            new_nodes += [
                helper.make_node("Gather", [rois, "c0"], ["bidx2"], axis=1),
                helper.make_node("Squeeze", ["bidx2", "c1"], ["bidx_f"]),
                helper.make_node("Cast", ["bidx_f"], ["bidx"], to=TensorProto.INT64),
                helper.make_node("Slice", [rois, "c1", "c5", "c1"], ["boxes"]),
                helper.make_node("RoiAlign", [feat, "boxes", "bidx"], list(n.output), name=n.name,
                                 coordinate_transformation_mode="half_pixel" if a["aligned"] else "output_half_pixel",
                                 mode=a["mode"], output_height=a["output_height"], output_width=a["output_width"],
                                 sampling_ratio=a["sampling_ratio"], spatial_scale=a["spatial_scale"]),
            ]
        else:
            new_nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    for name in [v[0] for v in GS_VARIANTS] + ["roi_feats"]:
        m.graph.output.append(onnx.ValueInfoProto(name=name))
    del m.opset_import[:]
    m.opset_import.extend([helper.make_opsetid("", 16)])
    m.ir_version = 8
    return m.SerializeToString()


if __name__ == "__main__":
    main()
