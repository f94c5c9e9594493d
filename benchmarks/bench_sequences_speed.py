"""Speed of the whole sequence stage: the previous implementation and the current one side by side, one run.

On one store and its snapshots (a synthetic market, `--scale quick` by default: 800 tickers x 2,520 days), each
measurement runs the whole stage, `build_sequences` as `k4-build-sequences` runs it (reading the snapshots and the
store, the provenance and snapshot checks, the features, the gather, validation and the parquet write), in a fresh
process, with

* `before`: the code before issue 25, kept verbatim below (`legacy_*`) and put back into the package's modules in
  that process (rolling mean and std reducing every window on its own, pandas' rolling median, window-by-window
  slopes, VAR sums and percentile ranks, a snapshot check that builds a full-length mask per ticker and date
  column, the meta frame built column by column, the store hashed twice, `safe_ratio` through `nan_to_num`, and
  `normalise_ohlcv` filtering, renaming and flooring the dates of every ticker it reads even when nothing changes);
* `now`: the package as it is.

It checks that every output file is byte-identical to the first one (same data, same metadata, same bytes) and
prints sequences/s of both and the ratio, for 1 and 2 worker processes. Wall time is the whole process (interpreter
start and imports included, as for the console script); CPU time is user + system of the process and its workers.
Other processes competing for the cores stretch wall time but hardly CPU time, so both are reported with the
1-minute load average around each run. Rounds alternate the implementations; the best wall time of each is kept.
The table is printed and written to `--out` (default nbs/results/sequences_speed.csv).

    python benchmarks/bench_sequences_speed.py [--scale quick] [--workers 1,2] [--rounds 2] [--out nbs/results/sequences_speed.csv]
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from bench_sequences import market_and_snapshots
import k4_nbdev
from k4_nbdev import data, patterns, sequences
from k4_nbdev.core import check_scheduler, fingerprint, write_table
from k4_nbdev.data import SCALES, StoreFrames, parse_dates, write_store
from k4_nbdev.patterns import SNAPSHOT_COLUMNS, valid_channel
from k4_nbdev.sequences import (BAR_FEATURES, DATE_COLUMNS, FEATURES, PROBLEM_COLUMNS, VALUE_COLUMNS, NonFiniteError,
                                SequenceInputError, describe_problems, finalize, input_mismatch, iter_sequences,
                                pattern_positions, recorded_fingerprint, require_columns, rolling_apply, window_features,
                                write_sequences, write_sequences_in_parts)


# ---- the previous implementation (k4_nbdev.patterns / k4_nbdev.sequences before issue 25), kept verbatim ----
def legacy_rolling_mean(x:np.ndarray, n:int) -> np.ndarray:
    "Causal rolling mean."
    out = np.full(len(x), np.nan)
    if len(x) >= n: out[n - 1:] = sliding_window_view(x, n).mean(axis=1)
    return out

def legacy_rolling_std(x:np.ndarray, n:int) -> np.ndarray:
    "Causal rolling population standard deviation (the one Bollinger bands use)."
    out = np.full(len(x), np.nan)
    if len(x) >= n: out[n - 1:] = sliding_window_view(x, n).std(axis=1)
    return out

def legacy_trailing_rank(x:np.ndarray, n:int) -> np.ndarray:
    "Percentile rank of each value among the `n` values ending at it, along the last axis."
    out = np.full(x.shape, np.nan)
    if x.shape[-1] < n: return out
    w = sliding_window_view(x, n, axis=-1)
    rank = (w < w[..., -1:]).sum(axis=-1) / n
    out[..., n - 1:] = np.where(np.isnan(w).any(axis=-1), np.nan, rank)
    return out

def legacy_safe_ratio(a:np.ndarray, b:np.ndarray) -> np.ndarray:
    "Element-wise ratio that is undefined, not infinite, where the denominator vanishes."
    out = np.full(len(a), np.nan)
    np.divide(a, b, out=out, where=np.nan_to_num(b) != 0)
    return out

def legacy_normalise_ohlcv(df:pd.DataFrame) -> pd.DataFrame:
    "Map common column-name variants to the schema and parse the dates; values are not changed."
    df = df.copy()
    if 'date' not in {str(c).strip().lower() for c in df.columns} and isinstance(df.index, pd.DatetimeIndex):
        df = df.rename_axis('date').reset_index()
    df = df.loc[:, [not str(c).startswith('Unnamed:') and str(c) != 'index' for c in df.columns]]
    renamed = {}
    for c in df.columns:
        key = str(c).strip().lower()
        renamed[c] = data._COLUMN_ALIASES.get(key, key.replace(' ', '_'))
    df = df.rename(columns=renamed)
    if 'date' in df.columns:
        dates = parse_dates(df['date'])
        if getattr(dates.dt, 'tz', None) is None: dates = dates.dt.normalize()
        df['date'] = dates
    return df

def legacy_rolling_median(x:np.ndarray, n:int) -> np.ndarray:
    "Causal rolling median (exact order statistics, so it depends on the window's values only)."
    return pd.Series(x).rolling(n).median().to_numpy()

def legacy_rolling_slope(x:np.ndarray, n:int) -> np.ndarray:
    "Causal least-squares slope against the bar index."
    k = np.arange(n) - (n - 1) / 2
    return rolling_apply(x, n, lambda w, axis: (w * (k / (k * k).sum())).sum(axis=axis))

def legacy_var_features(v, r) -> dict:
    "VAR: volume on up days against volume on down days over 20 bars, and that ratio against its own 20-bar mean."
    up, down = rolling_apply(v * np.maximum(r, 0), 20, np.sum), rolling_apply(v * np.maximum(-r, 0), 20, np.sum)
    raw = legacy_safe_ratio(up, down)
    return {'var_raw': raw, 'var_score': np.clip(legacy_safe_ratio(raw, legacy_rolling_mean(raw, 20)), 0.5, 3)}

def legacy_check_snapshots(frames:dict, snapshots:pd.DataFrame) -> pd.DataFrame:
    "Every reason a snapshot row cannot become a sequence."
    require_columns(snapshots)
    rows = np.arange(len(snapshots))
    flags = []
    add = lambda bad, column, reason: flags.append((bad, column, reason))
    known = snapshots['ticker'].isin(list(frames)).to_numpy()
    add(~known, 'ticker', 'ticker not in the OHLCV store')
    for ticker, g in snapshots[known].groupby('ticker', sort=False):
        dates, pos = frames[ticker]['date'].to_numpy(), rows[snapshots['ticker'].to_numpy() == ticker]
        for k in DATE_COLUMNS:
            d = g[k].to_numpy()
            bad = np.zeros(len(snapshots), dtype=bool)
            bad[pos] = dates[np.minimum(np.searchsorted(dates, d), len(dates) - 1)] != d
            add(bad, k, f'{k} is not a trading day of the ticker')
    for k in VALUE_COLUMNS:
        values = snapshots[k].to_numpy(dtype=float, na_value=np.nan)
        add(np.isnan(values), k, f'{k} is missing')
        add(np.isinf(values), k, f'{k} is infinite')
    upper, lower = (snapshots[k].to_numpy(dtype=float, na_value=np.nan) for k in ('upper_boundary', 'lower_boundary'))
    add(~valid_channel(upper, lower) & ~np.isnan(upper + lower), 'lower_boundary',
        'inconsistent boundaries (need 0 < lower < upper)')
    s, a, t = (snapshots[k].to_numpy() for k in DATE_COLUMNS)
    add((s > a) | (a > t), 'snapshot_date', 'dates out of order (need start <= activation <= snapshot)')
    problems = [pd.DataFrame({'row': rows[bad], 'ticker': snapshots['ticker'].to_numpy()[bad],
                              'snapshot_date': snapshots['snapshot_date'].to_numpy()[bad], 'column': column,
                              'reason': reason}) for bad, column, reason in flags if bad.any()]
    if not problems: return pd.DataFrame(columns=PROBLEM_COLUMNS)
    return pd.concat(problems, ignore_index=True).sort_values('row', kind='stable', ignore_index=True)

def legacy_ticker_sequences(df:pd.DataFrame, snapshots:pd.DataFrame, sequence_length:int=50,
                            bar_fn=sequences.bar_features) -> tuple:
    "The sequences of every snapshot of one ticker, from one pass over its history."
    ticker = snapshots['ticker'].iloc[0] if len(snapshots) else '?'
    problems = legacy_check_snapshots({ticker: df}, snapshots)
    if len(problems): raise SequenceInputError(describe_problems(problems, f'the snapshots of {ticker!r}'))
    pos = pattern_positions(df, snapshots)
    bars = bar_fn(df)[BAR_FEATURES].to_numpy(dtype=float)
    X, valid = window_features(bars, pos, pos['snapshot'], sequence_length)
    X, n_undefined = finalize(X, valid)
    j = pos['snapshot'][:, None] + np.arange(1 - sequence_length, 1)
    dates = np.where(valid, df['date'].to_numpy()[np.maximum(j, 0)], np.datetime64('NaT'))
    meta = snapshots[SNAPSHOT_COLUMNS].reset_index(drop=True)
    labels = snapshots.reindex(columns=['outcome_class', 'label_end_date'])
    meta['outcome_class'] = pd.array(labels['outcome_class'].to_numpy(), dtype='Int64')
    meta['label_end_date'] = labels['label_end_date'].to_numpy().astype('datetime64[ns]')
    meta['days_in_pattern'] = pos['snapshot'] - pos['start']
    meta['n_undefined'] = n_undefined
    meta['sequence_dates'] = list(dates.astype('datetime64[ns]'))
    return X, valid, meta

def legacy_build_sequences(snapshots_path, ohlcv_store, output, sequence_length:int=50, max_samples:int=None,
                           validate:bool=True, workers:int=1, skip_bad:bool=False, seed:int=0, progress:bool=True,
                           provenance_check:bool=True, scheduler:str='processes') -> dict:
    "The stage: snapshots + OHLCV store -> `sequences.parquet`, checked, streamed and written atomically."
    t0 = time.perf_counter()
    check_scheduler(scheduler)
    snapshots_path, ohlcv_store = Path(snapshots_path), Path(ohlcv_store)
    if not snapshots_path.exists():
        raise FileNotFoundError(f"snapshots file {snapshots_path} does not exist (run the patterns stage first)")
    snapshots = pd.read_parquet(snapshots_path)
    require_columns(snapshots, str(snapshots_path))
    frames = StoreFrames(ohlcv_store)   # read ticker by ticker where needed, never the whole store at once
    if reason := input_mismatch(snapshots_path, ohlcv_store, frames, provenance_check): raise SequenceInputError(reason)
    problems = legacy_check_snapshots(StoreFrames(ohlcv_store, dates_only=True), snapshots)   # the dates alone: cheap
    if len(problems) and not skip_bad: raise SequenceInputError(describe_problems(problems, str(snapshots_path)))
    skipped = problems.drop_duplicates('row').groupby('reason')['row'].size().to_dict()
    keep = snapshots.drop(index=snapshots.index[problems['row'].unique()])
    if max_samples is not None and len(keep) > max_samples: keep = keep.sample(max_samples, random_state=seed)
    metadata = {'stage': 'sequences', 'version': k4_nbdev.__version__, 'features': FEATURES,
                'sequence_length': sequence_length, 'n_sequences': len(keep), 'skipped': skipped,
                'input': {'snapshots': str(snapshots_path), 'snapshots_fingerprint': fingerprint(snapshots_path),
                          'ohlcv': str(ohlcv_store), 'ohlcv_fingerprint': fingerprint(ohlcv_store),
                          'provenance_check': 'passed' if recorded_fingerprint(snapshots_path) else 'skipped'},
                'parameters': {'max_samples': max_samples, 'seed': seed, 'validate': validate, 'skip_bad': skip_bad}}
    try:
        if scheduler == 'processes':
            n = write_sequences(iter_sequences(frames, keep, sequence_length, workers, progress), output, metadata,
                                sequence_length, validate)
        else: n = write_sequences_in_parts(ohlcv_store, keep, output, metadata, scheduler, sequence_length, validate, workers, progress)
    except NonFiniteError as e: raise NonFiniteError(f"{e} (inputs: {snapshots_path}, {ohlcv_store})") from None
    return {'n_sequences': n, 'skipped': skipped, 'seconds': time.perf_counter() - t0, 'output': str(output)}
# ---- end of the previous implementation ----

LEGACY = {  # module -> name -> the previous function (a name imported into both modules is replaced in both)
    data: {'normalise_ohlcv': legacy_normalise_ohlcv},
    patterns: {'rolling_mean': legacy_rolling_mean, 'rolling_std': legacy_rolling_std, 'trailing_rank': legacy_trailing_rank,
               'safe_ratio': legacy_safe_ratio},
    sequences: {'rolling_mean': legacy_rolling_mean, 'rolling_std': legacy_rolling_std, 'trailing_rank': legacy_trailing_rank,
                'safe_ratio': legacy_safe_ratio,
                'rolling_median': legacy_rolling_median, 'rolling_slope': legacy_rolling_slope,
                'var_features': legacy_var_features, 'check_snapshots': legacy_check_snapshots,
                'ticker_sequences': legacy_ticker_sequences, 'build_sequences': legacy_build_sequences}}


def use_legacy():
    "Put the previous functions back into the package's modules (the worker processes fork from this one)."
    for module, functions in LEGACY.items():
        for name, fn in functions.items(): setattr(module, name, fn)


def stage_job(implementation:str, snapshots:str, store:str, output:str, workers:int):
    "One measured process: the whole stage, as `k4-build-sequences --workers N` runs it."
    if implementation == 'before': use_legacy()
    sequences.build_sequences(snapshots, store, output, workers=workers, progress=False)


def measure(implementation:str, snapshots:Path, store:Path, output:Path, workers:int) -> dict:
    "Wall and CPU seconds of a fresh process running the stage, with the load average around it."
    load = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, '--job', implementation, str(snapshots), str(store), str(output),
                    str(workers)], check=True, cwd=Path(__file__).parent)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {'wall_s': wall, 'cpu_s': cpu, 'load_1min': max(load, os.getloadavg()[0]), 'fingerprint': fingerprint(output)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--scale', default='quick', choices=list(SCALES), help='synthetic preset (default quick)')
    p.add_argument('--workers', default='1,2', help='comma-separated worker counts (default 1,2)')
    p.add_argument('--rounds', type=int, default=2, help='measurements of each implementation and worker count')
    p.add_argument('--out', default=str(Path(__file__).parents[1] / 'nbs' / 'results' / 'sequences_speed.csv'),
                   help="CSV to write the table to ('' for none)")
    a = p.parse_args(argv)
    workers = [int(w) for w in a.workers.split(',')]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames, snaps = market_and_snapshots(a.scale, max(workers))
        store = write_store(frames, tmp / 'ohlcv')
        snaps_path = write_table(snaps, tmp / 'snapshots.parquet', {'input': {'source': str(store), 'fingerprint': fingerprint(store)}})
        print(f"market: {a.scale} preset, {len(frames)} tickers x {SCALES[a.scale]['n_days']} days, {len(snaps):,} snapshots; "
              f"{os.cpu_count()} CPUs", flush=True)
        del frames
        runs = []
        for r in range(a.rounds):
            for w in workers:
                for impl in (['before', 'now'] if r % 2 == 0 else ['now', 'before']):
                    m = measure(impl, snaps_path, store, tmp / f'{impl}-{w}-{r}.parquet', w)
                    runs.append({'implementation': impl, 'workers': w, 'round': r, **m})
                    print(f"  {impl:6s} {w} worker(s), round {r}: wall {m['wall_s']:.1f} s, CPU {m['cpu_s']:.1f} s, "
                          f"load {m['load_1min']:.1f}", flush=True)
    runs = pd.DataFrame(runs)
    identical = runs['fingerprint'].nunique() == 1
    best = runs.loc[runs.groupby(['implementation', 'workers'])['wall_s'].idxmin()].set_index(['workers', 'implementation'])
    n = len(snaps)
    rows = []
    for w in workers:
        b, c = best.loc[(w, 'before')], best.loc[(w, 'now')]
        rows.append({'workers': w, 'sequences': n, 'before_wall_s': round(b['wall_s'], 1), 'now_wall_s': round(c['wall_s'], 1),
                     'before_per_s': round(n / b['wall_s']), 'now_per_s': round(n / c['wall_s']),
                     'speedup_wall': round(b['wall_s'] / c['wall_s'], 2), 'before_cpu_s': round(b['cpu_s'], 1),
                     'now_cpu_s': round(c['cpu_s'], 1), 'speedup_cpu': round(b['cpu_s'] / c['cpu_s'], 2),
                     'load_1min_before': round(b['load_1min'], 1), 'load_1min_now': round(c['load_1min'], 1),
                     'cpus': os.cpu_count(), 'scale': a.scale, 'byte_identical': identical})
    table = pd.DataFrame(rows)
    pd.set_option('display.width', 200)
    print(table.to_string(index=False))
    print(f"outputs byte-identical across all {len(runs)} runs: {identical}")
    if a.out: table.to_csv(a.out, index=False); print(f'table: {a.out}')
    if not identical: sys.exit('the implementations disagree')


if __name__ == '__main__':
    if sys.argv[1:2] == ['--job']: stage_job(sys.argv[2], *sys.argv[3:6], int(sys.argv[6]))
    else: main()
