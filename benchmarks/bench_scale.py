"""Scaling out, measured side by side in one run: the per-ticker stages on 1 and 2 local processes and on a
2-worker Dask LocalCluster, and training on 1 process and on 2 torchrun (gloo) processes.

For each variant: wall seconds, throughput, the ratio to the 1-process variant, and the peak resident memory
of the whole process tree (the driver, its pool or Dask workers, torchrun's ranks), sampled every 0.1 s.
The data of every variant's outputs (parquet tables without their provenance metadata, which names each
variant's own paths) is compared with the 1-process one; tests/test_scale.py checks whole files byte for byte.

    python benchmarks/bench_scale.py [--scale quick] [--epochs 1] [--out nbs/results/scaling_quick.csv]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import psutil

from k4_nbdev.data import build_store
from k4_nbdev.patterns import build_snapshots
from k4_nbdev.sequences import build_sequences
from k4_nbdev.train import RECIPE


class TreeMemory:
    "Peak RSS of this process and all its descendants while the block runs."
    def __enter__(self):
        self.peak, self.done = 0, threading.Event()
        def sample():
            me = psutil.Process()
            while not self.done.is_set():
                procs = [me] + me.children(recursive=True)
                rss = 0
                for p in procs:
                    try: rss += p.memory_info().rss
                    except psutil.Error: pass
                self.peak = max(self.peak, rss)
                time.sleep(0.1)
        self.thread = threading.Thread(target=sample, daemon=True); self.thread.start()
        return self
    def __exit__(self, *exc):
        self.done.set(); self.thread.join()


def timed(run):
    "(seconds, peak tree RSS in MB, result) of one call."
    with TreeMemory() as mem:
        t0 = time.perf_counter(); result = run(); seconds = time.perf_counter() - t0
    return seconds, mem.peak / 2**20, result


def stage_rows(folder:Path, store:Path):
    "The patterns and sequence stages with every scheduler; outputs compared with the serial ones."
    variants = [('processes', 1), ('processes', 2), ('dask', 2)]
    rows = []
    for scheduler, workers in variants:
        out = folder / f'{scheduler}{workers}'; out.mkdir(exist_ok=True)
        s, mb, (_, patterns, snaps) = timed(lambda: build_snapshots(out, store, workers=workers, scheduler=scheduler, progress=False))
        rows.append({'stage': 'patterns', 'scheduler': scheduler, 'workers': workers, 'seconds': s, 'peak_mb': mb,
                     'count': len(snaps), 'unit': 'snapshots'})
        s, mb, summary = timed(lambda: build_sequences(out / 'snapshots.parquet', store, out / 'sequences.parquet', workers=workers,
                                                       scheduler=scheduler, progress=False))
        rows.append({'stage': 'sequences', 'scheduler': scheduler, 'workers': workers, 'seconds': s, 'peak_mb': mb,
                     'count': summary['n_sequences'], 'unit': 'sequences'})
        # the data of every file, without its provenance metadata (which names this variant's own input paths)
        same = lambda n: pq.read_table(out / n).replace_schema_metadata(None).equals(
            pq.read_table(folder / 'processes1' / n).replace_schema_metadata(None))
        rows[-2]['identical'] = same('snapshots.parquet') and same('patterns.parquet')
        rows[-1]['identical'] = same('sequences.parquet')
        print(rows[-2], rows[-1], flush=True)
    return rows


def training_rows(folder:Path, epochs:int):
    "k4-train on 1 process and torchrun on 2 gloo processes, same global batch; samples/s from history.json."
    seqs = folder / 'processes1' / 'sequences.parquet'
    args = ['--sequences', str(seqs), '--epochs', str(epochs), '--batch-size', str(RECIPE.batch_size), '--patience', '99']
    torchrun = str(Path(sys.executable).with_name('torchrun'))
    rows = []
    for procs in (1, 2):
        out = folder / f'train{procs}'
        cmd = ([sys.executable, '-m', 'k4_nbdev.train'] if procs == 1 else
               [torchrun, '--nproc_per_node', str(procs), '--master_port', str(29500 + os.getpid() % 500), '-m', 'k4_nbdev.train'])
        env = {**os.environ, 'OMP_NUM_THREADS': str(max(1, os.cpu_count() // procs))}
        s, mb, run = timed(lambda: subprocess.run(cmd + args + ['--output-dir', str(out)], capture_output=True, text=True, env=env))
        if run.returncode: raise SystemExit(f"training on {procs} processes failed:\n{run.stderr[-2000:]}")
        history = pd.read_json(out / 'history.json')
        rows.append({'stage': 'training', 'scheduler': 'torchrun' if procs > 1 else 'one process', 'workers': procs, 'seconds': s,
                     'peak_mb': mb, 'count': float(history['samples_per_s'].median()), 'unit': 'samples/s (median epoch)'})
        print(rows[-1], flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--scale', default='quick'); p.add_argument('--epochs', type=int, default=1)
    p.add_argument('--out', default=None, help='CSV to write the table to')
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        store = build_store(folder, 'synthetic', a.scale, 0)
        rows = stage_rows(folder, store) + training_rows(folder, a.epochs)
    table = pd.DataFrame(rows)
    table['per_s'] = [r['count'] if r['stage'] == 'training' else r['count'] / r['seconds'] for _, r in table.iterrows()]
    base = table.groupby('stage')['per_s'].transform('first')
    table['ratio'] = table['per_s'] / base
    table['scale'] = a.scale
    pd.set_option('display.width', 160)
    print(table.round(2).to_string(index=False))
    if a.out: table.round(3).to_csv(a.out, index=False); print(f'table: {a.out}')


if __name__ == '__main__':
    main()
