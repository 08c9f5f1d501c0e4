"""Exactly-once under load, again and again: runs the recovery tests N times in a row with another
process keeping one core busy, and counts what passed. A recovery that holds only on an idle
machine does not hold; one failure in ten runs is a bug to find, and its log is kept.

    python -m bench.failover [--runs 10] [--test NODE ...] [--no-burner]

Default tests: the three TaskManager kills at checkpoints (cluster tier) and the recovery from a
checkpoint with late records (integration tier). Each run's pytest output goes to
var/bench/failover/<n>-<test>.log, and a failed run's temporary directory (the Flink, Kafka and
Redis logs) beside it as <n>-<test>.tmp. The last stdout line is one JSON object: runs, per test the
passed and failed counts and the failed runs' logs, and the seconds taken.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time

from tqdm import tqdm

from contract.paths import PROJECT_ROOT

DEFAULT_TESTS = (
    "tests/cluster/test_taskmanager_kill.py",
    "tests/integration/test_conservation_recovery.py::test_recovery_from_checkpoint_equals_uninterrupted_run"
    "[late_records]",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--test", action="append", default=[], metavar="NODE", help="pytest node ids (default: both above)")
    ap.add_argument("--no-burner", action="store_true", help="do not keep a core busy")
    args = ap.parse_args(argv)
    tests = args.test or list(DEFAULT_TESTS)
    out_dir = PROJECT_ROOT / "var" / "bench" / "failover"
    out_dir.mkdir(parents=True, exist_ok=True)
    burner = None if args.no_burner else subprocess.Popen([sys.executable, "-c", "while True: pass"])
    results = {t: {"passed": 0, "failed": 0, "failed_logs": []} for t in tests}
    t0 = time.monotonic()
    try:
        with tqdm(total=args.runs * len(tests), unit="run") as bar:
            for n in range(args.runs):
                for t in tests:
                    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", t.rsplit("/", 1)[-1])[:80]
                    log = out_dir / f"{n:02d}-{name}.log"
                    # the run's own temporary directory (Flink's, Kafka's, Redis's logs): pytest keeps
                    # only its last three, and a failed run's are what explain it
                    tmp = out_dir / f"{n:02d}-{name}.tmp"
                    with open(log, "w") as f:
                        rc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                             f"--basetemp={tmp}", t],
                                            cwd=PROJECT_ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
                    results[t]["passed" if rc == 0 else "failed"] += 1
                    if rc != 0:
                        results[t]["failed_logs"].append(str(log))
                    else:
                        shutil.rmtree(tmp, ignore_errors=True)
                    bar.set_postfix({k.rsplit("/", 1)[-1][:20]: f"{v['passed']}/{v['passed'] + v['failed']}"
                                     for k, v in results.items()})
                    bar.update()
    finally:
        if burner is not None:
            burner.kill()
    print(json.dumps({"runs": args.runs, "burner": burner is not None, "tests": results,
                      "seconds": round(time.monotonic() - t0)}))
    return 0 if all(v["failed"] == 0 for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
