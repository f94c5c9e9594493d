"Validation: each of the seven tests passing and failing, performance figures, a leaky builder caught, the report and CLI."
import json
import math

import numpy as np
import pandas as pd
import pytest

from k4_nbdev.data import read_store
from k4_nbdev.patterns import write_table
from k4_nbdev.predict import PROB_COLUMNS, assign_signals, demo_run, predict
from k4_nbdev.sequences import bar_features, market_sequences, read_sequences
from k4_nbdev.train import expected_value
from k4_nbdev.validate import (FAIL, PASS, SKIPPED, UNKNOWN, calibration_table, class_drift_check, confusion_matrix,
                               ev_correlation_check, future_contamination_check, k4_recall_consistency_check,
                               per_class_table, render_report, run_checks, scored_rows, signal_quality,
                               split_purge_check, temporal_audit_check, temporal_sequence_check, validate_cli)


def toy(y, pred=None, start='2021-01-04'):
    "Weekly predictions of one ticker with true classes `y` and predicted classes `pred` (default: `y`)."
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


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny run folder with a one-epoch model and its predictions."
    folder = tmp_path_factory.mktemp('validate_run')
    with pytest.warns(UserWarning, match='no K4'):
        best = demo_run(folder, 'tiny', 0)
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
def one_bar_ahead(df):
    "A leaky bar-feature function: each bar carries the next bar's values."
    return bar_features(df).shift(-1)


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
    assert 'Leakage tests (1, 2, 6, 7): FAILED' in report and 'WARNINGS DETECTED' in report


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
    assert 'on or after the split date' in text
    links = [line.split('](')[1].rstrip(')') for line in text.splitlines() if line.startswith('![')]
    assert len(links) == 5 and all((report.parent / link).exists() for link in links)
    metrics = json.loads((report.parent / 'metrics.json').read_text())
    assert [c['status'] for c in metrics['checks']][5:] == [PASS, PASS]
    assert 'NaN' not in (report.parent / 'metrics.json').read_text()


def test_validate_cli_strict_and_bad_input(run, tmp_path):
    folder, best = run
    preds = pd.read_parquet(folder / 'predictions.parquet')
    preds.at[0, 'sequence_dates'] = preds.at[0, 'sequence_dates'] + np.timedelta64(400, 'D')
    write_table(preds, tmp_path / 'leaky.parquet', {'stage': 'test'})
    with pytest.raises(SystemExit) as e:
        validate_cli(['--predictions', str(tmp_path / 'leaky.parquet'), '--output', str(tmp_path / 'r.md'),
                      '--model', str(best), '--strict'])
    assert e.value.code == 1 and '✗ FAILED' in (tmp_path / 'r.md').read_text()
    with pytest.raises(SystemExit, match='lacks the columns'):
        write_table(preds.drop(columns='signal'), tmp_path / 'bad.parquet', {})
        validate_cli(['--predictions', str(tmp_path / 'bad.parquet'), '--output', str(tmp_path / 'b.md')])
    with pytest.raises(SystemExit, match='does not exist'):
        validate_cli(['--predictions', str(tmp_path / 'none.parquet'), '--output', str(tmp_path / 'n.md')])
