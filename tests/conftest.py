"""Shared test helpers: inline models, onnxruntime runs, the CLI through subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse(text: str) -> onnx.ModelProto:
    """A model from ONNX text syntax, checked."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


def graphfix_cli(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m graphfix ARGS` and capture its output.

    The default working directory is tests/, never the repository root: there `-m graphfix`
    would import the source tree instead of the installed package (whose graphfix.rules is the
    mapped rules/ folder).
    """
    environment = {**os.environ, **(env or {}), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "graphfix", *args],
        cwd=cwd or Path(__file__).resolve().parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def sample_data(name: str) -> tuple[dict[str, np.ndarray], np.lib.npyio.NpzFile]:
    """A committed sample's input feeds (npz keys `input:<name>`) and its whole npz."""
    data = np.load(SAMPLES / f"{name}.npz")
    return {k.removeprefix("input:"): data[k] for k in data.files if k.startswith("input:")}, data


def assert_matches_torch(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], data, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Every output of `model` equals the PyTorch output recorded in the sample's npz
    (`torch:<output name>`): exactly for integers and booleans, within rtol/atol for floats."""
    for output, value in zip(model.graph.output, run(model, feeds)):
        expected = data[f"torch:{output.name}"]
        if expected.dtype.kind in "biu":
            np.testing.assert_array_equal(value, expected)
        else:
            np.testing.assert_allclose(value, expected, rtol=rtol, atol=atol)
