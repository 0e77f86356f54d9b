"""The report as a browser shows it: headless Chromium renders the page, its DOM has the summary,
the coverage matrix, a heatmap and a replay command, and injected markup never runs.

Chromium comes from ``scripts/install_browser.sh`` (Debian's package). Where it is missing and
cannot be installed, the test skips locally and fails when ``CI=true``.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from qkcheck.reports.html import render_report
from qkcheck.reports.store import write_results
from tests.reports.synth import case_dict, failing_record, record, run_info

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
PWNED = "PWNED"
PAYLOADS = (f"<script>document.title='{PWNED}'</script>",
            f"\"><img src=x onerror=\"document.title='{PWNED}'\">")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    why = "chromium is not installed"
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "install_browser.sh")], capture_output=True,
                              text=True, timeout=900)
        found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
        why = f"scripts/install_browser.sh could not install it (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}; browser tests must run in CI")
        pytest.skip(f"{why}; run scripts/install_browser.sh as root")
    return found


def run_chromium(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120)


class DomFacts(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.ids, self.classes, self.tags, self.title, self._in_title = set(), set(), [], "", False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        self.ids.add(a.get("id"))
        self.classes.update((a.get("class") or "").split())
        self._in_title = tag == "title"  # the first title is the document's (svg titles come later)

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title and not self.title:
            self.title = data


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("browser")
    bad = "".join(PAYLOADS)
    hostile = failing_record(case_dict(config={"block_m": 16, "block_n": 32, "block_k": 128}, seed=3, why=bad),
                             kernel="zoo:" + bad)
    hostile["case"]["params"]["layout"] = bad
    hostile["checks"][2]["detail"] = bad
    hostile["diagnosis"] = [{"hypothesis": bad, "sentence": bad}]
    skipped = record(case_dict(seed=4), kernel=bad, status="skip")
    skipped["skip_reason"] = bad
    records = [record(case_dict(seed=s)) for s in range(6)]
    records += [failing_record(case_dict(config={"block_m": 16, "block_n": 32, "block_k": 128}, seed=1)),
                hostile, skipped]
    results = tmp / "r.jsonl"
    write_results(results, records, run_info(device=bad))
    return render_report([results], tmp / "report.html", title="qkcheck browser check"), tmp


def test_rendered_dom_has_summary_coverage_heatmap_and_replay(chromium, report):
    page, tmp = report
    proc = run_chromium(chromium, tmp, "--dump-dom", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = DomFacts(proc.stdout)
    assert {"summary-matrix", "coverage-matrix", "failure-0", "failure-1"} <= dom.ids
    assert "heatmap" in dom.classes
    assert "qkcheck replay out/failures/" in proc.stdout


def test_injected_markup_does_not_run(chromium, report):
    page, tmp = report
    proc = run_chromium(chromium, tmp, "--dump-dom", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = DomFacts(proc.stdout)
    assert dom.title == "qkcheck browser check"
    assert PWNED not in dom.title
    assert [t for t, _ in dom.tags if t in ("script", "img")] == []


def test_screenshot_is_rendered(chromium, report):
    page, tmp = report
    shot = tmp / "shot.png"
    proc = run_chromium(chromium, tmp, f"--screenshot={shot}", "--window-size=1400,2400", page.as_uri())
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1400, 2400)
    assert shot.stat().st_size > 20_000  # a blank page compresses to a few kilobytes
