"""Headless Chromium for the browser tests (the chat page, the learning site), driven through the
DevTools protocol over a pipe: no websocket, no driver package. Debian's `chromium`; .ci/run installs it."""

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time

import pytest


def wait_until(predicate, timeout=10.0):
    """Whether ``predicate()`` turns true within ``timeout`` seconds. An exception counts as "not yet": a
    page that is still loading answers with one ("Execution context was destroyed", a missing element)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def chromium_exe():
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def require_chromium():
    """The Chromium binary; skips the test where it is missing, unless .ci/run said it is required."""
    exe = chromium_exe()
    missing = "Chromium is not installed (Debian: apt-get install -y chromium)" if exe is None else \
        "bash is needed to hand Chromium its DevTools pipe" if shutil.which("bash") is None else None
    if missing and os.environ.get("MMLAB_BROWSER_TESTS") == "required":  # .ci/run sets it once Chromium is in
        pytest.fail(missing)
    if missing:
        pytest.skip(missing)
    return exe


class Chromium:
    """Headless Chromium driven through the DevTools protocol over a pipe (fd 3 in, fd 4 out): no websocket.

    Events (console messages, exceptions, log entries) that arrive while waiting for an answer are kept
    in ``events``."""

    def __init__(self, exe, profile):
        to_chrome, self._w = os.pipe()
        self._r, from_chrome = os.pipe()
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-extensions", "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        # bash moves the pipe ends to fds 3 and 4, where Chromium expects them
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{to_chrome} 4>&{from_chrome}', *args],
                                     pass_fds=(to_chrome, from_chrome), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf = b""
        self._id = 0
        self.events = []

    def _receive(self, deadline, waiting_for):
        """The next message from Chromium; an event is also kept in ``events``."""
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {waiting_for}")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def send(self, method, params=None, session=None, timeout=15):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline, method)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def wait_event(self, method, session, since=0, timeout=15):
        """The first event ``method`` of ``session`` from ``events[since]`` on, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[since:]:
                if event["method"] == method and event.get("sessionId") == session:
                    return event
            since = len(self.events)
            self._receive(deadline, method)

    def close(self):
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


class Tab:
    """One page of a Chromium: navigate, evaluate JavaScript, click like a user, take screenshots, and
    collect the page's console errors, uncaught exceptions and failed loads."""

    def __init__(self, browser, url="about:blank", width=1280, height=900):
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": url})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})

    def send(self, method, params=None, timeout=15):
        return self.browser.send(method, params, self.session, timeout)

    def js(self, expression):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def _load(self, method, params, timeout):
        """Navigate (``Page.navigate`` or ``Page.reload``) and wait for the new document's load event."""
        since = len(self.browser.events)  # a load event before this one is the old document's
        result = self.send(method, params)
        assert not result.get("errorText"), f"{method} {params}: {result['errorText']}"
        self.browser.wait_event("Page.loadEventFired", self.session, since, timeout)

    def open(self, url, timeout=15):
        self._load("Page.navigate", {"url": url}, timeout)
        assert wait_until(lambda: self.js("document.readyState === 'complete' && location.href") == url,
                          timeout), f"{url} did not load"

    def reload(self, timeout=15):
        self._load("Page.reload", {}, timeout)

    def click(self, selector):
        """A real mouse click in the middle of the first element matching ``selector``."""
        box = self.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        assert box, f"nothing matches {selector}"
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def screenshot(self, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))
        return path

    def errors(self):
        """Console errors, uncaught exceptions and failed loads of this tab so far."""
        self.js("0")  # collect the events Chromium sent before this answer
        found = []
        for e in self.browser.events:
            if e.get("sessionId") != self.session:
                continue
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                found.append(p["exceptionDetails"].get("exception", {}).get("description")
                             or p["exceptionDetails"].get("text"))
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
                found.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
        return found
