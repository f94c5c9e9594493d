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
