"""The papermill pipeline: the shared tiny run (every stage, under MPLBACKEND=Agg), same seed same results, parameters
reaching notebooks, failures naming the cell, resume, the run lock, flags.

The pipeline's own machinery (parameters, failures, resume, the lock) is exercised on *lean* stage notebooks: each stage
notebook cut to its import cells, its `parameters` cell and the one cell that makes its artifact, so those tests run
the stages' real code in seconds without executing the full notebooks a third time (`nbdev_test` and the tiny run are
the two executions of each notebook per `make test`)."""
import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest
import torch

import k4_nbdev.pipeline as pipeline
from k4_nbdev.core import fingerprint
from k4_nbdev.data import build_store, write_store, synthetic_market
from k4_nbdev.core import LOCK_FILE
from k4_nbdev.pipeline import ARTIFACTS, STAGES, StageError, nbs_dir, pipeline_cli, run_pipeline, stage_parameters
from k4_nbdev.scoring import load_checkpoint
from k4_nbdev.testing import standalone_inputs

EXE = Path(sys.executable).parent / 'k4-pipeline'


# --- the shared tiny run ----------------------------------------------------------------------------------------------
def images(nb_path):
    "Image outputs stored in an executed notebook."
    nb = json.loads(Path(nb_path).read_text())
    return sum(any(k.startswith('image/') for k in o.get('data', {})) for c in nb['cells'] for o in c.get('outputs', []))


def test_tiny_run_writes_every_artifact(tiny_run):
    run_dir = Path(tiny_run['run_dir'])
    assert [s for s, v in tiny_run['stages'].items() if v['status'] == 'done'] == STAGES
    for stage in STAGES:
        nb = json.loads((run_dir / 'notebooks' / f'{stage}.ipynb').read_text())
        errors = [o for c in nb['cells'] for o in c.get('outputs', []) if o.get('output_type') == 'error']
        assert not errors
    record = json.loads((run_dir / 'run.json').read_text())
    assert record['params']['scale'] == 'tiny' and record['versions']['torch']
    assert record['fingerprints']['ohlcv'] == fingerprint(run_dir / 'ohlcv')
    assert (run_dir / 'synthetic_ticker.png').stat().st_size > 10_000
    for artifact in ARTIFACTS.values():
        assert record['fingerprints'][artifact] == fingerprint(run_dir / artifact)
    assert not (run_dir / LOCK_FILE).exists()                      # released on success


def test_figures_survive_mplbackend_agg(tiny_run):
    "The shared run is made under MPLBACKEND=Agg, as on a headless server: the kernels still draw inline."
    for stage in ['00_data', '01_patterns', '02_sequences', '05_train', '06_predict', '07_validate']:
        assert images(Path(tiny_run['run_dir']) / 'notebooks' / f'{stage}.ipynb') >= 1, stage


def test_every_stage_declares_output_dir():
    for stage in ARTIFACTS: assert 'output_dir' in stage_parameters(stage)


def test_same_seed_same_results(tiny_run, tiny, tmp_path, monkeypatch):
    """The pipeline's market, snapshots and sequences equal the stage functions' own for the same seed, and its train stage
    equals the same notebook run alone on those inputs (`nbdev_test`'s run in `make test`, K4_TEST_STANDALONE): same
    metrics, same weights. Both on one torch thread (OMP_NUM_THREADS=1, as `make test` runs them): float32 sums taken
    in another order differ at 1e-6."""
    run = Path(tiny_run['run_dir'])
    assert fingerprint(run / 'ohlcv') == fingerprint(tiny / 'ohlcv')
    for name in ['snapshots.parquet', 'sequences.parquet']:
        pd.testing.assert_frame_equal(pd.read_parquet(run / name), pd.read_parquet(tiny / name))
    given = os.environ.get('K4_TEST_STANDALONE')
    if given: alone = Path(given).resolve() / '05_train'
    else:   # the notebook run alone on the shared inputs, as nbdev_test runs it
        alone = standalone_inputs(tmp_path / '05_train', 'sequences.parquet', shared=tiny)
        monkeypatch.setenv('OMP_NUM_THREADS', '1')                 # the kernel's torch threads, as the tiny run's
        pm.execute_notebook(str(nbs_dir() / '05_train.ipynb'), str(tmp_path / 'alone.ipynb'), parameters={'output_dir': str(alone)},
                            cwd=str(nbs_dir()), kernel_name='python3', progress_bar=False)
    a, b = (pd.read_csv(d / 'model_comparison.csv', index_col=0).drop(columns='seconds') for d in (run, alone))
    pd.testing.assert_frame_equal(a, b, rtol=1e-6)
    w1, w2 = (load_checkpoint(d / 'model' / 'best.pt')['state_dict'] for d in (run, alone))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


# --- the pipeline's machinery, on lean stage notebooks -------------------------------------------------------------------
STAGE_CELL = {'00_data': 'store = build_store(output_dir', '01_patterns': '= build_snapshots(output_dir',
              '02_sequences': 'summary = build_sequences(snapshots_path'}


def only_imports(source:str) -> bool:
    try: body = ast.parse(source).body
    except SyntaxError: return False
    return bool(body) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body)


@pytest.fixture(scope='session')
def lean_nbs(tmp_path_factory):
    "Every stage notebook cut to its module's names, its import cells, its `parameters` cell and (data, patterns, sequences) the cell that runs the stage."
    folder = tmp_path_factory.mktemp('lean_nbs')
    for stage in STAGES:
        nb = nbformat.read(nbs_dir() / f'{stage}.ipynb', as_version=4)
        keep = lambda c: c.cell_type == 'code' and ('parameters' in c.metadata.get('tags', []) or only_imports(c.source)
                                                     or (stage in STAGE_CELL and STAGE_CELL[stage] in c.source))
        module = re.search(r'^#\|\s*default_exp\s+(\w+)', '\n'.join(c.source for c in nb.cells), re.M)
        own = [nbformat.v4.new_code_cell(f'from k4_nbdev.{module.group(1)} import *')] if module else []   # what the notebook defines
        nb.cells = own + [c for c in nb.cells if keep(c)]
        assert stage not in STAGE_CELL or any(STAGE_CELL[stage] in c.source for c in nb.cells), f"{stage}: its stage cell moved"
        nbformat.write(nb, folder / f'{stage}.ipynb')
    return folder


@pytest.fixture
def lean(lean_nbs, monkeypatch):
    "The pipeline runs the lean notebooks in this process."
    monkeypatch.setattr(pipeline, 'nbs_dir', lambda: lean_nbs)
    return lean_nbs


def lean_cli(lean_nbs:Path, *argv) -> list:
    "The command line of `k4-pipeline argv...` running the lean notebooks in a process of its own."
    code = f"import sys, pathlib, k4_nbdev.pipeline as p; p.nbs_dir = lambda: pathlib.Path({str(lean_nbs)!r}); p.pipeline_cli(sys.argv[1:])"
    return [sys.executable, '-c', code, *map(str, argv)]


def test_parameters_reach_the_notebook(lean, tmp_path, tiny):
    other = run_pipeline('seed1', tmp_path, params={'scale': 'tiny', 'seed': 1}, stages=['00_data'], verbose=False)
    assert other['fingerprints']['ohlcv'] != fingerprint(tiny / 'ohlcv')                  # seed 0's market...
    assert other['fingerprints']['ohlcv'] == fingerprint(build_store(tmp_path / 'lib', 'synthetic', 'tiny', 1))   # ...and seed 1's
    nb = (Path(other['run_dir']) / 'notebooks' / '00_data.ipynb').read_text()
    assert 'seed = 1' in nb


def test_failure_names_notebook_and_cell_then_resume(lean, tmp_path):
    store = tmp_path / 'store'   # does not exist yet: the data stage must fail
    with pytest.raises(StageError) as e:
        run_pipeline('broken', tmp_path, params={'data_source': str(store)}, stages=['00_data'], verbose=False)
    msg = str(e.value)
    assert '00_data' in msg and 'cell' in msg and 'does not exist' in msg
    record = json.loads((tmp_path / 'broken' / 'run.json').read_text())
    assert record['stages']['00_data']['status'] == 'failed'
    assert not (tmp_path / 'broken' / LOCK_FILE).exists()          # released on failure too
    write_store(synthetic_market(3, 300, seed=0), store)
    done = run_pipeline('broken', tmp_path, params={'data_source': str(store)}, stages=['00_data'], resume=True,
                        verbose=False)
    assert done['stages']['00_data']['status'] == 'done'
    with pytest.raises(ValueError, match='differ'):
        run_pipeline('broken', tmp_path, params={'data_source': str(store), 'seed': 5}, stages=['00_data'], resume=True,
                     verbose=False)


def test_cli_reports_failure(lean_nbs, tmp_path):
    r = subprocess.run(lean_cli(lean_nbs, '--name', 'x', '--runs-root', tmp_path, '--data-source', tmp_path / 'nope'),
                       capture_output=True, text=True)
    assert r.returncode == 1 and '00_data' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    hint = r.stderr.strip().splitlines()[-1]
    assert hint == (f"Fix the cause, then continue with: k4-pipeline --name x --runs-root {tmp_path} "
                    f"--data-source {tmp_path / 'nope'} --resume")
    r = subprocess.run([str(EXE), '--scale', 'huge'], capture_output=True, text=True)   # the installed console script
    assert r.returncode == 2 and 'huge' in r.stderr


@pytest.fixture(scope='module')
def lean_run(lean_nbs, tmp_path_factory):
    "A run folder of the lean data, pattern and sequence stages (tiny market, seed 1); the resume tests damage and repair it."
    root = tmp_path_factory.mktemp('lean_run')
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, 'nbs_dir', lambda: lean_nbs)
        run_pipeline('agg', root, params={'scale': 'tiny', 'seed': 1}, stages=STAGES[:3], verbose=False)
    return root / 'agg'


@pytest.mark.parametrize('damage', ['deleted', 'changed'])
def test_resume_runs_again_a_stage_whose_artifact_is_gone_or_changed(lean, lean_run, damage, capsys):
    snapshots = lean_run / 'snapshots.parquet'
    recorded = json.loads((lean_run / 'run.json').read_text())['fingerprints']['snapshots.parquet']
    if damage == 'deleted': snapshots.unlink()
    else: snapshots.write_bytes(b'not the snapshots the stage wrote')
    record = run_pipeline('agg', lean_run.parent, params={'scale': 'tiny', 'seed': 1}, stages=['00_data', '01_patterns'], resume=True)
    out = capsys.readouterr().out
    assert '00_data: done earlier, skipped (resume)' in out
    why = 'is missing' if damage == 'deleted' else 'changed since it was written'
    assert f'01_patterns: its artifact snapshots.parquet {why}: running it again' in out
    assert fingerprint(snapshots) == recorded == record['fingerprints']['snapshots.parquet']   # the same seed rebuilt it
    assert '02_sequences' not in record['stages']                  # built from the old snapshots: no longer "done"


def test_a_second_run_of_the_same_folder_is_refused_and_a_dead_runs_lock_is_taken_over(lean, tmp_path):
    "A live run owns its folder (`folder_lock`, held by a process of its own here): `k4-pipeline` on it is refused in one line."
    hold = f"import pathlib, time; from k4_nbdev.core import folder_lock\nwith folder_lock(pathlib.Path({str(tmp_path / 'busy')!r})): time.sleep(600)"
    first = subprocess.Popen([sys.executable, '-c', hold], start_new_session=True)
    lock = tmp_path / 'busy' / LOCK_FILE
    try:
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert time.time() < deadline and first.poll() is None, 'the first run never took its lock'
            time.sleep(0.2)
        second = subprocess.run([str(EXE), '--name', 'busy', '--runs-root', str(tmp_path), '--scale', 'tiny'],
                                capture_output=True, text=True)
        assert second.returncode == 1 and 'Traceback' not in second.stderr, second.stderr
        assert second.stderr.strip() == (f"k4-pipeline: {tmp_path / 'busy'} is in use by a live run (process "
                                         f"{first.pid}, lock {lock}): wait for it to end, or write somewhere else "
                                         "(the pipeline: another --name)")
    finally:
        os.killpg(first.pid, signal.SIGKILL)                       # the first run dies without cleaning up
        first.wait()
    assert lock.read_text().strip() == str(first.pid)             # ...leaving its lock file behind
    record = run_pipeline('busy', tmp_path, params={'scale': 'tiny'}, stages=['00_data'], verbose=False)
    assert record['stages']['00_data']['status'] == 'done' and not lock.exists()


# --- flags refused before any stage ------------------------------------------------------------------------------------
def cli_error(argv, capsys):
    "Run k4-pipeline expecting a one-line user error before any stage; return the line."
    with pytest.raises(SystemExit) as e: pipeline_cli([str(a) for a in argv])
    assert isinstance(e.value.code, str) and e.value.code.startswith('k4-pipeline: ') and '\n' not in e.value.code
    assert '[1/' not in capsys.readouterr().out                    # no stage started
    return e.value.code


def test_unknown_parameter_is_an_error_listing_the_stages_parameters(tmp_path, capsys):
    line = cli_error(['--name', 'x', '--runs-root', tmp_path, '-p', 'epoch', '3'], capsys)
    assert "'epoch' (-p epoch)" in line and '05_train: ' in line and 'epochs' in line and 'calibration_tables' in line
    assert not (tmp_path / 'x').exists()
    line = cli_error(['--name', 'x', '--runs-root', tmp_path, '-p', 'epochs'], capsys)
    assert '-p takes NAME VALUE pairs' in line


@pytest.mark.parametrize('name', ['../escaped', 'a/b', '/tmp/k4-absolute', '..', '.'])
def test_run_names_cannot_escape_the_runs_root(tmp_path, capsys, name):
    root = tmp_path / 'runs'
    line = cli_error(['--name', name, '--runs-root', root, '--scale', 'tiny'], capsys)
    assert line.startswith(f'k4-pipeline: --name must be a plain folder name') and repr(name) in line
    assert not root.exists() and not (tmp_path / 'escaped').exists()


@pytest.mark.parametrize('flag,value', [('--split-ratio', '1.5'), ('--split-ratio', '0'), ('--epochs', '0'),
                                        ('--batch-size', '0'), ('--seed', '-1'),
                                        ('-p epochs', '0'), ('-p split_ratio', '2'), ('-p batch_size', 'abc')])
def test_bad_flag_values_are_refused_before_the_first_stage(tmp_path, capsys, flag, value):
    line = cli_error(['--name', 'x', '--runs-root', tmp_path, '--scale', 'tiny', *flag.split(), value], capsys)
    knob = flag.split()[-1].lstrip('-').replace('-', '_')
    assert line.startswith(f"k4-pipeline: --{knob.replace('_', '-')} (or -p {knob}) must be ") and value in line
    assert not (tmp_path / 'x').exists()


def test_the_run_folder_may_not_be_the_data_source(tmp_path, capsys):
    store = tmp_path / 'x'
    write_store(synthetic_market(2, 300, seed=0), store)
    before = fingerprint(store)
    line = cli_error(['--name', 'x', '--runs-root', tmp_path, '--data-source', store], capsys)
    assert f'--data-source {store}' in line and 'overwrite' in line
    assert fingerprint(store) == before
