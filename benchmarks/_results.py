"""Shared by the benchmark scripts: machine description and appending a table to benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.system()} {cpu}, {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def append(title: str, table: str, notes: str = "") -> None:
    """Append a dated section with the exact command line to RESULTS.md."""
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"\n## {title}\n\n- date: {stamp}\n- machine: {machine()}\n- command: `{command}`\n\n{table}\n"
    if notes:
        text += f"\n{notes}\n"
    with RESULTS.open("a") as f:
        f.write(text)
    print(f"appended to {RESULTS}")
