"""`diffcut-edge webcam --source clip --serve` end to end: a real process with the tiny SDXL export,
driven over HTTP and by a real headless browser (Debian's chromium + chromium-driver, which
.ci/run installs; selenium from the [dev] extra)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the live view needs the [live] extra (aiohttp)")

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/stats")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body


def _post(port: int, body: dict, token: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Content-Type": "application/json", **({"X-DiffCut-Token": token} if token else {})}
    conn.request("POST", "/control", body=json.dumps(body), headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def _wait(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from helpers.fake_segmenter import make_video

    path = tmp_path_factory.mktemp("live") / "clip.avi"
    make_video(path, n=30, size=(192, 256))
    return path


class LiveProcess:
    def __init__(
        self,
        model_dir: Path,
        clip: Path,
        host: str = "127.0.0.1",
        token: str = "t0ken-of-the-test",
        extra: tuple[str, ...] = (),
    ):
        self.port, self.token = _free_port(), token
        argv = [
            sys.executable,
            "-m",
            "diffcut_edge.cli",
            "webcam",
            "--model-dir",
            str(model_dir),
            "--source",
            str(clip),
            "--serve",
            f"{host}:{self.port}",
            "--loop",
            "--backend",
            "ort-cpu",
            "--token",
            token,
            *extra,
        ]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        _wait(lambda: _stats(self.port).get("frame") is not None, what="the first served frame")

    def terminate(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir("sdxl", 256, "fp32")


def test_served_segmentation_is_tuned_live_and_stops_cleanly_on_sigterm(model_dir, clip):
    live = LiveProcess(model_dir, clip)
    try:
        first = _stats(live.port)
        assert first["num_segments"] >= 2 and first["size"] == [256, 192]
        assert _post(live.port, {"tau": 0.0}) == 403  # the token is needed on localhost too
        assert _post(live.port, {"tau": 0.0}, live.token) == 200  # tau 0 keeps no cut: one segment, applied live
        _wait(
            lambda: _stats(live.port)["options"]["tau"] == 0.0 and _stats(live.port)["num_segments"] == 1,
            what="tau 0 to reach the pipeline",
        )
        assert _post(live.port, {"tau": 0.5, "refine": False}, live.token) == 200
        back = _wait(
            lambda: (s := _stats(live.port))["num_segments"] >= 2 and not s["options"]["refine"] and s,
            what="tau 0.5 and refine off",
        )
        assert back["timings"]["pamr"] == 0
        _wait(lambda: _stats(live.port)["frame"] > 35, timeout=120, what="--loop replaying the 30-frame clip")
    finally:
        code, out, err = live.terminate()
    assert code == 143 and "serving the live view at http://127.0.0.1:" in out
    assert err.strip().splitlines()[-1] == "diffcut-edge webcam: terminated"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", live.port), timeout=1).close()


# ------------------------------------------------------------------ a real browser
@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them with apt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,700",
        f"--user-data-dir={tmp_path / 'chrome'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _count(driver) -> int:
    return int(driver.find_element("id", "count").text.split()[0])


def _image_png(driver) -> np.ndarray:
    """The frame the <img> shows now, at its own size (drawn into a canvas: an element screenshot
    also catches layout shifts of the page around it)."""
    import base64

    import cv2

    url = driver.execute_script(
        "const img = document.getElementById('view'); const c = document.createElement('canvas');"
        "c.width = img.naturalWidth; c.height = img.naturalHeight; c.getContext('2d').drawImage(img, 0, 0);"
        "return c.toDataURL('image/png');"
    )
    png = base64.b64decode(url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def _set_range(driver, name: str, value: float) -> None:
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];e.dispatchEvent(new Event('input'));",
        name,
        value,
    )


def test_the_page_shows_a_live_stream_and_tau_changes_the_segments(browser, model_dir, clip):
    live = LiveProcess(model_dir, clip)
    try:
        browser.get(f"http://127.0.0.1:{live.port}/?token={live.token}")  # the URL the command prints
        _wait(lambda: _count(browser) >= 2, what="the segment count on the page")
        _wait(
            lambda: browser.execute_script("return document.getElementById('view').naturalWidth") == 256,
            what="the MJPEG stream in the <img>",
        )
        a = _image_png(browser)
        time.sleep(1.5)
        b = _image_png(browser)
        assert a.std() > 5 and b.std() > 5  # not blank
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.5  # and moving
        rows = browser.find_elements("css selector", "#segments tbody tr")
        assert len(rows) == _count(browser) or len(rows) >= 2
        _set_range(browser, "tau", 0)
        _wait(lambda: _count(browser) == 1, what="one segment after tau 0")
        _wait(lambda: len(browser.find_elements("css selector", "#segments tbody tr")) == 1, what="one table row")
        _set_range(browser, "tau", 0.5)
        _wait(lambda: _count(browser) >= 2, what="segments back after tau 0.5")
    finally:
        live.terminate()


def test_beyond_localhost_the_page_needs_the_token_to_tune(browser, model_dir, clip):
    live = LiveProcess(model_dir, clip, host="0.0.0.0", token="s3cret-token")
    try:
        browser.get(f"http://127.0.0.1:{live.port}/")  # no token: watching works, tuning does not
        _wait(lambda: _count(browser) >= 2, what="the page without a token")
        _set_range(browser, "tau", 0)
        _wait(lambda: "token" in browser.find_element("id", "error").text, what="the token refusal on the page")
        time.sleep(1.0)
        assert _stats(live.port)["options"]["tau"] == 0.5
        browser.get(f"http://127.0.0.1:{live.port}/?token=s3cret-token")
        _wait(lambda: _count(browser) >= 2, what="the page with the token")
        _set_range(browser, "tau", 0)
        _wait(lambda: _count(browser) == 1, what="tau 0 applied with the token")
    finally:
        live.terminate()


def test_class_names_show_in_the_table_as_text_never_as_markup(browser, vocab_model_dir, clip):
    """--classes are user text: a name that is HTML is shown as those characters and never runs."""
    evil = "<img src=x onerror=document.title='pwned'>"
    live = LiveProcess(vocab_model_dir, clip, extra=("--classes", f"cat, sofa|couch, {evil}", "--keyframes", "every:1"))
    try:
        browser.get(f"http://127.0.0.1:{live.port}/?token={live.token}")
        # One script reads the whole table: rows are replaced at every update (no stale element).
        cells = lambda: browser.execute_script(  # noqa: E731
            "return [...document.querySelectorAll('#segments tbody tr')].map(r => r.children[2].textContent)"
        )
        names = _wait(lambda: (c := cells()) and all(c) and c, what="class names in the table")
        assert set(names) <= {"cat", "sofa", evil}
        assert all(s["name"] in {"cat", "sofa", evil} and 0 <= s["score"] <= 1 for s in _stats(live.port)["segments"])
        time.sleep(1.0)
        assert browser.title == "diffcut-edge live"
        assert browser.execute_script("return document.querySelectorAll('#segments img').length") == 0
        if os.environ.get("DIFFCUT_LIVE_SCREENSHOT"):  # docs/live-view.png is made this way
            live_names = LiveProcess(vocab_model_dir, clip, extra=("--classes", "cat, sofa|couch, window, person"))
            try:
                browser.get(f"http://127.0.0.1:{live_names.port}/?token={live_names.token}")
                _wait(lambda: (c := cells()) and all(c), what="class names")
                time.sleep(1.5)
                browser.save_screenshot(os.environ["DIFFCUT_LIVE_SCREENSHOT"])
            finally:
                live_names.terminate()
    finally:
        live.terminate()
