"""Packaging: settings.ini's requirements cover what the console scripts and the pipeline's notebooks import, and the
wheel carries the stage notebooks the pipeline runs (built here without network; nothing is installed)."""
import ast
import json
import re
import shutil
import subprocess
import sys
import zipfile
from configparser import ConfigParser
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'k4_nbdev'

def settings() -> dict:
    config = ConfigParser(delimiters=['='])
    config.read(ROOT / 'settings.ini', encoding='utf-8')
    return dict(config['DEFAULT'])

def norm(name:str) -> str: return re.sub(r'[-_.]+', '-', name).lower()

def req_name(spec:str) -> str: return norm(re.match(r'\s*([A-Za-z0-9][A-Za-z0-9._-]*)', spec).group(1))

def req_names(key:str) -> set: return {req_name(s) for s in settings().get(key, '').split()}

def extras() -> dict:
    return {k[:-len('_requirements')]: req_names(k) for k in settings() if k.endswith('_requirements')}

def _guarded(node) -> bool:
    "A module-level try whose handlers catch ImportError: its imports are optional (an extra)."
    names = lambda h: ({e.id for e in h.type.elts if isinstance(e, ast.Name)} if isinstance(h.type, ast.Tuple)
                       else {h.type.id} if isinstance(h.type, ast.Name) else set())
    return isinstance(node, ast.Try) and any(names(h) & {'ImportError', 'ModuleNotFoundError'} for h in node.handlers)

def top_imports(source:str) -> tuple:
    "Module-level imports of `source`: (required, optional) as sets of (top-level name, relative module or None)."
    required, optional = set(), set()
    def visit(body, into):
        for node in body:
            if isinstance(node, ast.Import): into |= {(a.name.split('.')[0], None) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level: into.add((None, node.module))
                else: into.add((node.module.split('.')[0], None))
            elif isinstance(node, ast.Try): visit(node.body, optional if _guarded(node) else into)
            elif isinstance(node, (ast.If, ast.With)): visit(node.body, into)
    visit(ast.parse(source).body, required)
    return required, optional - required

def console_modules() -> dict:
    "console script -> its module name (e.g. k4-docs -> docs)."
    lines = [l.strip() for l in settings()['console_scripts'].splitlines() if l.strip()]
    return {l.split('=')[0].strip(): l.split('=')[1].split(':')[0].strip().removeprefix('k4_nbdev.') for l in lines}

def module_closure(module:str) -> dict:
    "The package modules `module` imports at load time, each with its (required, optional) third-party imports."
    seen, todo = {}, [module]
    while todo:
        m = todo.pop()
        if m in seen: continue
        req, opt = top_imports((PKG / f'{m}.py').read_text())
        seen[m] = ({n for n, _ in req if n and n != 'k4_nbdev'}, {n for n, _ in opt if n and n != 'k4_nbdev'})
        todo += [rel.split('.')[0] for n, rel in req | opt if n is None and rel]
    return seen

@lru_cache()
def dist_map() -> dict: return packages_distributions()

def dists_of(import_name:str) -> set:
    "Distribution names that provide the import name (the import name itself when nothing installed provides it)."
    return {norm(d) for d in dist_map().get(import_name, [import_name])}

LOCAL = {p.stem for p in Path(__file__).parent.glob('*.py')} | {'k4_nbdev'}   # the package, and the tests' own modules

def third_party(name:str) -> bool: return name not in sys.stdlib_module_names and name not in LOCAL

def closure(names:set) -> set:
    "`names` with every distribution they require (installed metadata, extras' requirements left out)."
    out, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n in out: continue
        out.add(n)
        try: reqs = requires(n) or []
        except PackageNotFoundError: continue
        todo += [req_name(r) for r in reqs if 'extra ==' not in r]
    return out

def test_console_script_imports_are_requirements():
    "Each console script's modules: module-level imports in `requirements`; guarded imports in an extra naming the tool."
    base, extra_names = req_names('requirements'), set().union(*extras().values())
    missing = []
    for script, module in console_modules().items():
        for m, (req, opt) in module_closure(module).items():
            missing += [f"{script}: k4_nbdev/{m}.py imports {n} (distribution {sorted(dists_of(n))}) not in requirements"
                        for n in sorted(req) if third_party(n) and not dists_of(n) & base]
            missing += [f"{script}: k4_nbdev/{m}.py optionally imports {n}, which no extra installs"
                        for n in sorted(opt) if third_party(n) and not dists_of(n) & extra_names]
    assert not missing, '\n'.join(missing)

def test_closure_follows_relative_imports():
    "The checker sees k4-pipeline's papermill and, through `from .core import ...`, core.py's fastcore."
    mods = module_closure('pipeline')
    assert {'pipeline', 'data', 'core', 'model'} <= set(mods)
    assert {'papermill', 'nbformat', 'jupyter_client', 'torch'} <= mods['pipeline'][0]
    assert 'fastcore' in mods['core'][0]
    assert {'nbdev', 'playwright', 'smalldocs'} <= module_closure('docs')['docs'][1]

def stage_notebooks() -> list:
    "The notebooks k4-pipeline executes (STAGES in pipeline.py, read without importing it)."
    tree = ast.parse((PKG / 'pipeline.py').read_text())
    stages = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and any(getattr(t, 'id', None) == 'STAGES' for t in n.targets))
    return [ROOT / 'nbs' / f'{s}.ipynb' for s in stages]

def test_pipeline_notebook_imports_are_installed_by_requirements():
    "papermill runs every stage notebook whole: what their cells import must come with `requirements` (directly or not)."
    installed = closure(req_names('requirements'))
    missing = []
    for nb in stage_notebooks():
        for cell in json.loads(nb.read_text())['cells']:
            if cell['cell_type'] != 'code': continue
            src = ''.join(cell['source'])
            try: req, _ = top_imports(src)
            except SyntaxError:   # IPython magics and shell lines
                req, _ = top_imports('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
            missing += [f"{nb.name} imports {n} (distribution {sorted(dists_of(n))})"
                        for n, _ in sorted(req, key=str) if n and third_party(n) and not dists_of(n) & installed]
    assert not missing, 'not installed by `requirements`:\n' + '\n'.join(missing)

def test_torch_is_a_range_and_pinned_only_in_the_makefile():
    reqs = settings()['requirements'].split()
    torch = [r for r in reqs if req_name(r) == 'torch']
    assert len(torch) == 1 and '==' not in torch[0] and '>=' in torch[0], f"torch must be a range in requirements, got {torch}"
    make = (ROOT / 'Makefile').read_text()
    pin, editable = make.find('pip install --quiet torch==2.13.0'), make.find('-e ".[dev')
    assert 0 <= pin < editable, "the Makefile must install torch==2.13.0 before the package"

def test_extras():
    ex = extras()
    assert {'docs', 'notebooks', 'dev', 'real', 'cuda'} <= set(ex)
    assert 'jupyterlab' in ex['notebooks']
    assert {'nbdev', 'smalldocs', 'playwright'} <= ex['docs'] <= ex['dev'], "dev must hold the docs extra's tools"
    make = (ROOT / 'Makefile').read_text()
    used = set(re.findall(r'-e "\.\[([a-z,]+)\]"', make))
    assert used and all(set(u.split(',')) <= set(ex) for u in used), f"the Makefile installs unknown extras: {used}"
    assert re.search(r'^lab:', make, re.M), "make lab is missing"

def test_setup_py_reads_every_extra(monkeypatch):
    "setup.py's extras_require holds every NAME_requirements key of settings.ini."
    monkeypatch.chdir(ROOT)   # setup.py reads settings.ini next to it
    src = (ROOT / 'setup.py').read_text().split('setuptools.setup(')[0]
    ns = {}
    exec(compile(src, 'setup.py', 'exec'), ns)
    assert set(ns['extras']) == set(extras())
    assert ns['requirements'] == settings()['requirements'].split()

def test_k4_docs_without_the_docs_extra_says_one_line(tmp_path):
    "With nbdev, playwright and smalldocs hidden, k4-docs ends in one line naming the docs extra, not a traceback."
    code = ("import sys\n"
            "class Hide:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('nbdev', 'playwright', 'smalldocs'):\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "from k4_nbdev.docs import docs_cli\n"
            "docs_cli(['--readme'])\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'k4_nbdev[docs]' in lines[0] and 'Traceback' not in r.stderr, r.stderr

@pytest.mark.parametrize('script', sorted(console_modules()))
def test_every_console_script_prints_its_help(script, capsys):
    "`SCRIPT --help` prints usage and exits 0 (argparse %-formats help strings: a bare % in a docment breaks it)."
    from importlib import import_module
    spec = next(l.split('=')[1].strip() for l in settings()['console_scripts'].splitlines() if l.strip().startswith(script + '='))
    module, func = spec.split(':')
    with pytest.raises(SystemExit) as e: getattr(import_module(module), func)(['--help'])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f'usage: {script}')

def test_pipeline_notebook_real_samples_are_installed_by_requirements():
    "A stage notebook that loads real sample tickers unconditionally needs their data packages in `requirements`."
    tree = ast.parse((PKG / 'data.py').read_text())
    sources = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                   and getattr(n.targets[0] if isinstance(n, ast.Assign) else n.target, 'id', None) == 'REAL_SOURCES')
    installed, missing = closure(req_names('requirements')), []
    for nb in stage_notebooks():
        for cell in json.loads(nb.read_text())['cells']:
            if cell['cell_type'] != 'code': continue
            for line in ''.join(cell['source']).splitlines():   # unindented: runs whatever the parameters
                if m := re.match(r'\S.*\breal_samples\((\[[^\]]*\])', line):
                    for t in ast.literal_eval(m.group(1)):
                        pkg = sources[t][0]
                        if not dists_of(pkg) & installed: missing.append(f"{nb.name} loads {t} from {pkg}")
    assert not missing, 'not installed by `requirements`:\n' + '\n'.join(missing)


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    "The package's wheel, built from a copy of the clone's sources (pip leaves build/ and egg-info beside the sources)."
    src, out = tmp_path_factory.mktemp('src'), tmp_path_factory.mktemp('wheel')
    for name in ['setup.py', 'settings.ini', 'README.md', 'MANIFEST.in']: shutil.copy(ROOT / name, src)
    for d in ['k4_nbdev', 'nbs']: shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', str(out), str(src)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return next(out.glob('*.whl'))

def run_time_files() -> set:
    "nbs/ files the pipeline reads at run time: its stage notebooks, what their code cells read from nbs/results/, and the kept quick-run table of the home page (`docs.latest_result`)."
    files = {nb.relative_to(ROOT / 'nbs').as_posix() for nb in stage_notebooks()}
    for nb in stage_notebooks():
        for cell in json.loads(nb.read_text())['cells']:
            if cell['cell_type'] == 'code': files |= set(re.findall(r"""['"](results/[^'"]+)['"]""", ''.join(cell['source'])))
    files.add(re.search(r"RESULT_TABLE = Path\('nbs/([^']+)'\)", (PKG / 'docs.py').read_text()).group(1))
    return files

def test_wheel_carries_the_stage_notebooks(wheel):
    "Every file the pipeline runs or reads from nbs/ is in the wheel under k4_nbdev/nbs/, byte for byte nbs/'s (the one source)."
    files = run_time_files()
    assert {'00_data.ipynb', 'index.ipynb', 'results/walk_forward_quick.csv', 'results/comparison_quick.csv'} <= files
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        missing = sorted(f for f in files if f'k4_nbdev/nbs/{f}' not in names)
        assert not missing, f"{wheel.name} lacks {missing}"
        assert all(z.read(f'k4_nbdev/nbs/{f}') == (ROOT / 'nbs' / f).read_bytes() for f in files)
    assert not any(n.startswith('nbs/') for n in names), 'the notebooks go inside the package, not beside it'

def test_installed_wheel_runs_its_own_notebooks(wheel, tmp_path):
    "Unpacked as pip installs it (no clone around it), `nbs_dir` is the package's nbs/ and the stages' parameters read from it."
    site, elsewhere = tmp_path / 'site-packages', tmp_path / 'elsewhere'
    elsewhere.mkdir()
    with zipfile.ZipFile(wheel) as z: z.extractall(site)
    code = (f"import sys; sys.path.insert(0, {str(site)!r})\n"
            "import k4_nbdev.pipeline as p\n"
            "print(p.__file__); print(p.nbs_dir()); print(sorted(p.stage_parameters('05_train')))\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=elsewhere, timeout=120)
    assert r.returncode == 0, r.stderr
    module, nbs, params = r.stdout.strip().splitlines()
    assert Path(module) == site / 'k4_nbdev' / 'pipeline.py'
    assert Path(nbs) == site / 'k4_nbdev' / 'nbs'
    assert 'epochs' in params and 'output_dir' in params

def test_clone_runs_its_own_notebooks():
    "In a clone (the Makefile's editable install) the pipeline runs nbs/ itself, so an edited notebook runs as it is."
    from k4_nbdev.pipeline import nbs_dir
    assert nbs_dir() == ROOT / 'nbs'
    assert not (PKG / 'nbs').exists(), "k4_nbdev/nbs/ is made in the wheel only: nbs/ is the notebooks' one source"
