"Prediction: EV and signal rules, refusals, the predictions file, the console scripts, and the live scan."
import numpy as np
import pandas as pd
import pytest
import torch

from k4_nbdev.data import read_store
from k4_nbdev.patterns import read_metadata
from k4_nbdev.predict import (PROB_COLUMNS, SCAN_COLUMNS, assign_signals, check_dates, demo_run, predict,
                              predict_cli, prediction_summary, prediction_table, scan, scan_cli)
from k4_nbdev.train import expected_value, load_checkpoint


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny run folder: synthetic store, snapshots, sequences and a one-epoch small model."
    folder = tmp_path_factory.mktemp('predict_run')
    with pytest.warns(UserWarning, match='no K4'):
        best = demo_run(folder, 'tiny', 0)
    return folder, best


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
