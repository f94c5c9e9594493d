"Setup for k4_nbdev: every value comes from settings.ini (nbdev 2 layout)."
from configparser import ConfigParser
from pathlib import Path
import setuptools

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
)
