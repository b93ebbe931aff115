"""`make bench`: every benchmark, each printing its side-by-side ratio on one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (script, arguments): sampling at the demo policy's size and at a larger one, in fp32
# (the CPU default) and bf16.
BENCHES = [
    ("bench_sampling.py", []),
    ("bench_sampling.py", ["--layers", "8", "--width", "512"]),
    ("bench_sampling.py", ["--layers", "8", "--width", "512", "--dtype", "bfloat16"]),
    ("bench_judge.py", []),
    ("bench_resume.py", []),
    # Kept engines against an engine per shard: the 3-iteration demo twice, and one
    # sampling stage against a bare generate (about 25 minutes on 2 cores).
    ("bench_engine_reuse.py", []),
]


def main() -> int:
    failed = []
    for name, args in BENCHES:
        print(f"== {' '.join([name, *args])}", flush=True)
        done = subprocess.run(
            [sys.executable, str(HERE / name), *args], capture_output=True, text=True
        )
        lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
        print("\n".join(lines[-5:]) if lines else "(no output)", flush=True)
        if done.returncode != 0:
            failed.append(name)
            print(done.stderr[-2000:], file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
