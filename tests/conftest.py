"Shared fixtures: one tiny pipeline run per test session, reused by the pipeline and docs tests."
import pytest
from k4_nbdev.pipeline import run_pipeline


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
    "A tiny-scale pipeline run of every stage, in a temporary runs folder."
    root = tmp_path_factory.mktemp('runs')
    record = run_pipeline('tiny', root, params={'scale': 'tiny'}, verbose=False)
    return record
