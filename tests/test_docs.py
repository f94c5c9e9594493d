"The docs site built from a pipeline run, checked page by page and in a real browser, and the README generated from nbs/index.ipynb."
import json
import shutil
from pathlib import Path

import pytest

from k4_nbdev.core import fingerprint
from k4_nbdev.docs import browse_site, check_site, chromium_path, docs_cli, render_readme, project_root, search_site


def test_readme_is_current():
    readme = (project_root() / 'README.md').read_text()
    assert readme == render_readme(), "README.md is stale: run `.venv/bin/k4-docs --readme` and commit it"


def test_site_from_a_run_has_every_page_with_its_figures_and_tables(tiny_run, tiny_site):
    report = check_site(tiny_site, Path(tiny_run['run_dir']) / 'notebooks')
    numbered = sorted(p.stem for p in (project_root() / 'nbs').glob('[0-9]*.ipynb'))
    assert report['page'].tolist() == ['index.html'] + [f'{n}.html' for n in numbered]
    assert report['ok'].all(), report.to_string()
    data = report.set_index('page').loc['00_data.html']
    assert data['figures'] >= 1 and data['tables'] >= 3   # the executed data notebook has real outputs
    home = (tiny_site / 'index.html').read_text()
    assert 'make run' in home and '00_data.html' in home


def without_images(page:Path):
    "Strip every <img> from a built page, as a site rendered from notebooks without outputs would be."
    text = page.read_text()
    while '<img' in text:
        start = text.index('<img')
        text = text[:start] + text[text.index('>', start) + 1:]
    page.write_text(text)


def test_check_site_flags_a_missing_figure(tiny_run, site_copy):
    without_images(site_copy / '00_data.html')                                          # the page lost its figures...
    report = check_site(site_copy, Path(tiny_run['run_dir']) / 'notebooks').set_index('page')   # ...but the run has them
    assert not report.loc['00_data.html', 'ok'] and report.loc['00_data.html', 'figures_on_page'] == 0
    assert report.drop(index='00_data.html')['ok'].all()


def test_check_site_fails_a_run_whose_kernels_drew_nothing(tiny_run, site_copy, tmp_path):
    "As with MPLBACKEND=Agg in the kernels: the executed notebooks hold no figures, their pages neither, and the site must not pass."
    blind = tmp_path / 'blind' / 'notebooks'
    shutil.copytree(Path(tiny_run['run_dir']) / 'notebooks', blind)
    nb = json.loads((blind / '00_data.ipynb').read_text())
    for cell in nb['cells']:
        cell['outputs'] = [o for o in cell.get('outputs', []) if not any(k.startswith('image/') for k in o.get('data', {}))]
    (blind / '00_data.ipynb').write_text(json.dumps(nb))
    without_images(site_copy / '00_data.html')
    report = check_site(site_copy, blind).set_index('page')
    assert report.loc['00_data.html', 'figures'] == 1 and report.loc['00_data.html', 'figures_on_page'] == 0
    assert not report.loc['00_data.html', 'ok'] and report.drop(index='00_data.html')['ok'].all()


def test_site_in_a_real_browser_and_the_check_catches_a_broken_image(site_copy, tmp_path):
    "Every page of the site in headless Chromium (one start): all load clean, but the one given a broken image and link."
    if not chromium_path():
        pytest.skip("Chromium is not installed (Debian package `chromium`; `make test` installs it)")
    page = site_copy / '00_data.html'
    page.write_text(page.read_text().replace('</main>', '<img src="missing.png"><a href="nowhere.html">x</a></main>', 1))
    shots = {'index.html': tmp_path / 'home.png', '07_validate.html': tmp_path / 'validation.png'}
    seen = browse_site(site_copy, shots).set_index('page')
    assert len(seen) == len(list(site_copy.glob('*.html')))
    assert seen.loc['00_data.html', 'broken_images'] == 1 and seen.loc['00_data.html', 'broken_links'] == 'nowhere.html'
    assert not seen.loc['00_data.html', 'ok'] and seen.drop(index='00_data.html')['ok'].all(), seen.to_string()
    assert all(p.stat().st_size > 10_000 for p in shots.values())



def test_a_figure_opens_full_size_on_a_click_and_closes_on_the_next(tiny_site):
    "The site's figures are shown at the column's width; a click shows one at its drawn size, over the page."
    if not chromium_path():
        pytest.skip("Chromium is not installed (Debian package `chromium`; `make test` installs it)")
    from playwright.sync_api import sync_playwright
    from k4_nbdev.docs import CHROMIUM_ARGS, serve
    with serve(tiny_site) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={'width': 1280, 'height': 900})
        page.goto(base + '05_train.html', wait_until='load')
        figure = page.locator('.cell-output img').first
        figure.scroll_into_view_if_needed(); figure.click()
        shown = page.locator('.figure-enlarged img')
        assert shown.count() == 1 and shown.evaluate('i => i.clientWidth') >= min(figure.evaluate('i => i.naturalWidth'), 1200)
        page.locator('.figure-enlarged').click()
        assert page.locator('.figure-enlarged').count() == 0
        browser.close()

@pytest.mark.parametrize('where', ['the run', 'inside the run', 'holding the run'])
def test_docs_never_replaces_its_inputs(tiny_run, tmp_path, where):
    run = tmp_path / 'runs' / 'r'
    shutil.copytree(Path(tiny_run['run_dir']) / 'notebooks', run / 'notebooks')
    out = {'the run': run, 'inside the run': run / 'notebooks', 'holding the run': tmp_path}[where]
    before = fingerprint(run), fingerprint(project_root() / 'nbs'), (project_root() / 'README.md').read_bytes()
    with pytest.raises(SystemExit) as e:
        docs_cli(['--run', str(run), '--out', str(out), '--renderer', 'smalldocs', '--browser', 'no'])
    line = e.value.code
    assert isinstance(line, str) and line.startswith(f'k4-docs: --out {out} ') and f'--run {run}' in line and '\n' not in line
    assert (fingerprint(run), fingerprint(project_root() / 'nbs'), (project_root() / 'README.md').read_bytes()) == before


def test_search_lists_the_definitions_first_with_plain_excerpts(tiny_site):
    "Typed into the site's search box: a defined term reaches its definition first; excerpts carry no markdown."
    if not chromium_path():
        pytest.skip("Chromium is not installed (Debian package `chromium`; `make test` installs it)")
    hits = search_site(tiny_site, ['race labels', 'K4', 'read_store'])
    assert hits['race labels'][0][0] == '00a_definitions.html#labels'
    assert '00a_definitions.html#classes' in [link for link, _ in hits['K4'][:10]], hits['K4']
    assert hits['read_store'][0][0] == '00_data.html#read_store'
    assert not any('`' in text or '](' in text for found in hits.values() for _, text in found)
