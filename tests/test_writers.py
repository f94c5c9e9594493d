"""Nothing lost, part two: every case is the user's command; the inputs' bytes are checked unchanged and the output's
folder for leftovers. Each prints one line (exit 1) where it used to go on silently, mix outputs or leave parts behind."""
import os
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from k4_nbdev.core import fingerprint, read_metadata
from k4_nbdev.predict import predict_cli
from k4_nbdev.testing import exit_of


def doctored_checkpoint(best:Path, dst:Path, change) -> Path:
    "A copy of a checkpoint with its contents changed by `change(ckpt)`, written as torch writes it."
    ckpt = torch.load(best, map_location='cpu', weights_only=False)
    change(ckpt)
    torch.save(ckpt, dst)
    return dst


def leftovers(folder:Path) -> list:
    "Temporaries and partial outputs a command must not leave."
    return sorted(p.name for p in Path(folder).rglob('*') if '.tmp' in p.name or p.name.endswith('.lock'))


@pytest.mark.parametrize('case,change,says', [
    ('no calibration', lambda c: c.pop('calibration'), 'has no probability calibration'),
    ('temperature 1e-30', lambda c: c['calibration'].update(temperature=1e-30), 'calibration temperature is 1e-30'),
    ('calibration a string', lambda c: c.update(calibration='T=2'), 'probability calibration is a str'),
    ('bias of 5 classes', lambda c: c['calibration'].update(bias=[0.0] * 5), 'not 6 finite numbers'),
])
def test_k4_predict_refuses_a_checkpoint_whose_calibration_is_missing_or_wrong(trained, tmp_path, case, change, says):
    run, best = trained
    bad = doctored_checkpoint(best, tmp_path / 'best.pt', change)
    before = fingerprint(bad), fingerprint(run / 'sequences.parquet')
    code, msg = exit_of(predict_cli, ['--model', str(bad), '--sequences', str(run / 'sequences.parquet'),
                                      '--output', str(tmp_path / 'p.parquet')])
    assert code == 1 and msg.startswith('k4-predict: ') and says in msg and '\n' not in msg, (case, msg)
    assert str(bad) in msg
    assert (fingerprint(bad), fingerprint(run / 'sequences.parquet')) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best.pt']


def test_k4_predict_uncalibrated_scores_the_raw_softmax_and_says_so(trained, tmp_path):
    run, best = trained
    bare = doctored_checkpoint(best, tmp_path / 'best.pt', lambda c: c.pop('calibration'))
    code, msg = exit_of(predict_cli, ['--model', str(bare), '--sequences', str(run / 'sequences.parquet'),
                                      '--output', str(tmp_path / 'p.parquet'), '--uncalibrated'])
    assert code == 0, msg
    assert read_metadata(tmp_path / 'p.parquet')['calibration'] == 'none: raw softmax (--uncalibrated)'


from k4_nbdev.data import synthetic_market_cli
import k4_nbdev.data as data_module

MARKET = ['--n-tickers', '2', '--n-days', '300', '--workers', '1']


def market(path:Path, *flags) -> tuple:
    return exit_of(synthetic_market_cli, ['--output', str(path), *MARKET, *flags])


@pytest.fixture
def other_store(tmp_path):
    "A store this command did not write (a user's, or another tool's): four tickers."
    assert market(tmp_path / 'users', '--n-tickers', '4', '--seed', '7')[0] == 0
    (tmp_path / 'users' / '.k4-synthetic-market.json').unlink()
    return tmp_path / 'users'


@pytest.mark.parametrize('case', ['a store it did not write', 'a folder of other files', 'a link to a store'])
def test_k4_synthetic_market_never_replaces_what_it_did_not_write(other_store, tmp_path, case):
    target = {'a store it did not write': other_store, 'a folder of other files': tmp_path / 'notes',
              'a link to a store': tmp_path / 'link'}[case]
    if case == 'a folder of other files': target.mkdir(); (target / 'todo.txt').write_text('mine')
    if case == 'a link to a store': target.symlink_to(other_store, target_is_directory=True)
    before = fingerprint(other_store), sorted(p.name for p in tmp_path.iterdir())
    code, msg = market(target)
    assert code == 1 and '--output' in msg and 'did not write' in msg and '--force' in msg and '\n' not in msg, msg
    assert (fingerprint(other_store), sorted(p.name for p in tmp_path.iterdir())) == before
    assert not leftovers(tmp_path)


def test_k4_synthetic_market_replaces_its_own_store_whole_and_force_replaces_another(other_store, tmp_path):
    assert market(tmp_path / 'mine', '--n-tickers', '4')[0] == 0
    assert market(tmp_path / 'mine')[0] == 0                                 # its own store: replaced, not mixed
    assert sorted(p.name for p in (tmp_path / 'mine').glob('*.parquet')) == ['SYN0000.parquet', 'SYN0001.parquet']
    assert market(other_store, '--force')[0] == 0
    assert sorted(p.name for p in other_store.glob('*.parquet')) == ['SYN0000.parquet', 'SYN0001.parquet']
    assert not leftovers(tmp_path)


def test_k4_synthetic_market_episodes_never_replace_another_file(trained, tmp_path):
    run, _ = trained
    seqs = Path(shutil.copy(run / 'sequences.parquet', tmp_path / 'sequences.parquet'))
    before = fingerprint(seqs)
    code, msg = market(tmp_path / 'm', '--episodes', str(seqs))
    assert code == 1 and '--episodes' in msg and 'did not write' in msg, msg
    assert fingerprint(seqs) == before and not (tmp_path / 'm').exists() and not leftovers(tmp_path)
    assert market(tmp_path / 'm', '--episodes', str(tmp_path / 'e.parquet'))[0] == 0
    assert market(tmp_path / 'm', '--episodes', str(tmp_path / 'e.parquet'))[0] == 0     # its own answer key: replaced


def test_k4_synthetic_market_inside_a_store_is_refused(other_store):
    code, msg = market(other_store / 'inner')
    assert code == 1 and 'lies inside the OHLCV store' in msg, msg
    assert not (other_store / 'inner').exists()


def test_a_failing_market_writer_leaves_the_previous_state(tmp_path, monkeypatch):
    "A full disk half way through the tickers: no store appears, the previous one stays whole, no temporary is left."
    assert market(tmp_path / 'mine')[0] == 0
    before = fingerprint(tmp_path / 'mine')
    def full_disk(path, *a, **k):
        (Path(path) / 'SYN0000.parquet').write_bytes(b'half')
        raise OSError(28, 'No space left on device', str(Path(path) / 'SYN0001.parquet'))
    monkeypatch.setattr(data_module, 'write_synthetic_store', full_disk)
    for target in (tmp_path / 'mine', tmp_path / 'new'):
        code, msg = market(target, '--episodes', str(tmp_path / 'e.parquet'))
        assert code == 1 and 'no space left' in msg, msg
    assert fingerprint(tmp_path / 'mine') == before and not (tmp_path / 'new').exists()
    assert not (tmp_path / 'e.parquet').exists() and not leftovers(tmp_path)


import subprocess
import sys
import time

from k4_nbdev.core import LOCK_FILE
from k4_nbdev.evaluate import evaluate_cli
from k4_nbdev.testing import rewritten
from k4_nbdev.train import fit_model, load_training_data, train_cli


def test_k4_train_and_k4_evaluate_never_write_inside_an_ohlcv_store(trained, tmp_path):
    run, _ = trained
    store = Path(shutil.copytree(run / 'ohlcv', tmp_path / 'ohlcv'))
    before = fingerprint(store)
    for main, name in ((train_cli, 'k4-train'), (evaluate_cli, 'k4-evaluate')):
        code, msg = exit_of(main, ['--sequences', str(run / 'sequences.parquet'), '--output-dir', str(store / 'model')])
        assert code == 1 and msg.startswith(f'{name}: --output-dir') and 'lies inside the OHLCV store' in msg, msg
    assert fingerprint(store) == before


def test_k4_evaluate_never_replaces_an_earlier_evaluation(trained, tmp_path):
    run, _ = trained
    (tmp_path / 'ev').mkdir(); (tmp_path / 'ev' / 'evaluation.csv').write_text('fold,seed\n1,0\n')
    code, msg = exit_of(evaluate_cli, ['--sequences', str(run / 'sequences.parquet'), '--output-dir', str(tmp_path / 'ev')])
    assert code == 1 and 'did not write' in msg and '--force' in msg, msg
    assert (tmp_path / 'ev' / 'evaluation.csv').read_text() == 'fold,seed\n1,0\n'


@pytest.mark.parametrize('flags,says', [(['--folds', '3'], 'fold 1 ('), (['--k4-weights', '-5'], '--k4-weights must be positive')])
def test_k4_evaluate_checks_folds_and_weights_before_any_work(trained, tmp_path, flags, says):
    "The tiny market's first folds hold no K4: refused at the door, as is a negative K4 weight, not after a model trained."
    run, _ = trained
    code, msg = exit_of(evaluate_cli, ['--sequences', str(run / 'sequences.parquet'), '--output-dir', str(tmp_path / 'ev'), *flags])
    assert code == 1 and says in msg and '\n' not in msg, msg
    assert not (tmp_path / 'ev').exists()


def test_two_k4_train_on_one_folder_the_second_is_refused(trained, tmp_path):
    run, _ = trained
    hold = f"import pathlib, time; from k4_nbdev.core import folder_lock\nwith folder_lock(pathlib.Path({str(tmp_path / 'm')!r})): time.sleep(600)"
    first = subprocess.Popen([sys.executable, '-c', hold], start_new_session=True)
    try:
        deadline = time.time() + 60
        while not ((tmp_path / 'm' / LOCK_FILE).exists() and (tmp_path / 'm' / LOCK_FILE).read_text().strip() == str(first.pid)):
            assert time.time() < deadline and first.poll() is None, 'the first writer never took its lock'
            time.sleep(0.1)
        code, msg = exit_of(train_cli, ['--sequences', str(run / 'sequences.parquet'), '--output-dir', str(tmp_path / 'm'),
                                        '--epochs', '1', '--no-baselines', '--force'])
        assert code == 1 and f'is in use by a live run (process {first.pid}' in msg, msg
        assert sorted(p.name for p in (tmp_path / 'm').iterdir()) == [LOCK_FILE]
    finally:
        first.kill(); first.wait()


def test_k4_train_resumes_only_on_the_data_it_was_trained_on(trained, tmp_path):
    run, _ = trained
    data = load_training_data(run / 'sequences.parquet')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fit_model(data, tmp_path / 'm', epochs=2, until_epoch=1, model_size='small', verbose=False)   # a run killed after epoch 1
    other = rewritten(run / 'sequences.parquet', tmp_path / 'other.parquet', lambda X, m, meta: X.__setitem__((0, -1, 0), X[0, -1, 0] + 1))
    code, msg = exit_of(train_cli, ['--sequences', str(other), '--output-dir', str(tmp_path / 'm'), '--epochs', '2',
                                    '--resume', str(tmp_path / 'm' / 'last.pt'), '--no-baselines'])
    assert code == 1 and 'was trained on the sequences' in msg and 'resume only on the same data' in msg, msg


def test_k4_train_clears_the_maps_a_killed_training_left(trained, tmp_path):
    "Killed while writing its maps (a temporary), or while training on them (a torchrun job's per-machine maps): the next run clears both."
    run, _ = trained
    dead = tmp_path / 'm' / 'scaled_inputs.tmp-999999999'
    dead.mkdir(parents=True); (dead / 'fit.npy').write_bytes(b'half')
    for name in ('scaled_inputs', 'scaled_inputs.node0', 'scaled_inputs.node1'):
        (tmp_path / 'm' / name).mkdir(); (tmp_path / 'm' / name / 'fit.npy').write_bytes(b'maps')
    (tmp_path / 'm' / 'last.pt').write_bytes(b'')    # the folder is a model folder of an earlier run
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        code, msg = exit_of(train_cli, ['--sequences', str(run / 'sequences.parquet'), '--output-dir', str(tmp_path / 'm'),
                                        '--epochs', '1', '--no-baselines'])
    assert code == 0, msg
    assert not dead.exists() and not leftovers(tmp_path) and not list((tmp_path / 'm').glob('scaled_inputs*'))


from k4_nbdev.patterns import check_ohlcv_cli


def csv_store(folder:Path, dates) -> Path:
    folder.mkdir(parents=True)
    n = len(dates)
    pd.DataFrame({'date': dates, 'open': [10.0] * n, 'high': [10.5] * n, 'low': [9.5] * n, 'close': [10.0] * n,
                  'volume': [1000] * n}).to_csv(folder / 'AAA.csv', index=False)
    return folder


def test_dates_that_read_two_ways_are_refused_with_both_readings(tmp_path):
    store = csv_store(tmp_path / 's', ['01/02/2024', '01/03/2024', '01/04/2024'])
    before = fingerprint(store)
    code, msg = exit_of(check_ohlcv_cli, [str(store)])
    assert code == 1 and 'read two ways' in msg and '2024-01-02 (month first) or 2024-02-01 (day first)' in msg, msg
    assert fingerprint(store) == before


def test_integer_dates_are_read_as_yyyymmdd_not_as_1970(tmp_path, capsys):
    store = csv_store(tmp_path / 's', [20240102, 20240103, 20240104])
    code, msg = exit_of(check_ohlcv_cli, [str(store)])
    assert code == 0, msg
    assert '1 tickers, 3 valid bars' in capsys.readouterr().out


def test_a_checkpoint_the_disk_cannot_take_is_one_line_and_leaves_no_part(trained, tmp_path, monkeypatch):
    "torch's own error for a full disk becomes the one-line OS error of the project, naming the file; no temporary stays."
    run, _ = trained
    import k4_nbdev.scoring as scoring
    def full(obj, f, *a, **k):
        Path(f).write_bytes(b'PK half')
        raise RuntimeError('[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/3: file write failed')
    monkeypatch.setattr(scoring.torch, 'save', full)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        code, msg = exit_of(train_cli, ['--sequences', str(run / 'sequences.parquet'), '--output-dir', str(tmp_path / 'm'),
                                        '--epochs', '1', '--no-baselines'])
    assert code == 1 and msg.startswith('k4-train: ') and 'no space left on the device' in msg and '\n' not in msg, msg
    assert str(tmp_path / 'm') in msg and not leftovers(tmp_path)


from k4_nbdev.validate import validate_cli


def test_k4_validate_refuses_a_label_that_is_no_class(trained, tmp_path):
    run, best = trained
    code, _ = exit_of(predict_cli, ['--model', str(best), '--sequences', str(run / 'sequences.parquet'), '--output', str(tmp_path / 'p.parquet')])
    assert code == 0
    t = pq.read_table(tmp_path / 'p.parquet'); df = t.to_pandas()
    df.loc[df.index[-1], 'outcome_class'] = 9
    import pyarrow as pa
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(t.schema.metadata), tmp_path / 'bad.parquet')
    code, msg = exit_of(validate_cli, ['--predictions', str(tmp_path / 'bad.parquet'), '--output', str(tmp_path / 'r.md'),
                                       '--no-provenance-check', '--n-audit', '0'])
    assert code == 1 and 'outcome_class holds 1 values that are not a class 0–5' in msg and 'row ' in msg and '\n' not in msg, msg
    assert not (tmp_path / 'r.md').exists()


def test_k4_validate_refuses_predictions_whose_recorded_split_was_edited(trained, tmp_path):
    "An edited split date would score the training rows as validation; the model the predictions name says otherwise."
    run, best = trained
    assert exit_of(predict_cli, ['--model', str(best), '--sequences', str(run / 'sequences.parquet'), '--output', str(tmp_path / 'p.parquet')])[0] == 0
    t = pq.read_table(tmp_path / 'p.parquet')
    import json
    meta = json.loads(t.schema.metadata[b'k4_nbdev']); meta['split']['split_date'] = '2000-01-03'
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b'k4_nbdev': json.dumps(meta).encode()}), tmp_path / 'edited.parquet')
    code, msg = exit_of(validate_cli, ['--predictions', str(tmp_path / 'edited.parquet'), '--output', str(tmp_path / 'r.md'),
                                       '--no-provenance-check', '--n-audit', '0'])
    assert code == 1 and 'records the split date 2000-01-03' in msg and '--model' in msg, msg
    assert not (tmp_path / 'r.md').exists()


def test_a_checkpoint_without_its_scaler_is_named_not_a_bare_keyerror(trained, tmp_path):
    run, best = trained
    bad = doctored_checkpoint(best, tmp_path / 'best.pt', lambda c: c.pop('scaler'))
    code, msg = exit_of(predict_cli, ['--model', str(bad), '--sequences', str(run / 'sequences.parquet'), '--output', str(tmp_path / 'p.parquet')])
    assert code == 1 and str(bad) in msg and "lacks ['scaler']" in msg, msg


def test_the_pipelines_store_is_replaced_whole_never_mixed(tmp_path):
    "A run folder written again (another market) holds the new store alone: no ticker of the old one survives."
    from k4_nbdev.data import build_store
    store = build_store(tmp_path, 'synthetic', 'tiny', 0)
    (store / 'OLD0001.parquet').write_bytes((store / 'SYN0000.parquet').read_bytes())   # a ticker of an earlier market
    first = fingerprint(tmp_path / 'episodes.parquet')
    build_store(tmp_path, 'synthetic', 'tiny', 0)
    assert not (store / 'OLD0001.parquet').exists() and fingerprint(tmp_path / 'episodes.parquet') == first
    assert not leftovers(tmp_path)


def test_a_job_that_fails_in_a_dask_worker_is_one_line_without_dasks_log(trained, tmp_path):
    "A bad ticker found by a worker of a local Dask cluster: the project's one line, not the worker's 'Compute Failed' and traceback."
    pytest.importorskip('distributed')
    run, _ = trained
    store = Path(shutil.copytree(run / 'ohlcv', tmp_path / 'ohlcv'))
    bad = sorted(store.glob('*.parquet'))[3]
    f = pd.read_parquet(bad); f.loc[100, 'high'] = f.loc[100, 'low'] * 0.5; f.to_parquet(bad, index=False)
    exe = Path(sys.executable).parent / 'k4-patterns'
    r = subprocess.run([str(exe), '--ohlcv', str(store), '--output', str(tmp_path / 's.parquet'), '--scheduler', 'dask', '--workers', '2'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith('k4-patterns: OHLCV for ticker'), r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and 'Compute Failed' not in r.stderr and 'distributed' not in r.stderr
    assert not (tmp_path / 's.parquet').exists()


def test_two_k4_synthetic_market_on_one_store_the_second_is_refused(tmp_path):
    lock = tmp_path / '.m.lock'
    hold = f"import pathlib, time; from k4_nbdev.core import folder_lock\nwith folder_lock(pathlib.Path({str(tmp_path / 'm')!r}), {str(lock)!r}): time.sleep(600)"
    first = subprocess.Popen([sys.executable, '-c', hold], start_new_session=True)
    try:
        deadline = time.time() + 60
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert time.time() < deadline and first.poll() is None, 'the first writer never took its lock'
            time.sleep(0.1)
        code, msg = market(tmp_path / 'm')
        assert code == 1 and f'is in use by a live run (process {first.pid}' in msg, msg
        assert not (tmp_path / 'm').exists()
    finally:
        first.kill(); first.wait()
    assert market(tmp_path / 'm')[0] == 0 and not leftovers(tmp_path)   # the dead writer's lock is taken over


def test_k4_validate_names_a_predictions_file_that_is_not_parquet(tmp_path):
    (tmp_path / 'p.parquet').write_bytes(b'garbage')
    code, msg = exit_of(validate_cli, ['--predictions', str(tmp_path / 'p.parquet'), '--output', str(tmp_path / 'r.md')])
    assert code == 1 and msg == f"k4-validate: {tmp_path / 'p.parquet'} is not a parquet file (truncated or another format)", msg


def test_no_pattern_says_when_long_runs_were_discarded_as_flat_channels(monkeypatch):
    "Long enough runs, yet no pattern: the message names the discarded flat channels instead of a run length that contradicts it."
    import k4_nbdev.patterns as patterns
    monkeypatch.setattr(patterns, 'qualification_summary', lambda frames: pd.DataFrame(
        {'bars': [1000], 'qualifying bars': [120], 'longest qualifying run': [15]}, index=['SAMSUNG']))
    msg = patterns.no_pattern_message({'SAMSUNG': None})
    assert 'runs of 11 or more exist (the longest 15 bars)' in msg and 'channel without width' in msg, msg
    monkeypatch.setattr(patterns, 'qualification_summary', lambda frames: pd.DataFrame(
        {'bars': [1000], 'qualifying bars': [40], 'longest qualifying run': [6]}, index=['X']))
    assert 'the longest run of them is 6 bars and a pattern needs 11' in patterns.no_pattern_message({'X': None})


def test_a_relative_store_for_a_remote_dask_scheduler_is_refused_before_connecting(tmp_path, monkeypatch):
    pytest.importorskip('distributed')
    from k4_nbdev.patterns import patterns_cli
    monkeypatch.chdir(tmp_path)
    code, msg = exit_of(patterns_cli, ['--ohlcv', 'ohlcv', '--output', 's.parquet', '--scheduler', 'tcp://127.0.0.1:9'])
    assert code == 1 and msg.startswith('k4-patterns: --ohlcv ohlcv is a relative path') and 'absolute path' in msg, msg


def test_k4_pipeline_checks_workers_before_any_stage(tmp_path):
    from k4_nbdev.pipeline import pipeline_cli
    code, msg = exit_of(pipeline_cli, ['--name', 'r', '--runs-root', str(tmp_path), '--scale', 'tiny', '-p', 'workers', '0'])
    assert code == 1 and msg == 'k4-pipeline: --workers (or -p workers) must be a number, at least 1, got 0', msg
    assert not (tmp_path / 'r').exists()


@pytest.mark.parametrize('flag,says', [('--ohlcv', 'is not an OHLCV store'), ('--truth', 'lacks the columns')])
def test_k4_train_checks_what_it_reads_after_training_before_it(trained, tmp_path, flag, says):
    "The store and the answer key are read after the network trained: a wrong file is refused before, with nothing written."
    run, _ = trained
    code, msg = exit_of(train_cli, ['--sequences', str(run / 'sequences.parquet'), '--output-dir', str(tmp_path / 'm'),
                                    flag, str(run / 'sequences.parquet'), '--epochs', '1'])
    assert code == 1 and msg.startswith('k4-train: ') and says in msg, msg
    assert not (tmp_path / 'm').exists()
