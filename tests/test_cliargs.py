"""Process settings the inference commands apply; typed configs from parsed flags."""
import argparse
import platform
import subprocess
import sys

import pytest

from dealthdr.cliargs import config_from, reuse_freed_memory

# In a fresh CLI-like process: where a 16 MiB activation lands (below the heap's end, i.e.
# on the brk heap, rather than in its own mmap) and whether freeing it shrinks the heap.
_WHERE = """
import ctypes, sys, torch
from dealthdr.cliargs import reuse_freed_memory
if sys.argv[1] == "on":
    assert reuse_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.sbrk.restype = ctypes.c_void_p
x = torch.empty(4 * 2 ** 20).fill_(1.0)
on_heap, end = x.data_ptr() < libc.sbrk(0), libc.sbrk(0)
del x
print(int(on_heap), int(libc.sbrk(0) == end))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_freed_activations_stay_on_the_heap_for_the_next_window():
    def where(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", _WHERE, mode], check=True,
                             capture_output=True, text=True).stdout.split()
        return int(out[-2]), int(out[-1])

    assert where("off")[0] == 0          # glibc's default: its own mmap, unmapped on free
    assert where("on") == (1, 1)         # on the heap, and the heap keeps it when freed


def test_reuse_freed_memory_is_a_no_op_off_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert reuse_freed_memory() is False


def test_every_device_bench_command_parses_into_its_typed_config():
    """The bench libraries take a config dataclass: each subcommand's flags (defaults
    included) become exactly its fields, and the handler gets the config, not the namespace."""
    from dealthdr.bench import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    positional = {"summary": ["r.jsonl"], "plot": ["r.jsonl", "--out", "p"],
                  "pick": ["--budget-ms", "5", "--records", "r.jsonl"], "ingest": ["r.jsonl"],
                  "profile-pte": ["a.pte"], "tiled": ["a.pte"], "run": ["--artifacts", "x"],
                  "apple": ["--artifacts", "x"]}
    for name in sub.choices:
        ns = parser.parse_args([name, *positional.get(name, [])])
        cfg = config_from(ns.config, ns, cli._PARSER_ENTRIES)
        assert type(cfg) is ns.config and not isinstance(cfg, argparse.Namespace)
        flags = {a.dest for a in sub.choices[name]._actions if a.dest != "help"}
        assert set(vars(cfg)) == flags, name


def test_config_from_names_flags_and_fields_that_do_not_match():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Small:
        size: int
        out: str

    assert config_from(Small, argparse.Namespace(size=3, out="o", run=1), ("run",)) == Small(3, "o")
    with pytest.raises(TypeError, match=r"without a field \['extra'\].*without a flag \['out'\]"):
        config_from(Small, argparse.Namespace(size=3, extra=1))
