"""``python -m tests.fuzz --seconds 600`` (``make fuzz SECONDS=600``): fuzz the loader for a while.

The supervisor starts a worker process that fuzzes with an address-space ceiling; the worker
writes each case's bytes to ``current.mlmodel`` before running it. If the worker dies (a crash
in C code, the OOM killer) or stops making progress (a hang inside C code, where the in-process
timer cannot interrupt it), the supervisor keeps that case as a crash and starts a new worker.
At the end it prints the report: cases tried, distinct errors by type and message pattern,
crashes (each saved, shrunk, under --out).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "fuzz"), help="where crashes and the report go")
    ap.add_argument("--case-seconds", type=float, default=20.0, help="a case running longer is a hang")
    ap.add_argument("--no-corpus", action="store_true", help="seed from built-in models and the example only")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--until", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    return worker(args) if args.worker else supervise(args)


def supervise(args):
    out = Path(args.out)
    state = out / "state"
    state.mkdir(parents=True, exist_ok=True)
    for old in state.glob("stats-*.json"):
        old.unlink()
    deadline = time.time() + args.seconds
    hard_crashes, run = [], 0
    while deadline - time.time() > 5:
        cmd = [sys.executable, "-m", "tests.fuzz", "--worker", "--until", str(deadline), "--seed",
               str(args.seed + 100_000 * run), "--out", str(out), "--case-seconds", str(args.case_seconds)]
        if args.no_corpus:
            cmd.append("--no-corpus")
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        current = state / "current.mlmodel"
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        stale_after = max(60.0, 3 * args.case_seconds)
        while proc.poll() is None:
            time.sleep(1)
            if current.exists() and time.time() - current.stat().st_mtime > stale_after:
                proc.kill()
                proc.wait()
                break
            if time.time() > deadline + 120:
                proc.kill()
                proc.wait()
        if proc.returncode > 0:
            print(f"fuzz: the worker failed (status {proc.returncode}); stopping", file=sys.stderr)
            break
        if proc.returncode != 0 and current.exists():
            kept = out / f"hard-crash-{run}.mlmodel"
            current.replace(kept)
            hard_crashes.append(f"worker ended with status {proc.returncode} on {kept}")
        run += 1
    report = merge(state, hard_crashes)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print_report(report, out)
    return 1 if report["crashes"] else 0


def worker(args):
    from . import harness
    from .runner import Fuzzer
    current = Path(args.out) / "state" / "current.mlmodel"
    stats_file = Path(args.out) / "state" / f"stats-{os.getpid()}.json"

    def before_case(data):
        current.write_bytes(data)

    seeds = harness.seed_models(corpus=not args.no_corpus)
    fuzzer = Fuzzer(seeds, harness.implementations(), out=args.out, case_seconds=args.case_seconds,
                    before_case=before_case)
    batch = 0
    with harness.memory_ceiling(4 << 30):
        while time.time() < args.until:
            fuzzer.run_batch(args.seed + batch, args.until)
            batch += 1
            stats_file.write_text(json.dumps(fuzzer.stats.as_dict()))
    stats_file.write_text(json.dumps(fuzzer.stats.as_dict()))
    current.unlink(missing_ok=True)
    return 0


def merge(state, hard_crashes):
    total = {"cases": 0, "ok": 0, "errors": {}, "crashes": {}}
    for path in state.glob("stats-*.json"):
        s = json.loads(path.read_text())
        total["cases"] += s["cases"]
        total["ok"] += s["ok"]
        for key in ("errors", "crashes"):
            for pattern, n in s[key].items():
                total[key][pattern] = total[key].get(pattern, 0) + n
    for line in hard_crashes:
        total["crashes"][line] = 1
    return total


def print_report(report, out):
    errors = report["errors"]
    by_type = {}
    for pattern, n in errors.items():
        t = pattern.split(":", 1)[0]
        by_type[t] = by_type.get(t, 0) + n
    print(f"\nfuzz: {report['cases']} cases, {report['ok']} ran cleanly, "
          f"{sum(errors.values())} ended in a documented error ({len(errors)} distinct patterns), "
          f"{sum(report['crashes'].values())} crashed ({len(report['crashes'])} distinct)")
    for t, n in sorted(by_type.items(), key=lambda kv: -kv[1]):
        print(f"  {t}: {n}")
    print("most frequent error patterns:")
    for pattern, n in sorted(errors.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {n:6d}  {pattern}")
    if report["crashes"]:
        print(f"CRASHES (inputs saved under {out}):")
        for sig, n in report["crashes"].items():
            print(f"  {n:6d}  {sig[:300]}")


if __name__ == "__main__":
    sys.exit(main())
