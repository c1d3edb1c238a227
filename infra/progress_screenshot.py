"""The README's picture of ``lakehouse run`` on a terminal: a real run of TPC-H (SF 0.1 by default) in a pseudo
terminal, the screen as it stood halfway through silver.lineitem's merge step, drawn as SVG (rich's export).
Writes docs/progress.svg. Run by hand: ``python infra/progress_screenshot.py [--scale-factor 0.1]``."""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.text import Text

REPO = Path(__file__).resolve().parents[1]
CONTROL = re.compile(r"\x1b\[(\??[0-9;]*)([A-Za-z])|\r|\n|[^\x1b\r\n]+")


def screen(stream: str) -> list[str]:
    """The lines a terminal shows after ``stream``: text, colours (kept), carriage returns, line feeds, cursor up
    and line erasure, which is all rich's live display uses."""
    lines, row = [""], 0
    for m in CONTROL.finditer(stream):
        token = m.group(0)
        if token == "\n":
            row += 1
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            pass  # rich rewrites whole lines after erasing them
        elif m.group(2) == "A":
            row = max(0, row - int(m.group(1) or 1))
        elif m.group(2) == "K":
            lines[row] = ""
        elif m.group(2) == "m":
            lines[row] += token
        elif not token.startswith("\x1b"):
            lines[row] += token
    return lines


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--scale-factor", default="0.1")
    args.add_argument("--out", default=str(REPO / "docs/progress.svg"))
    opts = args.parse_args()
    width = 168
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(width), "LINES": "40", "RAY_USAGE_STATS_ENABLED": "0"}
    lakehouse = [sys.executable, "-m", "lakehouse.ops.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        root = str(Path(tmp) / "lake")
        subprocess.run([*lakehouse, "demo-data", "--root", root, "--scale-factor", opts.scale_factor], check=True,
                       env=env, capture_output=True)
        main_fd, other = os.openpty()
        proc = subprocess.Popen([*lakehouse, "run", "--root", root], stdout=other, stderr=subprocess.PIPE, env=env)
        os.close(other)
        chunks = []
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk.decode(errors="replace"))
        os.close(main_fd)
        if proc.wait() != 0:
            print(proc.stderr.read().decode() if proc.stderr else "", file=sys.stderr)
            return 1
    stream, shot = "", None
    for text in chunks:  # the first screen showing silver.lineitem's merge at least half done
        stream += text
        lines = screen(stream)
        plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]
        found = [re.search(r"silver\.lineitem merge partition .*?(\d+)/(\d+)", p) for p in plain]
        if any(f and 2 * int(f.group(1)) >= int(f.group(2)) for f in found):
            shot = lines
            break
    if shot is None:
        print("the run never showed silver.lineitem's merge half done", file=sys.stderr)
        return 1
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=True)
    for line in [line for line in shot if line.strip()][-24:]:
        console.print(Text.from_ansi(line), overflow="crop", no_wrap=True)
    console.save_svg(opts.out, title="lakehouse run")
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
