"Training: the purged split, training-only scaling, learning, resume, checkpoints, bad input."
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pyarrow.parquet as pq

from k4_nbdev.core import fingerprint
from k4_nbdev.sequences import FEATURES
from k4_nbdev.scoring import apply_scaler, calibrated_proba, fit_scaler, load_checkpoint, model_from_checkpoint, predict_proba
from k4_nbdev.metrics import classification_metrics, average_precision, calibration_error
from k4_nbdev.references import window_summaries, WINDOW_STATS
from k4_nbdev.scoring import fit_calibration
from k4_nbdev.train import (SplitError, purged_split, train, walk_forward_folds, train_cli, selection_split, fold_data,
                            epoch_order, warmup_cosine)
from k4_nbdev.testing import exit_of, rewritten

L, F = 12, len(FEATURES)


def meta_frame(n=40, window_days=20, seed=0):
    rng = np.random.default_rng(seed)
    dates = pd.Series(pd.bdate_range('2020-01-01', periods=n // 2).repeat(2))[:n].reset_index(drop=True)
    return pd.DataFrame({'snapshot_date': dates, 'label_end_date': dates + pd.Timedelta(days=window_days),
                         'outcome_class': pd.array(rng.integers(0, 6, n), dtype='Int64')})


def test_split_is_purged_and_ordered():
    meta = meta_frame(200, window_days=10)
    tr, va, info = purged_split(meta, 0.8)
    first_val = meta['snapshot_date'].iloc[va].min()
    assert meta['snapshot_date'].iloc[tr].max() < first_val
    assert meta['label_end_date'].iloc[tr].max() < first_val
    assert info['n_purged'] > 0 and info['n_train'] + info['n_val'] + info['n_purged'] == 200
    assert str(first_val.date()) == info['split_date']


def test_ties_at_the_split_date_go_to_validation():
    meta = meta_frame(40, window_days=0)      # two snapshots per date
    tr, va, info = purged_split(meta, 0.5)
    split = pd.Timestamp(info['split_date'])
    on_split = np.flatnonzero(meta['snapshot_date'] == split)
    assert len(on_split) == 2 and set(on_split) <= set(va)


def test_unlabelled_rows_never_used():
    meta = meta_frame(60)
    meta.loc[::3, 'outcome_class'] = pd.NA
    tr, va, info = purged_split(meta, 0.7)
    assert meta['outcome_class'].iloc[np.r_[tr, va]].notna().all() and info['n_unlabelled'] == 20


@pytest.mark.parametrize('ratio,match', [(0.0, 'between'), (1.0, 'between')])
def test_bad_ratio(ratio, match):
    with pytest.raises(SplitError, match=match): purged_split(meta_frame(), ratio)


def test_empty_side_raises():
    meta = meta_frame(40, window_days=400)      # every label window reaches past any split date
    with pytest.raises(SplitError, match='0 training'): purged_split(meta, 0.8)
    meta = meta_frame(40).assign(outcome_class=pd.array([pd.NA] * 40, dtype='Int64'))
    with pytest.raises(SplitError, match='no labelled'): purged_split(meta, 0.8)


def test_walk_forward_folds_expand_and_stay_purged():
    meta = meta_frame(300, window_days=5)
    folds = walk_forward_folds(meta, n_folds=3)
    assert len(folds) == 3
    sizes = [len(t) for t, _, _ in folds]
    assert sizes == sorted(sizes)                     # expanding window
    for tr, va, _ in folds:
        assert meta['label_end_date'].iloc[tr].max() < meta['snapshot_date'].iloc[va].min()


@pytest.mark.parametrize('inner_ratio', [0.6, 0.8])
def test_selection_slice_is_purged_inside_training_and_before_validation(inner_ratio):
    meta = meta_frame(400, window_days=12)
    tr, va, info = purged_split(meta, 0.8)
    fit, sel, inner = selection_split(meta, tr, inner_ratio)
    d = meta['snapshot_date'].to_numpy(); ends = meta['label_end_date'].to_numpy()
    assert set(fit) | set(sel) <= set(tr) and not set(fit) & set(sel)          # both inside training, disjoint
    assert ends[fit].max() < d[sel].min()                                     # no fitting label looks into the slice
    assert d[sel].max() < d[va].min() and ends[sel].max() < d[va].min()       # the slice never reaches validation
    assert inner['n_purged_inner'] > 0 and inner['n_fit'] + inner['n_select'] + inner['n_purged_inner'] == len(tr)
    assert not set(sel) & set(va) and not set(fit) & set(va)


def test_fold_data_carves_the_slice_for_every_walk_forward_fold():
    meta = meta_frame(300, window_days=5)
    data = {'meta': meta}
    for tr, va, info in walk_forward_folds(meta, n_folds=3):
        f = fold_data(data, tr, va, info)
        assert meta['label_end_date'].iloc[f['fit']].max() < meta['snapshot_date'].iloc[f['select']].min()
        assert meta['snapshot_date'].iloc[f['select']].max() < meta['snapshot_date'].iloc[va].min()


def test_window_summaries_by_hand_and_padding_ignored():
    n_bars, k = 10, FEATURES.index('days_in_pattern')
    X = np.ones((2, n_bars, F), np.float32); X[:, :, FEATURES.index('current_price')] = 5.0
    X[:, :, k] = np.arange(n_bars) * 2.0                       # a ramp: slope 2 per bar
    mask = np.ones((2, n_bars), np.float32); mask[1, :4] = 0   # the second sequence has 4 padded bars
    S = window_summaries(X, mask).reshape(2, len(WINDOW_STATS), F)[:, :, k]
    stat = dict(zip(WINDOW_STATS, S.T))
    np.testing.assert_allclose(stat['last'], [18, 18]); np.testing.assert_allclose(stat['mean'], [9, 13])
    np.testing.assert_allclose(stat['min'], [0, 8]); np.testing.assert_allclose(stat['change'], [18, 10])
    np.testing.assert_allclose(stat['slope'], [2, 2], rtol=1e-6)
    X2 = X.copy(); X2[1, :4] = 1e6                              # whatever lies under the padding ...
    np.testing.assert_array_equal(window_summaries(X2, mask), window_summaries(X, mask))   # ... is never read


def test_window_summaries_use_only_bars_up_to_the_snapshot():
    from k4_nbdev.data import synthetic_market
    from k4_nbdev.sequences import ticker_sequences
    from test_sequences import snapshot_rows
    df = synthetic_market(1, 400, seed=3)['SYN0000']
    snaps = snapshot_rows(df, 'SYN0000', [(150, 160, 200), (250, 260, 300)])
    full = window_summaries(*ticker_sequences(df, snaps, 50)[:2])
    for i, t in enumerate([200, 300]):                          # the history cut at the snapshot bar: the same summaries
        cut = window_summaries(*ticker_sequences(df.iloc[:t + 1], snaps.iloc[[i]], 50)[:2])
        np.testing.assert_array_equal(full[i], cut[0])


def test_calibration_recovers_a_known_distortion():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(6, 0.5), 3000)
    y = (p.cumsum(1) < rng.random((3000, 1))).sum(1)
    z = np.log(p) * 2 + np.log([1, 1, 2, 10, 500, 5])
    cal = fit_calibration(z, y)
    assert abs(cal['temperature'] - 2) < 0.25
    assert calibration_error(calibrated_proba(z, cal), y) < calibration_error(calibrated_proba(z), y) / 3


def test_oversampling_draws_rare_classes_at_their_rates():
    y = np.array([0] * 900 + [4] * 100)
    gen = torch.Generator().manual_seed(0)
    assert sorted(epoch_order(y, gen).tolist()) == list(range(1000))          # plain: a permutation
    drawn = y[epoch_order(y, gen, [1, 1, 1, 1, 9, 1]).numpy()]
    assert len(drawn) == 1000 and 0.45 < (drawn == 4).mean() < 0.55        # K4 drawn 9x as often: half the epoch
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(99) < 0.01


def sequences(n, seed=0, k4_signal=True):
    rng = np.random.default_rng(seed)
    X = rng.lognormal(0, 0.3, size=(n, L, F)).astype(np.float32)
    mask = np.ones((n, L), np.float32)
    mask[: n // 4, :3] = 0
    X[mask == 0] = 0
    y = rng.integers(0, 4, n)
    y[::5] = 4
    if k4_signal: X[y == 4, :, 5] *= 3.0          # K4 rows are learnable
    return X, mask, y


def test_scaler_uses_training_rows_only():
    X, m, _ = sequences(30)
    s = fit_scaler(X[:20], m[:20])
    X2 = X.copy(); X2[20:] *= 50
    assert fit_scaler(X2[:20], m[:20]) == s
    Z = apply_scaler(X, m, s)
    assert (Z[m == 0] == 0).all() and np.isfinite(Z).all() and np.abs(Z).max() <= s['clip_sd']


def tiny_train(tmp_path, **kw):
    X, m, y = sequences(64)
    s = fit_scaler(X[:48], m[:48])
    args = dict(X_train=apply_scaler(X[:48], m[:48], s), m_train=m[:48], y_train=y[:48],
                X_sel=apply_scaler(X[48:], m[48:], s), m_sel=m[48:], y_sel=y[48:], output_dir=tmp_path,
                meta={'scaler': s}, model_size='small', backend='torch', epochs=4, batch_size=16,
                learning_rate=3e-3, seed=1, verbose=False, progress=False)
    return train(**{**args, **kw}), args


def test_a_tiny_model_learns(tmp_path):
    res, args = tiny_train(tmp_path, epochs=30, k4_weight=5.0, loss='cross_entropy')
    h = pd.DataFrame(res['history'])
    assert h['train_loss'].iloc[-5:].mean() < 0.7 * h['train_loss'].iloc[:3].mean()
    assert h['train_k4_recall'].iloc[-1] > 0.5


def test_best_checkpoint_always_exists_and_round_trips(tmp_path):
    res, args = tiny_train(tmp_path, epochs=1)
    ck = load_checkpoint(res['best'])
    for k in ['config', 'state_dict', 'scaler', 'feature_names', 'class_names', 'strategic_values', 'metrics', 'history']:
        assert k in ck
    model = model_from_checkpoint(ck)
    p1 = predict_proba(model, args['X_sel'], args['m_sel'])
    p2 = predict_proba(model_from_checkpoint(load_checkpoint(res['best'])), args['X_sel'], args['m_sel'])
    assert np.array_equal(p1, p2)
    assert classification_metrics(p1, args['y_sel'])['accuracy'] == ck['metrics']['accuracy']


def test_resume_equals_uninterrupted(tmp_path):
    full, _ = tiny_train(tmp_path / 'full', epochs=4)
    tiny_train(tmp_path / 'cut', epochs=4, until_epoch=2)
    resumed, _ = tiny_train(tmp_path / 'cut', epochs=4, resume=tmp_path / 'cut' / 'last.pt')
    a = load_checkpoint(tmp_path / 'full' / 'last.pt')['state_dict']
    b = load_checkpoint(tmp_path / 'cut' / 'last.pt')['state_dict']
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ('seconds', 'samples_per_s')} for r in h]
    assert strip(full['history']) == strip(resumed['history'])


def test_resume_with_other_settings_refused(tmp_path):
    tiny_train(tmp_path, epochs=2, until_epoch=1)
    with pytest.raises(ValueError, match='cannot resume'):
        tiny_train(tmp_path, epochs=2, learning_rate=1e-2, resume=tmp_path / 'last.pt')


def test_foreign_and_tampered_checkpoints(tmp_path):
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'foreign.pt')
    with pytest.raises(ValueError, match='not a k4_nbdev checkpoint'): load_checkpoint(tmp_path / 'foreign.pt')
    (tmp_path / 'garbage.pt').write_bytes(b'not a checkpoint at all')
    with pytest.raises(ValueError, match='not a loadable'): load_checkpoint(tmp_path / 'garbage.pt')

    class Evil:
        def __reduce__(self): return (print, ('pwned',))
    torch.save({'format': 'k4_nbdev.checkpoint/1', 'x': Evil()}, tmp_path / 'evil.pt')
    with pytest.raises(ValueError, match='safe loading refused'): load_checkpoint(tmp_path / 'evil.pt')
    with pytest.raises(FileNotFoundError): load_checkpoint(tmp_path / 'missing.pt')


def test_bad_shapes_rejected(tmp_path):
    X, m, y = sequences(20)
    with pytest.raises(ValueError, match='69'):
        train(X[:, :, :60], m, y, X[:, :, :60], m, y, tmp_path, {}, epochs=1, verbose=False, progress=False)
    with pytest.raises(ValueError, match='labels'):
        train(X, m, y[:5], X, m, y, tmp_path, {}, epochs=1, verbose=False, progress=False)


def test_no_k4_in_training_warns_and_reports_undefined(tmp_path):
    X, m, y = sequences(40)
    y = np.where(y == 4, 0, y)
    with pytest.warns(UserWarning, match='no K4'):
        res = train(X, m, y, X, m, y, tmp_path, {}, model_size='small', backend='torch', epochs=1, batch_size=20,
                    verbose=False, progress=False)
    assert math.isnan(res['best_metrics']['k4_recall'])


def test_average_precision_ties_and_weights():
    s, pos = np.array([0.9, 0.8, 0.1]), np.array([True, False, True])
    assert average_precision(s, pos) == pytest.approx((1 + 2 / 3) / 2)
    # tied scores are one threshold: the base rate, wherever the positive is stored
    assert average_precision(np.zeros(4), np.array([True, False, False, False])) == 0.25
    assert average_precision(np.zeros(4), np.array([False, False, False, True])) == 0.25
    # weights per replicate: 0 drops a row, a common factor changes nothing
    assert average_precision(s, pos, [[1, 0, 1], [1, 1, 1], [2, 2, 2]]) == pytest.approx([1, (1 + 2 / 3) / 2, (1 + 2 / 3) / 2])
    assert math.isnan(average_precision(s, np.zeros(3, bool)))



# --- k4-train: every user error is one line naming the flag or file; inputs are never modified -------------------

@pytest.fixture(scope='module')
def made(tiny, tmp_path_factory):
    "A copy of the shared tiny sequences file (with the builder's provenance) and a finished one-epoch model folder k4-train made from it."
    folder = tmp_path_factory.mktemp('train_cli')
    seqs = Path(shutil.copy(tiny / 'sequences.parquet', folder / 'sequences.parquet'))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        train_cli(['--sequences', str(seqs), '--output-dir', str(folder / 'model'), '--model-size', 'small',
                   '--epochs', '1', '--batch-size', '64'])
    return folder, seqs


def _zero(folder): p = folder / 'zero.pt'; p.write_bytes(b''); return p
def _foreign(folder): p = folder / 'foreign.pt'; torch.save({'weights': torch.zeros(2)}, p); return p
def _best(folder): return folder / 'model' / 'best.pt'


@pytest.mark.parametrize('argv,flag', [
    (['--epochs', '0'], '--epochs'), (['--epochs', '-1'], '--epochs'), (['--batch-size', '0'], '--batch-size'),
    (['--patience', '0'], '--patience'), (['--learning-rate', '0'], '--learning-rate'),
    (['--learning-rate', 'nan'], '--learning-rate'), (['--split-ratio', '1'], '--split-ratio'),
    (['--split-ratio', '0'], '--split-ratio'), (['--k4-weight', '0'], '--k4-weight'),
    (['--device', 'cuda:99'], '--device'), (['--device', 'toaster'], '--device')])
def test_train_flags_checked_up_front(made, tmp_path, capsys, argv, flag):
    folder, seqs = made
    before = fingerprint(folder)
    code, msg = exit_of(train_cli, ['--sequences', str(seqs), '--output-dir', str(tmp_path / 'm')] + argv, capsys)
    assert code == 1 and msg.startswith('k4-train: ') and flag in msg and '\n' not in msg and 'Traceback' not in msg
    assert fingerprint(folder) == before and not (tmp_path / 'm').exists()


@pytest.mark.parametrize('argv', [['--model-size', 'huge'], ['--backend', 'tpu'], ['--loss', 'hinge'], ['--epochs', 'many']])
def test_train_choices_are_argparse_errors(made, tmp_path, capsys, argv):
    folder, seqs = made
    code, err = exit_of(train_cli, ['--sequences', str(seqs), '--output-dir', str(tmp_path / 'm')] + argv, capsys)
    assert code == 2 and argv[0] in err and 'Traceback' not in err


@pytest.mark.parametrize('resume,why', [(lambda d: d / 'best.pt', 'not the last.pt'), (_zero, 'empty'),
                                        (_foreign, 'not a k4_nbdev checkpoint'),
                                        (lambda d: d.parent / 'last.pt', 'inside the output folder')])
def test_resume_must_be_the_last_of_an_interrupted_run(made, capsys, resume, why):
    folder, seqs = made
    path = resume(folder / 'model')
    before = fingerprint(folder)
    code, msg = exit_of(train_cli, ['--sequences', str(seqs), '--output-dir', str(folder / 'model'), '--model-size', 'small',
                                    '--epochs', '1', '--batch-size', '64', '--resume', str(path)], capsys)
    assert code == 1 and '--resume' in msg and str(path) in msg and why in msg and 'weights_only' not in msg
    assert fingerprint(folder) == before


def test_resume_of_a_finished_run_refused(made, capsys):
    folder, seqs = made
    before = fingerprint(folder)
    code, msg = exit_of(train_cli, ['--sequences', str(seqs), '--output-dir', str(folder / 'model'), '--model-size', 'small',
                                    '--epochs', '1', '--batch-size', '64', '--resume', str(folder / 'model' / 'last.pt')], capsys)
    assert code == 1 and 'already ended' in msg and fingerprint(folder) == before


@pytest.mark.parametrize('out', [lambda f: f / 'sequences.parquet', lambda f: f / 'sequences.parquet' / 'm', lambda f: f])
def test_output_dir_may_not_be_or_contain_the_sequences(made, capsys, out):
    folder, seqs = made
    before = fingerprint(folder)
    code, msg = exit_of(train_cli, ['--sequences', str(seqs), '--output-dir', str(out(folder)), '--epochs', '1'], capsys)
    assert code == 1 and '--output-dir' in msg and '--sequences' in msg and fingerprint(folder) == before


def _nan(X, mask, meta): X[3, -1, FEATURES.index('ma_20')] = np.nan
def _inf(X, mask, meta): X[[1, 4], -2, FEATURES.index('current_volume')] = np.inf
def _future(X, mask, meta): meta.loc[2, 'snapshot_date'] = pd.Timestamp('2200-01-05')


@pytest.mark.parametrize('change,expect', [(_nan, ['1 of 97 sequences', "'ma_20'"]), (_inf, ['2 of 97 sequences', 'current_volume']),
                                           (_future, ['after today', '2200-01-05'])])
def test_bad_sequences_stop_training_naming_file_rows_columns(made, tmp_path, capsys, change, expect):
    folder, seqs = made
    bad = rewritten(seqs, tmp_path / 'bad.parquet', change)
    before = fingerprint(bad)
    code, msg = exit_of(train_cli, ['--sequences', str(bad), '--output-dir', str(tmp_path / 'm'), '--epochs', '1'], capsys)
    assert code == 1 and str(bad) in msg and all(e in msg for e in expect), msg
    assert fingerprint(bad) == before and not (tmp_path / 'm' / 'best.pt').exists()


def test_sequences_without_provenance_refused_unless_asked(made, tmp_path, capsys):
    folder, seqs = made
    bare = tmp_path / 'bare.parquet'
    pq.write_table(pq.read_table(seqs).replace_schema_metadata({}), bare)
    before = fingerprint(bare)
    code, msg = exit_of(train_cli, ['--sequences', str(bare), '--output-dir', str(tmp_path / 'm'), '--epochs', '1'], capsys)
    assert code == 1 and str(bare) in msg and '--no-provenance-check' in msg
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        train_cli(['--sequences', str(bare), '--output-dir', str(tmp_path / 'm'), '--model-size', 'small', '--epochs', '1',
                   '--batch-size', '64', '--no-provenance-check'])
    assert load_checkpoint(tmp_path / 'm' / 'best.pt')['input']['sequences']['fingerprint'] == before == fingerprint(bare)


def test_checkpoint_records_the_sequences_fingerprint(made):
    folder, seqs = made
    ck = load_checkpoint(folder / 'model' / 'best.pt')
    assert ck['input']['sequences'] == {'path': str(seqs), 'fingerprint': fingerprint(seqs)}


@pytest.mark.parametrize('argv', [['--patience', '0'], ['--epochs', '-1']])
def test_no_stale_model_reported_as_the_new_result(made, capsys, argv):
    "A folder holding an earlier best.pt: a run that would train nothing is refused and the old model is left alone."
    folder, seqs = made
    before = fingerprint(folder)
    code, msg = exit_of(train_cli, ['--sequences', str(seqs), '--output-dir', str(folder / 'model')] + argv, capsys)
    assert code == 1 and argv[0] in msg and 'best epoch' not in capsys.readouterr().out
    assert fingerprint(folder) == before


def test_train_never_returns_a_checkpoint_of_another_run(tmp_path):
    old, _ = tiny_train(tmp_path, epochs=1)
    old_id = load_checkpoint(old['best'])['run_id']
    new, _ = tiny_train(tmp_path, epochs=1, seed=2)
    ck = load_checkpoint(new['best'])
    assert ck['run_id'] != old_id and new['best_metrics'] == ck['metrics']
    # the result is checked against the run's own id: a best.pt planted by another run is refused
    # (constant selection classes: no epoch after the first can improve, so only epoch 1 writes best.pt)
    flat = dict(epochs=3, y_sel=np.zeros(16, int))
    tiny_train(tmp_path / 'b', until_epoch=1, **flat)
    (tmp_path / 'b' / 'best.pt').write_bytes(new['best'].read_bytes())
    with pytest.raises(ValueError, match='not written by this run'):
        tiny_train(tmp_path / 'b', resume=tmp_path / 'b' / 'last.pt', **flat)


def test_training_with_zero_epochs_refused_in_the_library(tmp_path):
    for kw, flag in [({'epochs': 0}, '--epochs'), ({'patience': 0}, '--patience'), ({'batch_size': 0}, '--batch-size')]:
        with pytest.raises(ValueError, match=flag): tiny_train(tmp_path, **kw)
    assert not (tmp_path / 'best.pt').exists()


def _truncated(folder, best): p = folder / 'cut.pt'; p.write_bytes(best.read_bytes()[:3000]); return p
def _text(folder, best): p = folder / 'text.pt'; p.write_text('hello'); return p
def _nan_weights(folder, best):
    ck = load_checkpoint(best); k = next(k for k, v in ck['state_dict'].items() if v.is_floating_point())
    ck['state_dict'][k] = torch.full_like(ck['state_dict'][k], float('nan')); p = folder / 'nan.pt'; torch.save(ck, p); return p


@pytest.mark.parametrize('make,why', [(lambda f, b: _zero(f), 'empty'), (_truncated, 'truncated'), (_text, 'not a torch file'),
                                      (lambda f, b: _foreign(f), 'not a k4_nbdev checkpoint'), (_nan_weights, 'NaN')])
def test_bad_checkpoint_files_one_line(made, tmp_path, make, why):
    folder, _ = made
    path = make(tmp_path, _best(folder))
    with pytest.raises(ValueError) as e: load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and why in msg and '\n' not in msg and 'weights_only' not in msg


def test_reshaped_weights_refused_naming_the_file(made):
    folder, _ = made
    ck = load_checkpoint(_best(folder))
    ck['config']['model_size'] = 'base'
    with pytest.raises(ValueError, match=r'x\.pt: its weights do not fit the .base. model'):
        model_from_checkpoint(ck, source='x.pt')


def test_console_script_exit_status_and_no_traceback(made, tmp_path):
    folder, seqs = made
    exe = Path(sys.executable).parent / 'k4-train'
    r = subprocess.run([str(exe), '--sequences', str(seqs), '--output-dir', str(tmp_path / 'm'), '--patience', '0'],
                       capture_output=True, text=True)
    assert r.returncode == 1 and 'Traceback' not in r.stderr and r.stderr.strip().count('\n') == 0
    assert '--patience' in r.stderr


def test_k4_train_writes_what_the_pipelines_train_stage_writes(tiny_run, tmp_path):
    "k4-train and the pipeline call one function: on the run's sequences, store and answer key, the same files and comparison."
    run = Path(tiny_run['run_dir'])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            code, msg = exit_of(train_cli, ['--sequences', str(run / 'sequences.parquet'), '--output-dir', str(tmp_path / 'm'),
                                            '--ohlcv', str(run / 'ohlcv'), '--truth', str(run / 'episodes.parquet')])
    finally: torch.set_num_threads(threads)
    assert code == 0, msg
    stage = {'best.pt', 'last.pt', 'history.json', 'training_curves.png', 'model_comparison.csv', 'model_comparison.png',
             'signal_comparison.csv'}
    pipeline = {p.name for p in run.iterdir()} | {p.name for p in (run / 'model').iterdir()}
    written = {p.name for p in (tmp_path / 'm').iterdir() if not p.name.startswith('best_')}
    assert stage <= pipeline and written == stage, written ^ stage
    mine, theirs = (pd.read_csv(d / 'model_comparison.csv', index_col=0).drop(columns='seconds') for d in (tmp_path / 'm', run))
    pd.testing.assert_frame_equal(mine, theirs)
    pd.testing.assert_frame_equal(*(pd.read_csv(d / 'signal_comparison.csv', index_col=0) for d in (tmp_path / 'm', run)))
