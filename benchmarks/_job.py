"""One measured job in a fresh process; prints one JSON line (seconds, stages, peak RSS).

Run by benchmarks/run.py: `python benchmarks/_job.py JOB MODEL OUTPUT_DIR`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _floor(model: Path, out: Path) -> dict:
    import onnx

    start = time.perf_counter()
    proto = onnx.load(model)
    onnx.save(proto, out / "floor.onnx")
    return {"seconds": time.perf_counter() - start}


def _graphfix(model: Path, out: Path, verify: bool) -> dict:
    import graphfix as gf

    start = time.perf_counter()
    report = gf.apply_file(model, out / "graphfix.onnx", gf.ApplyOptions(verify=verify, entry_points=False))
    seconds = time.perf_counter() - start
    stages = dict(report.stages)
    for name in ("match", "rewrite", "tidy"):
        stages[name] = sum(p.stage_seconds.get(name, 0.0) for p in report.passes)
    stages["verify"] = report.verification.seconds
    return {
        "seconds": seconds,
        "stages": stages,
        "matches": sum(p.matches for p in report.passes),
        "nodes": [report.nodes_before, report.nodes_after],
        "full_runs": report.verification.full_runs,
        "region_checks": report.verification.region_checks,
        "regions_in_final_run": report.verification.regions_in_final_run,
        "rolled_back": [p.name for p in report.rolled_back],
    }


def _onnxsim(model: Path, out: Path) -> dict:
    import onnx
    import onnxsim

    start = time.perf_counter()
    simplified, _ = onnxsim.simplify(onnx.load(model), check_n=0)
    onnx.save(simplified, out / "onnxsim.onnx")
    return {"seconds": time.perf_counter() - start}


def _polygraphy(model: Path, out: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "polygraphy"), "surgeon", "sanitize", "--fold-constants", str(model), "-o", str(out / "polygraphy.onnx")],
        capture_output=True, text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        return {"seconds": seconds, "error": done.stderr.strip().splitlines()[-1][:200]}
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": seconds, "peak_rss_children_mb": peak / 1024}


def _ort_run(model: Path, out: Path) -> dict:
    """One full onnxruntime run of the model file in one session, on the verifier's inputs: the
    unit verification is counted in. Graph transforms are off, as in graphfix, which makes this
    the cheapest whole-model run (the default ORT_ENABLE_ALL takes longer to create)."""
    import onnxruntime as ort

    from graphfix import ir, verify

    feeds = verify.make_feeds(verify.model_inputs(ir.load(model).graph))
    start = time.perf_counter()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    return {"seconds": time.perf_counter() - start}


def _imports(model: Path, out: Path) -> dict:
    """What the interpreter holds before any model: graphfix, onnx, onnxruntime, numpy loaded."""
    start = time.perf_counter()
    import onnxruntime  # noqa: F401

    import graphfix  # noqa: F401

    return {"seconds": time.perf_counter() - start}


JOBS = {
    "imports": _imports,
    "floor": _floor,
    "graphfix-no-verify": lambda m, o: _graphfix(m, o, verify=False),
    "graphfix": lambda m, o: _graphfix(m, o, verify=True),
    "onnxsim": _onnxsim,
    "polygraphy": _polygraphy,
    "ort-run": _ort_run,
}


def _peak_rss_mb() -> float:
    """This process's own high-water RSS. Not ru_maxrss: Linux carries that across fork and exec,
    so a job would report the benchmark driver's peak when it is larger (every small sample
    showed the 573 MB the driver held after reading the 100k-node model)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    job, model, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = JOBS[job](model, out)
    except Exception as error:  # a failing tool is a result to report, not a crash of the benchmark
        result = {"seconds": float("nan"), "error": f"{type(error).__name__}: {str(error)[:200]}"}
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
