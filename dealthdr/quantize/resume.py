"""What a killed `qat.py` run finished, kept for the next run with the same settings.

`qat.py` builds everything in a staging folder that only becomes `--out` when the whole run
succeeds, so a kill during the Core ML leg (about an hour in on 2 cores) would otherwise throw
away the finished sensitivity sweep and the finished XNNPACK leg with its gated .pte files.
Each finished stage is copied into `<state>/finished/<stage>/` (its report section, artifact
records and files, written to a temporary folder and renamed) and reused by a later run whose
settings fingerprint matches; a changed flag that affects the result redoes the stage, and so
does changed code: the fingerprint holds a digest of the package's source, because a stage
finished by other code holds other graphs (an int8 program of an earlier FGMA would otherwise
be copied into a new report as if it were made now).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import fields
from pathlib import Path

from dealthdr.quantize.config import QuantizeConfig

log = logging.getLogger(__name__)

def code_digest(root: Path | None = None) -> str:
    """sha256 over the `dealthdr` package's Python sources (relative paths and contents)."""
    root = root or Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def fingerprint(cfg: QuantizeConfig, checkpoint_sha256: str, code: str | None = None) -> str:
    """Digest of every setting that can change a stage's result (fields not marked NEUTRAL),
    the checkpoint's and the code's (`code_digest()` unless given)."""
    settings = {f.name: getattr(cfg, f.name) for f in fields(cfg) if not f.metadata.get("neutral")}
    settings["checkpoint_sha256"] = checkpoint_sha256
    settings["code"] = code if code is not None else code_digest()
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Finished:
    """Finished stages under `<state>/finished`, valid for one settings fingerprint."""

    def __init__(self, state: Path, key: str) -> None:
        self.root, self.key = state / "finished", key

    def load(self, stage_name: str, stage: Path):
        """The stage's saved result, its files copied into `stage`; None if not reusable."""
        folder = self.root / stage_name
        doc_path = folder / "result.json"
        if not doc_path.is_file():
            return None
        try:
            doc = json.loads(doc_path.read_text())
            if doc["fingerprint"] != self.key:
                log.info("%s: finished with other settings or code; running it again", folder)
                return None
            files = list(doc["files"])
            result = doc["result"]
        except (ValueError, KeyError, TypeError) as err:
            log.warning("%s: unreadable (%s); running the stage again", doc_path, err)
            return None
        missing = [f for f in files if not (folder / f).exists()]
        if missing:
            log.warning("%s: %s missing; running the stage again", folder, missing)
            return None
        for f in files:
            _copy(folder / f, stage / f)
        log.info("%s: reusing the finished %s stage (%d files)", folder, stage_name, len(files))
        return result

    def save(self, stage_name: str, stage: Path, files: list[str], result) -> None:
        """Keep a finished stage: `files` (names in `stage`) and its JSON-able result."""
        folder = self.root / stage_name
        tmp = self.root / f".{stage_name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in files:
            _copy(stage / f, tmp / f)
        (tmp / "result.json").write_text(json.dumps(
            {"fingerprint": self.key, "files": files, "result": result}, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)


def _copy(src: Path, dst: Path) -> None:
    """An artifact is a file (.pte, .onnx) or a folder (.mlpackage)."""
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def new_files(stage: Path, before: set[str]) -> list[str]:
    return sorted(p.name for p in stage.iterdir() if p.name not in before)
