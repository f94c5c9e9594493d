"Helpers shared by the tests: console scripts run in the test process, doctored copies of a sequences file, and run folders made by the stages' own functions."
from pathlib import Path

import pyarrow.parquet as pq

from k4_nbdev.data import build_store
from k4_nbdev.patterns import build_snapshots
from k4_nbdev.sequences import build_sequences, read_sequences, sequence_table
from k4_nbdev.train import fit_model, load_training_data


def exit_of(main, # a console script's function, e.g. `patterns_cli`
            argv:list, # its command-line arguments
            capsys=None, # pytest's capsys, to read argparse's own errors (status 2) from stderr
           ) -> tuple: # (exit status, message): a string exit code is status 1 with that message; 0 when it returned
    "Run a console script in this process and say how it ended."
    try: main(argv)
    except SystemExit as e:
        if isinstance(e.code, str): return 1, e.code
        return e.code, capsys.readouterr().err if capsys is not None else ''
    return 0, ''


def rewritten(src, # a sequences parquet written by the builder
              dst, # where to write the doctored copy
              change, # change(X, mask, meta) alters the arrays or metadata in place
             ): # dst
    "A copy of a sequences file altered by `change`, keeping the builder's metadata (written without validation)."
    X, mask, meta = read_sequences(src)
    change(X, mask, meta)
    pq.write_table(sequence_table(X, mask, meta).replace_schema_metadata(pq.read_schema(src).metadata), dst)
    return dst


def stage_inputs(folder, # run folder to fill: ohlcv/, episodes.parquet, snapshots.parquet
                 scale:str='tiny', # synthetic preset
                 seed:int=0, # its seed
                ) -> tuple: # (snapshots path, store path)
    "The inputs of the sequence stage, made by the earlier stages' own functions."
    folder = Path(folder)
    store = build_store(folder, 'synthetic', scale, seed)
    build_snapshots(folder, store, progress=False)
    return folder / 'snapshots.parquet', store


def trained_run(folder, # run folder to fill up to a model
                scale:str='tiny', # synthetic preset
                seed:int=0, # its seed
               ) -> Path: # the checkpoint `{folder}/model/best.pt`
    "A run folder with sequences and a one-epoch small model (tiny markets have no K4 in training: a warning says so)."
    folder = Path(folder)
    build_sequences(*stage_inputs(folder, scale, seed), folder / 'sequences.parquet', progress=False)
    return fit_model(load_training_data(folder / 'sequences.parquet'), folder / 'model', model_size='small', epochs=1,
                     seed=seed, verbose=False)['best']
