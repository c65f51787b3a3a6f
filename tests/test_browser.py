"""The web app in a real browser: headless Chromium, driven through chromedriver's W3C WebDriver HTTP
interface (a few requests with urllib; no Selenium needed). It loads the page, uploads an image, starts
a tiny training, waits for the samples and saves a screenshot. Skipped without Gradio, chromium or
chromedriver."""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
from PIL import Image  # noqa: E402

from test_app import start_server, stop_server  # noqa: E402

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference


def browser_binaries() -> tuple[str, str] | None:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (chrome, driver) if chrome and driver else None


class WebDriver:
    """The handful of W3C WebDriver commands the test needs."""

    def __init__(self, chrome: str, driver: str, log: Path, width: int = 1280, height: int = 1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([driver, f"--port={port}", f"--log-path={log}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        self.session = None
        try:
            self._wait_ready()
            caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": chrome, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"]}}
            self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
            self.timeouts(implicit=30_000, script=60_000, page=60_000)
        except BaseException:
            self.quit()
            raise

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._call("GET", "/status").get("ready"):
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)  # the driver's own startup, not the app under test

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"WebDriver {method} {path}: {e.read().decode(errors='replace')[:500]}") from None

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def timeouts(self, **ms) -> None:
        self.cmd("POST", "/timeouts", ms)

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        """The first element matching ``css``, waiting for it up to the implicit timeout."""
        return self.cmd("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def click(self, css: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)}/click", {})

    def type(self, css: str, text: str) -> None:
        element = self.find(css)
        self.cmd("POST", f"/element/{element}/clear", {})
        self.cmd("POST", f"/element/{element}/value", {"text": text})

    def run(self, script: str, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait_for(self, condition_js: str, what: str):
        """Wait in the browser (no sleeps here) until ``condition_js`` (an expression) is truthy."""
        script = ("const done = arguments[arguments.length - 1];"
                  f"const check = () => {{ const v = ({condition_js}); if (v) done(v); else setTimeout(check, 100); }};"
                  "check();")
        try:
            return self.cmd("POST", "/execute/async", {"script": script, "args": []})
        except RuntimeError as e:
            raise AssertionError(f"timed out waiting for {what}: {e}") from None

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.cmd("GET", "/screenshot")))
        return path

    def quit(self) -> None:
        try:
            if self.session:
                self.cmd("DELETE", "")
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def browser(tmp_path):
    found = browser_binaries()
    if found is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    driver = WebDriver(*found, log=tmp_path / "chromedriver.log")
    try:
        yield driver
    finally:
        driver.quit()


def test_train_in_the_browser(browser, tmp_path):
    rng = np.random.default_rng(0)
    image = (rng.random((30, 45, 3)) * 255).astype(np.uint8)
    image[:15] //= 2
    Image.fromarray(image).save(tmp_path / "tiny.png")
    models, cwd = tmp_path / "models", tmp_path / "cwd"
    cwd.mkdir()
    proc, url, log = start_server(models, cwd)
    try:
        browser.get(url)
        browser.cmd("POST", f"/element/{browser.find('#train-image input[type=file]')}/value",
                    {"text": str(tmp_path / "tiny.png")})
        browser.wait_for("document.querySelector('#train-image img')", "the uploaded image")
        browser.click("#train-settings button")  # open the accordion of settings
        for field, value in (("max-size", "45"), ("stages", "2"), ("niter", "6"), ("nfc", "4"), ("min-size", "25"),
                             ("seed", "1")):
            browser.type(f"#train-{field} input", value)
        browser.wait_for("document.querySelector('#train-estimate').innerText.includes('6/6 iterations')",
                         "the time estimate of the settings typed")
        browser.click("#train-start")
        browser.wait_for("document.querySelector('#train-samples img')", "the samples of the first stage")
        status = browser.wait_for("(t => t.includes('done') && t)(document.querySelector('#train-status').innerText)",
                                  "the end of the training")
        assert "Job 1" in status and "finished" in status
        shot = browser.screenshot(tmp_path / "train.png")
        with Image.open(shot) as im:
            assert im.size[0] >= 1000 and np.asarray(im.convert("L")).std() > 5  # a page, not a blank
        trained = list(models.glob("tiny/*/model.pt"))
        assert len(trained) == 1
        config = json.loads((trained[0].parent / "config.json").read_text())
        assert (config["nfc"], config["train_stages"], config["niter"]) == (4, 2, 6)
        if os.environ.get("CONSINGAN_SCREENSHOT_DIR"):  # for the README
            shutil.copy(shot, Path(os.environ["CONSINGAN_SCREENSHOT_DIR"]) / "browser_test.png")

        # The model trained in the page is selected where it fits (a generation model: Samples, Animation,
        # Explore), without a reload; Harmonize (harmonization/editing only) does not list it.
        name = trained[0].parent.relative_to(models).as_posix()
        for tab, box in (("Samples", "samples-model"), ("Animation", "animation-model"), ("Explore", "explore-model")):
            select_tab(browser, tab)
            browser.wait_for(f"(e => e && e.value === {json.dumps(name)})(document.querySelector('#{box} input'))",
                             f"{name} selected in {tab}")
        select_tab(browser, "Harmonize / edit")
        assert browser.run("return document.querySelector('#harmonize-model input').value") == ""
        # the model table shows the size it trained at (45x30: the upload, under max_size 45)
        select_tab(browser, "Train")
        browser.wait_for("document.querySelector('#train-models').innerText.includes('45x30')", "the training size")

        # A reload: the Explore pad is a picture (not a broken image) before any slider moves, and the
        # new page lists the model too.
        for _ in range(2):
            browser.get(url)
            select_tab(browser, "Explore")
            width = browser.wait_for("(i => i && i.complete && i.naturalWidth)(document.querySelector('#explore-pad img'))",
                                     "the Explore pad after a reload")
            assert width > 0
            browser.wait_for(f"document.querySelector('#explore-model input').value === {json.dumps(name)}",
                             "the model in the reloaded page")

        # No control of one tab shows on another (e.g. Explore's Render button below every tab).
        for tab, prefix in TABS:
            select_tab(browser, tab)
            strays = browser.run(STRAYS_JS, prefix)
            assert strays == [], f"{tab} shows controls of other tabs: {strays}"
        select_tab(browser, "Train")
        assert browser.run("return [...document.querySelectorAll('button')].filter(b => b.offsetParent !== null && "
                           "b.innerText.trim() === 'Render').length") == 0

        # A harmonization model trained by this server (through its API, as the page's button does) is
        # selected in Harmonize, where it fits, and not in Samples, where the generation model stays;
        # Harmonize shows its small training image enlarged and says its size.
        from gradio_client import Client, handle_file

        from test_app import TINY as APP_TINY

        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"), analytics_enabled=False)
        try:
            job, _ = client.predict(handle_file(str(tmp_path / "tiny.png")), None, "harmonization", "fast",
                                    *APP_TINY.values(), api_name="/train")
            assert client.predict(int(job), 300, "end", api_name="/wait_job")["state"] == "done"
        finally:
            client.close()
        harmonizer = next(p.parent for p in models.glob("tiny/*harmonization*/model.pt")).relative_to(models).as_posix()
        select_tab(browser, "Harmonize / edit")
        browser.wait_for(f"document.querySelector('#harmonize-model input').value === {json.dumps(harmonizer)}",
                         "the harmonization model selected in Harmonize")
        shown = browser.wait_for("(i => i && i.complete && i.naturalWidth)(document.querySelector('#harmonize-composite img'))",
                                 "the training image in Harmonize")
        assert shown >= 300  # 45 px wide, shown enlarged
        browser.wait_for("document.querySelector('#harmonize-size').innerText.includes('45x30 px')", "the size note")
        select_tab(browser, "Samples")
        assert browser.run("return document.querySelector('#samples-model input').value") == name
    finally:
        stop_server(proc)


TABS = [("Train", "train"), ("Samples", "samples"), ("Harmonize / edit", "harmonize"), ("Paint", "paint"),
        ("Super-resolution", "superres"), ("Animation", "animation"), ("Explore", "explore")]
# The visible elements whose id names another tab's control (ids are "<tab>-<what>").
STRAYS_JS = """
const shown = arguments[0];
const prefixes = %s;
return [...document.querySelectorAll('[id]')].filter(e => {
    const p = e.id.split('-')[0];
    const r = e.getBoundingClientRect();
    return prefixes.includes(p) && p !== shown && !e.id.startsWith('tab-') && e.offsetParent !== null
        && r.width > 0 && r.height > 0;
}).map(e => e.id);
""" % json.dumps([p for _, p in TABS])


def select_tab(browser, label: str) -> None:
    """Click the tab button labelled ``label`` and wait until it is the selected one."""
    find = ("[...document.querySelectorAll('button[role=tab]')].find(b => b.innerText.trim() === %s)"
            % json.dumps(label))
    browser.wait_for(find, f"the {label} tab button")
    browser.run(f"{find}.click()")
    browser.wait_for(f"({find}).getAttribute('aria-selected') === 'true'", f"the {label} tab selected")
