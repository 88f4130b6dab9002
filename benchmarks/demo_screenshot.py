"""Screenshot of the ``langseg demo`` page in headless Chromium, once the first example film is segmented.

    apt-get install -y chromium && pip install playwright     # the system browser; no browser download
    python benchmarks/demo_screenshot.py                      # writes docs/figures/demo.png

Starts ``langseg demo --port <free port>`` as a user would (the console script, the shipped checkpoint),
opens the page with Playwright driving ``/usr/bin/chromium``, waits for the page-load segmentation to
show one overlay per text, saves the visible window and stops the server.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, server: subprocess.Popen, timeout: float = 240.0) -> None:
    """Returns once ``port`` accepts connections; a RuntimeError if the server exits or the time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            raise RuntimeError(f"langseg demo exited with status {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"langseg demo did not listen on port {port} within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--langseg", default=shutil.which("langseg") or "langseg", help="the console script")
    parser.add_argument("--browser", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--output", default=str(REPO / "docs" / "figures" / "demo.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    with tempfile.TemporaryDirectory() as cwd:  # a fresh folder: nothing of the checkout is needed
        server = subprocess.Popen([args.langseg, "demo", "--port", str(port)], cwd=cwd)
        try:
            wait_for_port(port, server)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.browser, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 760})
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function("[...document.querySelectorAll('img')]"
                                       ".filter(i => i.src.endsWith('/image.png')).length >= 4", timeout=120_000)
                page.wait_for_timeout(1500)  # let the gallery finish laying out
                page.screenshot(path=args.output)
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
