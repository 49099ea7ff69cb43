"""Reports: built from records alone, and rendered by a real headless browser with their plots visible."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from alignscope.report import Figure, Report, Section, Table, line_plot, write_report
from alignscope.report.plots import Series


def _report(tmp_path: Path) -> Path:
    png = line_plot(
        tmp_path / "plots" / "curve",
        [Series("ASR", [0, 5, 10], [10, 60, 80], [5, 40, 60], [20, 75, 90])],
        "Prefilling attack",
        "k",
        "ASR (%)",
        (0, 100),
    )
    sec = Section(
        "Prefilling attack",
        intro="intro <b>escaped</b>",
        provenance={"model": "m", "judge": "keyword"},
        tables=[Table(["k", "ASR"], [[0, "10%"], [5, "60%"]])],
        figures=[Figure(png, "curve")],
    )
    return write_report(
        Report("alignscope test", {"model": "m"}, [sec], ["a summary line"]), tmp_path / "report.html"
    )


def test_report_embeds_plots_and_escapes_text(tmp_path: Path) -> None:
    html = _report(tmp_path).read_text()
    assert html.count("data:image/png;base64,") == 1
    assert "&lt;b&gt;escaped&lt;/b&gt;" in html and "<b>escaped</b>" not in html
    assert 'href="plots/curve.svg"' in html
    assert (tmp_path / "plots" / "curve.svg").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium on this machine (.ci/run installs it)")
def test_report_renders_in_headless_chromium_with_its_plot(tmp_path: Path) -> None:
    from PIL import Image

    report = _report(tmp_path)
    shot = tmp_path / "shot.png"
    browser = _chromium()
    assert browser is not None
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1000,1400",
        f"--screenshot={shot}",
        report.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = Image.open(shot).convert("RGB")
    pixels = list(img.getdata())
    # matplotlib's default line colour (tab:blue, #1f77b4) appears only if the embedded plot rendered
    blue = sum(1 for r, g, b in pixels if abs(r - 0x1F) < 20 and abs(g - 0x77) < 20 and abs(b - 0xB4) < 20)
    assert blue > 200
    dom = subprocess.run(
        [*cmd[:-2], "--dump-dom", report.resolve().as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "Prefilling attack" in dom and "a summary line" in dom
