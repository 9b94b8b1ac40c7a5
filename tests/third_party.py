"""Run graphfix over every .onnx model installed Python packages ship; report what happened.

    python tests/third_party.py [--target trt8.6] [--json out.json] [--limit N]

For each model found under site-packages (onnx's backend test data, onnxruntime's datasets,
rapidocr's detection/recognition/classification models when `rapidocr_onnxruntime` is
installed, ...): `graphfix apply --target T` and `graphfix check --target T --json`, each in its
own process. Outcomes: ok, refused (exit 2 with one clear line: bad input graphfix explains),
crash (anything else: a traceback, an internal error, a timeout), plus the passes rolled back
or unverified and the findings left. Not part of the test suite: a crash found here becomes a
fix and a regression test. See tests/README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

_TIMEOUT = 600


def installed_models() -> list[Path]:
    """Every .onnx file below the interpreter's site-packages (symlinked folders included)."""
    root = Path(sysconfig.get_paths()["purelib"])
    return sorted(p for p in root.rglob("*.onnx") if p.is_file())


def _graphfix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphfix", *args], capture_output=True, text=True,
                          timeout=_TIMEOUT, cwd=tempfile.gettempdir())


def _outcome(done: subprocess.CompletedProcess, allowed: tuple[int, ...]) -> str:
    lines = done.stderr.strip().splitlines()
    if done.returncode in allowed and "Traceback" not in done.stderr:
        return "ok"
    if done.returncode == 2 and len(lines) == 1 and lines[0].startswith("graphfix: error:"):
        return "refused"
    return "crash"


def examine(model: Path, target: str, scratch: Path) -> dict:
    """apply and check one model; returns what happened."""
    out, report = scratch / "fixed.onnx", scratch / "report.json"
    for stale in (out, report):
        stale.unlink(missing_ok=True)
    entry: dict = {"model": str(model)}
    try:
        applied = _graphfix("apply", str(model), "-o", str(out), "--target", target, "--report", str(report))
    except subprocess.TimeoutExpired:
        return {**entry, "apply": "crash", "message": f"timed out after {_TIMEOUT}s"}
    entry["apply"] = _outcome(applied, (0,))
    entry["message"] = applied.stderr.strip().splitlines()[-1][:300] if applied.returncode else ""
    if report.exists():
        passes = json.loads(report.read_text())["passes"]
        entry["rolled_back"] = [p["name"] for p in passes if p["status"] == "rolled back"]
        entry["unverified"] = [p["name"] for p in passes if p["status"] == "unverified"]
        entry["rewrites"] = sum(p["matches"] for p in passes)
    if out.exists():
        checked = _graphfix("check", str(out), "--target", target, "--json")
        entry["check"] = _outcome(checked, (0, 1))
        if entry["check"] == "ok":
            entry["leftovers"] = json.loads(checked.stdout).get("counts", {})
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="trt8.6")
    parser.add_argument("--json", type=Path, help="write every model's outcome")
    parser.add_argument("--limit", type=int, help="examine only the first N models")
    args = parser.parse_args()
    models = installed_models()[: args.limit]
    results = []
    with tempfile.TemporaryDirectory(prefix="graphfix-third-party-") as folder:
        for index, model in enumerate(models, 1):
            entry = examine(model, args.target, Path(folder))
            results.append(entry)
            flag = entry["apply"] if entry.get("check", "ok") == "ok" else f"check {entry['check']}"
            print(f"[{index}/{len(models)}] {flag:8} {model.parent.name}/{model.name} {entry.get('message', '')}", flush=True)
    crashes = [r for r in results if "crash" in (r["apply"], r.get("check"))]
    summary = {
        "models": len(results),
        "ok": sum(r["apply"] == "ok" for r in results),
        "refused": sum(r["apply"] == "refused" for r in results),
        "crashes": len(crashes),
        "rolled_back": sorted({name for r in results for name in r.get("rolled_back", [])}),
        "unverified": sum(bool(r.get("unverified")) for r in results),
        "with_leftovers": sum(any((r.get("leftovers") or {}).values()) for r in results),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "models": results}, indent=2))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
