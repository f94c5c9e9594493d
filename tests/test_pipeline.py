"The papermill pipeline: run folder, parameters reaching notebooks, failures naming the cell, resume."
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from k4_nbdev.data import fingerprint, write_store, synthetic_market
from k4_nbdev.pipeline import ARTIFACTS, STAGES, StageError, run_pipeline, stage_parameters
from k4_nbdev.train import load_checkpoint


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


def test_every_stage_declares_output_dir():
    for stage in ARTIFACTS: assert 'output_dir' in stage_parameters(stage)


def test_parameters_reach_the_notebook(tmp_path, tiny_run):
    other = run_pipeline('seed1', tmp_path, params={'scale': 'tiny', 'seed': 1}, stages=['00_data'], verbose=False)
    assert other['fingerprints']['ohlcv'] != tiny_run['fingerprints']['ohlcv']
    nb = (Path(other['run_dir']) / 'notebooks' / '00_data.ipynb').read_text()
    assert 'seed = 1' in nb


def test_failure_names_notebook_and_cell_then_resume(tmp_path):
    store = tmp_path / 'store'   # does not exist yet: the data stage must fail
    with pytest.raises(StageError) as e:
        run_pipeline('broken', tmp_path, params={'data_source': str(store)}, stages=['00_data'], verbose=False)
    msg = str(e.value)
    assert '00_data' in msg and 'cell' in msg and 'does not exist' in msg
    record = json.loads((tmp_path / 'broken' / 'run.json').read_text())
    assert record['stages']['00_data']['status'] == 'failed'
    write_store(synthetic_market(3, 300, seed=0), store)
    done = run_pipeline('broken', tmp_path, params={'data_source': str(store)}, stages=['00_data'], resume=True,
                        verbose=False)
    assert done['stages']['00_data']['status'] == 'done'
    with pytest.raises(ValueError, match='differ'):
        run_pipeline('broken', tmp_path, params={'data_source': str(store), 'seed': 5}, stages=['00_data'], resume=True,
                     verbose=False)


def test_cli_reports_failure(tmp_path):
    exe = Path(sys.executable).parent / 'k4-pipeline'
    r = subprocess.run([str(exe), '--name', 'x', '--runs-root', str(tmp_path), '--data-source', str(tmp_path / 'nope')],
                       capture_output=True, text=True)
    assert r.returncode == 1 and '00_data' in r.stderr and '--resume' in r.stderr
    r = subprocess.run([str(exe), '--scale', 'huge'], capture_output=True, text=True)
    assert r.returncode == 2 and 'huge' in r.stderr


def test_same_seed_same_results(tiny_run, tmp_path):
    "Two runs with the same seed: identical market, snapshots, sequences and metrics."
    again = run_pipeline('again', tmp_path, params={'scale': 'tiny'}, stages=STAGES[:STAGES.index('05_train') + 1],
                         verbose=False)
    first, second = Path(tiny_run['run_dir']), Path(again['run_dir'])
    assert again['fingerprints']['ohlcv'] == tiny_run['fingerprints']['ohlcv']
    for name in ['snapshots.parquet', 'sequences.parquet']:
        pd.testing.assert_frame_equal(pd.read_parquet(first / name), pd.read_parquet(second / name))
    a, b = (pd.read_csv(d / 'model_comparison.csv', index_col=0).drop(columns='seconds') for d in (first, second))
    pd.testing.assert_frame_equal(a, b, rtol=1e-6)
    w1, w2 = (load_checkpoint(d / 'model' / 'best.pt')['state_dict'] for d in (first, second))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
