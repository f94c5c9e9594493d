"The package's shape, read from its source: modules import downward in notebook order, at module level, and no private names."
import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'k4_nbdev'


def module_order() -> list:
    "The package's modules in the order of the notebooks that export them (`#| default_exp`)."
    order = []
    for nb in sorted((ROOT / 'nbs').glob('[0-9]*.ipynb')):
        for cell in json.loads(nb.read_text())['cells']:
            if m := re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(cell['source']), re.M):
                order.append(m[1]); break
    return order


def package_imports(module:str) -> list:
    "(imported module, names, line, at module level) for every import of a package module in `module`'s source."
    tree = ast.parse((PKG / f'{module}.py').read_text())
    top = {id(n) for n in tree.body} | {id(n) for t in tree.body if isinstance(t, ast.Try) for n in t.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ''
            if node.level == 1 or target.startswith('k4_nbdev.'):
                found.append((target.removeprefix('k4_nbdev.'), [a.name for a in node.names], node.lineno, id(node) in top))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith('k4_nbdev.'): found.append((a.name.removeprefix('k4_nbdev.'), [], node.lineno, id(node) in top))
    return found


def test_every_module_has_a_notebook():
    assert sorted(module_order()) == sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_'))


def test_modules_import_only_earlier_notebooks():
    "A module may use what an earlier notebook defined, never a later one: no cycle, and the pages read in order."
    order = module_order()
    upward = [f'{m}.py:{line} imports {target} ({order.index(target):02d} after {order.index(m):02d})'
              for m in order for target, _, line, _ in package_imports(m) if order.index(target) > order.index(m)]
    assert not upward, '\n'.join(upward)
    assert order[:2] == ['core', 'data'] and order.index('metrics') < order.index('patterns')


def test_no_package_import_inside_a_function():
    "An import inside a function is how a cycle hides: every package import sits at the top of its module."
    inside = [f'{m}.py:{line} imports {target}' for m in module_order() for target, _, line, top in package_imports(m) if not top]
    assert not inside, '\n'.join(inside)


def test_no_private_name_crosses_a_module():
    crossing = [f'{m}.py:{line} imports {n} from {target}' for m in module_order()
                for target, names, line, _ in package_imports(m) for n in names if n.startswith('_')]
    assert not crossing, '\n'.join(crossing)


def test_infrastructure_lives_in_core():
    "The console-script builder, atomic writes, provenance and the scheduler are defined once, in core."
    defined = {m: {n.name for n in ast.parse((PKG / f'{m}.py').read_text()).body
                   if isinstance(n, (ast.FunctionDef, ast.ClassDef))} for m in module_order()}
    shared = {'command', 'UsageError', 'check_flag', 'check_outputs', 'atomic_write', 'fingerprint', 'write_table',
              'read_metadata', 'with_provenance', 'job_map', 'check_scheduler', 'progress_bar'}
    assert shared <= defined['core']
    assert not [(m, n) for m, names in defined.items() if m != 'core' for n in names & shared]


def test_every_console_script_is_named_once(capsys):
    "settings.ini names each script; its usage and its one-line errors carry that name, read back from the entry points."
    from configparser import ConfigParser
    from importlib import import_module
    import pytest
    config = ConfigParser(delimiters=['=']); config.read(ROOT / 'settings.ini', encoding='utf-8')
    scripts = [s.split('=') for s in config['DEFAULT']['console_scripts'].split()]
    assert len(scripts) >= 12
    for name, target in scripts:
        module, func = target.split(':')
        with pytest.raises(SystemExit) as ended: getattr(import_module(module), func)(['--no-such-flag'])
        assert ended.value.code == 2 and f'usage: {name} ' in capsys.readouterr().err, (name, target)
