"""Sequence builder speed and memory.

In one run, on the same snapshots of a synthetic market, time
  * the builder (`k4_nbdev.sequences.market_sequences`: features once per ticker, then a gather), and
  * a plain per-snapshot builder, the reference's method written plainly: for each of the 50 timesteps
    of a snapshot it truncates the history at that bar and recomputes the features,
check that both give the same bytes, and print sequences/s for both and the ratio. Then measure the
peak memory (max RSS) of the whole stage, `build_sequences` from a store to `sequences.parquet`, in
a fresh process.

    python benchmarks/bench_sequences.py [--scale quick] [--workers 2] [--plain-samples 20] [--memory-scale full]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from k4_nbdev.core import fingerprint
from k4_nbdev.data import SCALES, synthetic_market, write_store
from k4_nbdev.core import write_table
from k4_nbdev.patterns import market_snapshots
from k4_nbdev.sequences import (BAR_FEATURES, bar_features, finalize, market_sequences, pattern_positions,
                                window_features)


def plain_sequence(df, snapshot, length=50):
    "One sequence the reference's way: every timestep recomputes the features from the history cut at its bar."
    pos = pattern_positions(df, snapshot)
    end = int(pos['snapshot'][0])
    steps = []
    for j in range(end - length + 1, end + 1):
        if j < 0:
            steps.append(window_features(np.zeros((1, len(BAR_FEATURES))), pos, np.array([j]), 1))
            continue
        bars = bar_features(df.iloc[:j + 1])[BAR_FEATURES].to_numpy(dtype=float)
        steps.append(window_features(bars, pos, np.array([j]), 1))
    X, valid = np.concatenate([s[0] for s in steps], axis=1), np.concatenate([s[1] for s in steps], axis=1)
    return finalize(X, valid)[0][0]


def market_and_snapshots(scale, workers):
    frames = synthetic_market(**SCALES[scale], seed=0)
    return frames, market_snapshots(frames, workers=workers, progress=False)[1]


MEMORY_JOB = """
import json, resource, sys, time
from k4_nbdev.sequences import build_sequences
t0 = time.perf_counter()
s = build_sequences(sys.argv[1], sys.argv[2], sys.argv[3], workers=int(sys.argv[4]), progress=False)
print(json.dumps({'n': s['n_sequences'], 'seconds': time.perf_counter() - t0,
                  'self_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'worker_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def stage_memory(scale, workers):
    "Peak RSS of `build_sequences` on a store of the preset, in a fresh process (main and largest worker)."
    frames, snaps = market_and_snapshots(scale, workers)
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(frames, Path(tmp) / 'ohlcv')
        del frames
        snaps_path = write_table(snaps, Path(tmp) / 'snapshots.parquet',
                                 {'input': {'source': str(store), 'fingerprint': fingerprint(store)}})
        out = subprocess.run([sys.executable, '-c', MEMORY_JOB, str(snaps_path), str(store),
                              str(Path(tmp) / 'sequences.parquet'), str(workers)],
                             check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result['file_mb'] = (Path(tmp) / 'sequences.parquet').stat().st_size / 2**20
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--scale', default='quick', choices=list(SCALES), help='synthetic preset of the speed comparison')
    p.add_argument('--workers', type=int, default=2, help='processes of the builder (default 2)')
    p.add_argument('--plain-samples', type=int, default=20, help='snapshots built the plain way (default 20)')
    p.add_argument('--memory-scale', default='quick', choices=list(SCALES) + ['none'],
                   help="preset whose whole stage is measured for peak memory ('none' to skip)")
    a = p.parse_args(argv)

    frames, snaps = market_and_snapshots(a.scale, a.workers)
    print(f"market: {a.scale} preset, {len(frames)} tickers x {SCALES[a.scale]['n_days']} days, "
          f"{len(snaps):,} snapshots")
    t0 = time.perf_counter()
    X, mask, meta = market_sequences(frames, snaps, workers=a.workers)
    fast_s = time.perf_counter() - t0
    fast_rate = len(X) / fast_s
    print(f"builder (features once per ticker, {a.workers} workers): {len(X):,} sequences in {fast_s:.2f} s "
          f"= {fast_rate:,.0f} sequences/s")

    pick = np.sort(np.random.default_rng(0).choice(len(meta), min(a.plain_samples, len(meta)), replace=False))
    t0 = time.perf_counter()
    plain = [plain_sequence(frames[meta['ticker'][i]], meta.iloc[[i]]) for i in pick]
    plain_s = time.perf_counter() - t0
    plain_rate = len(pick) / plain_s
    same = all(p.tobytes() == X[i].tobytes() for p, i in zip(plain, pick))
    print(f"plain per-snapshot builder (history cut and features recomputed at each of 50 timesteps, 1 process): "
          f"{len(pick)} sequences in {plain_s:.2f} s = {plain_rate:,.2f} sequences/s")
    print(f"identical bytes on the {len(pick)} common sequences: {same}")
    print(f"speed-up: {fast_rate / plain_rate:,.0f}x ({fast_rate / plain_rate / a.workers:,.0f}x per process)")
    if not same: sys.exit('the two builders disagree')

    if a.memory_scale != 'none':
        m = stage_memory(a.memory_scale, a.workers)
        print(f"stage memory ({a.memory_scale} preset, build_sequences from a store, {a.workers} workers): "
              f"{m['n']:,} sequences in {m['seconds']:.1f} s ({m['n'] / m['seconds']:,.0f}/s with reading, checks "
              f"and writing); peak RSS main {m['self_mb']:,.0f} MB, largest worker {m['worker_mb']:,.0f} MB; "
              f"file {m['file_mb']:,.0f} MB")


if __name__ == '__main__':
    main()
