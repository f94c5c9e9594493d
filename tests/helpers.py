"Helpers shared by the tests: console scripts run in the test process, and doctored copies of a sequences file."
import pyarrow.parquet as pq

from k4_nbdev.sequences import read_sequences, sequence_table


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
