"""Signal strength against learning: the bench market with its precursors scaled, every model on each.

For each strength F the same synthetic market (same seed, same episodes and outcomes) is built with its three precursors
of the hidden quality scaled by F (`k4-synthetic-market --precursor-strength F`), its patterns and sequences are built by
the stages' console scripts, and `k4-evaluate` scores the MambaAttention recipe, the LightGBM and the precursor baseline
(--seeds seeds each) beside the observable ceiling and the q-oracle on the main split (one fold from the 80% date
quantile). A market or an evaluation already in --out is kept (`k4-evaluate --resume`), so an interrupted sweep goes on
where it stopped. The rows of every strength go to --results (the validation page reads `nbs/results/strength_quick.csv`)
and the table of `strength_table` is printed.

    python benchmarks/bench_strength.py [--strengths 0,1,2,4] [--seeds 2] [--scale quick] [--out runs/strength]
"""
import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from k4_nbdev.data import SCALES
from k4_nbdev.evaluate import EVALUATION_FILES, strength_table


def stage(*args:str):
    "Run one console script of the venv this script runs in; stop the sweep when it fails."
    print('$', ' '.join(args), flush=True)
    subprocess.run([str(Path(sys.executable).parent / args[0]), *args[1:]], check=True)


def market(folder:Path, strength:float, scale:str, seed:int):
    "Store, answer key, snapshots and sequences of the market at this strength, unless the folder holds them."
    if (folder / 'sequences.parquet').exists(): return
    n = SCALES[scale]
    stage('k4-synthetic-market', '--output', str(folder / 'ohlcv'), '--n-tickers', str(n['n_tickers']), '--n-days', str(n['n_days']),
          '--seed', str(seed), '--episodes', str(folder / 'episodes.parquet'), '--precursor-strength', str(strength))
    stage('k4-patterns', '--ohlcv', str(folder / 'ohlcv'), '--output', str(folder / 'snapshots.parquet'))
    stage('k4-build-sequences', '--input', str(folder / 'snapshots.parquet'), '--output', str(folder / 'sequences.parquet'),
          '--ohlcv', str(folder / 'ohlcv'))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--strengths', default='0,1,2,4', help='precursor strengths, comma-separated (1 = the bench)')
    p.add_argument('--seeds', type=int, default=2, help='training seeds per strength')
    p.add_argument('--scale', default='quick', choices=list(SCALES), help='synthetic preset')
    p.add_argument('--seed', type=int, default=0, help='market seed')
    p.add_argument('--out', default='runs/strength', help='folder for the markets and their evaluations')
    p.add_argument('--results', default='nbs/results/strength_quick.csv', help='CSV of every evaluation row, with its strength')
    a = p.parse_args()
    rows = []
    for strength in [float(s) for s in a.strengths.split(',')]:
        folder = Path(a.out) / f'x{strength:g}'
        market(folder, strength, a.scale, a.seed)
        ev = folder / 'evaluation'
        stage('k4-evaluate', '--sequences', str(folder / 'sequences.parquet'), '--output-dir', str(ev), '--folds', '1',
              '--first-ratio', '0.8', '--seeds', str(a.seeds), '--losses', 'asymmetric', '--truth', str(folder / 'episodes.parquet'),
              *(['--resume'] if (ev / EVALUATION_FILES[0]).exists() else []))
        rows.append(pd.read_csv(ev / EVALUATION_FILES[0]).assign(strength=strength))
    results = pd.concat(rows, ignore_index=True)
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(a.results, index=False)
    print(strength_table(results).round(3).to_string())


if __name__ == '__main__':
    main()
