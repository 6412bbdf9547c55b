"""The Workbench in a real browser: headless JupyterLab driven by Playwright with Debian's Chromium.

A notebook builds ``wb.Workbench`` on the bundled example (with a copy of its layer files); the test
types into the CodeMirror editor, applies a wrong PixelNorm (the Tests tab must show FAIL and diff
plots), the fix (PASS), then a syntax error (the error is shown on its line, the file holds what was
typed, the fixed implementation keeps passing), and finds the custom layer's className in Netron.
The files on disk and the verdicts are checked against what was typed and against PyTorch's cases.
"""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from workbench import examples

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
TIMEOUT_MS = 60_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 with a random token, its announcements off; yields (url, token, root)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs Debian's Chromium "
                    f"(as root: apt-get update && apt-get install -y chromium)")
    root = tmp_path / "work"
    shutil.copytree(examples.BUNDLED_LAYERS_DIR, root / "layers")
    config = tmp_path / "jupyter-config"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    cell = ("import workbench as wb\nfrom workbench import examples\n"
            "model = wb.load(examples.example_path(), layers='layers')\n"
            "bench = wb.Workbench(model, layers_dir='layers')\nbench")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "bench.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    log = open(tmp_path / "jupyter.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    log.close()
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyter.log").read_text()[-3000:])
                time.sleep(0.5)
        yield url, token, root
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


class Shots:
    """Screenshots into the test's tmp dir, and into $WORKBENCH_SCREENSHOTS when it is set."""

    def __init__(self, page, folder):
        self.page, self.folders = page, [folder]
        if os.environ.get("WORKBENCH_SCREENSHOTS"):
            self.folders.append(Path(os.environ["WORKBENCH_SCREENSHOTS"]))
        for f in self.folders:
            f.mkdir(parents=True, exist_ok=True)

    def __call__(self, name):
        path = self.folders[0] / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        for f in self.folders[1:]:
            shutil.copy(path, f / path.name)


def layer_text(name):
    return (examples.BUNDLED_LAYERS_DIR / f"{name}.py").read_text()


def test_workbench_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, token, root = lab
    good = layer_text("PixelNorm")
    wrong = good.replace("np.sqrt(mean_square, out=mean_square)", "pass")
    broken = good.replace("def evaluate(self, inputs, outputs):", "def evaluate(self, inputs, outputs)")
    broken_line = next(i for i, l in enumerate(broken.splitlines(), 1) if "def evaluate(self, inputs, outputs)" in l)
    assert wrong != good and broken != good

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            shot = Shots(page, tmp_path / "screenshots")
            page.goto(f"{url}/lab/tree/bench.ipynb?token={token}")
            page.locator(".jp-Notebook").first.wait_for()
            # JupyterLab may ask which kernel to start (a fresh settings folder): take the default, Python 3
            try:
                page.locator(".jp-Dialog .jp-mod-accept").click(timeout=10_000)
            except Exception:                # noqa: BLE001 (no dialog: the kernel started by itself)
                pass
            # Run all cells, from the Run menu, once the kernel is idle
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for()
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            app = page.locator(".workbench-app")
            app.wait_for()
            expect(app.locator(".workbench-inspector")).to_contain_text("ScaledSwish")
            expect(app.locator(".workbench-inspector")).to_contain_text("PixelNorm")
            shot("1-inspector")

            def tab(title):
                app.locator(".lm-TabBar-tab", has_text=title).first.click()

            def apply_text(text, use_button):
                editor = app.locator(".workbench-editor .cm-content")
                editor.click()
                page.keyboard.press("Control+a")
                page.keyboard.press("Delete")
                page.keyboard.insert_text(text)
                if use_button:
                    app.locator(".workbench-editor-apply").click()
                else:
                    page.keyboard.press("Shift+Enter")
                expect(app.locator(".workbench-editor-status")).not_to_have_text("applying...", timeout=TIMEOUT_MS)

            tab("Editor")
            app.locator(".workbench-editor-view select").select_option("PixelNorm")
            expect(app.locator(".workbench-editor .cm-content")).to_contain_text("class PixelNorm")
            # a wrong implementation, applied with Shift-Enter: the tests fail, with diff plots
            apply_text(wrong, use_button=False)
            assert (root / "layers" / "PixelNorm.py").read_text() == wrong      # typed text reached the file
            expect(app.locator(".workbench-editor-status")).to_contain_text("0 of 3 passed")
            shot("2-editor-wrong")
            tab("Tests")
            expect(app.locator(".workbench-test-summary")).to_contain_text("FAIL: 0 of 3")
            expect(app.locator(".workbench-test-table")).to_contain_text("FAIL")
            expect(app.locator(".workbench-divergence")).to_contain_text("PixelNorm")
            expect(app.locator(".workbench-tests select").first).to_have_value("noise")   # the first failing case
            plot = app.locator(".workbench-diff-plot")
            plot.wait_for()
            assert plot.bounding_box()["width"] > 200
            shot("3-tests-fail")
            # the fix, applied with the button: the tests pass
            tab("Editor")
            apply_text(good, use_button=True)
            assert (root / "layers" / "PixelNorm.py").read_text() == good
            tab("Tests")
            expect(app.locator(".workbench-test-summary")).to_contain_text("PASS: 3 of 3")
            expect(app.locator(".workbench-test-table")).not_to_contain_text("FAIL")
            shot("4-tests-pass")
            # a syntax error: shown on its line, saved, and the fixed implementation keeps running
            tab("Editor")
            apply_text(broken, use_button=True)
            assert (root / "layers" / "PixelNorm.py").read_text() == broken
            expect(app.locator(".workbench-editor-view .workbench-error")).to_contain_text(
                f"line {broken_line}: ")
            expect(app.locator(".workbench-editor-view .workbench-error")).to_contain_text("syntax error")
            expect(app.locator(".workbench-editor .cm-lintRange-error")).to_have_count(1)
            expect(app.locator(".workbench-editor-status")).to_contain_text("previous implementation stays")
            shot("5-editor-syntax-error")
            tab("Tests")
            app.locator(".workbench-tests button", has_text="Run tests").click()
            expect(app.locator(".workbench-test-summary")).to_contain_text("PASS: 3 of 3")
            # the graph: Netron in its IFrame, nothing blocking, the custom layer found by className
            tab("Graph")
            frame = page.frame_locator("iframe.workbench-netron")
            node = frame.locator("#canvas .node", has_text="custom").first
            node.wait_for()
            assert frame.locator("body.notification").count() == 0      # no consent / update notice up
            node.click()
            expect(frame.locator("body")).to_contain_text("ScaledSwish")
            shot("6-graph")
        except Exception:
            shot("failure")                    # what the page showed when the test failed
            raise
        finally:
            browser.close()
