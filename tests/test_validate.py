"""Validation: each of the seven tests passing and failing, performance figures, a leaky builder caught, ranking metrics,
pattern-bootstrap intervals, the oracle's ceiling, the signal backtest, the report and CLI."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import k4_nbdev
from k4_nbdev.core import fingerprint
from k4_nbdev.data import MarketParams, read_store, synthetic_market, write_store
from k4_nbdev.core import read_metadata, write_table
from k4_nbdev.definitions import PROB_COLUMNS, expected_value
from k4_nbdev.predict import predict
from k4_nbdev.patterns import market_snapshots
from k4_nbdev.sequences import bar_features, build_sequences, market_sequences, read_sequences, ticker_sequences
from k4_nbdev.metrics import classification_metrics
from k4_nbdev.references import PRECURSOR, precursor_baseline, precursor_stats
from k4_nbdev.train import RECIPE, load_training_data
from k4_nbdev.metrics import bootstrap_metrics, calibration_table, confusion_matrix, pattern_resamples, ranking_metrics
from k4_nbdev.backtest import (ENTRY_SIGNALS, EVERY_PATTERN, KEY, SIGNAL_TRADES, backtest, equity_curve,
                               first_snapshots, max_drawdown, random_picks, run_trades, simulate_trade)
from k4_nbdev.references import (COMPARISON_FILE, OBSERVABLE, ORACLE, model_scores, observable_model, oracle_model,
                                 quality_ev, quality_table)
from k4_nbdev.references import paired_display
from k4_nbdev.validate import (FAIL, NO_SIGNAL, PASS, SKIPPED, UNKNOWN, class_drift_check, ev_correlation_check,
                               future_contamination_check, k4_recall_consistency_check, per_class_table, render_report,
                               run_checks, scored_rows, signal_quality, split_purge_check, strong_signal_check,
                               temporal_audit_check, temporal_sequence_check, validate, validate_cli)
from k4_nbdev.testing import exit_of, flat_path, one_bar_ahead, simulate, toy


@pytest.fixture(scope='module')
def run(tiny, tmp_path_factory):
    "A copy of the shared tiny run folder (conftest) with the predictions of its one-epoch model."
    folder = Path(shutil.copytree(tiny, tmp_path_factory.mktemp('validate') / 'run'))
    best = folder / 'model' / 'best.pt'
    predict(best, folder / 'sequences.parquet', folder / 'predictions.parquet')
    return folder, best


# --- test 1 -------------------------------------------------------------------------------------------------
def test_temporal_sequence_check():
    preds = toy(np.zeros(10, int))
    assert temporal_sequence_check(preds)['status'] == PASS
    preds.at[4, 'sequence_dates'] = preds.at[4, 'sequence_dates'] + np.timedelta64(1, 'D')
    result = temporal_sequence_check(preds)
    assert result['status'] == FAIL and result['details']['Temporal violations'] == 1
    assert '2021-02-02' in result['details']['First violation']
    assert temporal_sequence_check(preds.drop(columns='sequence_dates'))['status'] == UNKNOWN


def test_padding_is_not_a_violation():
    preds = toy(np.zeros(4, int))
    preds['sequence_dates'] = [np.r_[np.array(['NaT'] * 2, 'datetime64[ns]'), d[2:]] for d in preds['sequence_dates']]
    assert temporal_sequence_check(preds)['status'] == PASS


# --- test 2 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('wrong,status,level', [(0, PASS, 'NONE'), (2, PASS, 'LOW'), (4, FAIL, 'MODERATE'),
                                                (6, FAIL, 'HIGH')])
def test_future_contamination_levels(wrong, status, level):
    y = np.zeros(40, int)
    pred = y.copy()
    pred[20:20 + wrong] = 1                       # recent half loses wrong/20 accuracy
    result = future_contamination_check(toy(y, pred))
    assert result['details']['Difference'] == pytest.approx(wrong / 20)
    assert (result['status'], result['details']['Suspicion level']) == (status, level)


def test_better_recent_accuracy_is_no_suspicion():
    y = np.zeros(40, int)
    pred = y.copy()
    pred[:10] = 1
    result = future_contamination_check(toy(y, pred))
    assert result['details']['Difference'] == pytest.approx(-0.5) and result['status'] == PASS


# --- test 3 -------------------------------------------------------------------------------------------------
def test_k4_recall_consistency():
    y = np.full(20, 4)
    assert k4_recall_consistency_check(toy(y))['status'] == PASS
    pred = y.copy()
    pred[10:] = 0                                 # early recall 1, late 0
    result = k4_recall_consistency_check(toy(y, pred))
    assert (result['status'], result['details']['Consistency'], result['details']['Difference']) == (FAIL, 'POOR', 1.0)
    pred = y.copy()
    pred[10:14] = 0                               # late recall 0.6: |delta| 0.4
    assert k4_recall_consistency_check(toy(y, pred))['details']['Consistency'] == 'MODERATE'


def test_no_k4_found_in_either_half_is_no_signal_and_fails_the_verdict():
    preds = toy(np.full(20, 4), np.zeros(20, int))          # recall 0 and 0: |delta| = 0, yet nothing found
    result = k4_recall_consistency_check(preds)
    assert result['status'] == NO_SIGNAL and result['details']['Consistency'] == 'NO SIGNAL'
    results = run_checks(preds, n_boot=20)
    tests, targets = results['verdict']['lines']
    n_pass = sum(c['status'] == PASS for c in results['checks'])
    assert not results['verdict']['passed'] and n_pass < 7 and tests.startswith(f'Tests: {n_pass} of 7 passed — ')
    assert 'quality tests (3, 4, 5): FAILED — Test 3 (K4 Recall Consistency: no signal)' in tests
    assert results['verdict']['targets_met'] == 0 and targets.startswith('Reference targets: met 0 of 4 — ')
    assert 'K4 recall 0.000 (> 0.40: missed)' in targets
    assert '### Test 3: K4 Recall Consistency\n**Status**: ✗ NO SIGNAL' in render_report(results)


def test_fewer_than_ten_k4_rows_is_unknown():
    result = k4_recall_consistency_check(toy(np.r_[np.full(9, 4), np.zeros(30, int)]))
    assert result['status'] == UNKNOWN and result['details']['K4 rows'] == 9


# --- test 4 -------------------------------------------------------------------------------------------------
def test_ev_correlation():
    y = np.arange(36) % 6
    assert ev_correlation_check(toy(y))['status'] == PASS
    assert ev_correlation_check(toy(y, (y + 3) % 6))['status'] == FAIL
    assert ev_correlation_check(toy(np.zeros(12, int)))['status'] == UNKNOWN


# --- test 5 -------------------------------------------------------------------------------------------------
def test_class_drift():
    assert class_drift_check(toy(np.arange(40) % 2))['details']['Drift level'] == 'LOW'
    shifted = class_drift_check(toy(np.r_[np.zeros(20, int), np.full(20, 5)]))
    assert (shifted['status'], shifted['details']['Drift level']) == (FAIL, 'HIGH')
    # early 50/50 K0/K1, late 90/10: KL = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.368 -> LOW; 100/0 -> 0.693 -> MODERATE
    y = np.r_[np.arange(20) % 2, np.zeros(18, int), [1, 1]]
    assert class_drift_check(toy(y))['details']['KL divergence'] == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2))
    moderate = class_drift_check(toy(np.r_[np.arange(20) % 2, np.zeros(20, int)]))
    assert (moderate['status'], moderate['details']['Drift level']) == (FAIL, 'MODERATE')


# --- test 6 -------------------------------------------------------------------------------------------------
def _sequences(run, bar_fn, n=6):
    folder, _ = run
    _, _, meta = read_sequences(folder / 'sequences.parquet')
    frames = read_store(folder / 'ohlcv')
    X, mask, m = market_sequences(frames, meta.iloc[:n], 50, bar_fn=bar_fn)
    probs = np.full((len(m), 6), 1 / 6)
    return frames, (X, mask, m), toy(m['outcome_class'].to_numpy(dtype=int)).assign(
        ticker=m['ticker'], pattern_id=m['pattern_id'], snapshot_date=m['snapshot_date'],
        label_end_date=m['label_end_date'], sequence_dates=m['sequence_dates'],
        **{c: probs[:, k] for k, c in enumerate(PROB_COLUMNS)})


def test_temporal_audit(run):
    frames, honest, preds = _sequences(run, bar_features)
    assert temporal_audit_check(preds, honest, frames)['status'] == PASS
    assert temporal_audit_check(preds)['status'] == SKIPPED
    X, mask, meta = honest
    result = temporal_audit_check(preds, (X[:3], mask[:3], meta.iloc[:3]), frames)
    assert result['status'] == FAIL and 'missing' in next(iter(result['details']))


def test_leaky_builder_is_flagged_by_the_report(run):
    frames, leaky, preds = _sequences(run, one_bar_ahead)
    results = run_checks(preds, None, leaky, frames, bar_fn=one_bar_ahead)
    by = {c['test']: c for c in results['checks']}
    assert by[1]['status'] == PASS                 # the dates are all in order: test 1 cannot see this leak
    assert by[6]['status'] == FAIL and by[6]['details']['Mismatching sequences'] == 6
    assert not results['verdict']['passed']
    report = render_report(results)
    assert '### Test 6: Temporal Audit (recomputed from truncated histories)\n**Status**: ✗ FAILED' in report
    assert 'leakage tests (1, 2, 6, 7): FAILED — Test 6' in report and 'PASSED**' not in report


# --- test 7 -------------------------------------------------------------------------------------------------
def test_split_purge():
    preds = toy(np.arange(40) % 6)
    split = {'split_date': str(preds['snapshot_date'][20].date()), 'n_train': 17, 'n_purged': 3}
    scored, text = scored_rows(preds, split)
    assert len(scored) == 20 and 'on or after the split date' in text
    assert split_purge_check(preds, scored, split)['status'] == PASS
    unpurged = split_purge_check(preds, scored, {**split, 'n_train': 20, 'n_purged': 0})
    assert unpurged['status'] == FAIL and 'n_train = 20' in unpurged['note']
    everything, text = scored_rows(preds, split, 'all')
    leaky = split_purge_check(preds, everything, split)
    assert leaky['status'] == FAIL and '20 scored rows precede the split date' in leaky['note'] and 'training period' in text
    assert split_purge_check(preds, scored, None)['status'] == SKIPPED


def test_scored_rows_skip_unlabelled_and_say_so():
    preds = toy(np.zeros(10, int))
    preds.loc[8:, 'outcome_class'] = pd.NA
    scored, text = scored_rows(preds)
    assert len(scored) == 8 and '2 unlabelled rows' in text and 'training split is unknown' in text
    with pytest.raises(ValueError, match='scope'): scored_rows(preds, scope='train')


# --- performance ----------------------------------------------------------------------------------------------
def test_performance_tables():
    y, pred = np.array([0, 0, 1, 4, 4, 5]), np.array([0, 1, 1, 4, 0, 5])
    table = per_class_table(y, pred)
    assert table.loc['K1_MINIMAL', 'precision'] == 0.5 and table.loc['K4_EXCEPTIONAL', 'f1'] == pytest.approx(2 / 3)
    assert confusion_matrix(y, pred).sum() == 6 and confusion_matrix(y, pred)[0, 1] == 1
    cal = calibration_table([0.1, 0.1, 0.9, 0.9], [False, True, True, True])
    assert list(cal['observed']) == [0.5, 1.0] and cal.attrs['ece'] == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    preds = toy([4, 3, 0, 5, 1, 0]).assign(signal=['STRONG', 'GOOD', 'AVOID', 'AVOID', 'AVOID', 'MODERATE'])
    sq = signal_quality(preds)
    assert sq.loc['AVOID', 'correct_avoidance'] == pytest.approx(2 / 3) and sq.loc['STRONG', 'mean_value'] == 10
    assert sq['share'].sum() == pytest.approx(1) and math.isnan(sq.loc['GOOD', 'correct_avoidance'])


# --- the stage ------------------------------------------------------------------------------------------------
def test_validate_cli_writes_report_metrics_and_figures(run, capsys):
    folder, best = run
    report = folder / 'out' / 'validation_report.md'
    validate_cli(['--predictions', str(folder / 'predictions.parquet'), '--output', str(report), '--sequences',
                  str(folder / 'sequences.parquet'), '--ohlcv', str(folder / 'ohlcv'), '--model', str(best), '--n-audit', '5'])
    out = capsys.readouterr().out
    assert 'Test 1: Temporal Sequence Validation: PASS' in out and 'Test 6' in out
    text = report.read_text()
    assert text.startswith('# MambaAttention Validation Report') and '## Final Verdict' in text
    tests, targets = text.split('## Final Verdict')[1].strip().splitlines()[:2]   # the verdict: two lines, also printed
    assert tests.startswith('- Tests: ') and targets.startswith('- Reference targets: met ') and 'ALL TESTS PASSED' not in text
    assert tests[2:] in out and targets[2:] in out
    assert 'on or after the split date' in text
    links = [line.split('](')[1].rstrip(')') for line in text.splitlines() if line.startswith('![')]
    assert len(links) == 7 and all((report.parent / link).exists() for link in links)
    assert '## Signal Backtest' in text and '| Every pattern |' in text and 'validation_report_figures/backtest.png' in text
    assert "### STRONG Signals against the Reference's Targets" in text
    metrics = json.loads((report.parent / 'metrics.json').read_text())
    assert [c['status'] for c in metrics['checks']][5:] == [PASS, PASS]
    assert EVERY_PATTERN in metrics['backtest']['table']['index'] and 'strong_signals' in metrics
    assert 'NaN' not in (report.parent / 'metrics.json').read_text()


def test_validate_cli_strict_and_bad_input(run, tmp_path):
    folder, best = run
    preds = pd.read_parquet(folder / 'predictions.parquet')
    preds.at[0, 'sequence_dates'] = preds.at[0, 'sequence_dates'] + np.timedelta64(400, 'D')
    write_table(preds, tmp_path / 'leaky.parquet', read_metadata(folder / 'predictions.parquet'))
    with pytest.raises(SystemExit) as e:
        validate_cli(['--predictions', str(tmp_path / 'leaky.parquet'), '--output', str(tmp_path / 'r.md'),
                      '--model', str(best), '--strict'])
    assert e.value.code == 1 and '✗ FAILED' in (tmp_path / 'r.md').read_text()
    with pytest.raises(SystemExit, match='lacks the columns'):
        write_table(preds.drop(columns='signal'), tmp_path / 'bad.parquet', {})
        validate_cli(['--predictions', str(tmp_path / 'bad.parquet'), '--output', str(tmp_path / 'b.md')])
    with pytest.raises(SystemExit, match='does not exist'):
        validate_cli(['--predictions', str(tmp_path / 'none.parquet'), '--output', str(tmp_path / 'n.md')])


# --- the signal backtest -------------------------------------------------------------------------------------
@pytest.mark.parametrize('change,snapshot,exit_bar,price,reason,held', [
    ({}, 0, 100, 10.0, 'timeout', 100),                                            # untouched: out at the 100th bar's close
    ({(100, 'close'): 12.0, (100, 'high'): 12.0}, 0, 100, 12.0, 'timeout', 100),    # timeout at 100 bars, +20%
    ({(3, 'low'): 8.8}, 0, 3, 9.0, 'stop', 3),                                     # stop hit intrabar: out at the stop
    ({(3, 'open'): 8.5, (3, 'low'): 8.4}, 0, 3, 8.5, 'stop', 3),                    # gap below the stop: out at the open
    ({(3, 'low'): 9.0}, 0, 3, 9.0, 'stop', 3),                                     # a low exactly at the stop stops it
    ({(101, 'low'): 8.0}, 0, 100, 10.0, 'timeout', 100),                            # a stop after the window does not count
    ({(149, 'close'): 11.0}, 120, 149, 11.0, 'end of data', 29),                   # the prices end first: the last close
    ({(1, 'open'): 8.9, (1, 'low'): 8.9}, 0, 1, 8.9, 'stop', 1)])                   # next open below the stop: out at once
def test_trade_on_a_constructed_price_path(change, snapshot, exit_bar, price, reason, held):
    bars = flat_path()
    for (i, col), v in change.items(): bars.loc[i, col] = v
    day = bars['date']
    trade = simulate_trade(bars, day[snapshot], 10.0)       # lower boundary 10: the stop is 9
    assert (trade['entry_date'], trade['entry_price']) == (day[snapshot + 1], bars['open'][snapshot + 1])   # the next open
    assert (trade['exit_date'], trade['reason'], trade['bars_held']) == (day[exit_bar], reason, held)
    assert trade['exit_price'] == pytest.approx(price)
    assert trade['return'] == pytest.approx(price / bars['open'][snapshot + 1] - 1)


def test_a_snapshot_with_no_next_bar_is_not_traded_but_counted():
    bars = flat_path(10)
    assert simulate_trade(bars, bars['date'][9], 10.0) is None
    picks = pd.DataFrame({'ticker': 'T', 'pattern_id': ['A', 'B'], 'snapshot_date': bars['date'][[2, 9]].to_numpy()})
    trades = run_trades(picks, picks.assign(lower_boundary=10.0), {'T': bars})
    assert list(trades['pattern_id']) == ['A'] and trades.attrs['untradeable'] == 1


def market_case():
    "One ticker, three patterns: A (stop 8.55) GOOD then STRONG, B (stop 9) never, C (stop 9) STRONG; bar 50 dips to 8.8."
    bars = flat_path(300)
    bars.loc[50, 'low'] = 8.8
    bars.loc[[100, 105], ['high', 'close']] = [[11.0, 11.0], [12.0, 12.0]]
    day = bars['date']
    scored = pd.DataFrame({'ticker': 'T', 'pattern_id': ['A'] * 3 + ['B'] * 2 + ['C'],
                           'snapshot_date': day[[0, 5, 10, 20, 25, 40]].to_numpy(),
                           'signal': ['AVOID', 'GOOD', 'STRONG', 'MODERATE', 'MODERATE', 'STRONG'],
                           'outcome_class': pd.array([4, 4, 4, 0, 0, 5], dtype='Int64')})
    return bars, scored, scored[KEY].assign(lower_boundary=[9.5] * 3 + [10.0] * 3)


def test_one_position_per_pattern():
    bars, scored, bounds = market_case()
    signal = first_snapshots(scored, ENTRY_SIGNALS)
    assert list(signal['pattern_id']) == ['A', 'C'] and signal['snapshot_date'][0] == bars['date'][5]   # A once, first GOOD
    assert list(first_snapshots(scored)['snapshot_date']) == list(bars['date'][[0, 20, 40]])
    trades = run_trades(signal, bounds, {'T': bars})
    assert trades['return'].to_numpy() == pytest.approx([0.2, -0.1]) and list(trades['reason']) == ['timeout', 'stop']
    with pytest.raises(ValueError, match='1 traded snapshots are not in the sequences file .first: T 2021-01-11'):
        run_trades(signal, bounds.iloc[[0, 2, 3, 4, 5]], {'T': bars})


def test_backtest_table_and_equity_curve_by_hand():
    bars, scored, bounds = market_case()
    bt = backtest(scored, (None, None, bounds), {'T': bars}, n_random=30)
    t = bt['table']
    # signals: C stopped on bar 50 (-0.1), A out on bar 105 (+0.2); stakes 1/2 -> -0.05, then +0.05
    assert t.loc[SIGNAL_TRADES, ['trades', 'hit_rate', 'mean_return', 'median_return', 'stop_share', 'max_drawdown']].to_numpy(
        float) == pytest.approx([2, 0.5, 0.05, 0.05, 0.5, 0.05])
    # every pattern: B and C stopped on bar 50, A out on bar 100 (+0.1); stakes 1/3 -> -0.2/3, then -0.1/3
    assert t.loc[EVERY_PATTERN, ['trades', 'mean_return', 'median_return', 'max_drawdown']].to_numpy(float) == pytest.approx(
        [3, -0.1 / 3, -0.1, 0.2 / 3])
    assert bt['curves'][SIGNAL_TRADES].to_numpy() == pytest.approx([-0.05, -0.05, 0.05])
    assert list(bt['curves'].index) == list(bars['date'][[50, 100, 105]])
    assert (t.loc['Random picks, 5%'] <= t.loc['Random picks, 95%']).all() and t.loc['Random picks, mean', 'trades'] == 2
    assert max_drawdown([0.1, -0.2, 0.3, 0.25]) == pytest.approx(0.3) and max_drawdown([0.1, 0.2]) == 0
    assert equity_curve([0.1, 0.3], bars['date'][[2, 1]], bars['date'][[1, 2]]) == pytest.approx([0.15, 0.2])


def test_random_baseline_is_reproducible_with_its_seed():
    picks = random_picks(50, 7, n_random=20, seed=3)
    assert picks.shape == (20, 7) and all(len(set(p)) == 7 for p in picks)
    assert (picks == random_picks(50, 7, n_random=20, seed=3)).all() and not (picks == random_picks(50, 7, 20, seed=4)).all()
    bars, scored, bounds = market_case()
    run = lambda seed: backtest(scored, (None, None, bounds), {'T': bars}, n_random=30, seed=seed)
    pd.testing.assert_frame_equal(run(1)['table'], run(1)['table'])
    pd.testing.assert_frame_equal(run(1)['curves'], run(1)['curves'])


def test_backtest_without_signals_or_inputs():
    bars, scored, bounds = market_case()
    quiet = backtest(scored.assign(signal='AVOID'), (None, None, bounds), {'T': bars})
    assert list(quiet['table'].index) == [SIGNAL_TRADES, EVERY_PATTERN] and quiet['table'].loc[SIGNAL_TRADES, 'trades'] == 0
    assert math.isnan(quiet['table'].loc[SIGNAL_TRADES, 'mean_return'])
    assert 'skipped' in backtest(scored, (None, None, bounds)) and 'skipped' in backtest(scored, None, {'T': bars})


def test_strong_signals_against_the_targets():
    _, scored, _ = market_case()
    table = strong_signal_check(scored)    # A and C STRONG: A's first STRONG snapshot K4, C's K5; base rate 1/3
    assert table['value'].to_numpy(float) == pytest.approx([2 / 3, 0.5, 1 / 3, 1.5])
    assert list(table['met']) == ['no', 'yes', '', 'no'] and table.attrs == {'n_patterns': 3, 'n_strong': 2}
    none = strong_signal_check(scored.assign(signal='GOOD'))
    assert none['value'].iloc[0] == 0 and list(none['met']) == ['no', 'n/a', '', 'n/a']


def test_report_says_the_backtest_was_skipped_without_the_store(run, tmp_path):
    folder, best = run
    validate_cli(['--predictions', str(folder / 'predictions.parquet'), '--output', str(tmp_path / 'r.md'), '--sequences',
                  str(folder / 'sequences.parquet'), '--model', str(best), '--n-audit', '0', '--n-boot', '10'])
    text = (tmp_path / 'r.md').read_text()
    assert '## Signal Backtest\n\nSkipped: the backtest needs the OHLCV store (--ohlcv)' in text and 'backtest.png' not in text
    assert not (tmp_path / 'r_figures' / 'backtest.png').exists()
    assert 'skipped' in json.loads((tmp_path / 'metrics.json').read_text())['backtest']


# --- ranking, bootstrap, ceiling ------------------------------------------------------------------------------
def ranked_case():
    "100 rows ranked in row order; K4 at ranks 1, 3 and 50; pattern C holds ranks 2 and 50."
    y = np.zeros(100, int)
    y[[0, 2, 49]] = 4
    pattern = np.array(['A', 'C', 'B'] + [f'p{i}' for i in range(3, 100)], dtype=object)
    pattern[49] = 'C'
    return -np.arange(100.0), y, pattern


def test_alert_metrics_on_a_constructed_ranking():
    score, y, pattern = ranked_case()
    m = ranking_metrics(score, y, pattern)
    assert [m[f'k4_recall_top{k}'] for k in (1, 2, 5)] == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    assert [m[f'k4_precision_top{k}'] for k in (1, 2, 5)] == pytest.approx([1, 1 / 2, 2 / 5])
    assert m['k4_pr_auc'] == pytest.approx((1 + 2 / 3 + 3 / 50) / 3)
    assert math.isnan(m['k4_recall']) and math.isnan(m['ev_corr'])      # no classes, no EV given
    # 7 rows: ceil(0.05 * 7) = 1 alert
    assert ranking_metrics(score[:7], y[:7], pattern[:7])['k4_precision_top5'] == 1
    # all tied: the alerts are a random share of the block -> recall = the rate, precision = the base rate
    tied = ranking_metrics(np.zeros(100), y, pattern)
    assert (tied['k4_recall_top5'], tied['k4_precision_top5'], tied['k4_pr_auc']) == pytest.approx((0.05, 0.03, 0.03))


def test_ranking_metrics_agree_with_the_training_metrics():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(6), 300)
    y = rng.integers(0, 6, 300)
    m = ranking_metrics(probs[:, 4], y, np.arange(300), expected_value(probs), probs.argmax(1))
    ref = classification_metrics(probs, y)
    assert [m[k] for k in ('k4_pr_auc', 'k4_recall', 'ev_corr')] == pytest.approx([ref[k] for k in ('k4_pr_auc', 'k4_recall', 'ev_corr')])


def test_pattern_level_recall():
    score, y, pattern = ranked_case()
    m = ranking_metrics(score, y, pattern)
    # C's K4 snapshot is ranked 50th, but its 2nd-ranked snapshot is alerted at 2%
    assert [m[f'pattern_k4_recall_top{k}'] for k in (1, 2, 5)] == pytest.approx([1 / 3, 2 / 3, 1])
    assert m['k4_recall_top2'] == pytest.approx(1 / 3)
    # weights: pattern A dropped (weight 0) -> 99 rows, 1 alert at 1%: C's 2nd-ranked row; A no longer counts
    w = np.ones((2, 100))
    w[1, 0] = 0
    mw = ranking_metrics(score, y, pattern, weights=w)
    assert mw['pattern_k4_recall_top1'] == pytest.approx([1 / 3, 1 / 2])
    assert mw['k4_precision_top1'] == pytest.approx([1, 0])
    # ties: one pattern holds the 3 K4 rows of 100 tied rows; 5 random alerts hit it with chance 1 - C(97,5)/C(100,5)
    one = ranking_metrics(np.zeros(100), y, np.where(y == 4, 'X', pattern))
    assert one['pattern_k4_recall_top5'] == pytest.approx(1 - (95 * 94 * 93) / (100 * 99 * 98))
    assert one['k4_recall_top5'] == pytest.approx(0.05)


def test_pattern_bootstrap_covers_the_truth_and_is_wider_than_a_snapshot_bootstrap():
    found = []
    for seed in range(40):
        y, pred, pattern = simulate(seed)
        model = {'score': np.zeros(len(y)), 'pred': pred}     # true recall 0.5; true PR-AUC = the K4 rate 0.1
        for unit, ids in (('pattern', pattern), ('snapshot', np.arange(len(y)))):
            b = bootstrap_metrics(y, ids, model, n_boot=200, seed=seed)
            found.append({'unit': unit, 'recall': b['k4_recall_lo'] <= 0.5 <= b['k4_recall_hi'],
                          'pr_auc': b['k4_pr_auc_lo'] <= 0.1 <= b['k4_pr_auc_hi'], 'width': b['k4_recall_hi'] - b['k4_recall_lo']})
    cover = pd.DataFrame(found).groupby('unit').mean()
    assert cover.loc['pattern', 'recall'] >= 0.85 and cover.loc['pattern', 'pr_auc'] >= 0.85
    assert cover.loc['snapshot', 'recall'] < 0.8                          # snapshots of one pattern are not independent
    assert cover.loc['pattern', 'width'] > 1.5 * cover.loc['snapshot', 'width']


def test_bootstrap_resamples_whole_patterns_and_is_seeded():
    y, pred, pattern = simulate(0)
    weights = np.concatenate(list(pattern_resamples(pattern, 30, seed=3)))
    assert weights.shape == (30, len(y)) and (weights.sum(1) == len(y)).all()    # 300 patterns of 5 rows drawn per replicate
    assert (weights.reshape(30, -1, 5) == weights.reshape(30, -1, 5)[..., :1]).all()   # a pattern's rows weigh alike
    assert (np.concatenate(list(pattern_resamples(pattern, 30, seed=3))) == weights).all()
    model = {'score': np.zeros(len(y)), 'pred': pred}
    pd.testing.assert_series_equal(pd.Series(bootstrap_metrics(y, pattern, model, 50, seed=3)),
                                   pd.Series(bootstrap_metrics(y, pattern, model, 50, seed=3)))
    with pytest.raises(ValueError, match='n_boot'): bootstrap_metrics(y, pattern, model, 0)


EPISODES = pd.DataFrame({'ticker': 'T', 'start_date': pd.to_datetime(['2021-01-04', '2021-03-01', '2021-05-03']),
                         'end_date': pd.to_datetime(['2021-02-15', '2021-04-19', '2021-06-14']),
                         'move_end_date': pd.to_datetime(['2021-02-26', '2021-04-30', '2021-06-30']),
                         'quality': [-1.0, 0.5, 2.0], 'breaks_up': [False, True, True], 'move_size': [0.0, 0.5, 1.2]})


def episode_classes():
    "Weekly classes of the toy ticker: K4 exactly in the best episode, K3 in the middle one, K0 elsewhere."
    dates = pd.date_range('2021-01-04', periods=40, freq='W-MON')
    return np.where((dates >= '2021-05-03') & (dates <= '2021-06-30'), 4,
                    np.where((dates >= '2021-03-01') & (dates <= '2021-04-30'), 3, 0))


def test_quality_ev_maps_quality_bins_to_mean_realised_value():
    ev = quality_ev([np.nan, np.nan, 0.1, 0.2, 0.9, 1.0], [0, 0, 1, 1, 4, 4], [np.nan, 0.15, 5.0, -3.0], bins=2)
    assert list(ev) == pytest.approx([-2, -0.2, 10, -0.2])


def test_oracle_ranks_the_best_episode_first():
    y = episode_classes()
    preds = toy(y)
    oracle = oracle_model(preds, preds.iloc[:17], EPISODES)
    assert np.isneginf(oracle['score'][y == 0][-1])                       # after the last episode: the lowest score
    m = ranking_metrics(oracle['score'], y, preds['pattern_id'], oracle['ev'])
    assert (m['k4_pr_auc'], m['k4_precision_top5']) == (1.0, 1.0)
    assert m['k4_recall_top5'] == pytest.approx(2 / 9)                    # 2 alerts within the 9 tied rows
    # the EV map sees only the fitting rows: other outcomes later change nothing
    flipped = oracle_model(preds.assign(outcome_class=pd.array(np.zeros(40, int), dtype='Int64')), preds.iloc[:17], EPISODES)
    assert list(flipped['ev']) == list(oracle['ev'])


def test_quality_table_shares_of_the_ceiling():
    y = episode_classes()
    preds = toy(y)
    probs = np.full((40, 6), 0.1)
    probs[:, 0] = 0.5
    probs[y == 4, 4] = np.linspace(0.6, 0.05, 9)
    table = quality_table(y, preds['pattern_id'], {'m': model_scores(probs)}, oracle_model(preds, preds.iloc[:17], EPISODES),
                          n_boot=50)
    assert list(table.index) == ['m', ORACLE] and table.loc[ORACLE, 'k4_pr_auc'] == 1
    assert table.loc['m', 'k4_pr_auc_share'] == pytest.approx(table.loc['m', 'k4_pr_auc'])
    assert table.loc['m', 'k4_pr_auc_lo'] <= table.loc['m', 'k4_pr_auc'] <= table.loc['m', 'k4_pr_auc_hi']
    assert math.isnan(table.loc[ORACLE, 'k4_recall']) and math.isnan(table.loc['m', 'k4_recall_share'])
    assert 'k4_pr_auc_share' not in quality_table(y, preds['pattern_id'], {'m': model_scores(probs)}, n_boot=10)


def test_paired_differences_against_the_baseline_and_the_observable_ceiling():
    "Model minus baseline on the same resampled patterns: the point difference, an interval around it, none for the ceilings."
    y = episode_classes()
    pattern = toy(y)['pattern_id']
    k4 = (y == 4).astype(float)
    good, weak = {'score': k4 + np.linspace(0, 0.5, 40)}, {'score': np.linspace(0, 1, 40)}     # weak: K4 rows not first
    observable = {'score': k4 * 2.0}
    table = quality_table(y, pattern, {'m': good, PRECURSOR: weak, OBSERVABLE: observable}, n_boot=200)
    for m in ['k4_pr_auc', 'k4_recall_top5']:
        diff = table.loc['m', m] - table.loc[PRECURSOR, m]
        assert table.loc['m', f'{m}_vs_precursor'] == pytest.approx(diff) and diff > 0
        assert table.loc['m', f'{m}_vs_precursor_lo'] <= diff <= table.loc['m', f'{m}_vs_precursor_hi']
        assert table.loc['m', f'{m}_vs_observable'] == pytest.approx(table.loc['m', m] - table.loc[OBSERVABLE, m])
    assert table.loc[OBSERVABLE, ['k4_pr_auc_vs_precursor', 'k4_pr_auc_vs_observable']].isna().all()
    assert table.loc[PRECURSOR, 'k4_pr_auc_vs_precursor'] != table.loc[PRECURSOR, 'k4_pr_auc_vs_precursor']   # NaN: not itself
    assert table.loc['m', 'k4_pr_auc_of_observable'] == pytest.approx(table.loc['m', 'k4_pr_auc'] / table.loc[OBSERVABLE, 'k4_pr_auc'])
    assert list(paired_display(table).columns) == ['m − precursor baseline', 'm − observable ceiling',
                                                   'precursor baseline − observable ceiling']


def test_validate_with_an_answer_key_reports_the_ceiling(tmp_path):
    preds = toy(episode_classes())
    write_table(preds, tmp_path / 'p.parquet', {'stage': 'test', 'split': {'split_date': '2021-05-24'}})
    EPISODES.to_parquet(tmp_path / 'episodes.parquet')
    res = validate(tmp_path / 'p.parquet', tmp_path / 'r.md', truth=tmp_path / 'episodes.parquet', n_boot=50, provenance=False)
    text = (tmp_path / 'r.md').read_text()
    assert '## Ceiling and confidence' in text and ORACLE in text and '% of oracle' in text
    assert 'labels ending before the split date 2021-05-24' in text
    q = json.loads((tmp_path / 'metrics.json').read_text())['quality']
    assert q['index'] == ['MambaAttention', ORACLE] and 'k4_pr_auc_share' in q['columns'] and q['n_boot'] == 50
    validate(tmp_path / 'p.parquet', tmp_path / 'plain.md', metrics=tmp_path / 'plain.json', n_boot=10, provenance=False)
    assert 'No answer key was given' in (tmp_path / 'plain.md').read_text()
    assert json.loads((tmp_path / 'plain.json').read_text())['quality']['index'] == ['MambaAttention']


def test_bad_answer_key_is_one_error_line(tmp_path):
    write_table(toy(episode_classes()), tmp_path / 'p.parquet', {'stage': 'test'})
    (tmp_path / 'text.parquet').write_text('not a parquet file')
    EPISODES.drop(columns='quality').to_parquet(tmp_path / 'no_quality.parquet')
    EPISODES.assign(start_date=EPISODES['start_date'].astype(str)).to_parquet(tmp_path / 'string_dates.parquet')
    exe = Path(sys.executable).parent / 'k4-validate'
    for name, says in [('missing.parquet', 'does not exist'), ('text.parquet', 'not a readable parquet'),
                       ('no_quality.parquet', "lacks the columns ['quality']"), ('string_dates.parquet', 'must hold dates')]:
        r = subprocess.run([str(exe), '--predictions', str(tmp_path / 'p.parquet'), '--output', str(tmp_path / 'r.md'),
                            '--truth', str(tmp_path / name), '--no-provenance-check'], capture_output=True, text=True)
        assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('k4-validate: answer key') and says in lines[0], r.stderr
    assert not (tmp_path / 'r.md').exists()


# --- nothing lost, nothing silently wrong -----------------------------------------------------------------
@pytest.fixture(scope='module')
def inputs(run, tmp_path_factory):
    "Every input k4-validate reads, given: the run's predictions, sequences, store and model, and an answer key."
    folder, best = run
    truth = tmp_path_factory.mktemp('truth') / 'episodes.parquet'
    EPISODES.to_parquet(truth)
    return {'--predictions': folder / 'predictions.parquet', '--sequences': folder / 'sequences.parquet',
            '--ohlcv': folder / 'ohlcv', '--model': best, '--truth': truth}


def refused(argv, inputs):
    "Run k4-validate expecting a one-line user error; return the line, after checking that no input changed."
    before = {flag: fingerprint(path) for flag, path in inputs.items()}
    with pytest.raises(SystemExit) as e: validate_cli([str(a) for a in argv])
    assert isinstance(e.value.code, str) and e.value.code.startswith('k4-validate: ') and '\n' not in e.value.code
    assert {flag: fingerprint(path) for flag, path in inputs.items()} == before
    return e.value.code


@pytest.mark.parametrize('out_flag,in_flag', [('--output', '--predictions'), ('--output', '--sequences'), ('--output', '--ohlcv'),
                                              ('--output', '--model'), ('--output', '--truth'), ('--metrics', '--predictions'),
                                              ('--metrics', '--model')])
def test_validate_never_writes_over_an_input(inputs, tmp_path, out_flag, in_flag):
    target = inputs[in_flag] / 'report.md' if inputs[in_flag].is_dir() else inputs[in_flag]   # a folder: write inside it
    given = {'--output': tmp_path / 'r.md', **{f: p for f, p in inputs.items()}, out_flag: target}
    line = refused([x for kv in given.items() for x in kv] + ['--no-provenance-check'], inputs)
    assert out_flag in line and in_flag in line and str(inputs[in_flag]) in line and 'overwrite' in line


def test_validate_figures_folder_may_not_be_an_input(inputs, tmp_path):
    store = tmp_path / 'r_figures'                     # a store named like the report's figures folder
    shutil.copytree(inputs['--ohlcv'], store)
    line = refused(['--predictions', inputs['--predictions'], '--ohlcv', store, '--output', tmp_path / 'r.md',
                    '--no-provenance-check'], {**inputs, 'store': store})
    assert '--output (figures)' in line and f'--ohlcv {store}' in line


@pytest.mark.parametrize('flag', ['--sequences', '--model'])
def test_validate_refuses_predictions_made_from_other_files(inputs, tmp_path, flag):
    other = tmp_path / inputs[flag].name
    other.write_bytes(inputs[flag].read_bytes() + b'\0')          # same name, other content: another run's file
    line = refused(['--predictions', inputs['--predictions'], '--output', tmp_path / 'r.md', flag, other], inputs)
    assert f"--predictions {inputs['--predictions']} was not made from {flag} {other}" in line
    assert str(inputs[flag]) in line                                # ...and names the file it was made from
    assert not (tmp_path / 'r.md').exists()


def test_validate_provenance_in_a_subprocess_is_one_line(inputs, tmp_path):
    exe = Path(sys.executable).parent / 'k4-validate'
    r = subprocess.run([str(exe), '--predictions', str(inputs['--predictions']), '--output', str(tmp_path / 'r.md'),
                        '--sequences', str(inputs['--predictions'])], capture_output=True, text=True)
    assert r.returncode == 1 and 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'was not made from --sequences' in r.stderr


def test_validate_refuses_predictions_without_provenance_unless_told(inputs, tmp_path):
    bare = tmp_path / 'bare.parquet'
    write_table(pd.read_parquet(inputs['--predictions']), bare, {'stage': 'hand-made'})
    line = refused(['--predictions', bare, '--output', tmp_path / 'r.md', '--model', inputs['--model']], {**inputs, 'bare': bare})
    assert str(bare) in line and 'no provenance' in line and '--no-provenance-check' in line
    validate_cli(['--predictions', str(bare), '--output', str(tmp_path / 'r.md'), '--model', str(inputs['--model']),
                  '--n-boot', '10', '--no-provenance-check'])
    assert '- Provenance: skipped (--no-provenance-check)' in (tmp_path / 'r.md').read_text()


def test_validate_records_the_provenance_it_checked(inputs, tmp_path):
    validate_cli(['--predictions', str(inputs['--predictions']), '--output', str(tmp_path / 'r.md'), '--sequences',
                  str(inputs['--sequences']), '--model', str(inputs['--model']), '--n-audit', '2', '--n-boot', '10'])
    assert f"- Provenance: checked: made from sequences {inputs['--sequences']} and model {inputs['--model']}" in (tmp_path / 'r.md').read_text()


@pytest.mark.parametrize('value', [np.nan, np.inf])
def test_validate_stops_on_non_finite_probabilities(inputs, tmp_path, value):
    preds = pd.read_parquet(inputs['--predictions'])
    preds.loc[3, 'prob_k4'] = value
    bad = tmp_path / 'bad.parquet'
    write_table(preds, bad, read_metadata(inputs['--predictions']))
    line = refused(['--predictions', bad, '--output', tmp_path / 'r.md'], {**inputs, 'bad': bad})
    assert str(bad) in line and 'rows 3 ' in line and "'prob_k4'" in line and 'non-finite' in line
    assert not (tmp_path / 'r.md').exists()


@pytest.mark.parametrize('flag,value,need', [('--n-audit', '-1', 'at least 0'), ('--n-boot', '0', 'at least 1'),
                                             ('--seed', '-2', 'at least 0')])
def test_validate_checks_numeric_flags_first(inputs, tmp_path, flag, value, need):
    line = refused(['--predictions', inputs['--predictions'], '--output', tmp_path / 'r.md', flag, value], inputs)
    assert line == f"k4-validate: {flag} must be {need}, got {int(value)}"
    assert not (tmp_path / 'r.md').exists()


# --- walk-forward x seeds: k4-evaluate --------------------------------------------------------------------

def bench_market(root:Path, seed:int, params=None) -> Path:
    "A 40-ticker, 6-year synthetic market's store, answer key and sequences in `root`, made by the stages' own functions."
    root.mkdir(parents=True, exist_ok=True)
    frames, episodes = synthetic_market(40, 1500, seed=seed, params=params, with_episodes=True)
    store = write_store(frames, root / 'ohlcv'); episodes.to_parquet(root / 'episodes.parquet', index=False)
    _, snapshots = market_snapshots(frames, progress=False)
    meta = {'stage': 'patterns', 'version': k4_nbdev.__version__, 'input': {'source': str(store), 'fingerprint': fingerprint(store)}}
    build_sequences(write_table(snapshots, root / 'snapshots.parquet', meta), store, root / 'sequences.parquet', progress=False)
    return root


@pytest.fixture(scope='module')
def small_market(tmp_path_factory):
    "A 40-ticker, 6-year synthetic market's sequences and answer key: enough history for two walk-forward folds."
    return bench_market(tmp_path_factory.mktemp('evaluate'), seed=5)


def test_evaluate_walk_forward_folds_by_seeds(small_market, tmp_path, capsys):
    from k4_nbdev.evaluate import EVALUATION_FILES, evaluate_cli
    before = fingerprint(small_market / 'sequences.parquet')
    argv = ['--sequences', str(small_market / 'sequences.parquet'), '--output-dir', str(tmp_path / 'ev'), '--folds', '2',
            '--seeds', '2', '--epochs', '1', '--losses', 'asymmetric', '--truth', str(small_market / 'episodes.parquet')]
    evaluate_cli(argv)
    rows = pd.read_csv(tmp_path / 'ev' / EVALUATION_FILES[0])
    assert sorted(rows['model'].unique()) == sorted([ORACLE, OBSERVABLE, 'MambaAttention (asymmetric)', 'LightGBM (window summaries)',
                                                     PRECURSOR])
    assert len(rows) == 2 * (2 + 2 * 3)                                    # per fold: the two ceilings, and 2 seeds x 3 models
    assert (rows[rows['model'].isin([ORACLE, OBSERVABLE])]['seed'] == -1).all() and rows['fold'].tolist() == sorted(rows['fold'])
    assert rows.groupby('fold')['split_date'].nunique().eq(1).all() and rows['split_date'].nunique() == 2
    assert rows['k4_pr_auc'].between(0, 1).all()
    summary = pd.read_csv(tmp_path / 'ev' / EVALUATION_FILES[1], header=[0, 1], index_col=0)
    assert summary.loc[ORACLE, ('k4_pr_auc_share', 'mean')] == pytest.approx(1.0)
    assert summary.loc[OBSERVABLE, ('k4_pr_auc_of_observable', 'mean')] == pytest.approx(1.0)
    assert (tmp_path / 'ev' / EVALUATION_FILES[2]).stat().st_size > 10_000
    assert 'MambaAttention (asymmetric)' in capsys.readouterr().out
    # --resume keeps every finished row and trains nothing again
    stamp = (tmp_path / 'ev' / EVALUATION_FILES[0]).read_bytes()
    evaluate_cli(argv + ['--resume'])
    assert pd.read_csv(tmp_path / 'ev' / EVALUATION_FILES[0]).equals(pd.read_csv(pd.io.common.BytesIO(stamp)))
    assert fingerprint(small_market / 'sequences.parquet') == before
    # ... but not rows made with other settings or from other inputs: one line naming what differs, nothing rewritten
    code, msg = exit_of(evaluate_cli, argv + ['--resume', '--epochs', '2'])
    assert code == 1 and msg.startswith('k4-evaluate: --resume: the rows in') and 'models' in msg and '\n' not in msg.strip(), msg
    (tmp_path / 'ev' / EVALUATION_FILES[3]).unlink()
    code, msg = exit_of(evaluate_cli, argv + ['--resume'])
    assert code == 1 and 'evaluation.json is missing' in msg, msg
    assert (tmp_path / 'ev' / EVALUATION_FILES[0]).read_bytes() == stamp


@pytest.mark.parametrize('extra,says', [(['--losses', 'hinge'], '--losses'), (['--folds', '0'], '--folds must be at least 1'),
                                        (['--k4-weights', '50,x'], '--k4-weights must be comma-separated'),
                                        (['--first-ratio', '1.5'], '--first-ratio must be strictly between 0 and 1'), (['--model-sizes', 'huge'], '--model-sizes')])
def test_evaluate_bad_flags_are_one_line(small_market, tmp_path, extra, says):
    from k4_nbdev.evaluate import evaluate_cli
    code, msg = exit_of(evaluate_cli, ['--sequences', str(small_market / 'sequences.parquet'), '--output-dir', str(tmp_path / 'ev'),
                                       '--epochs', '1', *extra])
    assert code != 0 and says in msg and '\n' not in msg.strip()


def test_evaluate_never_writes_into_its_input(small_market):
    from k4_nbdev.evaluate import evaluate_cli
    code, msg = exit_of(evaluate_cli, ['--sequences', str(small_market / 'sequences.parquet'), '--output-dir', str(small_market / 'sequences.parquet')])
    assert code == 1 and '--output-dir' in msg
    before = sorted(p.name for p in small_market.iterdir())
    code, msg = exit_of(evaluate_cli, ['--sequences', str(small_market / 'sequences.parquet'), '--output-dir', str(small_market)])
    assert code == 1 and 'does not hold --sequences' in msg and '\n' not in msg.strip(), msg
    assert sorted(p.name for p in small_market.iterdir()) == before


# --- the reachable ceiling and the simple baseline ---------------------------------------------------------------------
def test_precursor_statistics_read_no_bar_after_the_snapshot(small_market):
    "The observable ceiling's and the precursor baseline's inputs, from the history cut at each snapshot, are the same numbers."
    frames = read_store(small_market / 'ohlcv')
    X, mask, meta = read_sequences(small_market / 'sequences.parquet')
    full = precursor_stats(X, mask, meta['days_in_pattern'].to_numpy())
    snaps = pd.read_parquet(small_market / 'snapshots.parquet')
    for i in np.random.default_rng(0).choice(len(meta), 25, replace=False):
        row = meta.iloc[i]
        df = frames[row['ticker']]
        cut = df[df['date'] <= row['snapshot_date']]
        snap = snaps[(snaps['pattern_id'] == row['pattern_id']) & (snaps['snapshot_date'] == row['snapshot_date'])]
        Xc, mc, metac = ticker_sequences(cut, snap, X.shape[1])
        assert np.array_equal(precursor_stats(Xc, mc, metac['days_in_pattern'].to_numpy())[0], full[i])


def test_observable_ceiling_scores_from_the_bars_alone_and_follows_the_precursors(small_market, tmp_path):
    "q̂ is fitted on the training rows' q and scores from the bars: the validation rows' q can change without changing it."
    data = load_training_data(small_market / 'sequences.parquet')
    episodes = pd.read_parquet(small_market / 'episodes.parquet')
    base = observable_model(data, data['val'], data['train'], episodes)
    shuffled = episodes.assign(quality=np.random.default_rng(1).permutation(episodes['quality'].to_numpy()))
    later = pd.to_datetime(shuffled['start_date']) >= data['info']['split_date']      # episodes the training labels never reach
    mixed = episodes.where(~later, shuffled)
    again = observable_model(data, data['val'], data['train'], mixed)
    assert np.array_equal(base['score'], again['score']) and base['corr'] != again['corr']
    strong = bench_market(tmp_path / 'x4', seed=5, params=MarketParams(accumulation=0.48, tightening=1.6, close_location=0.6))
    data4 = load_training_data(strong / 'sequences.parquet')
    four = observable_model(data4, data4['val'], data4['train'], pd.read_parquet(strong / 'episodes.parquet'))
    assert four['corr'] > max(0.5, base['corr'] + 0.1), (base['corr'], four['corr'])   # stronger precursors, better estimate
    none = bench_market(tmp_path / 'x0', seed=5, params=MarketParams(accumulation=0, tightening=0, close_location=0))
    data0 = load_training_data(none / 'sequences.parquet')
    zero = observable_model(data0, data0['val'], data0['train'], pd.read_parquet(none / 'episodes.parquet'))
    assert abs(zero['corr']) < 0.3, zero['corr']                  # no precursors: the bars say (almost) nothing about q


def test_precursor_baseline_needs_no_answer_key(small_market, tmp_path):
    "Labels only: from a sequences file in a folder without episodes.parquet, calibrated probabilities for every validation row."
    alone = Path(shutil.copy(small_market / 'sequences.parquet', tmp_path / 'sequences.parquet'))
    assert not (tmp_path / 'episodes.parquet').exists()
    data = load_training_data(alone)
    res = precursor_baseline(data, k4_weight=RECIPE.k4_weight)
    assert res['probs'].shape == (len(data['val']), 6) and np.allclose(res['probs'].sum(1), 1, atol=1e-5)
    assert list(res['coef'].index) == ['volume_imbalance', 'close_location', 'range_trend', 'swing_trend']
    assert np.array_equal(precursor_baseline(data, k4_weight=RECIPE.k4_weight)['probs'], res['probs'])          # no seed: the same fit every time


def test_the_report_puts_every_model_of_the_train_stage_beside_the_checks(tiny_run, tmp_path):
    "The pipeline's report and metrics.json carry 05_train's comparison; a comparison of other rows is refused."
    run = Path(tiny_run['run_dir'])
    table = pd.read_csv(run / COMPARISON_FILE, index_col=0)
    assert {PRECURSOR, OBSERVABLE, ORACLE} <= set(table.index)
    text = (run / 'validation_report.md').read_text()
    section = text.split('## Every model on the same rows')[1].split('## Signal Backtest')[0]
    assert all(name in section.splitlines()[4] for name in table.index)          # the table's header: one column per model
    assert 'Paired differences' in section and '− precursor baseline' in section
    assert json.loads((run / 'metrics.json').read_text())['comparison']['index'] == list(table.index)
    table.assign(n=table['n'] + 1).to_csv(tmp_path / 'other.csv')
    line = refused(['--predictions', run / 'predictions.parquet', '--output', tmp_path / 'r.md', '--comparison', tmp_path / 'other.csv',
                    '--no-provenance-check', '--n-audit', '0'], {'--comparison': tmp_path / 'other.csv'})
    assert 'made from another split' in line and str(tmp_path / 'other.csv') in line and not (tmp_path / 'r.md').exists()
    line = refused(['--predictions', run / 'predictions.parquet', '--output', tmp_path / 'r.md', '--comparison', tmp_path / 'none.csv',
                    '--no-provenance-check', '--n-audit', '0'], {})
    assert 'comparison' in line and 'does not exist' in line and not (tmp_path / 'r.md').exists()
