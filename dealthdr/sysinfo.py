"""Machine and version stamp attached to every measured record (profile, benchmarks)."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_state() -> tuple[str | None, tuple[str, ...]]:
    """(HEAD, with "-dirty" when tracked files differ from it; the paths that differ)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent, check=True).stdout
    try:
        head = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None, ()
    # Porcelain v1 lines: two status letters, a space, the path ("old -> new" for renames).
    paths = tuple(sorted(line[3:] for line in status.splitlines() if line.strip()))
    return (f"{head}-dirty" if paths else head), paths


# Read when a command starts (every command that writes a record imports this module at its
# top), not when it writes: a run of 45 minutes records the code it ran, also when a commit
# lands while it runs.
_COMMIT, _DIRTY_PATHS = _git_state()


def source_commit() -> str | None:
    """The git commit of the source tree this process started from, with "-dirty" when tracked
    files differed from it then; None outside a git checkout (an installed wheel)."""
    return _COMMIT


def dirty_paths() -> list[str]:
    """The tracked files that differed from `source_commit` when this process started: what a
    "-dirty" record ran with besides the commit (often only records written by an earlier
    command of the same session)."""
    return list(_DIRTY_PATHS)


def machine_record() -> dict:
    import torch
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": source_commit(),
        "dirty_paths": dirty_paths(),
    }
