"The docs site built from a pipeline run, and the README generated from nbs/index.ipynb."
from pathlib import Path

import pytest

from k4_nbdev.docs import build_docs, browse_site, check_site, chromium_path, render_readme, project_root


def test_readme_is_current():
    readme = (project_root() / 'README.md').read_text()
    assert readme == render_readme(), "README.md is stale: run `.venv/bin/k4-docs --readme` and commit it"


def test_site_from_a_run_has_every_page_with_its_figures_and_tables(tiny_run, tmp_path):
    run_nbs = Path(tiny_run['run_dir']) / 'notebooks'
    site = build_docs(run_dir=tiny_run['run_dir'], out=tmp_path / 'site', renderer='smalldocs')
    report = check_site(site, run_nbs)
    numbered = sorted(p.stem for p in (project_root() / 'nbs').glob('[0-9]*.ipynb'))
    assert report['page'].tolist() == ['index.html'] + [f'{n}.html' for n in numbered]
    assert report['ok'].all(), report.to_string()
    data = report.set_index('page').loc['00_data.html']
    assert data['figures'] >= 1 and data['tables'] >= 3   # the executed data notebook has real outputs
    home = (site / 'index.html').read_text()
    assert 'make run' in home and '00_data.html' in home


def test_check_site_flags_a_missing_figure(tiny_run, tmp_path):
    site = build_docs(run_dir=None, out=tmp_path / 'clean', renderer='smalldocs')   # clean notebooks: no outputs
    report = check_site(site, Path(tiny_run['run_dir']) / 'notebooks')            # ...but the run has figures
    assert not report.set_index('page').loc['00_data.html', 'ok']


def test_site_in_a_real_browser(tiny_run, tmp_path):
    if not chromium_path():
        pytest.skip("Chromium is not installed (Debian package `chromium`; `make test` installs it)")
    site = build_docs(run_dir=tiny_run['run_dir'], out=tmp_path / 'site', renderer='smalldocs')
    shots = {'index.html': tmp_path / 'home.png', '00_data.html': tmp_path / 'data.png'}
    seen = browse_site(site, shots)
    assert seen['ok'].all(), seen.to_string()
    assert len(seen) == len(list(site.glob('*.html')))
    assert all(p.stat().st_size > 10_000 for p in shots.values())


def test_browser_check_catches_a_broken_image(tiny_run, tmp_path):
    if not chromium_path():
        pytest.skip("Chromium is not installed (Debian package `chromium`; `make test` installs it)")
    site = build_docs(run_dir=tiny_run['run_dir'], out=tmp_path / 'site', renderer='smalldocs')
    page = site / '00_data.html'
    page.write_text(page.read_text().replace('</main>', '<img src="missing.png"><a href="nowhere.html">x</a></main>', 1))
    seen = browse_site(site).set_index('page')
    assert seen.loc['00_data.html', 'broken_images'] == 1 and 'nowhere.html' in seen.loc['00_data.html', 'broken_links']
    assert not seen.loc['00_data.html', 'ok'] and seen.drop(index='00_data.html')['ok'].all()
