"Past one machine: --scheduler dask / tcp://host:port gives the same bytes as the serial path; bad values and a missing Dask are one line."
import pickle
import subprocess
import sys

import pandas as pd
import pytest

from k4_nbdev.core import SCALE_EXTRA, check_scheduler
from k4_nbdev.data import StoreFrames, read_store
from k4_nbdev.patterns import build_snapshots, market_snapshots, patterns_cli
from k4_nbdev.sequences import (SequenceInputError, build_sequences, build_sequences_cli, iter_sequences, write_sequences,
                                write_sequences_in_parts)
from k4_nbdev.testing import exit_of

distributed = pytest.importorskip('distributed', reason="the `scale` extra (Dask) is not installed")


@pytest.fixture(scope='module')
def cluster():
    "One 2-worker local Dask cluster for the module; the tests reach it by its tcp:// address (the remote path)."
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


@pytest.fixture(scope='module')
def inputs(tiny):
    "The shared tiny market's snapshots and store, and the sequences file the serial builder made from them."
    return tiny / 'snapshots.parquet', tiny / 'ohlcv', tiny / 'sequences.parquet'


def leftovers(folder): return [p.name for p in folder.iterdir() if '.parts.' in p.name]


def test_dask_sequences_are_byte_identical(cluster, inputs, tmp_path):
    snaps, store, serial = inputs
    summary = build_sequences(snaps, store, tmp_path / 'dask.parquet', workers=2, progress=False, scheduler=cluster)
    assert (tmp_path / 'dask.parquet').read_bytes() == serial.read_bytes()
    assert summary['n_sequences'] == len(pd.read_parquet(snaps)) and leftovers(tmp_path) == []


def test_parts_keep_row_group_boundaries(cluster, inputs, tmp_path):
    "Many parts and small row groups: the flushes of `write_sequences` fall where the serial ones do."
    snaps, store, _ = inputs
    rows, frames = pd.read_parquet(snaps).sample(frac=1, random_state=3), read_store(store)
    write_sequences(iter_sequences(frames, rows, progress=False), tmp_path / 'serial.parquet', {}, rows_per_group=7)
    n = write_sequences_in_parts(store, rows, tmp_path / 'parts.parquet', {}, cluster, workers=2, progress=False, chunks=5,
                                 rows_per_group=7)
    assert n == len(rows) and (tmp_path / 'parts.parquet').read_bytes() == (tmp_path / 'serial.parquet').read_bytes()
    assert leftovers(tmp_path) == []


def test_a_failing_worker_leaves_no_file_and_no_parts(cluster, inputs, tmp_path):
    snaps, store, _ = inputs
    rows = pd.read_parquet(snaps)
    rows.loc[len(rows) - 1, 'snapshot_date'] += pd.offsets.Week(weekday=5)   # a Saturday: the worker's check refuses it
    with pytest.raises(SequenceInputError, match='not a trading day'):
        write_sequences_in_parts(store, rows, tmp_path / 'never.parquet', {}, cluster, workers=2, progress=False, chunks=3)
    assert list(tmp_path.iterdir()) == []


def test_cli_scheduler_dask_starts_a_local_cluster(inputs, tmp_path):
    snaps, store, serial = inputs
    out = tmp_path / 'cli.parquet'
    status, _ = exit_of(build_sequences_cli, ['--input', str(snaps), '--ohlcv', str(store), '--output', str(out),
                                              '--workers', '2', '--scheduler', 'dask'])
    assert status == 0 and out.read_bytes() == serial.read_bytes() and leftovers(tmp_path) == []


def test_dask_patterns_are_the_same_rows(cluster, inputs, tmp_path):
    "The patterns stage on Dask: the same snapshots and patterns, row for row (and byte for byte: same store, same metadata)."
    snaps, store, _ = inputs
    build_snapshots(tmp_path, store, workers=2, progress=False, scheduler=cluster)
    for name in ('snapshots.parquet', 'patterns.parquet'):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name), pd.read_parquet(snaps.parent / name))
        assert (tmp_path / name).read_bytes() == (snaps.parent / name).read_bytes(), name


def test_dask_pattern_workers_read_their_tickers_from_the_store(cluster, inputs):
    "A store's lazy view travels as file names, not bars: the workers read the frames, and the rows are the serial ones."
    snaps, store, _ = inputs
    lazy = StoreFrames(store)
    assert len(pickle.dumps(lazy.only(lazy.tickers[:2]))) < 2000 < len(pickle.dumps(read_store(store, lazy.tickers[:2])))
    patterns, snapshots = market_snapshots(lazy, workers=2, progress=False, scheduler=cluster)
    pd.testing.assert_frame_equal(snapshots, pd.read_parquet(snaps))
    pd.testing.assert_frame_equal(patterns, pd.read_parquet(snaps.parent / 'patterns.parquet'))


@pytest.mark.parametrize('value', ['threads', 'Dask', 'http://host:8786', 'tcp://host', 'tcp://host:port', ''])
def test_bad_scheduler_is_one_line(inputs, tmp_path, value):
    snaps, store, _ = inputs
    status, message = exit_of(build_sequences_cli, ['--input', str(snaps), '--ohlcv', str(store),
                                                    '--output', str(tmp_path / 'x.parquet'), '--scheduler', value])
    assert status == 1 and '\n' not in message and message.startswith("k4-build-sequences: --scheduler must be"), message
    assert not (tmp_path / 'x.parquet').exists()


def test_k4_patterns_bad_scheduler_is_one_line(inputs, tmp_path):
    _, store, _ = inputs
    status, message = exit_of(patterns_cli, ['--ohlcv', str(store), '--output', str(tmp_path / 's.parquet'), '--scheduler', 'thread'])
    assert status == 1 and message.startswith("k4-patterns: --scheduler must be") and '\n' not in message, message
    assert list(tmp_path.iterdir()) == []


def test_pipeline_refuses_a_bad_scheduler_before_any_stage(tmp_path):
    from k4_nbdev.pipeline import pipeline_cli
    status, message = exit_of(pipeline_cli, ['--runs-root', str(tmp_path), '-p', 'scheduler', 'threads'])
    assert status == 1 and '-p scheduler must be' in message and '\n' not in message, message
    assert list(tmp_path.iterdir()) == []


def test_without_dask_the_default_works_and_dask_is_one_line(inputs, tmp_path):
    "With dask hidden: the default path runs (and imports no Dask); --scheduler dask ends in one line naming the extra."
    snaps, store, serial = inputs
    code = ("import sys\n"
            "class Hide:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('dask', 'distributed'):\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "from k4_nbdev.sequences import build_sequences_cli\n"
            f"args = ['--input', {str(snaps)!r}, '--ohlcv', {str(store)!r}, '--workers', '2']\n"
            f"build_sequences_cli(args + ['--output', {str(tmp_path / 'default.parquet')!r}])\n"
            "assert not {'dask', 'distributed'} & set(sys.modules), 'the default path imported Dask'\n"
            f"build_sequences_cli(args + ['--output', {str(tmp_path / 'dask.parquet')!r}, '--scheduler', 'dask'])\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and SCALE_EXTRA in lines[0] and lines[0].startswith('k4-build-sequences: --scheduler dask'), r.stderr
    assert (tmp_path / 'default.parquet').read_bytes() == serial.read_bytes()
    assert not (tmp_path / 'dask.parquet').exists()


def test_check_scheduler_accepts_the_three_forms():
    assert [check_scheduler(s) for s in ('processes', 'dask', 'tcp://10.0.0.5:8786', 'tcp://sched.example.org:8786')] == \
           ['processes', 'dask', 'tcp://10.0.0.5:8786', 'tcp://sched.example.org:8786']


def test_unreachable_scheduler_is_one_line_and_writes_nothing(inputs, tmp_path):
    "An address where no scheduler answers: one line naming --scheduler and the address, no output, no parts."
    snaps, store, _ = inputs
    env_timeout = "import dask; dask.config.set({'distributed.comm.timeouts.connect': '2s'}); "
    run = subprocess.run([sys.executable, '-c', env_timeout + 'from k4_nbdev.sequences import build_sequences_cli; build_sequences_cli()',
                          '--input', str(snaps), '--ohlcv', str(store), '--output', str(tmp_path / 'seq.parquet'),
                          '--scheduler', 'tcp://127.0.0.1:1'], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.count('\n') == 1, run.stderr
    assert '--scheduler tcp://127.0.0.1:1: no Dask scheduler answers there' in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# The market generator and the live scan on the same schedulers (issue 15, item 1)

def test_dask_market_store_is_byte_identical(cluster, inputs, tmp_path):
    "The synthetic store and its answer key, written chunk by chunk on the cluster or a pool, are the serial bytes."
    from k4_nbdev.core import fingerprint
    from k4_nbdev.data import SCALES, TRUTH_FILE, build_store, write_synthetic_store
    snaps, store, _ = inputs   # written by the serial `build_store` (tiny, seed 0)
    serial_truth = (snaps.parent / TRUTH_FILE).read_bytes()
    assert build_store(tmp_path / 'run', 'synthetic', 'tiny', 0, scheduler=cluster, workers=2) == tmp_path / 'run' / 'ohlcv'
    assert fingerprint(tmp_path / 'run' / 'ohlcv') == fingerprint(store)
    assert (tmp_path / 'run' / TRUTH_FILE).read_bytes() == serial_truth
    for name, scheduler in [('dask', cluster), ('pool', 'processes')]:   # 3 jobs of <= 3 tickers
        truth = write_synthetic_store(tmp_path / name, **SCALES['tiny'], seed=0, scheduler=scheduler, workers=2, chunk=3)
        assert fingerprint(tmp_path / name) == fingerprint(store), name
        truth.to_parquet(tmp_path / f'{name}.parquet', index=False)
        assert (tmp_path / f'{name}.parquet').read_bytes() == serial_truth, name
        assert not [p.name for p in (tmp_path / name).iterdir() if p.name.startswith('.')], 'temporary files left'


def test_dask_scan_is_identical(cluster, trained, tmp_path):
    "The live scan with its per-ticker part on the cluster: the serial table, attrs and written file."
    from k4_nbdev.predict import scan, scan_cli
    folder, best = trained
    day = pd.read_parquet(folder / 'snapshots.parquet')['snapshot_date'].max()
    for as_of in (day, None):
        serial = scan(folder / 'ohlcv', best, as_of)
        dask = scan(folder / 'ohlcv', best, as_of, workers=2, scheduler=cluster)
        pd.testing.assert_frame_equal(dask, serial, check_exact=True)
        assert dask.attrs == serial.attrs
    assert len(scan(folder / 'ohlcv', best, day)), 'the scan on the last snapshot date lists its active patterns'
    args = ['--ohlcv', str(folder / 'ohlcv'), '--model', str(best), '--as-of', str(day.date())]
    scan_cli(args + ['--output', str(tmp_path / 'serial.csv'), '--workers', '1'])
    scan_cli(args + ['--output', str(tmp_path / 'dask.csv'), '--workers', '2', '--scheduler', cluster])
    assert (tmp_path / 'dask.csv').read_bytes() == (tmp_path / 'serial.csv').read_bytes()


@pytest.mark.parametrize('value', ['threads', 'tcp://host'])
def test_k4_scan_bad_scheduler_is_one_line(trained, tmp_path, value):
    from k4_nbdev.predict import scan_cli
    folder, best = trained
    status, message = exit_of(scan_cli, ['--ohlcv', str(folder / 'ohlcv'), '--model', str(best),
                                         '--output', str(tmp_path / 'scan.csv'), '--scheduler', value])
    assert status == 1 and message.startswith("k4-scan: --scheduler must be") and '\n' not in message, message
    assert list(tmp_path.iterdir()) == []


def test_k4_synthetic_market_bad_scheduler_is_one_line(tmp_path):
    from k4_nbdev.data import synthetic_market_cli
    status, message = exit_of(synthetic_market_cli, ['--output', str(tmp_path / 's'), '--n-tickers', '2', '--scheduler', 'thread'])
    assert status == 1 and message.startswith("k4-synthetic-market: --scheduler must be") and '\n' not in message, message
    assert list(tmp_path.iterdir()) == []
