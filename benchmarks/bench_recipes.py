"""Training recipes of MambaAttention side by side on one sequences file, one run.

Each recipe is trained on the fitting rows, early-stopped and calibrated on the selection slice (as `fit_model`
does). The table shows the selection-slice figures, which are the ones a recipe may be *chosen* by, next to
the validation figures, which are only reported, and the oracle's ceiling on the validation rows when an
answer key is given. Run:

    python benchmarks/bench_recipes.py runs/quick/sequences.parquet --truth runs/quick/episodes.parquet \
        --recipes lr1e-4 lr1e-3 lr1e-3+oversample lr1e-3+k4w50
"""
import argparse
import time

import pandas as pd
import torch

from k4_nbdev.train import checkpoint_probs, fit_model, load_training_data
from k4_nbdev.metrics import ranking_metrics
from k4_nbdev.references import ORACLE, model_scores, oracle_model, read_truth

BASE = dict(model_size='small', epochs=4, batch_size=64, learning_rate=1e-4, k4_weight=500.0, loss='asymmetric')
RECIPES = {
    'lr1e-4': {},                                                   # the recipe of the previous release
    'lr1e-3': dict(learning_rate=1e-3),
    'lr1e-3+oversample': dict(learning_rate=1e-3, sampling=[1, 1, 1, 3, 10, 1]),
    'lr1e-3+k4w50': dict(learning_rate=1e-3, k4_weight=50.0),
    'lr1e-3+ce': dict(learning_rate=1e-3, loss='cross_entropy'),
    'lr3e-4': dict(learning_rate=3e-4),
    'lr1e-3+8ep': dict(learning_rate=1e-3, epochs=8, patience=3),
    'lr1e-3+base': dict(learning_rate=1e-3, model_size='base'),
}
SHOWN = ['k4_pr_auc', 'k4_recall_top2', 'ev_corr']


def scores(data, rows, model):
    y, pattern = data['y'][rows], data['meta']['pattern_id'].to_numpy()[rows]
    m = ranking_metrics(model['score'], y, pattern, model.get('ev'), model.get('pred'))
    return {k: round(m[k], 3) for k in SHOWN}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('sequences'); ap.add_argument('--truth'); ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--recipes', nargs='+', default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument('--workdir', default='/tmp/k4_bench_recipes')
    a = ap.parse_args()
    torch.set_num_threads(2)
    data = load_training_data(a.sequences)
    rows = {}
    if a.truth:
        oracle = oracle_model(data['meta'].iloc[data['val']], data['meta'].iloc[data['fit']], read_truth(a.truth))
        rows[ORACLE] = {('validation', k): v for k, v in scores(data, data['val'], oracle).items()}
    for name in a.recipes:
        t0 = time.perf_counter()
        res = fit_model(data, f'{a.workdir}/{name}', seed=a.seed, verbose=False, progress=False, **{**BASE, **RECIPES[name]})
        row = {('selection', k): v for k, v in scores(data, data['select'], model_scores(checkpoint_probs(res['best'], data, data['select']))).items()}
        row |= {('validation', k): v for k, v in scores(data, data['val'], model_scores(checkpoint_probs(res['best'], data, data['val']))).items()}
        rows[name] = row | {('', 'best epoch'): res['best_epoch'], ('', 'seconds'): round(time.perf_counter() - t0)}
        print(name, rows[name], flush=True)
    print(pd.DataFrame(rows).T.to_string())


if __name__ == '__main__':
    main()
