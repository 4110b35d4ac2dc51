"""Process settings the inference commands apply."""
import platform
import subprocess
import sys

import pytest

from dealthdr.cliargs import reuse_freed_memory

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
