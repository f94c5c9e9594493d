"Helpers shared by the tests, the benchmarks and the notebooks' lessons: console scripts run in the test process, doctored copies of a sequences file, run folders made by the stages' own functions, and the reference inputs of the closed-form and fused computations."
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from k4_nbdev.data import build_store
from k4_nbdev.definitions import K4, PROB_COLUMNS, assign_signals, expected_value
from k4_nbdev.patterns import build_snapshots
from k4_nbdev.sequences import bar_features, build_sequences, read_sequences, sequence_table
from k4_nbdev.train import fit_model, load_training_data


def exit_of(main, # a console script's function, e.g. `patterns_cli`
            argv:list, # its command-line arguments
            capsys=None, # pytest's capsys, to read argparse's own errors (status 2) from stderr
           ) -> tuple: # (exit status, message): a string exit code is status 1 with that message; 0 when it returned
    "Run a console script in this process and say how it ended."
    try: main(argv)
    except SystemExit as e:
        if isinstance(e.code, str): return 1, e.code
        return e.code, capsys.readouterr().err if capsys is not None else ''
    return 0, ''


def rewritten(src, # a sequences parquet written by the builder
              dst, # where to write the doctored copy
              change, # change(X, mask, meta) alters the arrays or metadata in place
             ): # dst
    "A copy of a sequences file altered by `change`, keeping the builder's metadata (written without validation)."
    X, mask, meta = read_sequences(src)
    change(X, mask, meta)
    pq.write_table(sequence_table(X, mask, meta).replace_schema_metadata(pq.read_schema(src).metadata), dst)
    return dst


def stage_inputs(folder, # run folder to fill: ohlcv/, episodes.parquet, snapshots.parquet
                 scale:str='tiny', # synthetic preset
                 seed:int=0, # its seed
                ) -> tuple: # (snapshots path, store path)
    "The inputs of the sequence stage, made by the earlier stages' own functions."
    folder = Path(folder)
    store = build_store(folder, 'synthetic', scale, seed)
    build_snapshots(folder, store, progress=False)
    return folder / 'snapshots.parquet', store


def trained_run(folder, # run folder to fill up to a model
                scale:str='tiny', # synthetic preset
                seed:int=0, # its seed
               ) -> Path: # the checkpoint `{folder}/model/best.pt`
    "A run folder with sequences and a one-epoch small model (tiny markets have no K4 in training: a warning says so)."
    folder = Path(folder)
    build_sequences(*stage_inputs(folder, scale, seed), folder / 'sequences.parquet', progress=False)
    return fit_model(load_training_data(folder / 'sequences.parquet'), folder / 'model', model_size='small', epochs=1,
                     seed=seed, verbose=False)['best']


def wilder_loop(x:np.ndarray, # inputs of the recursion
                n:int, # period: the recursion keeps (1 - 1/n) of yesterday
                first:int, # index of the seed value
                seed:float, # value at `first`
                weight:float=1.0, # multiplier of today's input
               ) -> np.ndarray: # NaN before `first`, then y_t = (1 - 1/n) y_{t-1} + weight * x_t
    "Wilder's recursion as a plain Python loop over the bars: the reference `patterns.wilder_smooth` is checked and timed against."
    out = np.full(len(x), np.nan)
    out[first] = y = seed
    for t, v in enumerate((weight * np.asarray(x[first + 1:], dtype=float)).tolist(), first + 1):
        out[t] = y = (1 - 1 / n) * y + v
    return out


def scan_inputs(b:int=3, # batch
                L:int=9, # sequence length
                d:int=5, # channels (d_inner of a block)
                n:int=4, # state size
                seed:int=0, # seed of the generator
               ) -> list: # [u, delta, A, B, C, D], each requiring a gradient
    "Random arguments of `model.selective_scan` at the magnitudes a block gives it: small softplus steps, S4D-real `A`, `D` = 1."
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, L, d, generator=g)
    delta = F.softplus(torch.randn(b, L, d, generator=g) - 2)
    A = -torch.arange(1, n + 1.).repeat(d, 1) * torch.rand(d, 1, generator=g)
    B, C = torch.randn(b, L, n, generator=g), torch.randn(b, L, n, generator=g)
    return [t.requires_grad_() for t in (u, delta, A, B, C, torch.ones(d))]


def toy(y, # true class per row
        pred=None, # predicted class per row (default: `y`)
        start='2021-01-04', # the first snapshot date (a Monday)
       ) -> pd.DataFrame: # predictions in the layout `06_predict` writes
    "Weekly predictions of one ticker 'T': true classes `y`, 0.9 on the predicted class `pred` (0.02 elsewhere), a 3-week label window and 5 daily bars per sequence."
    y = np.asarray(y)
    pred = y if pred is None else np.asarray(pred)
    dates = pd.date_range(start, periods=len(y), freq='W-MON')
    probs = np.full((len(y), 6), 0.02)
    probs[np.arange(len(y)), pred] = 0.9
    ev = expected_value(probs)
    return pd.DataFrame({'ticker': 'T', 'pattern_id': [f'T_{d:%Y%m%d}' for d in dates], 'snapshot_date': dates,
                         'start_date': dates - pd.Timedelta(weeks=2), 'label_end_date': dates + pd.Timedelta(weeks=3),
                         'outcome_class': pd.array(y, dtype='Int64'),
                         'sequence_dates': [pd.bdate_range(end=d, periods=5).to_numpy() for d in dates],
                         'predicted_class': pred, 'expected_value': ev, 'signal': assign_signals(ev, probs[:, 5]),
                         **{c: probs[:, k] for k, c in enumerate(PROB_COLUMNS)}})


def flat_path(n:int=150, # bars
              price:float=10.0, # every bar's open and close
              start='2021-01-04', # the first bar's date; business days follow
             ) -> pd.DataFrame: # OHLCV bars: date, open, high, low, close, volume
    "A quiet constructed price path: every bar opens and closes at `price`, with a 1% wick either side."
    return pd.DataFrame({'date': pd.bdate_range(start, periods=n), 'open': price, 'high': price * 1.01,
                         'low': price * 0.99, 'close': price, 'volume': 1e6})


def simulate(seed:int, # seed of the simulated market
             n_patterns:int=300, # patterns
             per_pattern:int=5, # snapshots per pattern
             k4_rate:float=0.1, # chance that a pattern is K4
             found:float=0.5, # chance that the model calls a K4 pattern K4
            ) -> tuple: # (true classes, predicted classes, pattern ids), one per snapshot
    "Patterns whose snapshots share their outcome and their prediction: true argmax K4 recall `found`, true PR-AUC of a flat score `k4_rate`."
    rng = np.random.default_rng(seed)
    is_k4 = rng.random(n_patterns) < k4_rate
    called = is_k4 & (rng.random(n_patterns) < found)
    rows = np.repeat(np.arange(n_patterns), per_pattern)
    return np.where(is_k4, K4, 0)[rows], np.where(called, K4, 0)[rows], rows


def one_bar_ahead(df:pd.DataFrame, # one ticker's OHLCV
                 ) -> pd.DataFrame: # its bar features, each bar carrying the next bar's values
    "A leaky bar-feature function: one bar of look-ahead, with every date still in order."
    return bar_features(df).shift(-1)
