"""The report of a scripts/gpu_check.sh run: results.json and summary.md under its $OUT.

    gpu_check_report.py summary OUT [--mode gpu|dry-run]   write both; exit 1 if a step failed
    gpu_check_report.py kernels RES_USAGE_TXT              the dll_ext kernels of a
                                                           `cuobjdump -res-usage` listing, as a table

Standard library only: it must report even a run whose torch or build is broken. It reads
what the script leaves in OUT: steps.tsv (one line per step), logs/<step>.log,
cuda-tests.xml (pytest's junit XML), res-usage.txt and bench/*.json.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

TIMEOUT_EXIT_CODES = {"124", "137"}  # timeout's own; 137 when it had to SIGKILL
FAILING = {"failed", "timeout", "errors"}
SUMMARY_MAX_LINES = 59
SANITIZER_STEPS = ("memcheck", "racecheck")
SMOKE_STEPS = ("smoke",) + SANITIZER_STEPS


@dataclass
class Step:
    name: str
    status: str  # ok | failed | timeout | skipped | unavailable; sanitizers: clean | errors
    exit_code: Optional[int]
    seconds: float
    limit_s: int
    note: str


def read_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def first_lines(text: str, count: int, width: int = 160) -> List[str]:
    return [line[:width] for line in text.strip().splitlines()[:count]]


def last_lines(text: str, count: int, width: int = 160) -> List[str]:
    return [line[:width] for line in text.strip().splitlines()[-count:]]


# ----------------------------------------------------------------------------------------
# Sanitizers
# ----------------------------------------------------------------------------------------

ERROR_SUMMARY = re.compile(r"^=+ ERROR SUMMARY: (\d+) errors?", re.M)
RACECHECK_SUMMARY = re.compile(r"^=+ RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?, (\d+) warnings?\)", re.M)
# The first line of a report; its details follow on indented '=========     ' lines.
SANITIZER_REPORT = re.compile(r"^=+ (Invalid|Error|Program hit|Race|Malformed|Barrier|Uninitiali[sz]ed)")
# How compute-sanitizer says it cannot work on this device or runtime.
REFUSED = re.compile(r"not supported|unsupported|no supported device|unable to (?:initiali[sz]e|find)|"
                     r"failed to initiali[sz]e|terminated before first instrumented API call", re.I)
SANITIZER_EXIT_CODE = 86  # gpu_check.sh passes it as --error-exitcode


def first_sanitizer_report(log: str) -> List[str]:
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if SANITIZER_REPORT.match(line):
            details = [line]
            for follow in lines[i + 1:i + 3]:
                if not re.match(r"^=+\s{3,}\S", follow):
                    break
                details.append(follow)
            return [d.lstrip("= ").rstrip()[:160] for d in details]
    return []


def refusal(log: str) -> Optional[str]:
    """compute-sanitizer's line refusing the device, if any: one of its own lines, or any line
    when the program under it never got to print a smoke case."""
    ran_cases = bool(SMOKE_LINE.search(log))
    for line in log.splitlines():
        if (line.startswith("=") or not ran_cases) and REFUSED.search(line):
            return line.lstrip("= ").strip()[:160]
    return None


def sanitizer_result(exit_code: Optional[int], log: str) -> Dict:
    errors = sum(int(n) for n in ERROR_SUMMARY.findall(log)) + sum(int(e) for e, _ in RACECHECK_SUMMARY.findall(log))
    warnings = sum(int(w) for _, w in RACECHECK_SUMMARY.findall(log))
    summarised = bool(ERROR_SUMMARY.search(log) or RACECHECK_SUMMARY.search(log))
    first = first_sanitizer_report(log)
    refused = refusal(log)
    if refused and not errors:
        status = "unavailable"
    elif errors or exit_code == SANITIZER_EXIT_CODE or (first and not summarised):  # no summary: cut short
        status = "errors"
    elif str(exit_code) in TIMEOUT_EXIT_CODES:
        status = "timeout"
    elif exit_code == 0:
        status = "clean"
    else:
        status = "failed"  # the smoke script failed under the sanitizer without its finding anything
    return {"status": status, "errors": errors, "warnings": warnings, "first_error": first,
            "refusal": refused}


# ----------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------


def step_status(recorded: str, exit_code: Optional[int], name: str, log: str) -> str:
    if recorded != "ran":
        return recorded
    if name in SANITIZER_STEPS:
        return sanitizer_result(exit_code, log)["status"]
    if str(exit_code) in TIMEOUT_EXIT_CODES:
        return "timeout"
    return "ok" if exit_code == 0 else "failed"


def read_steps(out: Path) -> List[Step]:
    steps = []
    for line in read_text(out / "steps.tsv").splitlines():
        name, recorded, code, seconds, limit, note = (line.split("\t") + [""] * 6)[:6]
        exit_code = int(code) if code.strip() else None
        log = read_text(out / "logs" / f"{name}.log")
        steps.append(Step(name, step_status(recorded, exit_code, name, log), exit_code, float(seconds or 0),
                          int(limit or 0), note))
    return steps


# ----------------------------------------------------------------------------------------
# Build, tests, smoke
# ----------------------------------------------------------------------------------------

# gcc's and nvcc's "error:" / ": error", ninja's FAILED: and torch's final "Error compiling".
COMPILER_ERROR = re.compile(r"\berror\b\s*:|: error\b|^FAILED:|\bError\b")
SPILL = re.compile(r"Registers are spilled to local memory in function '([^']+)', "
                   r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def first_build_error(log: str) -> List[str]:
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if COMPILER_ERROR.search(line):
            return first_lines("\n".join(lines[i:i + 3]), 3)
    return last_lines(log, 3)


def spills(build_log: str) -> Dict[str, Dict[str, int]]:
    return {name: {"spill_stores": int(stores), "spill_loads": int(loads)}
            for name, stores, loads in SPILL.findall(build_log)}


def read_junit(path: Path) -> Optional[Dict]:
    """Every test case's outcome from pytest's junit XML, or None without the file."""
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"error": f"unreadable junit XML: {exc}", "counts": {}, "cases": []}
    cases = []
    for case in root.iter("testcase"):
        test_id = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "").strip()
                break
        cases.append({"id": test_id, "outcome": outcome, "seconds": float(case.get("time") or 0),
                      "message": message})
    counts: Dict[str, int] = {}
    for case in cases:
        counts[case["outcome"]] = counts.get(case["outcome"], 0) + 1
    return {"counts": counts, "cases": cases}


def first_test_failure(tests: Optional[Dict]) -> Optional[List[str]]:
    for case in (tests or {}).get("cases", []):
        if case["outcome"] in ("failed", "error"):
            return [f"{case['id']} ({case['outcome']})"] + first_lines(case["message"], 2)
    return None


SMOKE_LINE = re.compile(r"^(OK|FAIL)\s+(\S+)\s+(.*)$", re.M)


def smoke_cases(log: str) -> List[Dict]:
    return [{"case": name, "ok": verdict == "OK", "detail": detail.strip()}
            for verdict, name, detail in SMOKE_LINE.findall(log)]


# ----------------------------------------------------------------------------------------
# Kernels (cuobjdump -res-usage)
# ----------------------------------------------------------------------------------------

FUNCTION = re.compile(r"^\s*Function ([^\s:]+):\s*$")
RESOURCE = re.compile(r"([A-Z]+(?:\[\d+\])?):(\d+)")


def demangle(names: List[str]) -> Dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    result = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, timeout=10)
    readable = result.stdout.splitlines()
    return dict(zip(names, readable)) if result.returncode == 0 and len(readable) == len(names) else {n: n for n in names}


def dll_ext_kernels(res_usage: str, spilled: Dict[str, Dict[str, int]]) -> List[Dict]:
    """Registers, stack, shared and local memory of every dll_ext kernel, with the spill bytes
    ptxas reported in the build."""
    kernels, lines = [], res_usage.splitlines()
    for i, line in enumerate(lines):
        match = FUNCTION.match(line)
        if match and "dll_ext" in match.group(1) and i + 1 < len(lines):
            usage = {key: int(value) for key, value in RESOURCE.findall(lines[i + 1])}
            kernels.append({"mangled": match.group(1), "registers": usage.get("REG"), "stack": usage.get("STACK"),
                            "shared": usage.get("SHARED"), "local": usage.get("LOCAL"),
                            **spilled.get(match.group(1), {"spill_stores": 0, "spill_loads": 0})})
    names = demangle([k["mangled"] for k in kernels])
    for kernel in kernels:
        kernel["name"] = names[kernel["mangled"]]
    return kernels


def kernels_table(kernels: List[Dict]) -> str:
    rows = [f"{'REG':>4} {'STACK':>6} {'SHARED':>7} {'LOCAL':>6}  kernel"]
    rows += [f"{k['registers']:>4} {k['stack']:>6} {k['shared']:>7} {k['local']:>6}  {k['name']}" for k in kernels]
    return "\n".join(rows + [f"{len(kernels)} dll_ext kernels"])


def uses_local_memory(kernel: Dict) -> bool:
    return bool(kernel["spill_stores"] or kernel["local"] or kernel["stack"])


# ----------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------

BENCH_CASE = re.compile(r"^\[\d+/\d+\] (\S+)\s+\((.*), (\w+)\)\s*\n\s+ours ([\d.]+) ms, native ([\d.]+) ms, "
                        r"speedup ([\d.]+)x", re.M)


def read_benchmark(out: Path) -> Dict:
    """The bench's JSON as written; without it (a timed-out bench), the cases its log finished."""
    files = sorted((out / "bench").glob("*.json"))
    if files:
        run = json.loads(files[0].read_text())
        cases = [{"name": c["name"], "dtype": c["dtype"], "ours_ms": c["impls"]["ours"]["median_ms"],
                  "native_ms": c["impls"]["native"]["median_ms"], "speedup": c["speedup"], "target": c["target"],
                  "meets_target": c["meets_target"]} for c in run["cases"]]
        return {"file": str(files[0].relative_to(out)), "cases": cases, "run": run}
    cases = [{"name": name, "dtype": dtype, "ours_ms": float(ours), "native_ms": float(native),
              "speedup": float(speedup), "target": None, "meets_target": None}
             for name, _, dtype, ours, native, speedup in BENCH_CASE.findall(read_text(out / "logs" / "benchmark.log"))]
    return {"file": None, "cases": cases, "from_log": True} if cases else {}


# ----------------------------------------------------------------------------------------
# Putting it together
# ----------------------------------------------------------------------------------------


def collect(out: Path, mode: str, budget: int) -> Dict:
    steps = read_steps(out)
    logs = {step.name: read_text(out / "logs" / f"{step.name}.log") for step in steps}
    by_name = {step.name: step for step in steps}
    tests = read_junit(out / "cuda-tests.xml")
    kernels = dll_ext_kernels(read_text(out / "res-usage.txt"), spills(logs.get("build", "")))
    sanitizers = {}
    for name in SANITIZER_STEPS:
        step = by_name.get(name)
        if step and step.exit_code is not None:
            sanitizers[name] = sanitizer_result(step.exit_code, logs[name])
        elif step and step.status == "unavailable":  # the script found no compute-sanitizer
            sanitizers[name] = {"status": "unavailable", "refusal": step.note}
    smoke = {name: smoke_cases(logs[name]) for name in SMOKE_STEPS if logs.get(name)}
    results = {
        "mode": mode,
        "overall": "fail" if any(step.status in FAILING for step in steps) else "pass",
        "environment": first_lines(logs.get("environment", ""), 12),
        "steps": [asdict(step) for step in steps],
        "total_seconds": round(sum(step.seconds for step in steps), 1),
        "budget_seconds": budget,
        "tests": tests,
        "smoke": smoke,
        "sanitizers": sanitizers,
        "kernels": kernels,
        "benchmark": read_benchmark(out),
    }
    results["first_failures"] = first_failures(results, by_name, logs)
    return results


def first_failures(results: Dict, steps: Dict[str, Step], logs: Dict[str, str]) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    environment = steps.get("environment")
    if environment and environment.status in FAILING:
        found["environment"] = [environment.note] if environment.note else last_lines(logs["environment"], 2)
    if "build" in steps and steps["build"].status in FAILING:
        found["build"] = first_build_error(logs.get("build", ""))
    test_failure = first_test_failure(results["tests"])
    if test_failure:
        found["test"] = test_failure
    elif "cuda-tests" in steps and steps["cuda-tests"].status in FAILING:
        found["test"] = [f"cuda-tests {steps['cuda-tests'].status}, no failing case in the junit XML"] + \
            last_lines(logs["cuda-tests"], 3)
    for name, cases in results["smoke"].items():
        failed = [c for c in cases if not c["ok"]]
        if failed:
            found["smoke"] = [f"{name}: {failed[0]['case']}: {failed[0]['detail']}"]
            break
    for name, result in results["sanitizers"].items():
        if result["status"] == "errors":
            found["sanitizer"] = [f"{name}: {result['errors']} errors"] + result["first_error"]
            break
    for name in ("info", "resource-usage", "benchmark", "report"):
        if name in steps and steps[name].status in FAILING:
            found[name] = [steps[name].status] + last_lines(logs[name], 2)
    return found


def sanitizer_line(results: Dict, steps: List[Step]) -> str:
    parts = []
    for step in steps:
        if step.name not in SANITIZER_STEPS:
            continue
        result = results["sanitizers"].get(step.name, {})
        status = result.get("status", step.status)
        detail = ""
        if status == "errors":
            detail = f" ({result['errors']} errors)"
        elif status == "unavailable":
            detail = f" ({result.get('refusal') or step.note})"
        elif status == "skipped":
            detail = f" ({step.note})"
        elif result.get("warnings"):
            detail = f" ({result['warnings']} warnings)"
        cases = results["smoke"].get(step.name)
        if cases is not None:
            detail += f", {len(cases)} cases"
        parts.append(f"{step.name}: {status}{detail}")
    return "; ".join(parts)


def summary_lines(results: Dict) -> List[str]:
    steps = [Step(**s) for s in results["steps"]]
    lines = [f"# dll_ext GPU check{' (dry run)' if results['mode'] == 'dry-run' else ''}: {results['overall'].upper()}",
             ""] + [f"    {line}" for line in results["environment"] if line.startswith(("python", "device"))]
    lines += ["", "| step | status | s | limit s |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status}{f' ({s.note})' if s.note else ''} | {s.seconds:.1f} | {s.limit_s} |" for s in steps]
    lines.append(f"| total | | {results['total_seconds']:.1f} | {results['budget_seconds']} |")
    tests = results["tests"]
    if tests:
        lines += ["", "CUDA tests: " + ", ".join(f"{n} {k}" for k, n in sorted(tests["counts"].items()))]
    lines += ["", "## First failure of each kind"]
    failures = results["first_failures"]
    lines += [f"- {kind}: " + " / ".join(f"`{d}`" for d in details) for kind, details in failures.items()] or ["none"]
    lines += ["", "## Sanitizers", sanitizer_line(results, steps) or "not run"]
    kernels = results["kernels"]
    if kernels:
        heavy = [k for k in kernels if uses_local_memory(k)]
        lines += ["", f"## Kernels with spills or local memory: {len(heavy)} of {len(kernels)} dll_ext kernels"]
        for k in heavy[:5]:
            lines.append(f"- `{k['name'][:110]}` REG {k['registers']}, spill {k['spill_stores']}/{k['spill_loads']} B "
                         f"st/ld, stack {k['stack']} B, local {k['local']} B")
        if len(heavy) > 5:
            lines.append(f"- and {len(heavy) - 5} more (results.json)")
    return lines + benchmark_lines(results["benchmark"], SUMMARY_MAX_LINES - len(lines))


def benchmark_lines(bench: Dict, room: int) -> List[str]:
    cases = bench.get("cases", [])
    if not cases:
        return []
    source = "its log: the bench did not finish" if bench.get("from_log") else bench["file"]
    head = ["", f"## Benchmark: ours vs native ({source})",
            "| case | dtype | ours ms | native ms | speedup | target |", "|---|---|---|---|---|---|"]
    rows = []
    for c in cases:
        target = "" if c["target"] is None else f">={c['target']:.2f}x {'ok' if c['meets_target'] else 'MISS'}"
        rows.append(f"| {c['name']} | {c['dtype']} | {c['ours_ms']:.3f} | {c['native_ms']:.3f} | "
                    f"{c['speedup']:.2f}x | {target} |")
    fits = max(0, room - len(head) - 1)
    if len(rows) > fits:
        rows = rows[:fits] + [f"| and {len(cases) - fits} more cases in results.json | | | | | |"]
    return head + rows


def write_report(out: Path, mode: str, budget: int) -> Dict:
    results = collect(out, mode, budget)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.md").write_text("\n".join(summary_lines(results)) + "\n")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="write OUT/results.json and OUT/summary.md")
    p.add_argument("out", type=Path)
    p.add_argument("--mode", choices=["gpu", "dry-run"], default="gpu")
    p.add_argument("--budget", type=int, required=True, help="the sum of the steps' timeouts, s")
    p = sub.add_parser("kernels", help="print the dll_ext kernels of a cuobjdump -res-usage listing")
    p.add_argument("listing", type=Path)
    args = parser.parse_args(argv)
    if args.command == "kernels":
        print(kernels_table(dll_ext_kernels(read_text(args.listing), {})))
        return 0
    results = write_report(args.out, args.mode, args.budget)
    print((args.out / "summary.md").read_text(), end="")
    print(f"results: {args.out / 'results.json'}")
    return 0 if results["overall"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
