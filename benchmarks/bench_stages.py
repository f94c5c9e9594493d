"""The pipeline's stages at one scale, as a user runs them: each console script in a fresh process, one after the other.

For each stage: wall seconds, throughput, and the peak resident memory of its whole process tree (the command and its
pool's processes; not this script), sampled every 0.1 s. The training stage uses the recipe's settings (`RECIPE`: the quick
recipe) unless --epochs is given. The table is printed and, with --out, written as CSV (the Scaling out page reads
`nbs/results/stages_full.csv`).

    python benchmarks/bench_stages.py [--scale full] [--workers 2] [--epochs N] [--out nbs/results/stages_full.csv]
"""
import argparse
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from bench_scale import command, measure
from k4_nbdev.data import SCALES
from k4_nbdev.train import RECIPE


def run(stage:str, args:list, count, unit:str) -> dict:
    "Run one stage's command; its row of the table (count: a number, or a function called after the run)."
    seconds, peak_mb, _ = measure(args)
    n = count() if callable(count) else count
    row = {'stage': stage, 'seconds': round(seconds, 1), 'count': n, 'unit': unit, 'per_s': round(n / seconds, 1),
           'peak_mb': round(peak_mb)}
    print(row, flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--scale', default='full', choices=list(SCALES))
    p.add_argument('--workers', type=int, default=os.cpu_count())
    p.add_argument('--epochs', type=int, default=RECIPE.epochs)
    p.add_argument('--out', default=None, help='CSV to write the table to')
    a = p.parse_args()
    size = SCALES[a.scale]
    rows_of = lambda path: pq.ParquetFile(path).metadata.num_rows
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rows = [run('market', [command('k4-synthetic-market'), '--output', str(d / 'ohlcv'), '--n-tickers', str(size['n_tickers']),
                               '--n-days', str(size['n_days']), '--episodes', str(d / 'episodes.parquet'), '--workers', str(a.workers)],
                    size['n_tickers'], 'tickers'),
                run('patterns', [command('k4-patterns'), '--ohlcv', str(d / 'ohlcv'), '--output', str(d / 'snapshots.parquet'),
                                 '--patterns-output', str(d / 'patterns.parquet'), '--workers', str(a.workers)],
                    size['n_tickers'], 'tickers'),
                run('sequences', [command('k4-build-sequences'), '--input', str(d / 'snapshots.parquet'),
                                  '--output', str(d / 'sequences.parquet'), '--workers', str(a.workers)],
                    lambda: rows_of(d / 'sequences.parquet'), 'sequences')]
        rows.append(run('training', [command('k4-train'), '--sequences', str(d / 'sequences.parquet'), '--output-dir', str(d / 'model'),
                                     '--epochs', str(a.epochs)],
                        lambda: int(pd.read_json(d / 'model' / 'history.json')['samples_per_s'].mul(
                            pd.read_json(d / 'model' / 'history.json')['seconds']).sum()), 'samples (all epochs)'))
        rows.append(run('predict', [command('k4-predict'), '--model', str(d / 'model' / 'best.pt'), '--sequences',
                                    str(d / 'sequences.parquet'), '--output', str(d / 'predictions.parquet')],
                        lambda: rows_of(d / 'predictions.parquet'), 'sequences'))
    table = pd.DataFrame(rows)
    table['scale'], table['workers'] = a.scale, a.workers
    total = table['seconds'].sum()
    pd.set_option('display.width', 160)
    print(table.to_string(index=False))
    print(f"total {total:.0f} s ({total / 60:.1f} min); largest peak {table['peak_mb'].max():,} MB")
    if a.out: table.to_csv(a.out, index=False); print(f'table: {a.out}')


if __name__ == '__main__':
    main()
