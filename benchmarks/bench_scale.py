"""Scaling out, measured side by side in one run: the per-ticker stages on 1 and 2 local processes and on a
2-worker Dask LocalCluster, and training on 1 process and on 2 torchrun (gloo) processes.

Every variant runs as its console script in a fresh process (`k4-patterns`, `k4-build-sequences`, `k4-train`, torchrun).
For each: wall seconds, throughput, the ratio to the 1-process variant, and the peak resident memory of the command's
whole process tree (it, its pool or Dask workers and scheduler, torchrun's ranks; not this script), sampled every 0.1 s.
The data of every variant's outputs (parquet tables without their provenance metadata, which names each
variant's own paths) is compared with the 1-process one; tests/test_scale.py checks whole files byte for byte.

    python benchmarks/bench_scale.py [--scale quick] [--epochs 1] [--out nbs/results/scaling_quick.csv]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import psutil

from k4_nbdev.data import build_store
from k4_nbdev.train import RECIPE


def measure(args:list, # a command line
            env:dict=None, # environment variables to set for it
           ) -> tuple: # (wall seconds, peak RSS in MB of its process tree, its output)
    "Run a command in a fresh process and sample the resident memory of its tree (it, its pool or Dask workers, torchrun's ranks) every 0.1 s."
    t0, peak = time.perf_counter(), 0
    with tempfile.TemporaryFile('w+') as log:
        child = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
        proc = psutil.Process(child.pid)
        while child.poll() is None:
            rss = 0
            for p in [proc] + proc.children(recursive=True):
                try: rss += p.memory_info().rss
                except psutil.Error: pass
            peak = max(peak, rss); time.sleep(0.1)
        seconds = time.perf_counter() - t0
        log.seek(0); output = log.read()
    if child.returncode: raise SystemExit(f"{' '.join(map(str, args[:2]))} failed:\n{output[-3000:]}")
    return seconds, peak / 2**20, output


def command(name:str) -> str:
    "A console script of this environment."
    return str(Path(sys.executable).with_name(name))


def stage_rows(folder:Path, store:Path):
    "The patterns and sequence stages' console scripts with every scheduler, each in a fresh process; outputs compared with the serial ones."
    variants = [('processes', 1), ('processes', 2), ('dask', 2)]
    rows = []
    for scheduler, workers in variants:
        out = folder / f'{scheduler}{workers}'; out.mkdir(exist_ok=True)
        flags = ['--workers', str(workers), '--scheduler', scheduler]
        s, mb, _ = measure([command('k4-patterns'), '--ohlcv', str(store), '--output', str(out / 'snapshots.parquet'),
                            '--patterns-output', str(out / 'patterns.parquet'), *flags])
        n = pq.ParquetFile(out / 'snapshots.parquet').metadata.num_rows
        rows.append({'stage': 'patterns', 'scheduler': scheduler, 'workers': workers, 'seconds': s, 'peak_mb': mb,
                     'count': n, 'unit': 'snapshots'})
        s, mb, _ = measure([command('k4-build-sequences'), '--input', str(out / 'snapshots.parquet'), '--ohlcv', str(store),
                            '--output', str(out / 'sequences.parquet'), *flags])
        rows.append({'stage': 'sequences', 'scheduler': scheduler, 'workers': workers, 'seconds': s, 'peak_mb': mb,
                     'count': pq.ParquetFile(out / 'sequences.parquet').metadata.num_rows, 'unit': 'sequences'})
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
        s, mb, _ = measure(cmd + args + ['--output-dir', str(out)], {'OMP_NUM_THREADS': str(max(1, os.cpu_count() // procs))})
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
