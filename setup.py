"Setup for k4_nbdev: every value comes from settings.ini (nbdev 2 layout)."
import ast
from configparser import ConfigParser
from pathlib import Path
import setuptools
from setuptools.command.build_py import build_py

assert Path('settings.ini').exists(), 'run setup.py from the project root, next to settings.ini'
config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

for key in 'version description repo lib_name min_python license author author_email'.split():
    assert key in cfg, f'settings.ini lacks the key {key!r}'

statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
requirements = cfg.get('requirements', '').split()
# every NAME_requirements key of settings.ini is the extra NAME (docs, notebooks, dev, real, cuda)
extras = {key[:-len('_requirements')]: cfg[key].split() for key in cfg if key.endswith('_requirements')}
scripts = [s.strip() for s in cfg.get('console_scripts', '').splitlines() if s.strip()]

def stage_notebooks() -> list:
    "nbs/ files the pipeline runs: the STAGES of pipeline.py (read, not imported) and the kept results their cells read."
    tree = ast.parse(Path(cfg['lib_path'], 'pipeline.py').read_text(encoding='utf-8'))
    stages = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and any(getattr(t, 'id', None) == 'STAGES' for t in n.targets))
    return [Path('nbs', f'{s}.ipynb') for s in stages] + sorted(Path('nbs', 'results').glob('*.csv'))

class BuildPyWithNotebooks(build_py):
    """Copy the stage notebooks into the built package as `k4_nbdev/nbs/`, so an installed package runs its pipeline.
    nbs/ stays their one source; an editable install reads the clone's nbs/ itself (`pipeline.nbs_dir`)."""
    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False): return
        for src in stage_notebooks():
            dest = Path(self.build_lib, cfg['lib_path'], src)
            self.mkpath(str(dest.parent))
            self.copy_file(str(src), str(dest))

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=Path('README.md').read_text(encoding='utf-8') if Path('README.md').exists() else cfg['description'],
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    classifiers=[f'Development Status :: {statuses[int(cfg["status"])]}', f'Intended Audience :: {cfg["audience"]}',
                 'Natural Language :: English',
                 f'Programming Language :: Python :: {cfg["min_python"]}'],
    author=cfg['author'], author_email=cfg['author_email'], url=cfg['git_url'],
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require=extras,
    python_requires='>=' + cfg['min_python'],
    entry_points={'console_scripts': scripts, 'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
    zip_safe=False,
    cmdclass={'build_py': BuildPyWithNotebooks},
)
