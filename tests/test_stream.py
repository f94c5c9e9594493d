"Streaming equals reading whole: training through pre-scaled memory maps, prediction, the baselines and the ceilings read a chunk at a time give the numbers of the arrays in memory, bit for bit, and hold a chunk, not the file."
import json
import tracemalloc
import warnings
from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import k4_nbdev.references as references
import k4_nbdev.train as train_module
from k4_nbdev.predict import batch_probs, predict, prediction_table, score_file
from k4_nbdev.references import lightgbm_baseline, observable_model, precursor_baseline, read_truth
from k4_nbdev.scoring import (apply_scaler, checkpoint_calibration, fit_scaler, load_checkpoint, model_from_checkpoint,
                              sequence_chunks)
from k4_nbdev.sequences import read_sequences
from k4_nbdev.train import (CACHE_DIR, checkpoint_probs, fit_model, load_training_data, open_scaled, RECIPE, RUN_FILES,
                            TRAIN_FIGURES, train_cli, write_scaled)
from k4_nbdev.testing import exit_of

KW = dict(model_size='small', epochs=2, batch_size=7, seed=0, verbose=False, progress=False)


@pytest.fixture(scope='module')
def sequences(tiny):
    "The shared tiny market's sequences.parquet (read-only), made by the stages' own functions."
    return tiny / 'sequences.parquet'


def fit(sequences, out, stream, **kw):
    "`fit_model` on the tiny market, which has no K4 in its training rows: training must say so."
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        result = fit_model(load_training_data(sequences, stream=stream), out, **{**KW, **kw})
    assert any('no K4 sequence in the training split' in str(w.message) for w in seen), [str(w.message) for w in seen]
    return result


def test_streamed_training_is_bit_identical(sequences, tmp_path):
    a, b = fit(sequences, tmp_path / 'memory', False), fit(sequences, tmp_path / 'stream', True)
    assert a['scaler'] == b['scaler']   # equal floats, not close ones
    for name in ('best.pt', 'last.pt'):
        ca, cb = load_checkpoint(tmp_path / 'memory' / name), load_checkpoint(tmp_path / 'stream' / name)
        assert ca['state_dict'].keys() == cb['state_dict'].keys()
        assert all(torch.equal(ca['state_dict'][k], cb['state_dict'][k]) for k in ca['state_dict']), name
        assert ca['scaler'] == cb['scaler'] and ca.get('calibration') == cb.get('calibration')
    ha, hb = (json.loads((tmp_path / d / 'history.json').read_text()) for d in ('memory', 'stream'))
    drop = lambda h: [{k: v for k, v in r.items() if k not in ('seconds', 'samples_per_s')} for r in h]
    assert json.dumps(drop(ha)) == json.dumps(drop(hb))
    assert sorted(p.name for p in (tmp_path / 'stream').iterdir() if not p.name.startswith('best_')) == sorted(RUN_FILES)


def test_maps_hold_what_apply_scaler_makes(sequences, tmp_path):
    streamed, held = load_training_data(sequences, stream=True), load_training_data(sequences)
    assert streamed['X'] is None and np.array_equal(streamed['mask'], held['mask'])
    assert all(np.array_equal(streamed[s], held[s]) for s in ('fit', 'select', 'val')) and streamed['info'] == held['info']
    scaler = write_scaled(sequences, streamed, tmp_path / 'maps', chunk_rows=6)
    assert scaler == fit_scaler(held['X'][held['fit']], held['mask'][held['fit']])
    for s in ('fit', 'select', 'val'):
        X, m, y = open_scaled(tmp_path / 'maps', streamed, s)
        assert isinstance(X, np.memmap) and X.dtype == np.float32
        assert np.array_equal(X, apply_scaler(held['X'][held[s]], held['mask'][held[s]], scaler))
        assert np.array_equal(m, held['mask'][held[s]]) and np.array_equal(y, held['y'][held[s]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['maps']   # the temporary name is gone


def test_k4_train_streams_and_leaves_no_map(sequences, tmp_path):
    "The network alone (--no-baselines) streams the sequences through a memory map, removed when training ends."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert exit_of(train_cli, ['--sequences', str(sequences), '--output-dir', str(tmp_path / 'm'), '--model-size', 'small',
                                   '--epochs', '1', '--no-baselines'])[0] == 0
    names = sorted(p.name for p in (tmp_path / 'm').iterdir())
    assert [n for n in names if not n.startswith('best_')] == sorted(RUN_FILES + (TRAIN_FIGURES['curves'],)) and CACHE_DIR not in names


def test_a_failed_write_leaves_no_map(sequences, tmp_path, monkeypatch):
    "Killed half way through (here: an error while scaling), neither the map nor its temporary folder is left to be used."
    def boom(*a, **k): raise RuntimeError('disk full')
    monkeypatch.setattr(train_module, 'scale_relative', boom)
    (tmp_path / 'm').mkdir()
    with pytest.raises(RuntimeError, match='disk full'): fit(sequences, tmp_path / 'm', True)
    assert list((tmp_path / 'm').iterdir()) == []


def test_a_stale_map_is_replaced(sequences, tmp_path):
    stale = tmp_path / 'm' / CACHE_DIR
    stale.mkdir(parents=True); (stale / 'fit.npy').write_bytes(b'half written')
    fit(sequences, tmp_path / 'm', True, epochs=1)
    assert not stale.exists() and (tmp_path / 'm' / 'best.pt').exists()


def _repeated(sequences, path, times):
    "The file's rows `times` over (row groups of 16), with its provenance."
    t = pq.read_table(sequences)
    pq.write_table(pa.concat_tables([t] * times).replace_schema_metadata(t.schema.metadata), path, row_group_size=16)
    return path


def _peak(sequences, folder):
    data = load_training_data(sequences, stream=True)
    tracemalloc.start()
    try:
        write_scaled(sequences, data, folder, chunk_rows=8)
        return tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()


def test_streamed_write_holds_a_chunk_not_the_file(sequences, tmp_path):
    "Peak numpy allocation while writing the maps: the same for a file 1 and 6 times as long (the file itself is ~1.3 MB and 8 MB)."
    small, big = _repeated(sequences, tmp_path / 's.parquet', 1), _repeated(sequences, tmp_path / 'b.parquet', 6)
    p_small, p_big = _peak(small, tmp_path / 'ms'), _peak(big, tmp_path / 'mb')
    row_bytes = 50 * 69 * 4
    n_small = pq.ParquetFile(small).metadata.num_rows
    assert p_big - p_small < 0.1 * 5 * n_small * row_bytes, (p_small, p_big)   # in memory the growth would be 5 × n rows, more with copies


@pytest.fixture(scope='module')
def grouped(sequences, tmp_path_factory):
    "The tiny sequences in row groups of 16, so that chunks of another size cut across them."
    return _repeated(sequences, tmp_path_factory.mktemp('grouped') / 'sequences.parquet', 1)


def test_chunks_are_the_file_or_the_rows_asked_for(grouped):
    X, mask, meta = read_sequences(grouped)
    for rows in (None, np.arange(3, len(X), 5)):
        picked = np.arange(len(X)) if rows is None else rows
        chunks = list(sequence_chunks(grouped, 10, rows))
        assert [c[0] for c in chunks] == list(range(0, len(picked), 10)) and all(len(c[1]) == 10 for c in chunks[:-1])
        assert np.array_equal(np.concatenate([c[1] for c in chunks]), X[picked])
        assert np.array_equal(np.concatenate([c[2] for c in chunks]), mask[picked])
        assert pd.concat([c[3] for c in chunks])['pattern_id'].tolist() == meta['pattern_id'].iloc[picked].tolist()


def test_streamed_references_equal_the_in_memory_ones(grouped, tiny, monkeypatch):
    "LightGBM, the precursor baseline, the observable ceiling and a checkpoint's probabilities: the same numbers streamed as from memory."
    held, streamed = load_training_data(grouped), load_training_data(grouped, stream=True)
    probs = lambda data: checkpoint_probs(tiny / 'model' / 'best.pt', data, data['val'])
    assert np.array_equal(probs(streamed), probs(held))
    monkeypatch.setattr(references, 'sequence_chunks', partial(sequence_chunks, chunk_rows=16))   # several chunks of the tiny file
    episodes = read_truth(tiny / 'episodes.parquet')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # no K4 among the tiny market's fitting rows
        for fit in (lambda d: lightgbm_baseline(d, k4_weight=RECIPE.k4_weight, seed=0, rounds=20),
                    lambda d: precursor_baseline(d, k4_weight=RECIPE.k4_weight)):
            assert np.array_equal(fit(streamed)['probs'], fit(held)['probs'])
    a, b = (observable_model(d, d['val'], d['train'], episodes) for d in (streamed, held))
    assert np.array_equal(a['score'], b['score']) and np.array_equal(a['ev'], b['ev'])


def test_predictions_scored_a_chunk_at_a_time_equal_the_whole_array(grouped, tiny, tmp_path):
    best = tiny / 'model' / 'best.pt'
    ck = load_checkpoint(best)
    net, calibration = model_from_checkpoint(ck), checkpoint_calibration(ck, str(best))
    X, mask, meta = read_sequences(grouped)
    chunked, chunked_meta = score_file(net, grouped, ck['scaler'], 8, calibration=calibration, chunk_rows=20)   # chunks of 16
    assert np.array_equal(chunked, batch_probs(net, X, mask, ck['scaler'], 8, calibration=calibration))
    preds = predict(best, grouped, tmp_path / 'p.parquet', provenance_check=False)
    whole = prediction_table(meta, batch_probs(net, X, mask, ck['scaler'], calibration=calibration))
    pd.testing.assert_frame_equal(preds.drop(columns='sequence_dates'), whole.drop(columns='sequence_dates'))
    assert np.array_equal(np.stack(preds['sequence_dates']), np.stack(whole['sequence_dates']))
