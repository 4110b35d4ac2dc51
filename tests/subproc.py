"""Run a `dealthdr` subcommand in a fresh process, as a user would (kill/resume tests need a
real process to kill), and read the JSON-lines log it writes."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_dealthdr(command: str, flag: str, source: Path, out: Path, args: list[str],
                 *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "dealthdr", command, flag, str(source), "--out", str(out),
           *args, *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def read_log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
