"""Tests of `k4_nbdev.patterns` (DOMAIN §2–§4): hand-built OHLCV scenarios with exact expected results,
the causality property, bad input, parallel determinism, the console script, and TA-Lib agreement."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from k4_nbdev.core import fingerprint
from k4_nbdev.data import OHLCVError, MarketParams, synthetic_market, write_store
from k4_nbdev.core import read_metadata
from k4_nbdev.patterns import (CALIBRATION_TARGETS, LABEL_COLUMNS, bench_calibration, SNAPSHOT_COLUMNS, adx,
                               bollinger_width, find_patterns, indicators, label_snapshots, market_snapshots,
                               patterns_cli, qualifies, qualifying_runs, take_snapshots, ticker_snapshots,
                               valid_channel)
from k4_nbdev.testing import exit_of


def flat(n, price=100.0, spread=1.0, volume=1e6):
    "n flat bars: close = price, high/low = price +/- spread."
    return pd.DataFrame({'date': pd.bdate_range('2020-01-01', periods=n), 'open': price, 'high': price + spread,
                         'low': price - spread, 'close': price, 'volume': volume})


def mask(n, *runs):
    "Boolean qualification mask that is True on the half-open bar ranges `runs`."
    q = np.zeros(n, bool)
    for a, b in runs: q[a:b] = True
    return q


def dates_at(df, *bars): return df['date'].iloc[list(bars)].tolist()


# ---------------------------------------------------------------- qualification and the state machine

def test_qualification_rule():
    ind = pd.DataFrame({'bbw_percentile': [0.29, 0.30, 0.10, 0.10, 0.10, 0.10, np.nan, 0.10],
                        'adx_14': [31.9, 20.0, 32.0, 32.0, 20.0, 40.0, 10.0, np.nan],
                        'volume_ratio_20': [0.34, 0.1, 0.34, 0.35, 0.9, 0.1, 0.1, 0.1],
                        'range_ratio': [0.9, 0.1, 0.64, 0.64, 0.64, 0.9, 0.1, 0.1]})
    # bbw mandatory and strict; 2 of 3 strict thresholds; NaN never qualifies (but the other two may still vote)
    assert qualifies(ind).tolist() == [True, False, True, False, True, False, False, True]


def quiet_ticker(n=260):
    """200 loud bars (close alternating 100/104, range 4, volume 1e6), then quiet ones (close alternating
    100/100.2, range 0.4, volume 1e5). The band width falls with every quiet bar (percentile 0), the
    alternation keeps ADX far below 32, the volume ratio stays below 0.35 for 15 bars (200-214) and the
    range ratio below 0.65 for 18 (200-217): bars 200-217 qualify."""
    df = flat(n)
    loud = np.arange(n) < 200
    df['close'] = np.where(loud, 100 + 4.0 * (np.arange(n) % 2), 100 + 0.2 * (np.arange(n) % 2))
    df['open'] = df['close']
    df['high'] = df['close'] + np.where(loud, 2.0, 0.2)
    df['low'] = df['close'] - np.where(loud, 2.0, 0.2)
    df['volume'] = np.where(loud, 1e6, 1e5)
    return df


def test_pattern_qualifies_and_activates_on_the_expected_bar_with_expected_boundaries():
    df = quiet_ticker()
    q = qualifies(indicators(df))
    assert np.flatnonzero(q).tolist() == list(range(200, 218))
    pats, snaps = ticker_snapshots(df, 'Q')
    assert len(pats) == 1
    p = pats.iloc[0]
    assert (p['pattern_id'], p['start_date'], p['activation_date']) == ('Q_' + f"{df['date'][200]:%Y%m%d}",
                                                                       df['date'][200], df['date'][210])
    assert p['start_price'] == 100.0
    assert (p['upper_boundary'], p['lower_boundary']) == (100.4, 99.8)   # bars 201-210: highs 100.2/100.4, lows 99.8/100.0
    assert p['power_boundary'] == pytest.approx(1.005 * 100.4)
    assert (p['exit_type'], p['days_qualifying']) == ('ACTIVE', 10)
    assert snaps['snapshot_date'].tolist() == dates_at(df, *range(210, 260, 5))


def test_activation_needs_qualifying_days_further_bars_and_ignores_the_start_bar():
    df = flat(60)
    df.loc[5, ['high', 'low']] = [150.0, 50.0]   # start bar: outside the boundaries
    df.loc[8, 'high'], df.loc[15, 'low'] = 101.7, 98.2
    df.loc[16, ['high', 'low']] = [130.0, 70.0]  # after activation: ignored too
    pats = find_patterns(df, mask(60, (5, 17)), 'T')
    assert dates_at(df, 5, 15) == [pats['start_date'][0], pats['activation_date'][0]]
    assert (pats['upper_boundary'][0], pats['lower_boundary'][0]) == (101.7, 98.2)
    assert find_patterns(df, mask(60, (5, 15)), 'T').empty  # start + 9 further bars: not enough
    assert find_patterns(df, mask(60, (5, 16)), 'T')['activation_date'].tolist() == dates_at(df, 15)
    assert find_patterns(df, mask(60, (5, 11)), 'T', qualifying_days=5)['activation_date'].tolist() == dates_at(df, 10)


def test_candidate_broken_on_day_6_is_dropped_and_the_next_run_starts_fresh():
    df = flat(60)
    pats = find_patterns(df, mask(60, (5, 11), (12, 23)), 'T')   # bar 11 (day 6 of the candidate) fails
    assert pats['start_date'].tolist() == dates_at(df, 12)
    assert pats['activation_date'].tolist() == dates_at(df, 22)


def test_breakout_needs_close_above_power():
    df = flat(80)
    df.loc[20, 'close'] = 1.005 * 101.0          # equal to power: not a breakout
    df.loc[20, 'high'] = 102.0
    df.loc[25, ['high', 'close']] = [103.0, 101.6]
    pats = find_patterns(df, mask(80, (5, 80)), 'T')
    assert pats.loc[0, ['exit_type', 'exit_date', 'days_in_pattern']].tolist() == ['BREAKOUT', df['date'][25], 20]
    snaps = take_snapshots(df, pats)
    assert snaps['snapshot_date'][snaps['pattern_id'] == pats['pattern_id'][0]].tolist() == dates_at(df, 15, 20)


def test_breakdown_needs_close_below_lower():
    df = flat(80)
    df.loc[18, 'close'] = df.loc[18, 'low'] = 99.0   # equal to lower: not a breakdown
    df.loc[30, ['low', 'close']] = [97.0, 98.9]
    pats = find_patterns(df, mask(80, (5, 16)), 'T')
    assert pats.loc[0, ['exit_type', 'exit_date']].tolist() == ['BREAKDOWN', df['date'][30]]
    snaps = take_snapshots(df, pats)
    assert snaps['snapshot_date'].tolist() == dates_at(df, 15, 20, 25)   # never the exit bar (30)


def test_timeout_after_90_days_in_pattern():
    df = flat(200)
    pats = find_patterns(df, mask(200, (5, 16)), 'T')
    assert pats.loc[0, ['exit_type', 'exit_date', 'days_in_pattern']].tolist() == ['TIMEOUT', df['date'][96], 91]
    assert take_snapshots(df, pats)['snapshot_date'].iloc[-1] == df['date'][95]
    df.loc[96, ['high', 'close']] = [103.0, 102.0]   # breakout and timeout on the same bar: breakout first
    assert find_patterns(df, mask(200, (5, 16)), 'T')['exit_type'].tolist() == ['BREAKOUT']
    assert find_patterns(df.iloc[:96], mask(96, (5, 16)), 'T')['exit_type'].tolist() == ['ACTIVE']


def test_redetection_after_exit_starts_on_the_next_bar():
    df = flat(300)
    df.loc[30, ['high', 'close']] = [103.0, 102.0]    # breakout on bar 30
    pats = find_patterns(df, mask(300, (5, 300)), 'T')
    assert pats['start_date'].tolist() == dates_at(df, 5, 31, 123, 215)
    assert pats['exit_type'].tolist() == ['BREAKOUT', 'TIMEOUT', 'TIMEOUT', 'ACTIVE']
    assert pats['exit_date'][:3].tolist() == dates_at(df, 30, 122, 214)
    assert pats['pattern_id'].is_unique


def test_snapshot_spacing_and_columns():
    df = flat(100)
    pats = find_patterns(df, mask(100, (5, 16)), 'T')
    snaps = take_snapshots(df, pats, snapshot_every=7)
    assert list(snaps.columns) == SNAPSHOT_COLUMNS
    assert snaps['days_since_activation'].tolist() == list(range(0, 81, 7))
    with pytest.raises(ValueError, match='snapshot_every'): take_snapshots(df, pats, snapshot_every=0)
    with pytest.raises(ValueError, match='qualifying_days'): find_patterns(df, mask(100, (5, 16)), qualifying_days=90)


# ---------------------------------------------------------------- race labels

def race(highs=None, lows=None, n=101):
    "Label one snapshot on bar 0 (upper 100, lower 90) of a ticker whose days 1.. have high 99 / low 91 unless set."
    df = flat(n, price=95.0, spread=4.0)
    for d, v in (highs or {}).items(): df.loc[d, 'high'] = v
    for d, v in (lows or {}).items(): df.loc[d, 'low'] = v
    snap = pd.DataFrame([dict(pattern_id='T_0', ticker='T', start_date=df['date'][0], activation_date=df['date'][0],
                              snapshot_date=df['date'][0], upper_boundary=100.0, lower_boundary=90.0,
                              power_boundary=100.5, start_price=95.0, days_qualifying=10, days_since_activation=0)])
    return label_snapshots(df, snap).iloc[0]


@pytest.mark.parametrize('highs, lows, expected', [
    ({10: 104.9}, {}, 0),                       # K0: best gain < 5%
    ({10: 105.0}, {}, 1),                       # K1 from exactly 5%
    ({10: 114.9}, {}, 1),
    ({10: 115.0}, {}, 2),                       # K2
    ({10: 135.0}, {}, 3),                       # K3
    ({10: 175.0}, {}, 4),                       # K4
    ({}, {5: 80.0}, 5),                         # K5
    ({20: 180.0}, {5: 80.0}, 5),                # breach before any positive: K5 even if K4 later
    ({3: 106.0, 40: 180.0}, {5: 80.0}, 1),      # positive before the breach beats K5, but K1 is frozen
    ({3: 120.0, 40: 180.0}, {5: 80.0}, 2),      # K2 is frozen by the breach too
    ({3: 140.0, 40: 180.0}, {5: 80.0}, 4),      # K3, breach, then upgrade to K4
    ({3: 140.0, 5: 180.0}, {5: 80.0}, 4),       # upgrade allowed on the breach day itself once K3
    ({5: 120.0}, {5: 80.0}, 5),                 # breach and first positive on the same day: K5
    ({}, {5: 81.9}, 0),                         # a 9% dip below the lower boundary is not K5
    ({}, {5: 81.0}, 5),                         # exactly 0.90 x lower is a breach
    ({100: 180.0}, {}, 4),                      # day 100 is inside the window
])
def test_race_label(highs, lows, expected):
    assert race(highs, lows)['outcome_class'] == expected


def test_window_excludes_the_snapshot_bar_and_day_101():
    assert race({0: 180.0}, {0: 50.0})['outcome_class'] == 0
    assert race({101: 180.0}, {101: 50.0}, n=102)['outcome_class'] == 0


def test_label_diagnostics():
    r = race({3: 140.0, 40: 180.0}, {5: 80.0, 60: 75.0})
    assert (r['breach_day'], r['days_to_max_gain']) == (5, 40)
    assert r['max_gain_pct'] == pytest.approx(80.0)
    assert r['max_loss_pct'] == pytest.approx(100 * (75 - 90) / 90)
    assert r['label_end_date'] == flat(101)['date'][100]
    assert pd.isna(race({10: 120.0})['breach_day'])


def test_snapshot_without_a_full_window_stays_unlabelled():
    df = flat(300)
    df.loc[250, 'high'] = 200.0
    pats = find_patterns(df, mask(300, (150, 300)), 'T')   # activation on bar 160: 140 bars left
    snaps = label_snapshots(df, take_snapshots(df, pats))
    labelled = snaps['snapshot_date'] <= df['date'][199]
    assert snaps.loc[labelled, 'outcome_class'].tolist() == [4] * labelled.sum()
    sixty_before_end = snaps[snaps['snapshot_date'] == df['date'][240]].iloc[0]
    assert sixty_before_end[LABEL_COLUMNS].isna().all()
    assert snaps.loc[~labelled, LABEL_COLUMNS].isna().all().all()
    assert str(snaps['outcome_class'].dtype) == 'Int64'


# ---------------------------------------------------------------- causality

SYN = synthetic_market(n_tickers=3, n_days=1500, seed=7)


@settings(max_examples=12, deadline=None)
@given(ticker=st.sampled_from(sorted(SYN)), cut=st.integers(130, 1499))
def test_appending_future_bars_changes_no_snapshot_input_and_no_complete_label(ticker, cut):
    _, full = ticker_snapshots(SYN[ticker], ticker)
    _, short = ticker_snapshots(SYN[ticker].iloc[:cut], ticker)
    head = full.iloc[:len(short)].reset_index(drop=True)
    pd.testing.assert_frame_equal(head[SNAPSHOT_COLUMNS], short[SNAPSHOT_COLUMNS], check_exact=True)
    done = short['outcome_class'].notna().to_numpy()
    pd.testing.assert_frame_equal(head[done], short[done], check_exact=True)
    assert (full['snapshot_date'] <= SYN[ticker]['date'].iloc[cut - 1]).sum() == len(short)


def test_indicators_are_causal():
    df = SYN['SYN0000']
    pd.testing.assert_frame_equal(indicators(df.iloc[:700]), indicators(df).iloc[:700], check_exact=True)


# ---------------------------------------------------------------- bad input

def test_unsorted_dates_raise_with_ticker_and_rule():
    df = SYN['SYN0001'].copy()
    df.loc[[300, 301], 'date'] = df.loc[[301, 300], 'date'].to_numpy()
    with pytest.raises(OHLCVError, match=r"(?s)'BAD'.*unsorted_date"): ticker_snapshots(df, 'BAD')


def test_missing_column_raises():
    with pytest.raises(OHLCVError, match=r"(?s)'BAD'.*missing_column.*volume"):
        ticker_snapshots(SYN['SYN0001'].drop(columns='volume'), 'BAD')


def test_gap_of_missing_values_raises_with_the_first_date():
    df = SYN['SYN0001'].copy()
    df.loc[400:410, 'close'] = np.nan
    with pytest.raises(OHLCVError, match=r"(?s)'BAD'.*nan: 11 row\(s\), first at row 400 \(date " +
                       str(df['date'][400].date())):
        ticker_snapshots(df, 'BAD')


def test_ticker_too_short_gives_no_patterns_and_says_why():
    with pytest.warns(UserWarning, match=r"'SHORT' has 120 bars; a pattern needs 129"):
        pats, snaps = ticker_snapshots(SYN['SYN0001'].iloc[:120], 'SHORT')
    assert pats.empty and snaps.empty and list(snaps.columns) == SNAPSHOT_COLUMNS + LABEL_COLUMNS
    frames = {'SHORT': SYN['SYN0001'].iloc[:50], 'OK': SYN['SYN0002']}
    with pytest.warns(UserWarning, match="'SHORT' has 50 bars"):
        _, snaps = market_snapshots(frames, workers=2, progress=False)
    pd.testing.assert_frame_equal(snaps, market_snapshots({'OK': SYN['SYN0002']}, progress=False)[1])


def test_market_results_do_not_depend_on_workers():
    serial = market_snapshots(SYN, workers=1, progress=False)
    parallel = market_snapshots(SYN, workers=2, progress=False)
    for a, b in zip(serial, parallel): pd.testing.assert_frame_equal(a, b)
    assert serial[1]['ticker'].is_monotonic_increasing and serial[0]['pattern_id'].is_unique


# ---------------------------------------------------------------- console script

def test_cli_writes_snapshots_and_patterns_with_provenance(tmp_path):
    store = write_store(SYN, tmp_path / 'ohlcv')
    out, pout = tmp_path / 'out' / 'snapshots.parquet', tmp_path / 'out' / 'patterns.parquet'
    patterns_cli(['--ohlcv', str(store), '--output', str(out), '--patterns-output', str(pout),
                  '--snapshot-every', '3', '--tickers', 'SYN0000,SYN0002', '--workers', '1'])
    snaps = pd.read_parquet(out)
    assert set(snaps['ticker']) <= {'SYN0000', 'SYN0002'} and len(snaps) > 0
    assert (snaps['days_since_activation'] % 3 == 0).all()
    meta = read_metadata(out)
    assert meta['parameters'] == {'snapshot_every': 3, 'qualifying_days': 10}
    assert meta['input']['fingerprint'] == fingerprint(store)
    assert meta['input']['tickers'] == ['SYN0000', 'SYN0002']
    assert read_metadata(pout)['n_patterns'] == len(pd.read_parquet(pout))
    assert sorted(p.name for p in out.parent.iterdir()) == ['patterns.parquet', 'snapshots.parquet']


@pytest.mark.parametrize('make_store, message', [
    (lambda d: d / 'missing', 'does not exist'),
    (lambda d: write_store({'BAD': SYN['SYN0000'].iloc[::-1].reset_index(drop=True)}, d / 'bad'), 'unsorted_date'),
])
def test_cli_bad_input_exits_nonzero_and_writes_nothing(tmp_path, make_store, message):
    store, out = make_store(tmp_path), tmp_path / 'snapshots.parquet'
    run = subprocess.run([sys.executable, '-c', 'from k4_nbdev.patterns import patterns_cli; patterns_cli()',
                          '--ohlcv', str(store), '--output', str(out)], capture_output=True, text=True)
    assert run.returncode != 0
    assert 'k4-patterns' in run.stderr and message in run.stderr
    assert not out.exists()


# ---------------------------------------------------------------- TA-Lib agreement on real tickers

def test_adx_and_bollinger_width_agree_with_talib_on_real_tickers():
    talib = pytest.importorskip('talib', reason='ta-lib (a dev requirement) is not installed')
    from k4_nbdev.data import real_samples
    try: frames = real_samples()
    except ModuleNotFoundError as e: pytest.skip(f"real sample tickers unavailable: {e}")
    worst = {}
    for t, f in frames.items():
        h, l, c = (f[k].to_numpy() for k in ('high', 'low', 'close'))
        ours, ref = adx(h, l, c), talib.ADX(h, l, c, 14)
        assert np.array_equal(np.isnan(ours), np.isnan(ref)), t
        upper, middle, lower = talib.BBANDS(c, 20, 2, 2)
        worst[t] = (np.nanmax(np.abs(ours - ref)), np.nanmax(np.abs(bollinger_width(c) - 100 * (upper - lower) / middle)))
    print({t: f"ADX {a:.2e}, BBW {b:.2e}" for t, (a, b) in worst.items()})
    assert max(a for a, _ in worst.values()) < 1e-9
    assert max(b for _, b in worst.values()) < 1e-6


@pytest.fixture(scope='module')
def small_bench():
    "A small synthetic market (200 tickers x 10 years) with its answer key and labelled snapshots."
    frames, episodes = synthetic_market(n_tickers=200, n_days=2520, seed=0, with_episodes=True)
    return market_snapshots(frames, workers=2, progress=False)[1], episodes


MIX = [m for m in CALIBRATION_TARGETS if m.endswith('% of labelled')]
COVERAGE = ['K4 snapshots in up-move episodes %', 'episodes with a snapshot %', 'snapshots inside an episode %']


def test_calibrated_market_meets_its_class_mix_and_coverage_targets(small_bench):
    table = bench_calibration(*small_bench, split_date=None)
    assert table.loc[MIX + COVERAGE, 'ok'].all(), table


def test_calibration_fails_when_the_class_mix_leaves_its_ranges():
    "Bigger planted moves push K3/K4 out of range: the same check must say so."
    frames, episodes = synthetic_market(n_tickers=60, n_days=2520, seed=0, with_episodes=True,
                                        params=MarketParams(move_log_mean=-3.0))
    table = bench_calibration(market_snapshots(frames, workers=2, progress=False)[1], episodes, split_date=None)
    assert not table.loc[['K3 % of labelled', 'K4 % of labelled'], 'ok'].any()


# ---------------------------------------------------------------- degenerate channels (flat, tick-quantised bars)

def tick_flat_ticker(n=260):
    "200 loud bars, then bars with open = high = low = close = 100: bars 200-218 qualify, all on one price."
    df = quiet_ticker(n)
    quiet = np.arange(n) >= 200
    for k in ('open', 'high', 'low', 'close'): df.loc[quiet, k] = 100.0
    return df


def test_degenerate_channel_at_activation_is_dropped_and_the_ticker_restarts():
    df = flat(60, spread=0.0)                                   # open = high = low = close
    q = mask(60, (5, 60))
    assert find_patterns(df, q, 'T').empty
    df.loc[20, 'high'] = 100.5                                  # one tick of width in the second candidate's bars
    pats = find_patterns(df, q, 'T')
    assert pats['start_date'].tolist() == dates_at(df, 16) and pats['activation_date'].tolist() == dates_at(df, 26)
    assert valid_channel(pats['upper_boundary'], pats['lower_boundary']).all()
    df = tick_flat_ticker()
    assert qualifying_runs(qualifies(indicators(df))).max() > 10   # the flat bars do qualify ...
    pats, snaps = ticker_snapshots(df, 'FLAT')
    assert pats.empty and snaps.empty                           # ... but never make a zero-width pattern


def test_the_builder_uses_the_same_channel_rule():
    from k4_nbdev import sequences
    assert sequences.valid_channel is valid_channel
    assert valid_channel(np.array([101.0, 100.0, 100.0, np.nan]), np.array([99.0, 100.0, 0.0, 99.0])).tolist() == \
        [True, False, False, False]


def test_flat_bars_flow_through_patterns_and_sequences(tmp_path):
    from k4_nbdev.sequences import build_sequences_cli
    store = write_store({'FLAT': tick_flat_ticker(), 'SYN0000': SYN['SYN0000']}, tmp_path / 'ohlcv')
    patterns_cli(['--ohlcv', str(store), '--output', str(tmp_path / 'snapshots.parquet'), '--workers', '1'])
    snaps = pd.read_parquet(tmp_path / 'snapshots.parquet')
    assert len(snaps) and (snaps['upper_boundary'] > snaps['lower_boundary']).all()
    build_sequences_cli(['--input', str(tmp_path / 'snapshots.parquet'), '--output', str(tmp_path / 'sequences.parquet'),
                         '--workers', '1'])
    assert read_metadata(tmp_path / 'sequences.parquet')['n_sequences'] == len(snaps)


# ---------------------------------------------------------------- the console script refuses, in one line, touching nothing

@pytest.fixture(scope='module')
def stores(tmp_path_factory):
    "A folder store and a long-parquet store of two tickers."
    d = tmp_path_factory.mktemp('stores')
    frames = {t: SYN[t] for t in ('SYN0000', 'SYN0001')}
    return {'folder': write_store(frames, d / 'ohlcv'), 'long': write_store(frames, d / 'ohlcv.parquet')}


@pytest.mark.parametrize('layout, flags, named', [
    ('long', lambda s, d: ['--output', str(s)], '--output'),
    ('folder', lambda s, d: ['--output', str(s / 'snapshots.parquet')], '--output'),
    ('long', lambda s, d: ['--output', str(d / 'snapshots.parquet'), '--patterns-output', str(s)], '--patterns-output'),
    ('folder', lambda s, d: ['--output', str(d / 'snapshots.parquet'), '--patterns-output', str(s / 'p.parquet')],
     '--patterns-output'),
    ('folder', lambda s, d: ['--output', str(d / 'same.parquet'), '--patterns-output', str(d / '.' / 'same.parquet')],
     '--patterns-output'),
], ids=['output-is-long-store', 'output-inside-store', 'patterns-output-is-long-store',
        'patterns-output-inside-store', 'output-equals-patterns-output'])
def test_cli_refuses_an_output_that_is_an_input(tmp_path, stores, layout, flags, named):
    store = stores[layout]
    before = fingerprint(store)
    rc, message = exit_of(patterns_cli, ['--ohlcv', str(store), '--workers', '1', *flags(store, tmp_path)])
    assert rc == 1 and message.startswith('k4-patterns: ') and named in message and '\n' not in message
    assert fingerprint(store) == before and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('flag, value', [('--snapshot-every', '0'), ('--qualifying-days', '0'), ('--qualifying-days', '90'),
                                         ('--workers', '0'), ('--tickers', 'SYN0000,NOPE'), ('--tickers', ',')])
def test_cli_bad_flags_exit_1_naming_the_flag(tmp_path, stores, flag, value):
    before = fingerprint(stores['folder'])
    rc, message = exit_of(patterns_cli, ['--ohlcv', str(stores['folder']), '--output', str(tmp_path / 's.parquet'), flag, value])
    assert rc == 1 and message.startswith('k4-patterns: ') and flag in message and '\n' not in message
    if value == 'SYN0000,NOPE': assert 'NOPE' in message and 'SYN0000' not in message.split(':')[1]
    assert fingerprint(stores['folder']) == before and list(tmp_path.iterdir()) == []


def test_cli_user_error_exit_status_is_1_without_a_traceback(tmp_path, stores):
    run = subprocess.run([sys.executable, '-c', 'from k4_nbdev.patterns import patterns_cli; patterns_cli()',
                          '--ohlcv', str(stores['long']), '--output', str(stores['long'])], capture_output=True, text=True)
    assert run.returncode == 1 and 'Traceback' not in run.stderr and run.stderr.count('\n') == 1


def test_a_market_without_patterns_is_explained_in_one_line():
    from k4_nbdev.patterns import no_pattern_message, qualification_summary
    n = 400
    close = 100 * 1.01 ** np.arange(n)                              # a steady trend: ADX high, nothing compresses
    trend = pd.DataFrame({'date': pd.bdate_range('2020-01-01', periods=n), 'open': close, 'high': close * 1.02,
                          'low': close * 0.98, 'close': close, 'volume': 1e6})
    q = qualification_summary({'T': trend})
    assert q.loc['T', 'bars'] == n and q.loc['T', 'longest qualifying run'] < 11
    msg = no_pattern_message({'T': trend})
    assert msg.startswith('no consolidation pattern in 1 tickers (400 bars)') and 'a pattern needs 11' in msg and '\n' not in msg
