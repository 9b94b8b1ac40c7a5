"""graphfix on big models, against onnx load+save, onnxsim and Polygraphy, in one run.

    python benchmarks/run.py --quick      # 1k and 10k nodes + three samples, one repeat (< 5 min)
    python benchmarks/run.py              # 1k, 10k, 50k, 100k nodes + every sample, 3 repeats

Every job runs in a fresh process (benchmarks/_job.py) so peak RSS is its own. Prints medians,
ratios to the floor (onnx.load + onnx.save) and to each baseline, the per-stage split of
graphfix, the goals of the benchmark issue, and writes JSON (benchmarks/out/) for comparing
commits. Needs the bench extra: pip install ".[bench]".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402  (benchmarks/ is not a package)

JOBS = ("imports", "floor", "graphfix-no-verify", "graphfix", "onnxsim", "polygraphy", "ort-run")
QUICK_SAMPLES = ("superpoint_head", "hf_cumsum_text", "superglue_attention")


def _measure(job: str, model: Path, scratch: Path, repeats: int, timeout: float) -> dict:
    runs = []
    for _ in range(repeats):
        try:
            done = subprocess.run(
                [sys.executable, str(HERE / "_job.py"), job, str(model), str(scratch)],
                capture_output=True, text=True, timeout=timeout, cwd=HERE,
            )
            line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}"
            result = json.loads(line) if line.startswith("{") else {"error": done.stderr.strip()[-200:]}
        except subprocess.TimeoutExpired:
            result = {"error": f"timed out after {timeout:.0f}s"}
        runs.append(result)
        if "error" in result:
            break
    return _median(runs)


def _median(runs: list[dict]) -> dict:
    good = [r for r in runs if "error" not in r and r.get("seconds") == r.get("seconds")]
    if not good:
        return {"error": runs[-1].get("error", "failed")}
    result = dict(good[len(good) // 2])
    result["seconds"] = statistics.median(r["seconds"] for r in good)
    result["peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in good)
    if "stages" in good[0]:
        result["stages"] = {k: statistics.median(r["stages"].get(k, 0.0) for r in good) for k in good[0]["stages"]}
    result["repeats"] = len(good)
    return result


def _ratio(a: dict, b: dict) -> str:
    if "error" in a or "error" in b or not b.get("seconds"):
        return "-"
    return f"{a['seconds'] / b['seconds']:.2f}x"


def _over_imports(entry: dict, imports: dict, megabytes: float) -> str:
    """Peak RSS above an idle interpreter with graphfix imported, per MB of model."""
    if "error" in entry or "error" in imports:
        return "-"
    return f"{(entry['peak_rss_mb'] - imports['peak_rss_mb']) / max(megabytes, 1):.1f}x"


def _seconds(entry: dict) -> str:
    return entry["error"][:30] if "error" in entry else f"{entry['seconds']:.2f}s"


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="median seconds (ratio to onnx load+save, the floor)", title_justify="left")
    for column in ("model", "nodes", "MB", "load+save", "gf --no-verify", "gf (verify)", "onnxsim", "polygraphy",
                   "gf vs onnxsim", "gf vs polygraphy", "ORT run", "verify / ORT run", "peak RSS / size",
                   "(RSS - imports) / size"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for row in rows:
        r = row["results"]
        gf, floor = r["graphfix"], r["floor"]
        verify_cost = "-"
        if "error" not in gf and "error" not in r["ort-run"] and r["ort-run"]["seconds"]:
            verify_cost = f"{gf['stages'].get('verify', 0.0) / r['ort-run']['seconds']:.1f}"
        table.add_row(
            row["model"], str(row["nodes"]), f"{row['mb']:.1f}", _seconds(floor),
            f"{_seconds(r['graphfix-no-verify'])} ({_ratio(r['graphfix-no-verify'], floor)})",
            f"{_seconds(gf)} ({_ratio(gf, floor)})",
            f"{_seconds(r['onnxsim'])} ({_ratio(r['onnxsim'], floor)})",
            f"{_seconds(r['polygraphy'])} ({_ratio(r['polygraphy'], floor)})",
            _ratio(gf, r["onnxsim"]), _ratio(gf, r["polygraphy"]),
            _seconds(r["ort-run"]), verify_cost,
            "-" if "error" in gf else f"{gf['peak_rss_mb'] / max(row['mb'], 1):.1f}x",
            _over_imports(gf, r["imports"], row["mb"]),
        )
    Console(width=250).print(table)
    stages = Table(title="graphfix apply (verify) by stage, median seconds", title_justify="left")
    for column in ("model", "load", "match", "rewrite", "tidy", "verify", "save", "matches", "full ORT runs",
                   "regions in final run", "regions run alone"):
        stages.add_column(column, justify="right" if column != "model" else "left")
    for row in rows:
        gf = row["results"]["graphfix"]
        if "error" in gf:
            continue
        s = gf["stages"]
        stages.add_row(row["model"], *(f"{s.get(k, 0.0):.2f}" for k in ("load", "match", "rewrite", "tidy", "verify", "save")),
                       str(gf["matches"]), str(gf["full_runs"]), str(gf.get("regions_in_final_run", 0)),
                       str(gf["region_checks"]))
    Console(width=250).print(stages)


def _goals(rows: list[dict]) -> list[str]:
    """The benchmark issue's goals, as measured here."""
    lines = []
    generated = [r for r in rows if r["model"].startswith("blocks_")]
    if generated:
        largest = max(generated, key=lambda r: r["nodes"])
        r = largest["results"]
        lines.append(f"apply --no-verify on {largest['nodes']} nodes: {_ratio(r['graphfix-no-verify'], r['floor'])} of load+save (goal <= 1.5x)")
    for small, big in zip(generated, generated[1:]):
        a, b = small["results"]["graphfix-no-verify"], big["results"]["graphfix-no-verify"]
        if "error" in a or "error" in b:
            continue
        grow = big["nodes"] / small["nodes"]
        work = lambda e: e["stages"]["match"] + e["stages"]["rewrite"]  # noqa: E731
        lines.append(f"match+rewrite {small['nodes']} -> {big['nodes']} nodes ({grow:.0f}x): {work(b) / max(work(a), 1e-9):.1f}x time (goal <= {1.1 * grow:.0f}x)")
    for row in generated:
        gf, ort_run = row["results"]["graphfix"], row["results"]["ort-run"]
        if "error" in gf or "error" in ort_run:
            continue
        lines.append(
            f"{row['model']}: verification = {gf['full_runs']} full ORT run(s) + {gf['region_checks']} regions run alone, "
            f"{gf['stages']['verify'] / ort_run['seconds']:.1f} ORT-run equivalents (goal <= 2); "
            f"peak RSS {gf['peak_rss_mb']:.0f} MB = {gf['peak_rss_mb'] / max(row['mb'], 1):.1f}x the model, "
            f"{_over_imports(gf, row['results']['imports'], row['mb'])} above the imports (goal <= 2.5x)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1k and 10k nodes, three samples, one repeat")
    parser.add_argument("--sizes", type=int, nargs="*", help="generated model sizes (nodes)")
    parser.add_argument("--repeats", type=int, help="runs per job (median reported)")
    parser.add_argument("--jobs", nargs="*", default=list(JOBS), choices=JOBS)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args()
    sizes = args.sizes or ([1000, 10000] if args.quick else [1000, 10000, 50000, 100000])
    repeats = args.repeats or (1 if args.quick else 3)
    samples = sorted((REPO / "samples").glob("*.onnx"))
    if args.quick:
        samples = [s for s in samples if s.stem in QUICK_SAMPLES]
    started = time.perf_counter()
    paths = [models.write(n, args.out / "models") for n in sizes] + samples
    rows = []
    for path in paths:
        import onnx

        nodes = len(onnx.load(path, load_external_data=False).graph.node)
        timeout = 120 + nodes / 100
        results = {job: _measure(job, path, args.out / "scratch", repeats, timeout) if job in args.jobs else {"error": "skipped"} for job in JOBS}
        rows.append({"model": path.stem, "nodes": nodes, "mb": path.stat().st_size / 1e6, "results": results})
        print(f"measured {path.stem} ({nodes} nodes) at {time.perf_counter() - started:.0f}s", file=sys.stderr)
    _print_table(rows)
    goals = _goals(rows)
    print("\n".join(goals))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip() or "unknown"
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / f"results-{commit}{'-quick' if args.quick else ''}.json"
    result_path.write_text(json.dumps({"commit": commit, "seconds": time.perf_counter() - started, "rows": rows, "goals": goals}, indent=2))
    print(f"total {time.perf_counter() - started:.0f}s; wrote {result_path}")


if __name__ == "__main__":
    main()
