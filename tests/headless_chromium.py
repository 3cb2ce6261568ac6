"""Open an HTML file in headless Chromium and report what a reader's browser would see.

A minimal client of the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (JSON
messages separated by NUL bytes on file descriptors 3 and 4 of the browser): only the
standard library, no port to pick or race for, no WebSocket package, and no browser
download (the system's ``chromium``, as Debian packages it, is used). Playwright drives
Chromium through the same pipe, but would add a large dependency and pins the browser
versions it supports.

Used by ``tests/test_report.py``, and from the command line to check a report and take its
screenshot:

    python tests/headless_chromium.py report.html report.png
"""

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: run in the page after it loaded: its sections, every image (decoded or not), scripts
INSPECT = """
(async () => {
  const images = Array.from(document.images);
  const decoded = await Promise.all(images.map(i => i.decode().then(() => true, () => false)));
  return {
    title: document.title,
    sections: Array.from(document.querySelectorAll("section[id]")).map(s => s.id),
    headings: Array.from(document.querySelectorAll("section > h2")).map(h => h.textContent),
    images: images.map((img, i) => ({
      section: img.closest("section") ? img.closest("section").id : null,
      src: img.getAttribute("src").slice(0, 22),
      alt: img.alt,
      naturalWidth: img.naturalWidth,
      naturalHeight: img.naturalHeight,
      decoded: decoded[i],
    })),
    scripts: document.scripts.length,
    eventHandlers: Array.from(document.querySelectorAll("*")).filter(
      e => Array.from(e.attributes).some(a => a.name.startsWith("on"))).length,
    text: document.body.innerText,
  };
})()
"""


_TRAMPOLINE = """
import fcntl, os, sys
# copy both ends above 9 first, so that placing one cannot overwrite the other
ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
for target, fd in zip((3, 4), ends):
    os.dup2(fd, target)  # dup2'd descriptors are inherited across exec
os.execv(sys.argv[3], sys.argv[3:])
"""


def find_chromium() -> str | None:
    """Path of a Chromium-family browser (``$CHROMIUM`` first), or ``None``."""
    for name in (os.environ.get("CHROMIUM"), *CANDIDATES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class BrowserError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium process driven over the DevTools pipe (a context manager)."""

    def __init__(self, executable=None, *, window=(1280, 900), timeout=60.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError(f"no Chromium found (tried $CHROMIUM, {', '.join(CANDIDATES)})")
        self.window, self.timeout = window, timeout
        self.events: list[dict] = []
        self._next_id, self._buffer = 0, b""

    def __enter__(self):
        self._profile = tempfile.TemporaryDirectory(prefix="skipvae-chromium-")
        self._log = open(Path(self._profile.name) / "stderr.log", "w+b")  # noqa: SIM115
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()
        args = [
            self.executable,
            "--headless",
            "--remote-debugging-pipe",
            # the page is our own file; the sandbox fails as root and in many containers
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={self._profile.name}",
            f"--window-size={self.window[0]},{self.window[1]}",
            "about:blank",
        ]
        # The protocol wants the pipe on descriptors 3 (in) and 4 (out); a tiny Python
        # trampoline puts it there (sh's redirections take one-digit descriptors only).
        self._process = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(to_browser), str(from_browser), *args],
            pass_fds=(to_browser, from_browser),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            # a file, not a pipe: nobody reads it while the browser runs, and a full pipe
            # would block it
            stderr=self._log,
        )
        os.close(to_browser)
        os.close(from_browser)
        try:
            self.call("Browser.getVersion")
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            if self._process.poll() is None:
                try:
                    self._send({"id": -1, "method": "Browser.close"})
                    self._process.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self._process.kill()
                    self._process.wait()
        finally:
            os.close(self._commands)
            os.close(self._replies)
            self._log.close()
            self._profile.cleanup()

    def _send(self, message):
        os.write(self._commands, json.dumps(message).encode() + b"\0")

    def _receive(self, deadline):
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(0.0, remaining))
            if not ready:
                raise BrowserError(f"Chromium did not answer within {self.timeout:g} s")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                self._log.seek(0)
                error = self._log.read().decode(errors="replace")[-2000:]
                raise BrowserError(f"Chromium exited ({self._process.poll()}): {error}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, session=None) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept
        in :attr:`events`."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method, session=None) -> dict:
        """The first event ``method`` (of ``session``), waiting for it if need be."""
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self.events:
                if event["method"] == method and event.get("sessionId") == session:
                    return event
            reply = self._receive(deadline)
            if "method" in reply:
                self.events.append(reply)

    def inspect(self, path, screenshot=None) -> dict:
        """Load the file ``path`` in a fresh tab and return what the page holds
        (:data:`INSPECT`: sections, images with ``naturalWidth``, scripts, text), every URL
        the page requested (``requests``), the console's errors (``errors``) and, if
        ``screenshot`` is a path, save a full-page PNG there."""
        url = Path(path).resolve().as_uri()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Network", "Log", "Runtime"):
            self.call(f"{domain}.enable", session=session)
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        page = self.call(
            "Runtime.evaluate",
            {"expression": INSPECT, "awaitPromise": True, "returnByValue": True},
            session=session,
        )
        if "exceptionDetails" in page:
            raise BrowserError(f"inspecting the page failed: {page['exceptionDetails']}")
        result = page["result"]["value"]
        result["url"] = url
        result["requests"] = [
            _short(e["params"]["request"]["url"])
            for e in self.events
            if e["method"] == "Network.requestWillBeSent" and e.get("sessionId") == session
        ]
        result["errors"] = [
            e["params"]["entry"]["text"]
            for e in self.events
            if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
        ] + [
            str(e["params"]["exceptionDetails"])
            for e in self.events
            if e["method"] == "Runtime.exceptionThrown"
        ]
        if screenshot is not None:
            size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
            shot = self.call(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {
                        "x": 0,
                        "y": 0,
                        "width": size["width"],
                        "height": size["height"],
                        "scale": 1,
                    },
                },
                session=session,
            )
            import base64

            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            result["screenshot"] = str(screenshot)
            result["page_size"] = [size["width"], size["height"]]
        self.call("Target.closeTarget", {"targetId": target})
        return result


def _short(url):
    return url[:40] + "…" if url.startswith("data:") else url


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python tests/headless_chromium.py PAGE.html [SCREENSHOT.png]")
    with Chromium() as browser:
        seen = browser.inspect(sys.argv[1], screenshot=sys.argv[2] if len(sys.argv) == 3 else None)
    seen.pop("text")
    print(json.dumps(seen, indent=1, ensure_ascii=False))
