"Console scripts run in the test process: the exit status and the one-line message a user would see."


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
