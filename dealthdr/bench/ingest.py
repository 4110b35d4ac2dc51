"""`python -m device_bench ingest FILE... --into RESULTS`: validate device records measured
elsewhere (a phone, `device_bench apple` on a Mac, another model measured for comparison) and
merge them into a records file.

Every record of every FILE is checked against the schema (dealthdr/bench/schema.py) before
anything is written; the first bad one stops the command with its file, line and field
(malformed JSON, a missing field, a wrong type, a negative or inverted latency...) and RESULTS
is left as it was. A record with the same measurement key as one already in RESULTS replaces
it (a re-measurement); the file is replaced atomically.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from dealthdr.bench.schema import key, read_records, write_records

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("ingest", help="validate and merge device records from elsewhere",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", type=Path, nargs="+", metavar="FILE",
                   help="JSON-lines (or JSON array) record files to merge")
    p.add_argument("--into", type=Path, default=Path("runs/device_records.jsonl"),
                   help="records file to merge into, created if missing "
                        "(default runs/device_records.jsonl, outside the source tree)")
    p.add_argument("--dry-run", action="store_true", help="validate only, write nothing")
    p.set_defaults(run=run, config=IngestConfig)


def merge(existing: list[dict], incoming: list[dict]) -> tuple[list[dict], int, int]:
    """(merged, added, replaced): incoming records replace existing ones with the same key."""
    index = {key(r): i for i, r in enumerate(existing)}
    merged, added, replaced = list(existing), 0, 0
    for r in incoming:
        k = key(r)
        if k in index:
            merged[index[k]] = r
            replaced += 1
        else:
            index[k] = len(merged)
            merged.append(r)
            added += 1
    return merged, added, replaced


@dataclass(frozen=True)
class IngestConfig:
    """`device_bench ingest`'s settings, one field per flag (`--help` explains each)."""
    files: list[Path]
    into: Path
    dry_run: bool


def run(cfg: IngestConfig) -> int:
    incoming = [r for f in cfg.files for r in read_records(f)]
    if not incoming:
        raise ValueError(f"no records in {[str(f) for f in cfg.files]}")
    existing = read_records(cfg.into) if cfg.into.is_file() else []
    merged, added, replaced = merge(existing, incoming)
    devices = sorted({r["device"] for r in incoming})
    if cfg.dry_run:
        print(f"{len(incoming)} valid record(s) from {devices}; nothing written (--dry-run)")
        return 0
    write_records(cfg.into, merged)
    print(f"{cfg.into}: {added} added, {replaced} replaced ({len(merged)} records; devices "
          f"{devices})")
    return 0
