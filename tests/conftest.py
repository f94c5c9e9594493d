"Shared fixtures: one torch thread for the tests, one tiny pipeline run per session for the pipeline and docs tests, and a tiny trained run folder."
import pytest
import torch
from helpers import trained_run
from k4_nbdev.pipeline import run_pipeline


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
    "A tiny-scale pipeline run of every stage, in a temporary runs folder."
    root = tmp_path_factory.mktemp('runs')
    record = run_pipeline('tiny', root, params={'scale': 'tiny'}, verbose=False)
    return record


@pytest.fixture(scope='session', autouse=True)
def one_torch_thread():
    "The tests score tiny batches: one torch thread avoids oversubscription stalls on a busy 2-core machine."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A tiny run folder: synthetic store, snapshots, sequences and a one-epoch small model; (folder, best.pt)."
    folder = tmp_path_factory.mktemp('trained_run')
    with pytest.warns(UserWarning, match='no K4'):
        best = trained_run(folder)
    return folder, best
