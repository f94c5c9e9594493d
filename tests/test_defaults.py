"One source of defaults: every knob has one default across functions, console scripts, the pipeline and the notebooks' parameters."
import ast
import dataclasses
import importlib
import inspect
import json
import pkgutil
from collections import defaultdict

import pytest

import k4_nbdev
from k4_nbdev.pipeline import RUN_DEFAULTS, STAGES, nbs_dir, run_cli
from k4_nbdev.train import RECIPE, Recipe

# Names that mean different things in different places, each with the reason; every other name must agree everywhere.
DIFFERENT_KNOBS = {
    'batch_size': 'training steps (the recipe) and inference batches (scoring, predict, validate) are different knobs',
    'bins': 'the calibration error and the reliability tables bin different things',
    'eps': 'numerical guards of two different terms of the loss',
    'gamma': 'the focusing exponents of different loss terms',
    'n': 'the window of each indicator (20, 100, 14 bars: the definitions page)',
    'n_samples': 'the audit of the sequence stage and the validation report sample different amounts',
    'name': 'a loss name and a run name',
    'output_dir': "each notebook's own folder when it runs standalone",
    'progress': 'whether a progress bar shows is a display choice of each function, not a knob of the method',
    'scale': "standalone notebooks use the tiny market so that nbdev_test stays fast; the pipeline passes the run's scale",
    'seeds': 'walk_forward takes the seeds themselves, k4-evaluate how many (0, 1, ..., N-1)',
    'source': 'the file each error message names',
    'workers': ('library functions run in the calling process unless asked (1); console scripts use the machine\'s cores; '
                'the pipeline passes RUN_DEFAULTS to its notebooks'),
}


def normalised(value):
    "A comma-separated CLI default and the tuple a function takes are the same default."
    if isinstance(value, str) and ',' in value: return tuple(value.split(','))
    if value == '': return ()
    return tuple(value) if isinstance(value, list) else value


def function_defaults():
    "(parameter name, default, where) for every function and method defined in the package; None means 'defer' and is skipped."
    for m in pkgutil.iter_modules(k4_nbdev.__path__):
        if m.name.startswith('_') or m.name == 'testing': continue   # the tests' constructed inputs are not knobs of the method
        mod = importlib.import_module(f'k4_nbdev.{m.name}')
        for name, obj in vars(mod).items():
            if getattr(obj, '__module__', None) != mod.__name__: continue
            funcs = [obj] + ([v for v in vars(obj).values() if inspect.isfunction(v)] if inspect.isclass(obj) else [])
            for f in funcs:
                if not callable(f) or dataclasses.is_dataclass(f): continue
                try: sig = inspect.signature(getattr(f, '__wrapped__', f))
                except (TypeError, ValueError): continue
                for p in sig.parameters.values():
                    if p.default is not inspect.Parameter.empty and p.default is not None:
                        yield p.name, p.default, f'{m.name}.{f.__qualname__}'


def notebook_parameters(stage):
    "The literal values of a notebook's papermill `parameters` cell."
    nb = json.loads((nbs_dir() / f'{stage}.ipynb').read_text())
    cell = next((c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])), None)
    if cell is None: return {}
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(''.join(cell['source'])).body
            if isinstance(node, ast.Assign)}


def all_defaults():
    "knob -> {default: [places]} over the package's functions, console scripts, RUN_DEFAULTS and every notebook's parameters."
    seen = defaultdict(lambda: defaultdict(list))
    for name, value, where in function_defaults(): seen[name][normalised(value)].append(where)
    for name, value in RUN_DEFAULTS.items(): seen[name][normalised(value)].append('pipeline.RUN_DEFAULTS')
    for stage in STAGES:
        for name, value in notebook_parameters(stage).items():
            if value is not None: seen[name][normalised(value)].append(f'nbs/{stage}.ipynb')
    return seen


def test_one_default_per_knob():
    disagree = {name: dict(values) for name, values in all_defaults().items() if len(values) > 1 and name not in DIFFERENT_KNOBS}
    assert not disagree, f"knobs with more than one default (declare it once and read it everywhere): {disagree}"


def test_every_exception_is_still_needed():
    "A name listed as different that now agrees everywhere must leave the list."
    seen = all_defaults()
    stale = [name for name in DIFFERENT_KNOBS if len(seen.get(name, {})) < 2]
    assert not stale, f"these knobs now have one default: remove them from DIFFERENT_KNOBS: {stale}"


def test_the_recipe_is_the_training_default():
    "Every training function and console script defaults to the recipe, and so does 05_train's parameters cell."
    fields = {f.name: getattr(RECIPE, f.name) for f in dataclasses.fields(Recipe)}
    params = notebook_parameters('05_train')
    assert {k: params[k] for k in fields if k in params} == {k: v for k, v in fields.items() if k in params}
    for name, value, where in function_defaults():
        if name in fields and name != 'batch_size' or (name == 'batch_size' and where.startswith(('train.', 'validate.evaluate'))):
            assert normalised(value) == normalised(fields[name]), f"{where}: {name}={value!r}, the recipe says {fields[name]!r}"


def test_pipeline_flags_defer_to_the_recipe():
    "The pipeline's training flags default to None: the notebook's parameters (= the recipe) apply."
    sig = inspect.signature(run_cli.__wrapped__ if hasattr(run_cli, '__wrapped__') else run_cli)
    for name in ('model_size', 'backend', 'epochs', 'batch_size', 'split_ratio'):
        assert sig.parameters[name].default is None, name


def test_the_check_catches_a_drift(monkeypatch):
    "A function that restates a knob with another value is reported."
    import k4_nbdev.train as train
    def drifted(epochs:int=100): return epochs
    drifted.__module__ = 'k4_nbdev.train'
    monkeypatch.setattr(train, 'drifted', drifted, raising=False)
    assert len(all_defaults()['epochs']) == 2
    with pytest.raises(AssertionError, match='epochs'): test_one_default_per_knob()
