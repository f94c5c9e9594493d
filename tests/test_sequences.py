"The sequence builder: temporal safety (property test and audit), features, padding, the file, bad input, the CLI."
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, HealthCheck, strategies as st

from k4_nbdev.core import fingerprint
from k4_nbdev.data import SCALES, synthetic_market, write_store
from k4_nbdev.core import read_metadata, write_table
from k4_nbdev.patterns import indicators, market_snapshots
from k4_nbdev.sequences import (FEATURES, SequenceInputError, TemporalIntegrityError, audit_sequences, bar_features,
                                build_sequences, build_sequences_cli, check_snapshots, market_sequences,
                                read_sequences, ticker_sequences, validate_sequences, write_sequences)
from k4_nbdev.testing import exit_of, standalone_inputs

L = 50


@pytest.fixture(scope='module')
def market():
    "A small synthetic market (five years, so snapshots lie well past every feature's warm-up) and its snapshots."
    frames = synthetic_market(n_tickers=10, n_days=1260, seed=0)
    return frames, market_snapshots(frames, progress=False)[1]


@pytest.fixture(scope='module')
def built(market):
    frames, snaps = market
    return market_sequences(frames, snaps, L)


def snapshot_rows(df, ticker, cases):
    "Snapshot rows on arbitrary bars: cases are (start, activation, snapshot) bar positions."
    d, h, l = df['date'], df['high'].to_numpy(), df['low'].to_numpy()
    rows = []
    for s, a, t in cases:
        upper, lower = h[s:a + 1].max() * 1.01, l[s:a + 1].min() * 0.99
        rows.append(dict(pattern_id=f'{ticker}_{s}', ticker=ticker, start_date=d[s], activation_date=d[a],
                         snapshot_date=d[t], upper_boundary=upper, lower_boundary=lower, power_boundary=1.005 * upper,
                         start_price=df['close'][s], days_qualifying=10, days_since_activation=t - a))
    return pd.DataFrame(rows)


# --- temporal safety -------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), n_days=st.integers(30, 700), data=st.data())
def test_full_history_equals_truncated_history(seed, n_days, data):
    df = synthetic_market(1, n_days, seed=seed)['SYN0000']
    ends = data.draw(st.lists(st.integers(0, n_days - 1), min_size=1, max_size=4, unique=True))
    cases = []
    for t in ends:
        s = data.draw(st.integers(0, t))
        cases.append((s, data.draw(st.integers(s, t)), t))
    rows = snapshot_rows(df, 'SYN0000', cases)
    X_full, mask_full, meta_full = ticker_sequences(df, rows, L)          # all snapshots at once, full history
    for i, (_, _, t) in enumerate(cases):
        X_cut, mask_cut, meta_cut = ticker_sequences(df.iloc[:t + 1], rows.iloc[[i]], L)
        assert X_full[i].tobytes() == X_cut[0].tobytes()
        assert (mask_full[i] == mask_cut[0]).all()
        assert meta_full['n_undefined'][i] == meta_cut['n_undefined'][0]


def test_audit_passes_honest_and_catches_leaky(market, built):
    frames, snaps = market
    honest = audit_sequences(built, frames, n_samples=200)
    assert len(honest) == 0 and honest.attrs['n_checked'] == len(built[0])

    def leaky(df):    # reads the next bar's close: look-ahead
        return bar_features(df).assign(ma_5=df['close'].shift(-1).rolling(5).mean().to_numpy())
    leaky_built = market_sequences(frames, snaps, L, bar_fn=leaky)
    caught = audit_sequences(leaky_built, frames, n_samples=200, bar_fn=leaky)
    assert len(caught) >= len(built[0]) - len(frames)     # all but possibly a snapshot on a ticker's last bar
    assert all(f == ['ma_5'] for f in caught['features'])
    assert all(L - 1 in steps for steps in caught['timesteps'])


def test_validation_rejects_future_dates(built):
    X, mask, meta = built
    bad = meta.copy()
    bad.at[3, 'sequence_dates'] = bad['sequence_dates'][3] + np.timedelta64(3, 'D')
    with pytest.raises(TemporalIntegrityError, match=meta['ticker'][3]):
        validate_sequences(X, mask, bad, L)
    with pytest.raises(ValueError, match=r'\(49, 69\)'):
        validate_sequences(X[:, 1:], mask[:, 1:], meta, L)


# --- features --------------------------------------------------------------------------------------------

def test_every_feature_varies_and_is_finite(built):
    X, mask, meta = built
    values = X[mask]
    assert np.isfinite(X).all()
    constant = [f for f, s in zip(FEATURES, values.std(axis=0)) if s == 0]
    assert constant == []
    assert (meta['n_undefined'] < mask.sum(axis=1) * len(FEATURES)).all()


@pytest.fixture
def handmade():
    "A 600-bar frame with a volume spike planted 7 bars before the end."
    n = 600
    rng = np.random.default_rng(5)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[close[0], close[:-1]]
    high, low = np.maximum(open_, close) * 1.01, np.minimum(open_, close) * 0.985
    volume = np.full(n, 1000.0) + rng.integers(0, 100, n)
    volume[n - 8] = 5000
    dates = pd.bdate_range('2020-01-01', periods=n).astype('datetime64[ns]')
    return pd.DataFrame({'date': dates, 'open': open_, 'high': high, 'low': low, 'close': close, 'volume': volume})


def test_bar_features_by_hand(handmade):
    df, t = handmade, len(handmade) - 1
    f = bar_features(df).iloc[t]
    c, h, l, v = (df[k].to_numpy() for k in ('close', 'high', 'low', 'volume'))
    bbw = indicators(df)['bbw_20'].to_numpy()
    assert f['days_since_volume_spike'] == 7
    assert f['volume_spike'] == pytest.approx(v[t] / v[t - 20:t].mean(), rel=1e-12)
    assert f['volume_vs_50d'] == pytest.approx(v[t] / v[t - 49:].mean(), rel=1e-12)
    assert f['baseline_bbw_avg'] == pytest.approx(bbw[t - 49:t - 19].mean(), rel=1e-12)
    assert f['ma_10'] == pytest.approx(c[t - 9:].mean(), rel=1e-12)
    assert f['price_vs_ma20'] == pytest.approx(c[t] / c[t - 19:].mean() - 1, rel=1e-9)
    assert f['daily_volatility'] == pytest.approx((h[t] - l[t]) / c[t], rel=1e-12)
    tp = (h[t] + l[t] + c[t]) / 3
    assert f['close_vs_vwap'] == pytest.approx((c[t] - tp) / tp, rel=1e-9)
    assert f['avg_range_20d'] == pytest.approx((h - l)[t - 19:].mean(), rel=1e-12)
    r = c[1:] / c[:-1] - 1                                    # r[k] is the return of bar k + 1
    up = sum(v[k + 1] * max(r[k], 0) for k in range(t - 20, t))
    down = sum(v[k + 1] * max(-r[k], 0) for k in range(t - 20, t))
    assert f['var_raw'] == pytest.approx(up / down, rel=1e-9)
    median = [np.median(bbw[k - 59:k + 1]) for k in range(t - 60, t + 1)]
    k = 0
    while k < 60 and bbw[t - k] < median[60 - k]: k += 1
    assert f['cci_days_factor'] == pytest.approx(min(2, np.sqrt(k / 20)), rel=1e-12)
    m = c[t - 99:] / c[t - 119:t - 19] - 1                  # 20-bar momentum of the last 100 bars
    assert f['nes_rsa_proxy'] == pytest.approx(np.clip((m[-1] - m.mean()) / m.std(), -3, 3), rel=1e-9)


def test_pattern_features_by_hand(handmade):
    df = handmade
    rows = snapshot_rows(df, 'HAND', [(500, 510, 580)])
    X, mask, meta = ticker_sequences(df, rows, L)
    f = pd.DataFrame(X[0], columns=FEATURES)
    u, lo, p = rows.loc[0, ['upper_boundary', 'lower_boundary', 'power_boundary']]
    c = df['close'].to_numpy()
    j = np.arange(580 - L + 1, 581)                           # the bars of the sequence
    np.testing.assert_array_equal(f['days_since_activation'], (j - 510).astype(np.float32))
    np.testing.assert_array_equal(f['days_in_pattern'], (j - 500).astype(np.float32))
    np.testing.assert_array_equal(f['tsf_days_in_consolidation'], np.maximum(j - 500, 0).astype(np.float32))
    np.testing.assert_array_equal(f['days_in_qualification'], np.clip(j - 500, 0, 10).astype(np.float32))
    np.testing.assert_allclose(f['price_position_in_range'], (c[j] - lo) / (u - lo), rtol=1e-5)
    np.testing.assert_allclose(f['distance_from_power_pct'], 100 * (p - c[j]) / c[j], rtol=1e-4)
    np.testing.assert_allclose(f['tsf_score'], 1 + np.sqrt(np.maximum(j - 500, 0) / 30), rtol=1e-6)
    assert f['consolidation_period_days'].eq(80).all() and meta['days_in_pattern'][0] == 80
    w0 = 2 * c[480:500].std()
    assert f['channel_narrowing_pct'].iloc[-1] == pytest.approx(100 * (w0 - (u - lo)) / w0, rel=1e-5)
    composite = f['ebp_composite'].to_numpy()
    assert meta['n_undefined'][0] == 0 and composite.std() > 0
    expected = 1 + (composite >= 0.5) + (composite >= 0.7) + (composite >= 0.85) + (composite >= 0.95)
    np.testing.assert_array_equal(f['ebp_signal'], expected.astype(np.float32))


def test_padding_for_a_young_ticker(market):
    frames, _ = market
    young = frames['SYN0002'].iloc[:30].reset_index(drop=True)
    rows = snapshot_rows(young, 'SYN0002', [(5, 15, 29)])
    X, mask, meta = ticker_sequences(young, rows, L)
    assert mask[0].tolist() == [False] * 20 + [True] * 30
    assert not X[0, :20].any()
    assert pd.isna(meta['sequence_dates'][0][:20]).all() and (meta['sequence_dates'][0][20:] == young['date']).all()
    assert meta['n_undefined'][0] > 0


# --- the file and the stage ------------------------------------------------------------------------------

def test_write_read_round_trip_in_row_groups(built, tmp_path):
    X, mask, meta = built
    path = tmp_path / 'seq.parquet'
    halves = [(X[:5], mask[:5], meta.iloc[:5]), (X[5:], mask[5:], meta.iloc[5:].reset_index(drop=True))]
    assert write_sequences(halves, path, {'features': FEATURES}, L, rows_per_group=3) == len(X)
    assert pq.ParquetFile(path).num_row_groups >= 3
    X2, mask2, meta2 = read_sequences(path)
    assert X2.dtype == np.float32 and X2.shape == (len(X), L, 69) and X2.tobytes() == X.tobytes()
    assert (mask2 == mask).all()
    pd.testing.assert_frame_equal(meta2.drop(columns='sequence_dates'), meta.drop(columns='sequence_dates'))
    assert (np.stack(meta2['sequence_dates']) == np.stack(meta['sequence_dates'])).all()


def test_stage_metadata_order_and_workers(tiny, tmp_path):
    snaps_path, store = tiny / 'snapshots.parquet', tiny / 'ohlcv'
    one = build_sequences(snaps_path, store, tmp_path / 'one.parquet', workers=1, progress=False)
    two = build_sequences(snaps_path, store, tmp_path / 'two.parquet', workers=2, progress=False)
    assert one['n_sequences'] == two['n_sequences'] > 0
    assert read_sequences(tmp_path / 'one.parquet')[0].tobytes() == read_sequences(tmp_path / 'two.parquet')[0].tobytes()
    meta = read_metadata(tmp_path / 'one.parquet')
    assert meta['features'] == FEATURES and meta['sequence_length'] == L and meta['version']
    assert meta['input']['ohlcv_fingerprint'] and meta['input']['snapshots_fingerprint']
    sample = build_sequences(snaps_path, store, tmp_path / 's.parquet', max_samples=3, progress=False)
    assert sample['n_sequences'] == 3
    assert len(audit_sequences(tmp_path / 'one.parquet', store)) == 0


def test_snapshots_from_another_store_are_refused(tiny, tmp_path):
    snaps_path = tiny / 'snapshots.parquet'
    other = write_store(synthetic_market(**SCALES['tiny'], seed=1), tmp_path / 'b' / 'ohlcv')
    with pytest.raises(SequenceInputError, match='rebuild the snapshots'):
        build_sequences(snaps_path, other, tmp_path / 'x.parquet', progress=False)
    assert not (tmp_path / 'x.parquet').exists()


@pytest.mark.parametrize('breakage, reason', [
    (lambda s: s.assign(ticker=np.where(s.index == 2, 'GONE', s['ticker'])), 'ticker not in the OHLCV store'),
    (lambda s: s.assign(snapshot_date=s['snapshot_date'].where(s.index != 2, pd.Timestamp('2011-01-15'))),
     'snapshot_date is not a trading day'),
    (lambda s: s.assign(upper_boundary=s['upper_boundary'].where(s.index != 2)), 'upper_boundary is missing'),
    (lambda s: s.assign(lower_boundary=s['lower_boundary'].where(s.index != 2)), 'lower_boundary is missing'),
])
def test_bad_snapshot_rows(tiny, tmp_path, breakage, reason):
    snaps_path, store = tiny / 'snapshots.parquet', tiny / 'ohlcv'
    snaps = pd.read_parquet(snaps_path)
    broken = breakage(snaps)
    bad_path = write_table(broken, tmp_path / 'bad.parquet', read_metadata(snaps_path))
    out = tmp_path / 'sequences.parquet'
    with pytest.raises(SequenceInputError) as e:
        build_sequences(bad_path, store, out, progress=False)
    assert reason in str(e.value) and 'row 2' in str(e.value) and str(broken['ticker'][2]) in str(e.value)
    assert not out.exists() and not list(tmp_path.glob('.sequences*'))
    with pytest.raises(SystemExit) as e:
        build_sequences_cli(['--input', str(bad_path), '--ohlcv', str(store), '--output', str(out)])
    assert reason in str(e.value.code) and not out.exists()
    build_sequences_cli(['--input', str(bad_path), '--ohlcv', str(store), '--output', str(out), '--skip-bad',
                         '--workers', '1'])
    meta = read_metadata(out)
    assert sum(meta['skipped'].values()) == 1 and reason in next(iter(meta['skipped']))
    assert meta['n_sequences'] == len(snaps) - 1 == len(read_sequences(out)[0])


def test_missing_columns_and_files(tmp_path, market):
    frames, snaps = market
    with pytest.raises(SequenceInputError, match='upper_boundary'):
        check_snapshots(frames, snaps.drop(columns='upper_boundary'))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        build_sequences(tmp_path / 'none.parquet', tmp_path / 'ohlcv', tmp_path / 'out.parquet', progress=False)


def test_cli_defaults_to_the_run_folder_store(tiny, tmp_path, capsys):
    snaps_path = standalone_inputs(tmp_path, 'snapshots.parquet', shared=tiny) / 'snapshots.parquet'
    build_sequences_cli(['--input', str(snaps_path), '--output', str(tmp_path / 'sequences.parquet'),
                         '--workers', '1', '--no-validate'])
    assert 'sequences x 50 x 69' in capsys.readouterr().out
    assert read_metadata(tmp_path / 'sequences.parquet')['parameters']['validate'] is False


# --- the console script refuses, in one line, touching nothing -------------------------------------------

@pytest.fixture(scope='module')
def demo(tiny, tmp_path_factory):
    "Self-consistent tiny inputs (a copy of the shared snapshots + folder store), a long-parquet store, and the snapshots stripped of provenance."
    d = standalone_inputs(tmp_path_factory.mktemp('demo'), 'snapshots.parquet', shared=tiny)
    snaps, store = d / 'snapshots.parquet', d / 'ohlcv'
    stripped = d / 'stripped.parquet'
    pd.read_parquet(snaps).to_parquet(stripped)
    long = write_store(synthetic_market(**SCALES['tiny'], seed=0), d / 'ohlcv.parquet')
    return {'snapshots': snaps, 'store': store, 'stripped': stripped, 'long': long}


def input_hashes(demo): return {k: fingerprint(p) for k, p in demo.items()}


def refused(demo, tmp_path, argv, *named):
    "Assert a one-line exit-1 refusal that names `named`, with every input unchanged and nothing written."
    before = input_hashes(demo)
    rc, message = exit_of(build_sequences_cli, [str(a) for a in argv])
    assert rc == 1 and message.startswith('k4-build-sequences: ') and '\n' not in message, message
    assert all(str(n) in message for n in named), message
    assert input_hashes(demo) == before and list(tmp_path.iterdir()) == []
    return message


@pytest.mark.parametrize('case', ['output-is-input', 'output-inside-store', 'output-is-long-store'])
def test_cli_refuses_an_output_that_is_an_input(demo, tmp_path, case):
    snaps, store, long = demo['snapshots'], demo['store'], demo['long']
    argv = {'output-is-input': ['--input', snaps, '--ohlcv', store, '--output', snaps],
            'output-inside-store': ['--input', snaps, '--ohlcv', store, '--output', store / 'sequences.parquet'],
            'output-is-long-store': ['--input', snaps, '--ohlcv', long, '--output', long]}[case]
    refused(demo, tmp_path, argv, '--output', '--input' if case == 'output-is-input' else '--ohlcv')


@pytest.mark.parametrize('flag, value', [('--sequence-length', '0'), ('--max-samples', '0'), ('--workers', '0'),
                                         ('--seed', '-1')])
def test_cli_bad_flags_exit_1_naming_the_flag(demo, tmp_path, flag, value):
    refused(demo, tmp_path, ['--input', demo['snapshots'], '--ohlcv', demo['store'], '--output',
                             tmp_path / 'sequences.parquet', flag, value], flag)


def test_cli_refuses_snapshots_of_another_store_naming_both_files(demo, tmp_path_factory, tmp_path):
    other = write_store(synthetic_market(**SCALES['tiny'], seed=1), tmp_path_factory.mktemp('other') / 'ohlcv')
    refused(demo, tmp_path, ['--input', demo['snapshots'], '--ohlcv', other, '--output', tmp_path / 'sequences.parquet',
                             '--no-provenance-check'], demo['snapshots'], other)   # a proven mismatch: refused always


def test_cli_refuses_stripped_provenance_unless_told(demo, tmp_path):
    out = tmp_path / 'sequences.parquet'
    refused(demo, tmp_path, ['--input', demo['stripped'], '--ohlcv', demo['store'], '--output', out],
            demo['stripped'], demo['store'], '--no-provenance-check')
    before = input_hashes(demo)
    assert exit_of(build_sequences_cli, ['--input', str(demo['stripped']), '--ohlcv', str(demo['store']), '--output', str(out),
                    '--workers', '1', '--no-provenance-check']) == (0, '')
    assert input_hashes(demo) == before
    assert read_metadata(out)['input']['provenance_check'] == 'skipped'
    exit_of(build_sequences_cli, ['--input', str(demo['snapshots']), '--ohlcv', str(demo['store']), '--output', str(tmp_path / 'ok.parquet'),
             '--workers', '1'])
    assert read_metadata(tmp_path / 'ok.parquet')['input']['provenance_check'] == 'passed'


@pytest.mark.filterwarnings('ignore:overflow:RuntimeWarning')
@pytest.mark.parametrize('validate', [[], ['--no-validate']])
def test_non_finite_sequences_stop_the_command_naming_file_rows_and_features(demo, tmp_path_factory, tmp_path, validate):
    d = tmp_path_factory.mktemp('huge')
    snaps = pd.read_parquet(demo['snapshots'])
    snaps.loc[2, ['upper_boundary', 'power_boundary']] = [1e300, 1.005e300]   # finite, but not in float32
    huge = write_table(snaps, d / 'snapshots.parquet', read_metadata(demo['snapshots']))
    before = fingerprint(huge)
    out = tmp_path / 'sequences.parquet'
    message = refused(demo, tmp_path, ['--input', huge, '--ohlcv', demo['store'], '--output', out, '--workers', '1', *validate],
                      out, huge, snaps['ticker'][2], snaps['snapshot_date'][2].date(), 'upper_boundary',
                      'consolidation_channel_width_pct')
    assert 'non-finite' in message and fingerprint(huge) == before


def test_flat_and_infinite_channels_are_bad_rows(demo):
    from k4_nbdev.data import read_store
    frames, snaps = read_store(demo['store']), pd.read_parquet(demo['snapshots'])
    flat = snaps.assign(upper_boundary=snaps['upper_boundary'].where(snaps.index != 1, snaps['lower_boundary']))
    assert check_snapshots(frames, flat)[['row', 'reason']].values.tolist() == \
        [[1, 'inconsistent boundaries (need 0 < lower < upper)']]
    inf = snaps.assign(upper_boundary=snaps['upper_boundary'].where(snaps.index != 1, np.inf))
    assert check_snapshots(frames, inf)[['row', 'reason']].values.tolist() == [[1, 'upper_boundary is infinite']]
