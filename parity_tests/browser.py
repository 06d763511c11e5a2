"""A page in a real browser: headless Chromium (the Debian package `make test` installs) renders a file,
screenshots it and dumps its DOM; its console messages come back on stderr (`--enable-logging=stderr`, one
`CONSOLE` line each). `render` returns what a test asserts on: the console lines, whether the screenshot is
blank (one colour), and the DOM text."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("headless Chromium is not installed: `make test` installs the Debian package (apt-get install "
                    "chromium); the browser tests render the pages in it")
    return found


def _run(page: Path, *flags: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *flags,
                               page.resolve().as_uri()], capture_output=True, text=True, timeout=120)


def render(page: str | Path, screenshot: str | Path, size=(1400, 1800)) -> dict:
    """Render `page` at `size` into `screenshot` (PNG): {"console": [...], "blank": bool, "std": float,
    "dom": str}."""
    page, screenshot = Path(page), Path(screenshot)
    if not page.is_file():
        raise FileNotFoundError(page)
    # One Chromium run writes the screenshot and prints the DOM (two runs cost twice the start-up: 16 explain pages)
    shot = _run(page, f"--window-size={size[0]},{size[1]}", f"--screenshot={screenshot}", "--dump-dom")
    image = cv2.imread(str(screenshot))
    if image is None:
        raise RuntimeError(f"Chromium wrote no screenshot of {page}: {shot.stderr[-2000:]}")
    console = [line for line in shot.stderr.splitlines() if ":CONSOLE" in line]
    std = float(np.asarray(image, np.float64).std())
    return {"console": console, "blank": std < 1.0, "std": std, "dom": shot.stdout}


def problems(result: dict, expected_text: str) -> list[str]:
    """Why a rendered page is not a page: a console message, a blank screenshot, or the DOM without
    `expected_text`."""
    out = [f"console: {line}" for line in result["console"]]
    if result["blank"]:
        out.append(f"blank screenshot (pixel std {result['std']:.2f})")
    if expected_text not in result["dom"]:
        out.append(f"the rendered DOM lacks {expected_text!r}")
    return out
