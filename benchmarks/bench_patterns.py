"""Throughput of the patterns stage, measured side by side in one run.

    python benchmarks/bench_patterns.py [--scale quick] [--workers 2]

Prints bars/s for detection (validation, indicators, qualification, state machine, snapshots),
snapshots/s for race labelling, the serial vs parallel ratio of the whole stage, and the speed-up of
the closed-form Wilder smoothing over the plain recursion loop."""
import argparse
import os
import time

import numpy as np

from k4_nbdev.data import SCALES, synthetic_market, validate_ohlcv
from k4_nbdev.patterns import (find_patterns, indicators, label_snapshots, market_snapshots, qualifies,
                               take_snapshots, wilder_smooth)
from k4_nbdev.testing import wilder_loop  # the plain recursion loop, shared with the tests and the 01_patterns lesson


def timed(f, *args, **kwargs):
    "(seconds, result) of one call."
    t0 = time.perf_counter()
    out = f(*args, **kwargs)
    return time.perf_counter() - t0, out


def detect(frames):
    "Validated frames and snapshots of every ticker, serially: the detection half of the stage."
    out = {}
    for t, f in frames.items():
        f, _ = validate_ohlcv(f, t)
        out[t] = f, take_snapshots(f, find_patterns(f, qualifies(indicators(f)), t))
    return out


def label(detected):
    "Race labels of every ticker's snapshots, serially."
    return {t: label_snapshots(f, s) for t, (f, s) in detected.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--scale', default='quick', choices=list(SCALES), help='synthetic market preset')
    p.add_argument('--workers', type=int, default=os.cpu_count() or 1, help='processes for the parallel run')
    args = p.parse_args()
    frames = synthetic_market(**SCALES[args.scale], seed=0)
    n_bars = sum(map(len, frames.values()))
    print(f"synthetic market '{args.scale}': {len(frames)} tickers, {n_bars:,} bars")

    t_detect, detected = timed(detect, frames)
    n_snaps = sum(len(s) for _, s in detected.values())
    t_label, labelled = timed(label, detected)
    n_labelled = sum(int(s['outcome_class'].notna().sum()) for s in labelled.values())
    print(f"detection : {n_bars / t_detect:12,.0f} bars/s       ({t_detect:.2f} s, {n_snaps:,} snapshots found)")
    print(f"labelling : {n_snaps / t_label:12,.0f} snapshots/s  ({t_label:.2f} s, {n_labelled:,} labelled)")

    t_serial, serial = timed(market_snapshots, frames, workers=1, progress=False)
    t_parallel, parallel = timed(market_snapshots, frames, workers=args.workers, progress=False)
    assert serial[1].equals(parallel[1]), "parallel output differs from serial output"
    print(f"whole stage: serial {t_serial:.2f} s, {args.workers} workers {t_parallel:.2f} s "
          f"-> parallel/serial speed-up {t_serial / t_parallel:.2f}x")

    x = np.random.default_rng(0).random(n_bars // len(frames))
    reps = 200
    t_loop, _ = timed(lambda: [wilder_loop(x, 14, 13, x[:14].sum()) for _ in range(reps)])
    t_closed, _ = timed(lambda: [wilder_smooth(x, 14, 13, x[:14].sum()) for _ in range(reps)])
    print(f"Wilder smoothing of {len(x):,} bars: loop {1e3 * t_loop / reps:.3f} ms, closed form "
          f"{1e3 * t_closed / reps:.3f} ms -> {t_loop / t_closed:.1f}x")


if __name__ == '__main__':
    main()
