"""Shared inputs, built once per test session and read by every test (every pytest-xdist worker included):
the tiny market's run folder up to a one-epoch model (`tiny`), the tiny pipeline run of every stage (`tiny_run`) and
its docs site (`tiny_site`). `make test` makes the run and the site with the README's own commands before pytest and
passes them in (K4_TEST_RUN, K4_TEST_SITE); run alone, pytest builds them once itself. A test that changes files
copies what it needs to its own tmp_path: the shared folders are checked unchanged at the end of the session."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from k4_nbdev.core import fingerprint
from k4_nbdev.docs import build_docs
from k4_nbdev.pipeline import STAGES
from k4_nbdev.testing import built_once, shared_run


def shared_root(tmp_path_factory) -> Path:
    "The folder every worker of this session shares: the session's base temp folder (its parent under pytest-xdist)."
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(scope='session', autouse=True)
def one_torch_thread():
    "The tests score tiny batches: one torch thread avoids oversubscription stalls on a busy 2-core machine."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def unchanged(folder:Path):
    "Yield `folder`, then fail the session if a test changed a byte of it (shared inputs are read-only)."
    before = fingerprint(folder)
    yield folder
    assert fingerprint(folder) == before, f"a test changed the shared folder {folder}: copy it to tmp_path before changing it"


@pytest.fixture(scope='session')
def tiny(tmp_path_factory):
    "The tiny synthetic market's run folder, seed 0: ohlcv/, episodes, snapshots, patterns, sequences, a one-epoch small model."
    yield from unchanged(shared_run(shared_root(tmp_path_factory) / 'tiny-0'))


@pytest.fixture(scope='session')
def trained(tiny):
    "(run folder, its best.pt): the `tiny` folder in the shape the predict and validate tests read."
    return tiny, tiny / 'model' / 'best.pt'


def pipeline_run(root:Path):
    "`k4-pipeline --name tiny --scale tiny` into `root` as `make test` runs it: MPLBACKEND=Agg (a headless server), one torch thread."
    exe = Path(sys.executable).parent / 'k4-pipeline'
    r = subprocess.run([str(exe), '--name', 'tiny', '--runs-root', str(root), '--scale', 'tiny'], capture_output=True, text=True,
                       env={**os.environ, 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
    "The run record (run.json) of a tiny pipeline run of every stage, seed 0: `make test`'s (K4_TEST_RUN) or one built here."
    given = os.environ.get('K4_TEST_RUN')
    run_dir = Path(given).resolve() if given else built_once(shared_root(tmp_path_factory) / 'pipeline', pipeline_run) / 'tiny'
    record = json.loads((run_dir / 'run.json').read_text())
    assert record['params']['scale'] == 'tiny' and record['params']['seed'] == 0, f"{run_dir} is not a tiny run with seed 0"
    assert [s for s, v in record['stages'].items() if v['status'] == 'done'] == STAGES, f"{run_dir} did not finish every stage"
    before = fingerprint(run_dir)
    yield record
    assert fingerprint(run_dir) == before, f"a test changed the shared run {run_dir}: copy it to tmp_path before changing it"


@pytest.fixture(scope='session')
def tiny_site(tiny_run, tmp_path_factory):
    "The docs site built from `tiny_run` with the offline renderer: `make test`'s (K4_TEST_SITE) or one built here."
    given = os.environ.get('K4_TEST_SITE')
    if given: site = Path(given).resolve()
    else:
        build = lambda d: build_docs(run_dir=tiny_run['run_dir'], out=d / 'site', renderer='smalldocs')
        site = built_once(shared_root(tmp_path_factory) / 'docs', build) / 'site'
    assert (site / 'index.html').exists(), f"{site} holds no built site"
    yield from unchanged(site)


@pytest.fixture
def site_copy(tiny_site, tmp_path):
    "A copy of the shared site that a test may change."
    return Path(shutil.copytree(tiny_site, tmp_path / 'site'))
