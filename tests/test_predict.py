"Prediction: EV and signal rules, refusals, the predictions file, the console scripts, and the live scan."
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from k4_nbdev.core import fingerprint
from k4_nbdev.data import read_store
from k4_nbdev.core import read_metadata
from k4_nbdev.predict import (SCAN_COLUMNS, predict,
                              predict_cli, prediction_summary, prediction_table, scan, scan_cli, batch_probs, check_probs)
from k4_nbdev.sequences import FEATURES
from k4_nbdev.definitions import PROB_COLUMNS, assign_signals, expected_value
from k4_nbdev.scoring import check_dates, load_checkpoint
from k4_nbdev.testing import exit_of, rewritten


@pytest.fixture(scope='module')
def run(trained):
    "The shared tiny run folder (conftest): store, snapshots, sequences and a one-epoch small model."
    return trained


def test_signal_boundaries():
    ev = [-1e-9, 0.0, 1 - 1e-9, 1.0, 3 - 1e-9, 3.0, 5 - 1e-9, 5.0]
    assert list(assign_signals(ev, np.zeros(len(ev)))) == ['AVOID', 'AVOID', 'AVOID', 'MODERATE', 'MODERATE', 'GOOD',
                                                           'GOOD', 'STRONG']


def test_signals_on_hand_made_probabilities():
    probs = np.array([[0.125, 0, 0, 0.5, 0.375, 0],       # EV 5 -> STRONG
                      [0, 0, 0, 1.0, 0, 0],                # EV 3 -> GOOD
                      [0, 0, 1.0, 0, 0, 0],                # EV 1 -> MODERATE
                      [0.25, 0, 0.5, 0, 0.125, 0.125],     # EV 0 -> AVOID
                      [0, 0, 0, 0, 0.6875, 0.3125],        # EV 3.75 but P(K5) >= 0.30 -> AVOID
                      [0, 0, 0.2, 0, 0.5, 0.3],            # EV 2.2, P(K5) exactly 0.30 -> AVOID
                      [0, 0, 0, 0, 0.75, 0.25]])           # EV 5, P(K5) 0.25 -> STRONG
    table = prediction_table(pd.DataFrame({'ticker': list('ABCDEFG')}), probs)
    assert list(table['expected_value']) == pytest.approx([5, 3, 1, 0, 3.75, 2.2, 5])
    assert list(table['signal']) == ['STRONG', 'GOOD', 'MODERATE', 'AVOID', 'AVOID', 'AVOID', 'STRONG']
    assert list(table['predicted_class']) == [3, 3, 2, 2, 4, 4, 4]
    text = prediction_summary(table)
    assert 'STRONG: 2 (28.6%)' in text and 'Avg P(K4): 0.562' in text and 'Avg P(K5): 0.125' in text


def test_predict_writes_checked_predictions(run, tmp_path):
    folder, best = run
    out = tmp_path / 'predictions.parquet'
    preds = predict(best, folder / 'sequences.parquet', out, batch_size=5)
    back = pd.read_parquet(out)
    for c in ['ticker', 'pattern_id', 'snapshot_date', 'start_date', 'label_end_date', 'outcome_class', 'sequence_dates',
              'predicted_class', 'expected_value', 'signal'] + PROB_COLUMNS:
        assert c in back.columns, c
    np.testing.assert_allclose(back[PROB_COLUMNS].sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(back['expected_value'], expected_value(back[PROB_COLUMNS].to_numpy()))
    assert list(back['signal']) == list(assign_signals(back['expected_value'], back['prob_k5']))
    # batching does not change the scores
    np.testing.assert_allclose(predict(best, folder / 'sequences.parquet', batch_size=256)[PROB_COLUMNS], preds[PROB_COLUMNS], atol=1e-6)
    meta = read_metadata(out)
    assert meta['split'] == load_checkpoint(best)['split'] and meta['model_config']['model_size'] == 'small'
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]


def _altered(best, path, change):
    ckpt = load_checkpoint(best)
    change(ckpt)
    torch.save(ckpt, path)
    return path


def test_refuses_other_feature_names(run, tmp_path):
    folder, best = run
    bad = _altered(best, tmp_path / 'swapped.pt', lambda c: c.update(feature_names=c['feature_names'][::-1]))
    with pytest.raises(ValueError, match='features differ from the checkpoint'):
        predict(bad, folder / 'sequences.parquet')


def test_refuses_other_sequence_length(run, tmp_path):
    folder, best = run
    bad = _altered(best, tmp_path / 'short.pt', lambda c: c['config'].update(sequence_length=30))
    with pytest.raises(ValueError, match='50 timesteps, the checkpoint was trained on 30'):
        predict(bad, folder / 'sequences.parquet')


def test_refuses_future_snapshot_dates(run):
    folder, best = run
    with pytest.raises(ValueError, match='after today'):
        predict(best, folder / 'sequences.parquet', today='2009-01-01')
    with pytest.raises(ValueError, match="'B' on 2999-01-02"):
        check_dates(pd.DataFrame({'ticker': ['A', 'B'], 'snapshot_date': pd.to_datetime(['2020-01-02', '2999-01-02'])}))


def test_predict_cli(run, tmp_path, capsys):
    folder, best = run
    out = tmp_path / 'p.parquet'
    predict_cli(['--model', str(best), '--sequences', str(folder / 'sequences.parquet'), '--output', str(out),
                 '--model-size', 'small', '--batch-size', '4'])
    assert out.exists() and 'Signal distribution:' in capsys.readouterr().out
    with pytest.raises(SystemExit, match="'base' contradicts the checkpoint"):
        predict_cli(['--model', str(best), '--sequences', str(folder / 'sequences.parquet'), '--output',
                     str(tmp_path / 'q.parquet'), '--model-size', 'base'])
    assert not (tmp_path / 'q.parquet').exists()


def test_scan_lists_the_active_pattern_and_ignores_later_data(run):
    folder, best = run
    preds = predict(best, folder / 'sequences.parquet')
    row = preds.sort_values('snapshot_date').iloc[len(preds) // 2]
    frames = read_store(folder / 'ohlcv')
    later = frames[row['ticker']]['date'] > row['snapshot_date']
    assert later.sum() > 50                                        # the store holds plenty of data after the as-of date
    live = scan(frames, best, row['snapshot_date'])
    assert list(live.columns) == SCAN_COLUMNS and live.attrs['as_of'] == row['snapshot_date']
    hit = live[live['pattern_id'] == row['pattern_id']]
    assert len(hit) == 1 and hit['snapshot_date'].iloc[0] == row['snapshot_date']
    # the sequence built from data up to the as-of date scores like the one built from the whole history
    assert hit['expected_value'].iloc[0] == pytest.approx(row['expected_value'], abs=1e-4)
    cut = {t: df[df['date'] <= row['snapshot_date']].reset_index(drop=True) for t, df in frames.items()}
    pd.testing.assert_frame_equal(scan(cut, best, row['snapshot_date']), live)
    assert list(live['expected_value']) == sorted(live['expected_value'], reverse=True)


def test_scan_cli_writes_and_refuses_the_future(run, tmp_path, capsys):
    folder, best = run
    out = tmp_path / 'scan.csv'
    scan_cli(['--ohlcv', str(folder / 'ohlcv'), '--model', str(best), '--output', str(out)])
    assert list(pd.read_csv(out).columns) == SCAN_COLUMNS and 'tickers trading on' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='after today'):
        scan_cli(['--ohlcv', str(folder / 'ohlcv'), '--model', str(best), '--as-of', '2999-01-04'])
    with pytest.raises(SystemExit, match=r'\.csv or \.parquet'):
        scan_cli(['--ohlcv', str(folder / 'ohlcv'), '--model', str(best), '--output', str(tmp_path / 'scan.txt')])



# --- k4-predict / k4-scan: one line naming the flag or file, exit status 1, inputs never modified -----------------

def snapshot(folder):
    "Fingerprint of every input of the run folder (the store, the sequences, the model)."
    return {p: fingerprint(folder / p) for p in ['ohlcv', 'sequences.parquet', 'model/best.pt']}


def _predict(folder, best, out, *extra):
    return ['--model', str(best), '--sequences', str(folder / 'sequences.parquet'), '--output', str(out), *extra]


@pytest.mark.parametrize('out,flag', [(lambda f: f / 'model' / 'best.pt', '--model'),
                                      (lambda f: f / 'sequences.parquet', '--sequences'),
                                      (lambda f: f / 'ohlcv' / 'preds.parquet', 'OHLCV store')])
def test_predict_output_may_not_be_an_input(run, capsys, out, flag):
    folder, best = run
    before = snapshot(folder)
    code, msg = exit_of(predict_cli, _predict(folder, best, out(folder)), capsys)
    assert code == 1 and msg.startswith('k4-predict: --output') and flag in msg and '\n' not in msg
    assert snapshot(folder) == before and not (folder / 'ohlcv' / 'preds.parquet').exists()


@pytest.mark.parametrize('extra,flag,code', [(['--batch-size', '0'], '--batch-size', 1), (['--device', 'cuda:99'], '--device', 1),
                                             (['--model-size', 'huge'], '--model-size', 2), (['--batch-size', 'x'], '--batch-size', 2)])
def test_predict_flags_checked(run, tmp_path, capsys, extra, flag, code):
    folder, best = run
    before = snapshot(folder)
    got, msg = exit_of(predict_cli, _predict(folder, best, tmp_path / 'p.parquet', *extra), capsys)
    assert got == code and flag in msg and 'Traceback' not in msg
    assert snapshot(folder) == before and not (tmp_path / 'p.parquet').exists()


def _zero(best, p): p.write_bytes(b'')
def _cut(best, p): p.write_bytes(best.read_bytes()[:4000])
def _text(best, p): p.write_text('not a model')
def _foreign(best, p): torch.save({'weights': torch.zeros(2)}, p)
def _reshaped(best, p):
    ck = load_checkpoint(best); ck['config']['model_size'] = 'base'; torch.save(ck, p)
def _nan_weights(best, p):
    ck = load_checkpoint(best)
    ck['state_dict'] = {k: torch.full_like(v, float('nan')) if v.is_floating_point() else v for k, v in ck['state_dict'].items()}
    torch.save(ck, p)
def _nan_scaler(best, p):
    ck = load_checkpoint(best); ck['scaler']['mean'][0] = float('nan'); torch.save(ck, p)


@pytest.mark.parametrize('make,why', [(_zero, 'empty'), (_cut, 'truncated'), (_text, 'not a torch file'),
                                      (_foreign, 'not a k4_nbdev checkpoint'), (_reshaped, 'do not fit'),
                                      (_nan_weights, 'NaN'), (_nan_scaler, 'scaler')])
def test_bad_model_files_one_line(run, tmp_path, capsys, make, why):
    folder, best = run
    model = tmp_path / 'model.pt'
    make(best, model)
    before = snapshot(folder) | {'model': fingerprint(model)}
    code, msg = exit_of(predict_cli, _predict(folder, model, tmp_path / 'p.parquet'), capsys)
    assert code == 1 and str(model) in msg and why in msg and '\n' not in msg and 'weights_only' not in msg, msg
    assert snapshot(folder) | {'model': fingerprint(model)} == before and not (tmp_path / 'p.parquet').exists()


def test_non_finite_sequences_stop_prediction(run, tmp_path, capsys):
    folder, best = run
    def poison(X, mask, meta): X[5, -1, FEATURES.index('ma_20')] = np.nan
    bad = rewritten(folder / 'sequences.parquet', tmp_path / 'bad.parquet', poison)
    before = fingerprint(bad)
    code, msg = exit_of(predict_cli, ['--model', str(best), '--sequences', str(bad), '--output', str(tmp_path / 'p.parquet')], capsys)
    assert code == 1 and str(bad) in msg and 'non-finite' in msg and '1 of' in msg and "'ma_20'" in msg
    assert fingerprint(bad) == before and not (tmp_path / 'p.parquet').exists()


def test_non_finite_probabilities_are_never_written():
    class NaNModel(torch.nn.Module):
        def forward(self, x, m): return torch.full((len(x), 6), float('nan'))
    X = np.ones((3, 4, len(FEATURES)), np.float32); mask = np.ones((3, 4), bool)
    scaler = {'mean': [0.0] * len(FEATURES), 'std': [1.0] * len(FEATURES), 'clip_sd': 10.0}
    with pytest.raises(ValueError, match=r'm\.pt gave non-finite probabilities .* 3 of 3 sequences'):
        check_probs(batch_probs(NaNModel(), X, mask, scaler), 'm.pt')


def test_sequences_without_provenance_refused_unless_asked(run, tmp_path, capsys):
    folder, best = run
    bare = tmp_path / 'bare.parquet'
    pq.write_table(pq.read_table(folder / 'sequences.parquet').replace_schema_metadata({}), bare)
    code, msg = exit_of(predict_cli, ['--model', str(best), '--sequences', str(bare), '--output', str(tmp_path / 'p.parquet')], capsys)
    assert code == 1 and str(bare) in msg and '--no-provenance-check' in msg and not (tmp_path / 'p.parquet').exists()
    predict_cli(['--model', str(best), '--sequences', str(bare), '--output', str(tmp_path / 'p.parquet'), '--no-provenance-check'])
    assert read_metadata(tmp_path / 'p.parquet')['provenance_checked'] is False


def test_predictions_record_both_inputs(run, tmp_path):
    folder, best = run
    out = tmp_path / 'p.parquet'
    predict(best, folder / 'sequences.parquet', out)
    meta = read_metadata(out)
    assert meta['input'] == {'sequences': {'path': str(folder / 'sequences.parquet'), 'fingerprint': fingerprint(folder / 'sequences.parquet')},
                             'model': {'path': str(best), 'fingerprint': fingerprint(best)}}
    assert meta['model_trained_on']['fingerprint'] == fingerprint(folder / 'sequences.parquet')
    assert meta['sequences_fingerprint'] == meta['input']['sequences']['fingerprint']      # the flat keys stay for their readers


def _scan(folder, best, *extra): return ['--ohlcv', str(folder / 'ohlcv'), '--model', str(best), *extra]


@pytest.mark.parametrize('extra,flag', [(lambda f, b: ['--output', str(b)], '--model'),
                                        (lambda f, b: ['--output', str(f / 'ohlcv' / 'scan.csv')], '--ohlcv'),
                                        (lambda f, b: ['--as-of', 'someday'], '--as-of'),
                                        (lambda f, b: ['--as-of', '2020-13-45'], '--as-of'),
                                        (lambda f, b: ['--batch-size', '0'], '--batch-size'),
                                        (lambda f, b: ['--qualifying-days', '0'], '--qualifying-days'),
                                        (lambda f, b: ['--device', 'cuda:99'], '--device')])
def test_scan_flags_checked(run, capsys, extra, flag):
    folder, best = run
    before = snapshot(folder)
    code, msg = exit_of(scan_cli, _scan(folder, best, *extra(folder, best)), capsys)
    assert code == 1 and msg.startswith('k4-scan: ') and flag in msg and '\n' not in msg
    assert snapshot(folder) == before


def test_scan_writes_parquet(run, tmp_path, capsys):
    folder, best = run
    out = tmp_path / 'scan.parquet'
    scan_cli(_scan(folder, best, '--output', str(out)))
    back = pd.read_parquet(out)
    assert list(back.columns) == SCAN_COLUMNS and read_metadata(out)['as_of'].startswith('20')


def test_console_scripts_exit_status_and_no_traceback(run, tmp_path):
    folder, best = run
    bin_ = Path(sys.executable).parent
    for argv, flag in [([str(bin_ / 'k4-predict')] + _predict(folder, best, best), '--output'),
                       ([str(bin_ / 'k4-scan')] + _scan(folder, best, '--as-of', 'someday'), '--as-of')]:
        r = subprocess.run(argv, capture_output=True, text=True)
        assert r.returncode == 1 and 'Traceback' not in r.stderr and r.stderr.strip().count('\n') == 0 and flag in r.stderr
