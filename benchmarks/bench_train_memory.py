"""Peak memory of training from arrays in memory and streamed through pre-scaled memory maps, on two sizes of file.

Each variant runs in a fresh subprocess: `load_training_data` (stream=False or True), then `fit_model` for one
epoch. The subprocess samples its own /proc/self/status every 5 ms and reports

* peak RSS (VmHWM, what `getrusage` calls ru_maxrss): everything resident, including the pages of the
  memory maps, which are file-backed page cache the kernel can drop and re-read when memory is short;
* peak anonymous RSS (RssAnon): memory only the process owns, which has to fit in RAM.

The files are the tiny synthetic market's sequences (made by the stages' own functions) repeated to N rows, in
row groups of 256: memory depends on N and the shapes, not on the values. With a million sequences the
in-memory path would need ~14 GB for X alone plus scaled copies; the streamed one, a chunk, a batch and the
page cache.

    python benchmarks/bench_train_memory.py [--sizes 4000 12000] [--batch-size 64]   # about 2.5 minutes on 2 cores
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from k4_nbdev.sequences import build_sequences
from k4_nbdev.testing import stage_inputs
from k4_nbdev.train import RECIPE

CHILD = r'''
import json, sys, threading, time, warnings
warnings.simplefilter('ignore')
def status():
    return {l.split(':')[0]: int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(('VmHWM', 'RssAnon', 'RssFile'))}
peak, done = {'RssAnon': 0, 'RssFile': 0}, threading.Event()
def sample():
    while not done.is_set():
        s = status(); peak.update({k: max(peak[k], s[k]) for k in peak}); time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
from k4_nbdev.train import fit_model, load_training_data
sequences, out, stream, batch = sys.argv[1], sys.argv[2], sys.argv[3] == 'stream', int(sys.argv[4])
base = status()
t0 = time.perf_counter()
data = load_training_data(sequences, stream=stream)
res = fit_model(data, out, model_size='small', epochs=1, batch_size=batch, seed=0, verbose=False, progress=False)
seconds = time.perf_counter() - t0
done.set(); time.sleep(0.02)
s = status(); peak.update({k: max(peak[k], s[k]) for k in peak})
print(json.dumps({'seconds': seconds, 'peak_rss': s['VmHWM'], 'peak_anon': peak['RssAnon'], 'peak_file': peak['RssFile'],
                  'base_rss': base['VmHWM'], 'n_fit': data['info']['n_fit']}))
'''


def repeated(src, dst, n):
    "`src`'s rows repeated to `n` rows, row groups of 256, with its provenance."
    t = pq.read_table(src)
    t = pa.concat_tables([t] * (n // t.num_rows + 1)).slice(0, n)
    pq.write_table(t.replace_schema_metadata(t.schema.metadata), dst, row_group_size=256)
    return dst


def run(sequences, out, mode, batch):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-c', CHILD, str(sequences), str(out), mode, str(batch)],
                       capture_output=True, text=True, env=env, timeout=600)
    if r.returncode: raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[4000, 12000],
                   help='sequences per file (both large enough that every batch, 256 rows when scoring, is full)')
    p.add_argument('--batch-size', type=int, default=RECIPE.batch_size, help='training batch (one epoch is trained)')
    a = p.parse_args()
    mb = lambda b: f'{b / 2**20:,.0f}'
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_sequences(*stage_inputs(tmp / 'tiny'), tmp / 'tiny.parquet', progress=False)
        rows = []
        for n in a.sizes:
            f = repeated(tmp / 'tiny.parquet', tmp / f'seq_{n}.parquet', n)
            r = {mode: run(f, tmp / f'model_{n}_{mode}', mode, a.batch_size) for mode in ('memory', 'stream')}
            rows.append((n, r))
            print(f'N={n}: done', file=sys.stderr, flush=True)
    print(f"\n{'sequences':>9} {'X MB':>6} | {'peak RSS MB':>22} {'ratio':>6} | {'peak anonymous RSS MB':>22} {'ratio':>6} | "
          f"{'seconds':>15}")
    print(f"{'':>9} {'':>6} | {'memory':>10} {'stream':>11} {'':>6} | {'memory':>10} {'stream':>11} {'':>6} | {'memory':>7} {'stream':>7}")
    for n, r in rows:
        m, s = r['memory'], r['stream']
        print(f"{n:>9} {mb(n * 50 * 69 * 4):>6} | {mb(m['peak_rss']):>10} {mb(s['peak_rss']):>11} {s['peak_rss'] / m['peak_rss']:>6.2f} | "
              f"{mb(m['peak_anon']):>10} {mb(s['peak_anon']):>11} {s['peak_anon'] / m['peak_anon']:>6.2f} | "
              f"{m['seconds']:>7.1f} {s['seconds']:>7.1f}")
    (n0, r0), (n1, r1) = rows[0], rows[-1]
    for mode in ('memory', 'stream'):
        grow = (r1[mode]['peak_anon'] - r0[mode]['peak_anon']) / max(n1 - n0, 1)
        print(f"{mode}: peak anonymous RSS grows {grow / 1024:,.1f} kB per extra sequence (X itself: {50 * 69 * 4 / 1024:.1f} kB)")
    print("peak RSS counts the memory maps' resident file pages (page cache the kernel can drop); anonymous RSS does not")


if __name__ == '__main__':
    main()
