"""Debian's chromium, headless, for tests that open a page the project writes.

`chromium()` installs it (scripts/install_chromium.sh) or skips the test when it cannot
(e.g. offline). `loaded_dom(page, profile)` opens a copy of the page beside it, with one
script added that marks <body data-images="LOADED/TOTAL"> once the page has loaded
(LOADED: images with complete && naturalWidth > 0, i.e. decoded), and returns the DOM
chromium dumps. Every process of that browser (found by its profile folder, which only it
uses; its crash handler runs in a session of its own) is gone when it returns, whatever
happened. `ReportPage` parses what a test checks of a report page.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = """<script>
addEventListener("load", () => {
  const images = [...document.images];
  const loaded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.dataset.images = `${loaded}/${images.length}`;
});
</script>
"""


def chromium() -> str:
    """The chromium executable, installed if need be; skips the test if it cannot be."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install_chromium.sh")], capture_output=True,
                          text=True, timeout=900)
    path = shutil.which("chromium")
    if proc.returncode != 0 or path is None:
        pytest.skip(f"chromium cannot be installed here: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return path


def processes_using(profile: Path) -> list[int]:
    """Pids of the processes whose command line names `profile`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if str(profile).encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # exited meanwhile
            continue
    return pids


def end_browser(proc: subprocess.Popen, profile: Path) -> None:
    """Kill the browser's process group and any of its processes left outside it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while processes_using(profile) and time.monotonic() < deadline:
        time.sleep(0.2)  # one outside the group exits on its own once the browser is gone
    for pid in processes_using(profile):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def loaded_dom(page: Path, profile: Path, timeout: float = 180) -> str:
    """The DOM of `page` (plus PROBE) after chromium has loaded it."""
    probe = page.with_name(f"{page.stem}.probe{page.suffix}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
           "--dump-dom", probe.as_uri()]
    # its crash handler keeps its database under XDG_CONFIG_HOME: there it names the profile too
    env = {**os.environ, "XDG_CONFIG_HOME": str(profile / "config"), "XDG_CACHE_HOME": str(profile / "cache")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        dom, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err[-3000:]
        return dom
    finally:
        end_browser(proc, profile)
        probe.unlink(missing_ok=True)


class ReportPage(HTMLParser):
    """The parts of a report page (longvivit/eval/report.py) a test checks: table cells per task,
    each gallery section's caption text and figures (class, clip, img src), every tag, the
    body's attributes."""

    def __init__(self):
        super().__init__()
        self.tables, self.sections, self.tags, self.body = {}, [], [], {}
        self._task = self._key = self._in = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "body":
            self.body = a
        elif tag == "table":
            self._task = a["data-task"]
            self.tables[self._task] = {}
        elif tag == "section":
            self.sections.append({"clip": int(a["data-clip"]), "caption": "", "figures": []})
        elif tag == "figure":
            self.sections[-1]["figures"].append({"class": a["class"], "clip": int(a["data-clip"])})
        elif tag == "img" and self.sections:
            self.sections[-1]["figures"][-1]["src"] = a["src"]
        self._in = (tag, a.get("class"))

    def handle_data(self, data):
        if self._in == ("th", None) and self._task:
            self._key = data
        elif self._in == ("td", None) and self._task:
            self.tables[self._task][self._key] = data
        elif self._in == ("p", "caption"):
            self.sections[-1]["caption"] += data

    def handle_endtag(self, tag):
        if tag == "table":
            self._task = None
        self._in = None
