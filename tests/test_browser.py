"""The λ explorer as a user sees it: JupyterLab (and Voilà) on 127.0.0.1, driven in headless Chromium by
selenium. Opens notebook 06 (a copy), runs all, moves the λ slider by keyboard and by dragging, changes the
query, types a free text, changes top-k; after each action the status line and the figure must change in
the same DOM update, and no JavaScript error may be logged. Screenshots go to ``$RSCIR_TEST_ARTEFACTS``
(default ``test-artefacts/``) / ``browser``.

Needs Debian's ``chromium`` and ``chromium-driver`` (see ``.ci/run``) and the offline data + stand-in; with
``RSCIR_REQUIRE_BROWSER=1`` (set by ``.ci/run``) a missing piece fails the test instead of skipping it.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
REQUIRED = os.environ.get("RSCIR_REQUIRE_BROWSER", "").strip() not in ("", "0")
SIZE = 10  # images per class: 210 archive images, the notebook runs in well under a minute

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"RSCIR_REQUIRE_BROWSER=1 but the browser test cannot run: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:  # loopback only
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def _wait_port(port: int, proc, timeout: float = 60) -> None:
    """Wait until a server listens on 127.0.0.1:``port``. For Voilà, not an HTTP GET: every GET of the page starts
    a kernel that runs the notebook, and a second kernel would race the browser's."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} in {timeout} s")


@pytest.fixture(scope="module")
def artefacts() -> Path:
    root = Path(os.environ.get("RSCIR_TEST_ARTEFACTS") or REPO / "test-artefacts") / "browser"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def env_and_notebook(tmp_path_factory):
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not Path(tool).is_file():
            _unavailable(f"{tool} not found: apt-get install chromium chromium-driver")
    try:
        import selenium  # noqa: F401
        import voila  # noqa: F401
    except ImportError as exc:
        _unavailable(f"{exc.name} not installed: pip install -e '.[dev]'")
    from conftest import SHARED_DATA, SHARED_WEIGHTS

    if SHARED_DATA is None or SHARED_WEIGHTS is None or not (SHARED_WEIGHTS / "ucm-minilm-standin").is_dir():
        _unavailable("offline data / stand-in weights not found (RSCIR_DATA, RSCIR_WEIGHTS)")
    work = tmp_path_factory.mktemp("browser")
    nbdir = work / "notebooks"
    nbdir.mkdir()
    shutil.copy(REPO / "notebooks" / "06_lambda_explorer.ipynb", nbdir)  # autosave must not touch the repo
    settings = work / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')  # render every cell
    news = work / "lab-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no news pop-up
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "MPLBACKEND", "RSCIR_"))}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), RSCIR_DATA=str(SHARED_DATA),
               RSCIR_WEIGHTS=str(SHARED_WEIGHTS), RSCIR_SIZE=str(SIZE), RSCIR_CACHE=str(work / "cache"),
               RSCIR_OUTPUT=str(work / "outputs"), RSCIR_DEVICE="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               JUPYTER_CONFIG_DIR=str(work / "jupyter-config"), JUPYTER_RUNTIME_DIR=str(work / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(work / "lab-settings"), JUPYTERLAB_WORKSPACES_DIR=str(work / "ws"),
               SE_OFFLINE="true", SE_AVOID_STATS="true")
    return env, nbdir


@pytest.fixture(scope="module")
def driver(env_and_notebook):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager never goes online; the driver path is given
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1800", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions",
                # every host but loopback is unreachable: names do not resolve, everything else hits a dead proxy
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost",
                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.page_load_strategy = "none"  # Voilà answers only after running the notebook: never block on a page load
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    drv.set_script_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def lab(env_and_notebook):
    env, nbdir = env_and_notebook
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={nbdir}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(nbdir.parent / "lab.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=nbdir)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", proc)
        yield f"http://127.0.0.1:{port}", token, nbdir
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


SNAPSHOT = """
const v = document.querySelector('.rscir-view');
if (!v) return null;
const st = v.querySelector('.rscir-status');
const status = st ? st.textContent : '';
const fig = v.innerHTML.replace(st ? st.outerHTML : '', '');
let h = 2166136261;
for (let i = 0; i < fig.length; i++) { h ^= fig.charCodeAt(i); h = Math.imul(h, 16777619) >>> 0; }
return [status, h, v.querySelectorAll('.rscir-grid .rscir-card').length];
"""


def _snapshot(drv):
    return drv.execute_script(SNAPSHOT)


def _changed_together(drv, before, timeout=60.0, settle=1.5):
    """Wait for the status line to change; it must change in the same snapshot as the figure, and the figure
    must not change again afterwards (the old widget updated the figure 0.4-0.8 s after the status)."""
    end = time.time() + timeout
    while time.time() < end:
        now = _snapshot(drv)
        if now is not None and (now[0] != before[0] or now[1] != before[1]):
            assert now[0] != before[0] and now[1] != before[1], (
                f"status and figure changed separately: before {before[:2]}, now {now[:2]}")
            t_end = time.time() + settle
            while time.time() < t_end:
                later = _snapshot(drv)
                assert later[1] == now[1], "the figure changed again after the status line had changed"
                time.sleep(0.05)
            return now
        time.sleep(0.02)
    raise AssertionError(f"nothing changed within {timeout} s (status {before[0]!r})")


def _severe_logs(drv) -> list[str]:
    """Every SEVERE browser log entry: JavaScript errors and failed loads (with every host but loopback blocked, a
    page that fetches anything from outside the machine fails here)."""
    return [e["message"] for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def _handle(drv, name):
    from selenium.webdriver.common.by import By

    return drv.find_element(By.CSS_SELECTOR, f".rscir-{name} .noUi-handle")


def _exercise(drv, artefacts: Path, prefix: str, full: bool = True) -> None:
    """The user's actions, each checked with :func:`_changed_together`."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    view = drv.find_element(By.CSS_SELECTOR, ".rscir-view")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});",
                       drv.find_element(By.CSS_SELECTOR, ".rscir-lam"))
    WebDriverWait(drv, 300, poll_frequency=0.5).until(  # the live benchmark mAP is computed in the background
        lambda d: "benchmark mAP of WeiCom at λ=0.5" in d.find_element(By.CSS_SELECTOR, ".rscir-live").text)
    state = _snapshot(drv)
    assert "AP" in state[0] and state[2] == 8, state
    drv.save_screenshot(str(artefacts / f"{prefix}_1_start.png"))

    handle = _handle(drv, "lam")
    handle.click()
    for expected in ("λ=0.55", "λ=0.6"):  # one step of 0.05 per key press
        handle.send_keys(Keys.ARROW_RIGHT)
        state = _changed_together(drv, state)
        assert expected + ":" in state[0], state[0]
        assert f"benchmark mAP of WeiCom at {expected}:" in drv.find_element(By.CSS_SELECTOR, ".rscir-live").text
    drv.save_screenshot(str(artefacts / f"{prefix}_2_lambda_keyboard.png"))
    if not full:
        return

    ActionChains(drv).click_and_hold(_handle(drv, "lam")).move_by_offset(-70, 0).release().perform()
    new = _changed_together(drv, state)
    lam = float(new[0].split("λ=")[1].split(":")[0])
    assert lam < 0.6, new[0]
    state = new
    drv.save_screenshot(str(artefacts / f"{prefix}_3_lambda_drag.png"))

    select = Select(drv.find_element(By.CSS_SELECTOR, ".rscir-query select"))
    select.select_by_index(7)
    new = _changed_together(drv, state)
    picked = select.first_selected_option.text  # "agricultural09.jpg (agricultural)": file name and class
    assert picked.split(" (")[0] in new[0], (picked, new[0])
    assert "no ground truth" not in new[0], "after a query change the text must be one of the new query's"
    state = new
    drv.save_screenshot(str(artefacts / f"{prefix}_4_query.png"))

    box = drv.find_element(By.CSS_SELECTOR, ".rscir-text input")
    box.clear()
    box.send_keys("a large parking lot next to a highway", Keys.ENTER)
    new = _changed_together(drv, state, timeout=120)
    assert "no ground truth" in new[0] and "positive" not in new[0], new[0]
    state = new
    drv.save_screenshot(str(artefacts / f"{prefix}_5_free_text.png"))

    handle = _handle(drv, "k")
    handle.click()
    for expected in (9, 10, 11, 12):
        handle.send_keys(Keys.ARROW_RIGHT)
        state = _changed_together(drv, state)
        assert state[2] == expected, f"top-k slider: expected {expected} thumbnails, got {state[2]}"
    drv.save_screenshot(str(artefacts / f"{prefix}_6_topk.png"))
    view.screenshot(str(artefacts / f"{prefix}_6_view.png"))


def test_explorer_in_jupyterlab(driver, lab, artefacts):
    from selenium.webdriver.support.ui import WebDriverWait

    url, token, nbdir = lab
    driver.get(f"{url}/lab/tree/06_lambda_explorer.ipynb?token={token}")
    ready = ("const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
             "const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
             "return !!(k && k.status === 'idle' && w.context && w.context.path.endsWith('06_lambda_explorer.ipynb'));")
    WebDriverWait(driver, 180, poll_frequency=0.5).until(lambda d: d.execute_script(ready))
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    WebDriverWait(driver, 600, poll_frequency=1).until(lambda d: (_snapshot(d) or [""])[0].startswith("query "))
    _exercise(driver, artefacts, "lab")
    errors = _severe_logs(driver)
    assert not errors, errors
    # the copy was executed, the repository's notebook is untouched
    assert '"outputs": []' in (REPO / "notebooks" / "06_lambda_explorer.ipynb").read_text()


def test_explorer_served_by_voila(driver, env_and_notebook, artefacts):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    env, nbdir = env_and_notebook
    port = _free_port()
    # as `make explorer` serves it: the kit's offline template (Voilà's lab template, no CDN links)
    cmd = [sys.executable, "-m", "voila", str(nbdir / "06_lambda_explorer.ipynb"), "--template=rscir-offline",
           "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"]
    env = dict(env, JUPYTER_PATH=str(REPO / "notebooks"))
    log = open(nbdir.parent / "voila.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=nbdir)
    try:
        _wait_port(port, proc, timeout=60)
        driver.get(f"http://127.0.0.1:{port}/")  # returns at once (page_load_strategy "none"); then poll
        try:
            WebDriverWait(driver, 600, poll_frequency=1).until(
                lambda d: (_snapshot(d) or [""])[0].startswith("query "))
        except TimeoutException:
            log.flush()
            driver.save_screenshot(str(artefacts / "voila_0_timeout.png"))
            body = driver.execute_script("return document.body ? document.body.innerText : ''") or ""
            tail = (nbdir.parent / "voila.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"the Voilà page showed no query status in 600 s; page text: {body[:800]!r}; "
                        f"browser SEVERE logs: {_severe_logs(driver)}; voila.log tail:\n{tail}")
        _exercise(driver, artefacts, "voila", full=False)
        errors = _severe_logs(driver)
        assert not errors, errors
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
