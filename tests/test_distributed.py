"Training on two gloo processes under torchrun reproduces a one-process run with the same global batch, and resumes under torchrun."
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from k4_nbdev.scoring import load_checkpoint
from k4_nbdev.train import fit_model, load_training_data, train_cli
from k4_nbdev.testing import exit_of

# Batch 7 over the tiny market's 20 fitting rows: global batches of 7, 7 and 6, so the two ranks' shards are
# 3 + 4, 3 + 4 and 3 + 3 rows and the loss factor N·Bᵣ/B (6/7, 8/7, 1) is exercised, not only the equal split.
# Dropout 0: the one-process run draws its dropout masks for the whole batch, each rank for its shard.
SETTINGS = ['--model-size', 'small', '--epochs', '2', '--batch-size', '7', '--dropout', '0', '--seed', '0', '--device', 'cpu']
WEIGHT_TOL = 5e-5   # measured 1-vs-2-process difference: 5.4e-6 (summation order of the gradient average); one AdamW step is 1e-3
LOSS_TOL = 1e-6     # relative, on the per-epoch losses and metrics of the history


@pytest.fixture(scope='module')
def sequences(tiny):
    "The shared tiny market's sequences.parquet (read-only), made by the stages' own functions."
    return tiny / 'sequences.parquet'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def torchrun(sequences, out, *extra, n=2):
    "`torchrun --nproc_per_node n -m k4_nbdev.train ...` as a subprocess; its output."
    exe = Path(sys.executable).parent / 'torchrun'
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    r = subprocess.run([str(exe), '--nproc_per_node', str(n), '--master_addr', '127.0.0.1', '--master_port', str(free_port()),
                        '-m', 'k4_nbdev.train', '--sequences', str(sequences), '--output-dir', str(out), *SETTINGS, *extra],
                       capture_output=True, text=True, env={**env, 'OMP_NUM_THREADS': '1'}, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=LOSS_TOL, abs_tol=LOSS_TOL)
    return a == b


def assert_same_run(one:Path, two:Path):
    "Same best epoch, weights within WEIGHT_TOL, and the same history (timings aside) within LOSS_TOL."
    for name in ('best.pt', 'last.pt'):
        a, b = load_checkpoint(one / name), load_checkpoint(two / name)
        assert a['state_dict'].keys() == b['state_dict'].keys()   # the plain network's keys: no DDP 'module.' prefix
        diff = max((a['state_dict'][k].float() - b['state_dict'][k].float()).abs().max().item() for k in a['state_dict'])
        assert diff < WEIGHT_TOL, f"{name}: weights differ by {diff:.2e}"
    assert load_checkpoint(one / 'best.pt')['epoch'] == load_checkpoint(two / 'best.pt')['epoch']
    h1, h2 = (json.loads((d / 'history.json').read_text()) for d in (one, two))
    assert len(h1) == len(h2)
    for r1, r2 in zip(h1, h2):
        assert r1.keys() == r2.keys()
        bad = {k: (r1[k], r2[k]) for k in r1 if k not in ('seconds', 'samples_per_s') and not close(r1[k], r2[k])}
        assert not bad, f"epoch {r1['epoch']}: {bad}"


def test_two_processes_match_one(sequences, tmp_path):
    with pytest.warns(UserWarning, match='no K4'):
        assert exit_of(train_cli, ['--sequences', str(sequences), '--output-dir', str(tmp_path / 'one'), *SETTINGS]) == (0, '')
    out = torchrun(sequences, tmp_path / 'two')
    assert out.count('Epoch 1/2') == 1 and out.count('checkpoint:') == 1   # rank 0 alone prints
    assert sorted(p.name for p in (tmp_path / 'two').glob('best_*.pt')).__len__() == 1   # and writes the timestamped copy
    assert_same_run(tmp_path / 'one', tmp_path / 'two')
    assert 'torch_ranks' in load_checkpoint(tmp_path / 'two' / 'last.pt')['rng']   # each rank's dropout stream, for --resume
    assert 'torch_ranks' not in load_checkpoint(tmp_path / 'one' / 'last.pt')['rng']   # a one-process checkpoint is as before


def test_resume_under_torchrun(sequences, tmp_path):
    "Interrupted after epoch 1 (in one process), resumed on two: the same model as one uninterrupted run."
    data = load_training_data(sequences)
    kw = dict(model_size='small', epochs=2, batch_size=7, dropout=0.0, seed=0, verbose=False, progress=False)
    with pytest.warns(UserWarning, match='no K4'):
        fit_model(data, tmp_path / 'full', **kw)
        fit_model(data, tmp_path / 'cut', until_epoch=1, **kw)
    torchrun(sequences, tmp_path / 'cut', '--resume', str(tmp_path / 'cut' / 'last.pt'))
    assert_same_run(tmp_path / 'full', tmp_path / 'cut')
