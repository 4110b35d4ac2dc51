"""The project's shape: imports point one way, no `sys.path` edits, no import circles, and every
script and front-door command answers `--help` from any folder."""
import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("dealthdr.export", "dealthdr.quantize", "dealthdr.calib", "dealthdr.bench")
SCRIPTS = ["export/to_executorch.py", "export/to_coreml.py", "export/to_onnx.py",
           "quantize/qat.py", "calib/buckets.py", "calib/noise.py", "calib/darktable.py",
           "device_bench/fgma_scaling.py", "device_bench/fgma_exported.py"]
FRONT_DOOR = [["export", "executorch"], ["export", "coreml"], ["export", "onnx"], ["quantize"],
              ["bench"], ["bench", "run"], ["calib", "buckets"], ["calib", "noise"],
              ["calib", "darktable"]]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (ROOT / "dealthdr").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict) -> set[str]:
    """First-party modules `name` imports anywhere in its body (lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                         for a in node.names)
    out = set()
    for mod in found:
        while mod and mod not in mods:
            mod = mod.rpartition(".")[0]
        if mod and mod != name:
            out.add(mod)
    return out


def test_network_never_imports_the_tools_and_no_module_imports_in_a_circle():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    network = [m for m in graph if not m.startswith(TOOLS) and m != "dealthdr.cli"]
    assert "dealthdr.model.fgma" in network and "dealthdr.export.to_executorch" in graph
    leaks = {m: sorted(i for i in graph[m] if i.startswith(TOOLS)) for m in network}
    assert not {m: i for m, i in leaks.items() if i}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles


def test_no_file_edits_sys_path():
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    files = [ROOT / f for f in tracked] or list(ROOT.glob("[!.]*/**/*.py"))
    assert len(files) > 50
    edits = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "path" and \
                    isinstance(node.value, ast.Name) and node.value.id == "sys":
                edits.append(str(path.relative_to(ROOT)))
    assert not edits


_HELP_DRIVER = """
import contextlib, io, runpy, sys
from dealthdr.cli import main
results = []
for args in {front!r}:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main([*args, "--help"])
        except SystemExit as e:
            code = e.code
    results.append((" ".join(args), code, out.getvalue()))
for script in {scripts!r}:
    out = io.StringIO()
    sys.argv = [script, "--help"]
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code
    results.append((script, code, out.getvalue()))
for name, code, text in results:
    print(name, "|", code, "|", "usage:" in text and len(text) > 200)
"""


def test_front_door_and_every_script_answer_help_from_another_folder(tmp_path):
    driver = _HELP_DRIVER.format(front=FRONT_DOOR, scripts=[str(ROOT / s) for s in SCRIPTS])
    res = subprocess.run([sys.executable, "-c", driver], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line.split(" | ") for line in res.stdout.splitlines() if " | " in line]
    assert len(rows) == len(FRONT_DOOR) + len(SCRIPTS)
    assert all(code in ("0", "None") and ok == "True" for _, code, ok in rows), rows


def test_front_door_rejects_an_unknown_job(tmp_path):
    res = subprocess.run([sys.executable, "-m", "dealthdr", "export", "tflite"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "executorch | coreml | onnx" in res.stderr


@pytest.mark.e2e
def test_wheel_holds_the_tools_and_runs_them_without_the_checkout(tmp_path):
    """A non-editable build: the wheel has the tool packages (under dealthdr only) and the
    shipped weights, and the front door runs from it with the checkout out of reach."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for rel in listed:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(src)], check=True, capture_output=True,
                   timeout=600)
    (wheel,) = wheels.glob("dealthdr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for need in ("dealthdr/export/to_executorch.py", "dealthdr/quantize/qat.py",
                 "dealthdr/calib/buckets.py", "dealthdr/bench/worker.py",
                 "dealthdr/weights/dealthdr_tiny.safetensors"):
        assert need in names
    assert not [n for n in names if n.split("/")[0] in ("export", "quantize", "calib",
                                                        "device_bench", "tests")]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", "import dealthdr, dealthdr.cli as c; "
                          "print(dealthdr.__file__); raise SystemExit(c.main(['export', "
                          "'executorch', '--help']))"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith(str(site)) and "--s-buckets" in res.stdout


def test_every_tool_parses_its_flags_into_its_config_and_defaults_agree():
    """Flags and typed configs are one set of names (parse_config refuses a mismatch), and an
    empty command line gives the dataclass's own defaults: the library called without the CLI
    runs the same job as the script with no flags."""
    from dataclasses import fields

    from dealthdr.export import to_coreml, to_executorch, to_onnx
    from dealthdr.export.config import (CoreMLConfig, ExecuTorchConfig, OnnxConfig,
                                        parse_config)
    from dealthdr.quantize import qat
    from dealthdr.quantize.config import QuantizeConfig

    for module, cls in ((to_executorch, ExecuTorchConfig), (to_coreml, CoreMLConfig),
                        (to_onnx, OnnxConfig), (qat, QuantizeConfig)):
        parsed = parse_config(module.build_parser(), cls, [])
        assert parsed == cls(), [(f.name, getattr(parsed, f.name), getattr(cls(), f.name))
                                 for f in fields(cls) if getattr(parsed, f.name)
                                 != getattr(cls(), f.name)]
    cfg = parse_config(to_executorch.build_parser(), ExecuTorchConfig,
                       ["--s-buckets", "0,inf", "--size", "64x96", "--stream"])
    assert cfg.s_buckets == (0.0, float("inf")) and cfg.size == (64, 96) and cfg.stream
    parser = to_onnx.build_parser()
    parser.add_argument("--stray", default=1)
    with pytest.raises(TypeError, match="stray"):
        parse_config(parser, OnnxConfig, [])
