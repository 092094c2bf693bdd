"""This machine's speed now: CPU seconds of a fixed pure-Python loop (10M multiply-adds), the yardstick the
test-time and run-time figures in BENCHMARKS.md are read against, since the machine itself moves by 30-50%
between runs. Print it before and after a measurement; equal readings make two measurements comparable.

    python3 benchmarks/machine_speed.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import time


def loop_cpu_s() -> float:
    t0, s = time.process_time(), 0
    for i in range(10_000_000):
        s += i * i
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    readings = [loop_cpu_s() for _ in range(args.repeat)]
    print("loop of 10M multiply-adds: " + ", ".join(f"{r:.2f}" for r in readings) + " CPU-s")


if __name__ == "__main__":
    main()
