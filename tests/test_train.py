"Training: the purged split, training-only scaling, learning, resume, checkpoints, bad input."
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from k4_nbdev.sequences import FEATURES
from k4_nbdev.train import (SplitError, purged_split, fit_scaler, apply_scaler, train, load_checkpoint,
                            model_from_checkpoint, predict_proba, classification_metrics, walk_forward_folds,
                            average_precision)

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
                X_val=apply_scaler(X[48:], m[48:], s), m_val=m[48:], y_val=y[48:], output_dir=tmp_path,
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
    p1 = predict_proba(model, args['X_val'], args['m_val'])
    p2 = predict_proba(model_from_checkpoint(load_checkpoint(res['best'])), args['X_val'], args['m_val'])
    assert np.array_equal(p1, p2)
    assert classification_metrics(p1, args['y_val'])['accuracy'] == ck['metrics']['accuracy']


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
