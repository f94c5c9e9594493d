"""Peak memory of the commands that read a whole sequences file — `k4-predict`, `k4-evaluate` and the LightGBM baseline —
before and after they learnt to stream it, side by side in one run, with their outputs compared.

"Before" is the package as it was at a git revision (`--before`, by default the last commit before the change, issue 25),
unpacked with `git archive` into a temporary folder; "after" is the package of this checkout. Each variant runs in a
fresh process whose `PYTHONPATH` names its package folder, and `measure` (of `bench_scale.py`) samples the resident
memory (RSS) of its process tree every 0.1 s. RSS counts the pages of memory maps too (`k4-evaluate` trains each network
from the memory maps of `05_train`), so it is the strict figure.

* `k4-predict`: the console script, on the file's every sequence. Identical: the predictions' data (without the
  provenance metadata, which names each variant's own paths).
* `k4-evaluate`: the console script with one fold, one seed, one loss trained for `--epochs` (the time a fold takes
  is mostly training, the memory is the reading), the precursor baseline and, with the answer key, both ceilings;
  LightGBM is measured on its own below. Identical: evaluation.csv without its `seconds` column.
* LightGBM: `lightgbm_baseline` on the train stage's split, with at most `--rounds` boosting rounds (memory is the
  window summaries, not the rounds). Before, it needs the sequences in memory (`load_training_data(stream=False)`);
  after, it reads them streamed. Identical: the calibrated validation probabilities.

The model scored is any checkpoint with the 69 features (`--model`; by default a one-epoch small model trained here on
the tiny market, which is enough to exercise scoring). The table goes to `--out` (nbs/results/memory_full.csv).

    python benchmarks/bench_memory.py --data DIR [--model best.pt] [--before REV] [--epochs 1] [--rounds 30] [--out nbs/results/memory_full.csv]

DIR holds sequences.parquet (and episodes.parquet, the answer key, when there is one) of the full preset, e.g. made by
`k4-synthetic-market --n-tickers 2000 --n-days 3780`, `k4-patterns` and `k4-build-sequences`.
"""
import argparse
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from bench_scale import command, measure
from k4_nbdev.testing import trained_run

ROOT = Path(__file__).resolve().parents[1]
BEFORE = '678e6f5f1a286d81ade825571635f0de19284a8b'   # the last commit before the streaming readers (issue 25)

LIGHTGBM = r'''
import sys, numpy as np
import k4_nbdev.references as references
from k4_nbdev.train import load_training_data, RECIPE
stream = hasattr(references, 'row_values')   # before the change the baseline needed the sequences in memory
data = load_training_data(sys.argv[1], RECIPE.split_ratio, inner_ratio=RECIPE.inner_ratio, stream=stream)
r = references.lightgbm_baseline(data, k4_weight=RECIPE.k4_weight, seed=RECIPE.seed, rounds=int(sys.argv[3]))
np.save(sys.argv[2], r['probs'])
print('streamed' if stream else 'in memory', r['best_iteration'])
'''


def package_at(rev:str, folder:Path) -> Path:
    "The package as it was at a git revision, unpacked into `folder` (a folder to put on PYTHONPATH)."
    archive = subprocess.run(['git', '-C', str(ROOT), 'archive', rev, 'k4_nbdev'], check=True, capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', str(folder)], input=archive, check=True)
    return folder


def same_table(a, b, drop=()) -> bool:
    "Two parquet files hold the same data (their provenance metadata aside)."
    read = lambda p: pq.read_table(p).drop_columns(list(drop)).replace_schema_metadata(None)
    return read(a).equals(read(b))


def variants(sequences:Path, truth, model:Path, out:Path, epochs:int, rounds:int) -> dict:
    "Each measured command: name -> (arguments for a variant's output folder, the output compared)."
    evaluate = lambda o: [command('k4-evaluate'), '--sequences', str(sequences), '--output-dir', str(o / 'evaluation'),
                          '--folds', '1', '--seeds', '1', '--losses', 'asymmetric', '--epochs', str(epochs), '--no-lightgbm',
                          *(['--truth', str(truth)] if truth else [])]
    return {'k4-predict': (lambda o: [command('k4-predict'), '--model', str(model), '--sequences', str(sequences),
                                      '--output', str(o / 'predictions.parquet')], 'predictions.parquet'),
            'k4-evaluate': (evaluate, 'evaluation/evaluation.csv'),
            'LightGBM baseline': (lambda o: [sys.executable, '-c', LIGHTGBM, str(sequences), str(o / 'lightgbm.npy'), str(rounds)],
                                  'lightgbm.npy')}


def identical(a:Path, b:Path) -> bool:
    "The outputs of the two variants hold the same numbers."
    if a.suffix == '.parquet': return same_table(a, b)
    if a.suffix == '.npy': return np.array_equal(np.load(a), np.load(b))
    return pd.read_csv(a).drop(columns='seconds').equals(pd.read_csv(b).drop(columns='seconds'))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', required=True, help='folder with sequences.parquet (and episodes.parquet) of the full preset')
    p.add_argument('--model', default=None, help='checkpoint to score (default: a one-epoch model of the tiny market)')
    p.add_argument('--before', default=BEFORE, help='git revision of the code before the change')
    p.add_argument('--epochs', type=int, default=1, help="epochs of k4-evaluate's network")
    p.add_argument('--rounds', type=int, default=30, help='most boosting rounds of the LightGBM baseline')
    p.add_argument('--only', default=None, help='comma-separated subset of the commands')
    p.add_argument('--out', default=None, help='CSV to write the table to')
    a = p.parse_args()
    data = Path(a.data)
    sequences, truth = data / 'sequences.parquet', data / 'episodes.parquet'
    n = pq.ParquetFile(sequences).metadata.num_rows
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if a.model is None:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')   # the tiny market has no K4 in training: a warning says so
                model = trained_run(d / 'tiny')
        else: model = Path(a.model)
        trees = {'before': package_at(a.before, Path(tempfile.mkdtemp(dir=d))), 'after': ROOT}
        chosen = variants(sequences, truth if truth.exists() else None, model, d, a.epochs, a.rounds)
        for name, (args, output) in chosen.items():
            if a.only and name not in a.only.split(','): continue
            row = {'command': name, 'sequences': n}
            for v, tree in trees.items():
                (d / v).mkdir(exist_ok=True)
                seconds, peak_mb, _ = measure(args(d / v), {'PYTHONPATH': str(tree)})
                row |= {f'{v}_mb': round(peak_mb), f'{v}_s': round(seconds, 1)}
                print(name, v, f'{peak_mb:.0f} MB', f'{seconds:.0f} s', flush=True)
            row['ratio'] = round(row['after_mb'] / row['before_mb'], 3)
            row['identical'] = identical(d / 'before' / output, d / 'after' / output)
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows)
    pd.set_option('display.width', 160)
    print(table.to_string(index=False))
    if a.out: table.to_csv(a.out, index=False); print(f'table: {a.out}')


if __name__ == '__main__':
    main()
