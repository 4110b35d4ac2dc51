"""device_bench: statistics, the run harness on small real artifacts (resume included), ingest,
pick, plot, the Table G breakdown and the Apple path's records and commands."""
import json
import math
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dealthdr.bench import schema
from dealthdr.bench.cli import main
from dealthdr.bench.stats import fit_line, latency_stats, percentile, trimmed
from dealthdr.cliargs import FREED_MEMORY_KEPT

SIZE = (32, 32)


def record(**over) -> dict:
    base = {"device": "phone-x", "cpu": "A18 Pro", "os": "iOS 18.2", "runtime": "executorch",
            "runtime_version": "1.5.1", "backend": "xnnpack", "precision": "fp32",
            "variant": "tiny", "s": "15", "bucket_k": [10, 5, 1], "attention_ratio": 0.2,
            "size": "256x256", "threads": 2, "latency_ms_median": 20.0, "latency_ms_p10": 19.0,
            "latency_ms_p90": 22.0, "load_ms": 150.0, "peak_mem_mb": 80.0, "gflops": 14.0,
            "centre": "short"}
    return {**base, **over}


# ---------------------------------------------------------------- statistics

def test_trimmed_statistics_on_known_numbers():
    samples = [float(v) for v in range(1, 11)] + [1000.0]   # one outlier
    assert trimmed(samples, 0.1) == [float(v) for v in range(2, 11)]
    st = latency_stats(samples, trim=0.1)
    assert st["latency_ms_median"] == 6.0 and st["samples_kept"] == 9
    assert st["latency_ms_p10"] == pytest.approx(2.8) and st["latency_ms_p90"] == pytest.approx(9.2)
    assert st["latency_ms_mean"] == pytest.approx(6.0)       # the outlier is gone
    assert latency_stats(samples, trim=0.0)["latency_ms_p90"] == pytest.approx(10.0)
    xs = list(np.random.default_rng(0).random(37) * 100)
    for q in (0, 10, 50, 90, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    with pytest.raises(ValueError):
        latency_stats([5.0, -1.0])


def test_fit_line_slope_intercept_and_residual():
    fit = fit_line([0.0, 0.5, 1.0], [100.0, 130.0, 150.0])
    assert fit["slope"] == pytest.approx(50.0) and fit["intercept"] == pytest.approx(305 / 3)
    assert fit["max_abs_residual"] == pytest.approx(10 / 3)
    assert fit["max_rel_residual"] == pytest.approx((10 / 3) / (380 / 3))
    exact = fit_line([0, 0.2, 1], [10, 12, 20])
    assert exact["r2"] == pytest.approx(1.0) and exact["max_abs_residual"] < 1e-9
    assert fit_line([0.3, 0.3], [1.0, 3.0])["slope"] is None


# ---------------------------------------------------------------- run on real small artifacts

class Stand(nn.Module):
    """Stands in for a bucket graph with its I/O contract (frames (1, 5, 3, H, W), exposures
    (1, 5) -> (1, 3, H, W)): exporting the real network takes minutes (tests/test_export.py
    does it); the harness only loads, runs and times what the manifest lists."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(15, 3, 3, padding=1)

    def forward(self, frames, exposures):
        b, t, c, h, w = frames.shape
        x = frames.reshape(b, t * c, h, w) * exposures.repeat_interleave(3, 1).reshape(b, t * c,
                                                                                       1, 1)
        return torch.relu(self.conv(x))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from dealthdr.fileio import sha256_file
    from dealthdr.checkpoint import resolve_checkpoint
    from dealthdr.export.artifacts import artifact_record
    from dealthdr.export.buckets import make_buckets
    from dealthdr.export.to_executorch import lower

    root = tmp_path_factory.mktemp("artifacts")
    cal = {"buckets": [{"s": "15", "ratio": [0.5, 0.25, 0.1]}]}
    bucket = make_buckets(cal, [15.0], SIZE, ("short",), 8)[0]
    ex = (torch.rand(1, 5, 3, *SIZE), torch.tensor([[1.0, 8, 1, 8, 1]]))
    prog = torch.export.export(Stand().eval(), ex, strict=False)
    ckpt = resolve_checkpoint("default")
    model = {"variant": "tiny", "checkpoint": str(ckpt), "checkpoint_sha256": sha256_file(ckpt)}
    (root / "et").mkdir()
    (root / "onnx").mkdir()
    pte = root / "et" / "stand_s15.pte"
    pte.write_bytes(lower({"forward_short": prog}, "xnnpack")[0].buffer)
    onnx_path = root / "onnx" / "stand_s15_short.onnx"
    torch.onnx.export(prog, ex, str(onnx_path), dynamo=True, input_names=["frames", "exposures"],
                      output_names=["hdr"], external_data=False, verbose=False)
    for folder, rec in (("et", artifact_record(pte, root / "et", "executorch-xnnpack", "fp32",
                                               bucket, SIZE, {}, frames=5,
                                               method="forward_short")),
                        ("onnx", artifact_record(onnx_path, root / "onnx", "onnx", "fp32",
                                                 bucket, SIZE, {}, frames=5))):
        (root / folder / "manifest.json").write_text(json.dumps(
            {"format": "dealthdr-export-manifest/1", "model": model, "artifacts": [rec]}))
    return root, bucket


@pytest.mark.e2e   # exported artifacts, real runs
def test_run_writes_valid_records_and_resumes(artifacts, tmp_path, monkeypatch, capsys):
    from dealthdr.bench import run as run_mod
    from dealthdr.model.network import level_tiles

    root, bucket = artifacts
    out = tmp_path / "host.jsonl"
    argv = ["-q", "run", "--artifacts", str(root / "et"), str(root / "onnx"), "--sizes", "32x32",
            "--threads", "1", "--warmup", "1", "--repeat", "4", "--out", str(out)]
    assert main(argv) == 0
    recs = schema.read_records(out)
    assert sorted(r["runtime"] for r in recs) == ["executorch", "onnxruntime", "torch"]
    for r in recs:
        assert set(schema.FIELDS) <= set(r) and r["size"] == "32x32" and r["threads"] == 1
        assert r["s"] == "15" and r["bucket_k"] == list(bucket.budget)
        assert r["attention_ratio"] == pytest.approx(sum(bucket.budget)
                                                     / sum(level_tiles(SIZE, 8)), abs=1e-6)
        assert r["gflops"] > 0 and r["peak_mem_mb"] >= 0 and r["load_ms"] > 0
        assert len(r["samples_ms"]) == 4
        # eager timed with the allocator settings of `dealthdr reconstruct`, the runtimes that
        # plan their own buffers with the system allocator
        glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
        kept = glibc and r["runtime"] == "torch"
        assert r["allocator"] == (FREED_MEMORY_KEPT if kept else "system defaults")
        assert r["latency_ms_median"] == pytest.approx(latency_stats(r["samples_ms"])[
            "latency_ms_median"], abs=1e-3)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert {g["runtime"] for g in summary["groups"]} == {"executorch", "onnxruntime", "torch"}
    assert "latency against attention ratio" in capsys.readouterr().out

    measured = []
    real = run_mod.run_job
    monkeypatch.setattr(run_mod, "run_job", lambda job, *a: measured.append(job.runtime)
                        or real(job, *a))
    before = out.read_bytes()
    assert main(argv) == 0 and measured == [] and out.read_bytes() == before   # all done
    schema.write_records(out, [r for r in recs if r["runtime"] != "onnxruntime"])
    assert main(argv) == 0 and measured == ["onnxruntime"]                     # only the gap
    assert len(schema.read_records(out)) == 3


@pytest.mark.e2e   # exported artifacts (fixture)
def test_passes_interleave_pool_and_resume(artifacts, tmp_path, monkeypatch, capsys):
    """--passes 2: forward then reverse order, one record per job pooling both passes, and a
    run killed between passes resumes with only the missing pass."""
    from dealthdr.bench import run as run_mod

    root, _ = artifacts
    out = tmp_path / "host.jsonl"
    calls, fail = [], {"on": None}

    def fake(job, warmup, repeat, timeout):
        calls.append(job.runtime)
        if len(calls) == fail["on"]:
            raise KeyboardInterrupt                    # the run is killed here
        base = {"torch": 30.0, "onnxruntime": 20.0, "executorch": 10.0}[job.runtime]
        n = sum(c == job.runtime for c in calls)
        return {"runtime": job.runtime, "runtime_version": "x", "load_ms": 5.0 * n,
                "samples_ms": [base * n] * repeat, "peak_mem_mb": float(n),
                "peak_rss_mb": 100.0, "peak_mem_method": "test", "threads_effective": 1}
    monkeypatch.setattr(run_mod, "run_job", fake)
    argv = ["-q", "run", "--artifacts", str(root / "et"), str(root / "onnx"), "--sizes", "32x32",
            "--threads", "1", "--repeat", "3", "--passes", "2", "--out", str(out)]
    fail["on"] = 5                                     # pass 2, second job
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    first, partial = calls[:3], out.with_name(out.name + ".partial.json")
    assert calls[3] == first[2]                        # pass 2 starts where pass 1 ended
    assert len(schema.read_records(out)) == 1 and partial.is_file()
    fail["on"], calls[:] = None, []
    assert main(argv) == 0
    assert calls == first[:2][::-1]                    # only the missing passes ran
    recs = {r["runtime"]: r for r in schema.read_records(out)}
    assert len(recs) == 3 and not partial.exists()
    ex = recs["executorch"]
    assert ex["passes"] == 2 and ex["pass_medians_ms"] == [10.0, 20.0]
    assert len(ex["samples_ms"]) == 6 and ex["latency_ms_median"] == 15.0
    assert ex["peak_mem_mb"] == 2.0 and ex["load_ms"] == 7.5

    # --fresh measures every job again and keeps nothing of the earlier run, even with a
    # resume state left beside it
    again = []
    monkeypatch.setattr(run_mod, "run_job", lambda job, *a: again.append(job.runtime) or {
        **fake(job, *a), "samples_ms": [99.0] * 3})
    partial.write_text('{"stale": [{}]}')
    assert main([*argv, "--fresh"]) == 0
    assert sorted(again) == sorted(first * 2) and not partial.exists()
    fresh = schema.read_records(out)
    assert len(fresh) == 3 and all(r["pass_medians_ms"] == [99.0, 99.0] for r in fresh)
    monkeypatch.setattr(run_mod, "run_job", fake)

    # a resume state cut off mid-write (or edited by hand) is refused by name; out is kept
    before = out.read_bytes()
    for junk in ('{"job": [{"samples', '[1, 2]'):
        partial.write_text(junk)
        assert main(argv) == 2
        assert out.read_bytes() == before and partial.read_text() == junk
    assert capsys.readouterr().err.count("delete it to re-measure") == 2


def test_worker_peak_memory_sees_native_allocations():
    from dealthdr.bench.worker import peak_memory, start_memory_watch

    import mmap

    watch = start_memory_watch()
    # 64 MB of fresh anonymous pages, touched, then unmapped before the reading. A heap
    # allocation may reuse memory that earlier tests left resident (seen in the full suite).
    block = mmap.mmap(-1, 64 * 2 ** 20)
    np.frombuffer(block, dtype=np.uint8)[:] = 1
    block.close()
    assert peak_memory(watch)["peak_mem_mb"] > 50


class WithPortableSum(Stand):
    """A sum over frames and channels, which XNNPACK does not take: one portable kernel."""

    def forward(self, frames, exposures):
        return super().forward(frames, exposures) * frames.sum(dim=(1, 2)).unsqueeze(1)


def test_profile_pte_synthesises_inputs_for_any_method_of_our_programs():
    from dealthdr.bench.profile_pte import method_inputs

    fuse = method_inputs("fuse_long", [(1, 5, 3, 8, 8), (1, 5), (1, 1), (4, 2, 2, 2)])
    assert fuse[1].tolist() == [[8.0, 1.0, 8.0, 1.0, 8.0]]       # the long centre's pattern
    assert fuse[0].shape == (1, 5, 3, 8, 8) and fuse[2].tolist() == [[1.0]]
    assert 0 <= float(fuse[3].min()) and float(fuse[3].max()) < 1 and fuse[3].std() > 0
    guide = method_inputs("guide", [(1, 5, 3, 8, 8), (1, 5)])
    assert guide[1].tolist() == [[1.0, 8.0, 1.0, 8.0, 1.0]]      # no centre: short's
    flow = method_inputs("flow", [(1, 3, 8, 8), (1, 1), (1, 3, 8, 8), (1, 1)])
    assert [tuple(x.shape) for x in flow] == [(1, 3, 8, 8), (1, 1)] * 2
    assert not torch.equal(flow[0], torch.ones(1, 3, 8, 8))


@pytest.mark.e2e   # ExecuTorch lowering + profile
def test_profile_pte_splits_execute_into_delegate_portable_and_runtime(tmp_path, capsys):
    from dealthdr.export.to_executorch import lower

    ex = (torch.rand(1, 5, 3, *SIZE), torch.tensor([[1.0, 8, 1, 8, 1]]))
    prog = torch.export.export(WithPortableSum().eval(), ex, strict=False)
    pte = tmp_path / "m.pte"
    pte.write_bytes(lower({"forward_short": prog, "forward_long": prog}, "xnnpack")[0].buffer)
    out = tmp_path / "p.json"
    assert main(["-q", "profile-pte", str(pte), "--method", "forward_long", "--repeat", "2",
                 "--etdump", str(tmp_path / "t.etdp"), "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["method"] == "forward_long" and rec["size"] == "32x32" and rec["runs"] == 2
    parts = rec["delegate_calls_ms"] + rec["portable_ops_ms"] + rec["runtime_other_ms"]
    assert rec["execute_ms"] > 0 and parts == pytest.approx(rec["execute_ms"], abs=2e-3)
    portable = {r["op"]: r["calls_per_run"] for r in rec["portable_ops"]}
    assert portable["sum.IntList_out"] == 1 and "convolution.out" not in portable
    assert rec["portable_calls_per_run"] == sum(portable.values())
    assert rec["delegate_calls_per_run"] >= 1
    assert any(r["op"].startswith("Convolution") for r in rec["delegated_ops"])
    assert not any("#" in r["op"] for r in rec["delegated_ops"])    # instances pooled
    assert (tmp_path / "t.etdp").stat().st_size > 0

    (tmp_path / "bad.pte").write_bytes(b"not a program" * 10)
    # cut short: the runtime's loader would abort the process on some such files
    (tmp_path / "cut.pte").write_bytes(pte.read_bytes()[:pte.stat().st_size // 2])
    for argv, msg in (([str(pte), "--method", "forward"], "no method 'forward'"),
                      ([str(tmp_path / "bad.pte")], "not a loadable ExecuTorch program"),
                      ([str(tmp_path / "cut.pte")], "(truncated: its header describes"),
                      ([str(tmp_path / "none.pte")], "no such .pte")):
        assert main(["-q", "profile-pte", *argv, "--out", str(tmp_path / "x.json")]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------- ingest

@pytest.mark.parametrize("mutate, field", [
    (lambda r: json.dumps(r)[:-5], "not valid JSON"),
    (lambda r: json.dumps({k: v for k, v in r.items() if k != "threads"}), "'threads'"),
    (lambda r: json.dumps({**r, "latency_ms_median": -3.0}), "'latency_ms_median'"),
    (lambda r: json.dumps({**r, "load_ms": "150"}), "'load_ms'"),
    (lambda r: json.dumps({**r, "bucket_k": [1, 2]}), "'bucket_k'"),
    (lambda r: json.dumps({**r, "latency_ms_p10": 30.0}), "'latency_ms_median'"),
    (lambda r: json.dumps({**r, "precision": "int4"}), "'precision'"),
    (lambda r: json.dumps({**r, "attention_ratio": 1.5}), "'attention_ratio'"),
    (lambda r: json.dumps({**r, "s": -1}), "'s'"),
])
def test_ingest_rejects_a_malformed_record_naming_the_field(tmp_path, capsys, mutate, field):
    good = json.dumps(record())
    src = tmp_path / "phone.jsonl"
    src.write_text(good + "\n" + mutate(record(s="100")) + "\n")
    into = tmp_path / "all.jsonl"
    assert main(["-q", "ingest", str(src), "--into", str(into)]) == 2
    err = capsys.readouterr().err
    assert field in err and "phone.jsonl:2" in err
    assert not into.exists()                      # nothing written on error


def test_ingest_merges_and_replaces(tmp_path):
    into = tmp_path / "all.jsonl"
    schema.write_records(into, [record(), record(s="0", bucket_k=[0, 0, 0],
                                                 attention_ratio=0.0)])
    src = tmp_path / "new.jsonl"
    src.write_text(json.dumps(record(latency_ms_median=21.0)) + "\n"
                   + json.dumps(record(variant="hdrflow", reference=True, psnr_mu=30.1)) + "\n")
    assert main(["-q", "ingest", str(src), "--into", str(into)]) == 0
    recs = schema.read_records(into)
    assert len(recs) == 3 and recs[0]["latency_ms_median"] == 21.0
    assert schema.is_reference(recs[2]) and not schema.is_reference(recs[0])


# ---------------------------------------------------------------- pick

def _stream(latency: dict, runtime="executorch") -> list[dict]:
    ks = {"0": [0, 0, 0], "1": [3, 1, 1], "15": [300, 50, 5], "100": [600, 150, 40]}
    out = []
    for s, (short, long_) in latency.items():
        for centre, ms in (("short", short), ("long", long_)):
            out.append(record(s=s, centre=centre, runtime=runtime, bucket_k=ks[s],
                              attention_ratio=sum(ks[s]) / 860, latency_ms_median=ms,
                              latency_ms_p10=ms * 0.95, latency_ms_p90=ms * 1.05))
    return out


def _report(tmp_path, psnr: dict, variant: str = "tiny"):
    doc = {"format": "dealthdr-quantize-report/1", "model": {"variant": variant},
           "backends": {"xnnpack": {"buckets": {
        f"s{s}_{c}": {"s": s, "centre": c, "fp32": q, "qat": q - 0.3, "ptq": q - 0.5}
        for s, q in psnr.items() for c in ("short", "long")}}}}
    path = tmp_path / f"quantize_report_{variant}.json"
    path.write_text(json.dumps(doc))
    return path


def test_quality_figures_are_matched_per_variant(tmp_path):
    from dealthdr.bench.quality import load_quality

    tiny = _report(tmp_path, {"15": 23.8})
    small = _report(tmp_path, {"15": 25.1}, variant="s")
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"format": "dealthdr-eval/2", "records": [
        {"method": "dealthdr", "variant": "s", "s": "100", "psnr_mu": 25.3},
        {"method": "dealthdr", "variant": "tiny", "s": "100", "psnr_mu": 23.9}]}))
    q = load_quality([tiny, small, evaluation])
    assert q.of(record(variant="tiny", s="15", centre="short"))[0] == 23.8
    assert q.of(record(variant="s", s="15", centre="short"))[0] == 25.1
    assert q.of(record(variant="s", s="100", centre="long"))[0] == 25.3
    assert q.of(record(variant="default", s="15", centre="short")) == (None, None)
    unnamed = tmp_path / "old.json"
    unnamed.write_text(json.dumps({"format": "dealthdr-quantize-report/1", "backends": {}}))
    with pytest.raises(ValueError, match="names no variant"):
        load_quality([unnamed])


def test_pick_best_quality_within_budget_and_refusal(tmp_path, capsys):
    recs = tmp_path / "r.jsonl"
    schema.write_records(recs, _stream({"0": (100, 100), "1": (105, 110), "15": (140, 170),
                                        "100": (200, 210)}))
    q = _report(tmp_path, {"0": 23.70, "1": 23.72, "15": 23.80, "100": 23.85})
    base = ["-q", "pick", "--records", str(recs), "--quality", str(q)]
    assert main([*base, "--budget-ms", "190"]) == 0
    assert "s=15" in capsys.readouterr().out       # p90 of both centres: 178.5 <= 190
    assert main([*base, "--budget-ms", "170"]) == 0
    assert "s=1 " in capsys.readouterr().out       # the long-centred s=15 graph misses 170
    assert main([*base, "--budget-ms", "170", "--statistic", "median"]) == 0
    assert "s=15" in capsys.readouterr().out
    assert main([*base, "--budget-ms", "50"]) == 1
    out = capsys.readouterr().out
    assert "no s-bucket fits 50 ms" in out and "fastest is s=0" in out
    assert main(["-q", "pick", "--records", str(recs), "--quality", "--budget-ms", "300"]) == 0
    assert "ranked by attention ratio" in capsys.readouterr().out   # no quality given
    assert main([*base, "--budget-ms", "190", "--runtime", "onnxruntime"]) == 2


# ---------------------------------------------------------------- breakdown and plot

def test_breakdown_rows_add_up_and_hooks_are_removed():
    from dealthdr.checkpoint import load_checkpoint
    from dealthdr.bench.breakdown import ATTENTION, FGMA_REST, ROWS, measure
    from dealthdr.export.buckets import make_buckets

    model, _ = load_checkpoint("default")
    cal = {"buckets": [{"s": "0", "ratio": [0, 0, 0]}, {"s": "15", "ratio": [0.5, 0.25, 0.1]}]}
    b0, b15 = make_buckets(cal, [0.0, 15.0], SIZE, ("short",), 8)
    r0, r15 = measure(model, b0, SIZE, 1, 2), measure(model, b15, SIZE, 1, 2)
    for r in (r0, r15):
        top = sum(r["rows"][k]["ms"] for k in [*ROWS, "other (inputs, padding, glue)"])
        assert top == pytest.approx(r["total_ms"], rel=0.02)
        assert r["rows"][FGMA_REST]["ms"] + r["rows"][ATTENTION]["ms"] == pytest.approx(
            r["rows"]["FGMA"]["ms"])
        assert r["rows"]["encoders"]["gflops"] > 0
    assert r0["rows"][ATTENTION]["ms"] == 0 and r15["rows"][ATTENTION]["ms"] > 0
    assert "attend" not in vars(model.fgma[0]) and not model.encoder_short._forward_hooks


def test_plot_writes_figures_and_tables(tmp_path):
    from dealthdr.bench.plot import draw

    recs = []
    for runtime, scale in (("torch", 1.0), ("onnxruntime", 0.8), ("executorch", 0.9)):
        for r in _stream({"0": (100, 101), "1": (104, 105), "15": (150, 152),
                          "100": (200, 203)}, runtime):
            r = {**r, "latency_ms_median": r["latency_ms_median"] * scale,
                 "latency_ms_p10": r["latency_ms_p10"] * scale,
                 "latency_ms_p90": r["latency_ms_p90"] * scale}
            recs.append({**r, "backend": {"torch": "eager-cpu", "onnxruntime": "CPU",
                                          "executorch": "xnnpack"}[runtime]})
    recs += [{**r, "precision": "int8", "latency_ms_median": r["latency_ms_median"] * 0.5,
              "latency_ms_p10": r["latency_ms_p10"] * 0.5, "latency_ms_p90":
              r["latency_ms_p90"] * 0.5} for r in recs if r["runtime"] == "executorch"]
    # a second variant of the same run: twice the time and the FLOPs, no quality source
    recs += [{**r, "variant": "default", "gflops": 2 * r["gflops"],
              **{k: 2 * r[k] for k in ("latency_ms_median", "latency_ms_p10", "latency_ms_p90")}}
             for r in recs if r["precision"] == "fp32" and r["runtime"] != "onnxruntime"]
    recs.append(record(variant="hdrflow", reference=True, psnr_mu=23.6, latency_ms_median=90.0,
                       latency_ms_p10=88.0, latency_ms_p90=93.0))
    path = tmp_path / "r.jsonl"
    schema.write_records(path, recs)
    q = _report(tmp_path, {"0": 23.70, "1": 23.72, "15": 23.80, "100": 23.85})
    bd = tmp_path / "bd.json"
    bd.write_text(json.dumps({"buckets": [
        {"s": s, "centre": "short", "size": "256x256", "threads": 2, "total_ms": 10.0 * (1 + i),
         "total_gflops": 14.0, "bucket_k": [0, 0, 0],
         "rows": {k: {"ms": 10.0 * (1 + i) / 10, "share": 0.1, "gflops": 1.0} for k in (
             "encoders", "flow (SpyNet)", "FGMA", "router", "middle", "decoder", "merge",
             "other (inputs, padding, glue)", "FGMA attention", "FGMA warp + mask + selection")}}
        for i, s in enumerate(("0", "15"))]}))
    lines = draw([path], tmp_path / "plots", [q], bd)
    for name in ("fig1_256x256.png", "latency_256x256.png", "breakdown.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    table = (tmp_path / "plots" / "table_i.md").read_text()
    assert "| ExecuTorch xnnpack | int8 |" in table and "23.40" in table    # QAT of s=0 int8
    assert "| hdrflow |" in table and "x1.71 FLOPs" in table
    assert "FGMA attention" in (tmp_path / "plots" / "table_g.md").read_text()
    table_f = (tmp_path / "plots" / "table_f.md").read_text().splitlines()
    tiny = next(ln for ln in table_f if ln.startswith("| phone-x | tiny |"))
    default = next(ln for ln in table_f if ln.startswith("| phone-x | default |"))
    # tiny at s=15: 14 GFLOPs = 7 GMACs, eager (150 + 152) / 2 = 151 ms, half the default's;
    # quality from the report's fp32 row of tiny, none for default
    assert "| 1.89 | 7.0 (0.50x) |" in tiny and "| 151.0 (0.50x) |" in tiny
    assert "| 23.80 |" not in tiny and default.endswith("| n/a | n/a |")
    assert len(lines) == 6


# ---------------------------------------------------------------- Apple path

def test_apple_refuses_off_macos_and_builds_records_and_commands(capsys):
    import platform

    from dealthdr.bench.apple import (apple_record, coreml_entries, plan_summary, require_macos,
                                    xcode_commands)

    manifest = str(Path(__file__).resolve().parents[1] / "export/results/coreml_ios18_256.json")
    entries = coreml_entries([manifest], None)
    assert len(entries) == 8 and {e["function"] for e in entries} >= {"s15_short", "s0_long"}
    if platform.system() != "Darwin":
        assert main(["-q", "apple", "--artifacts", manifest]) == 2
        assert "needs macOS" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs macOS"):
        require_macos("Linux")
    plan = plan_summary([("conv", "neural_engine", 0.5), ("conv", "neural_engine", 0.2),
                         ("resample", "cpu", 0.25), ("gather", "gpu", 0.05)])
    assert plan["ops"] == {"neural_engine": 2, "cpu": 1, "gpu": 1}
    assert sum(plan["cost_share"].values()) == pytest.approx(1.0)
    assert plan["off_neural_engine"] == {"resample": 1, "gather": 1}
    e = next(x for x in entries if x["function"] == "s15_short")
    rec = apple_record({"device": "iPhone 16 Pro", "cpu": "A18 Pro", "os": "iOS 18.2"}, e,
                       "CPU_AND_NE", [12.0, 11.0, 13.0, 12.5], 340.0, None,
                       "coremltools 9.0", plan, 0.0, 14.1)
    assert schema.validate(rec) and rec["threads"] is None and rec["backend"] == \
        "coreml-CPU_AND_NE" and rec["latency_ms_median"] == 12.25 and rec["s"] == "15"
    tiles = sum((256 // (2 ** level * e["tile"])) ** 2 for level in range(3))  # 256x256 levels
    assert e["tile"] == 8 and math.isclose(rec["attention_ratio"], sum(e["bucket_k"]) / tiles,
                                           abs_tol=1e-6)
    cmds = xcode_commands([e["package"] for e in entries], "build")
    assert cmds[0] == ["xcrun", "devicectl", "list", "devices"] and len(cmds) == 3
    assert cmds[1] == ["xcrun", "coremlcompiler", "compile", e["package"], "build"]
    assert main(["-q", "apple", "--artifacts", manifest, "--print-commands"]) == 0
    assert "coremlcompiler compile" in capsys.readouterr().out


@pytest.mark.e2e   # exported artifacts (fixture)
def test_tiled_runs_a_program_over_a_larger_frame_and_records_memory_and_seams(artifacts,
                                                                               tmp_path):
    root, _ = artifacts
    pte = root / "et" / "stand_s15.pte"
    out = tmp_path / "tiled.json"
    assert main(["-q", "tiled", str(pte), "--size", "48x72", "--overlap", "8",
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["program_size"] == list(SIZE) and rec["size"] == [48, 72]
    assert rec["tiles"] == 2 * 3 and rec["peak_rss_mb"] > 0 and rec["wall_s"] > 0
    assert rec["sha256"] and rec["machine"]["torch"].startswith("2.13")
    # the stand-in is not the network: the seam figure is measured, not judged, here
    assert np.isfinite(rec["max_abs_vs_untiled_eager"])
    assert main(["-q", "tiled", str(pte), "--size", "16x72", "--out", str(out)]) == 2
    assert main(["-q", "tiled", str(pte), "--centre", "long", "--out", str(out)]) == 2
    # a program that is not a frame flows program is named as such
    from dealthdr.export.tiles import run_program_tiled
    with pytest.raises(ValueError, match="not a frame flows program"):
        run_program_tiled(pte, pte, "short", torch.rand(1, 5, 3, 48, 72), torch.ones(1, 5), 24,
                          1, 4)


@pytest.mark.e2e   # exporter CLI + ExecuTorch runs
def test_tiled_export_writes_programs_that_reproduce_the_tiled_eager_network(tmp_path):
    """`--tiled-frame`: one frame flows program for every s beside the tile program, named in
    the tile records. Its guide tiles assemble the frame's guide, its pair_flows method gives
    the window's flows one neighbour at a time, the tile program's partial sums feed the next
    pass, the pair matches the tiled eager network, and `device_bench tiled` runs it. One
    export serves every check: lowering is most of what this costs."""
    from executorch.runtime import Runtime

    from dealthdr.calib.buckets import FORMAT
    from dealthdr.calib.windows import make_windows
    from dealthdr.checkpoint import load_checkpoint, shipped_path
    from dealthdr.export.tiles import run_program_tiled
    from dealthdr.export.to_executorch import main as export
    from dealthdr.model.framestats import pack

    # Buckets that leave every level sparse: the selected-tile branch, gathers and scatter.
    buckets = tmp_path / "buckets.json"
    buckets.write_text(json.dumps({"format": FORMAT, "buckets": [
        {"s": "15", "ratio": [0.5, 0.25, 0.1]}]}))
    out = tmp_path / "et"
    assert export(["--s-buckets", "15", "--size", "64x64", "--centre", "short", "--buckets",
                   str(buckets), "--tiled-frame", "64x128", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    by_method = {a["method"]: a for a in manifest["artifacts"]}
    tile, flows = by_method["tile_short"], by_method["pair_flows"]
    assert tile["tiled"]["flows_program"] == flows["file"] == by_method["guide"]["file"]
    assert flows["file"] == "dealthdr_tiny_xnnpack_flows64x128.pte"
    assert flows["s"] == flows["centre"] == "any" and "bucket_k" not in flows
    assert flows["parity"]["passed"] and tile["parity"]["passed"]
    assert tile["parity"]["max_abs"] < 1e-4
    assert len({a["file"] for a in manifest["artifacts"]}) == 3
    # The channel attentions' partial sums feed only the last output; tied to where they are
    # computed, they do not keep q and k alive to the end (untied: 1.35x the window's arena).
    window = by_method["forward_short"]
    assert tile["planned_activation_bytes"] < 1.1 * window["planned_activation_bytes"]

    model = load_checkpoint(shipped_path())[0].eval()
    path, flows_path = out / tile["file"], out / flows["file"]
    n = tile["tiled"]["sums_length"]
    win = next(w for w in make_windows("heldout", 64, 128, clips=1, seed=1) if w.centre == "short")
    program = Runtime.get().load_program(str(flows_path))
    with torch.no_grad():
        guide = model.flow_guide(win.frames, win.exposures)
        ref = model.window_flows(win.frames, win.exposures)
    left = program.load_method("guide").execute([win.frames[..., :64].contiguous(),
                                                 win.exposures])[0]
    assert torch.allclose(left, guide[..., :16], atol=1e-6)     # per position: a crop
    pair = program.load_method("pair_flows")
    for row, j in enumerate((0, 1, 3, 4)):       # neighbours in time order around the centre 2
        got = pair.execute([guide[:, 2].contiguous(), guide[:, j].contiguous()])
        assert all(torch.allclose(a[0], r[row], atol=1e-4) for a, r in zip(got, ref))
    del program
    two = run_program_tiled(path, flows_path, "short", win.frames, win.exposures, 64, n, 4,
                            passes=2)
    assert two.tiles == 3 and pack(two.frame_sums).numel() == n
    one = run_program_tiled(path, flows_path, "short", win.frames, win.exposures, 64, n, 4,
                            passes=1)
    assert np.abs(one.hdr - two.hdr).max() > 1e-5   # pass 2 attends with the frame's sums
    # the two programs swapped, or a centre the tile program lacks, are named
    with pytest.raises(ValueError, match="not a frame flows program"):
        run_program_tiled(path, path, "short", win.frames, win.exposures, 64, n, 4)
    with pytest.raises(ValueError, match="no method tile_long"):
        run_program_tiled(path, flows_path, "long", win.frames, win.exposures, 64, n, 4)

    rec_path = tmp_path / "tiled.json"
    assert main(["-q", "tiled", str(path), "--size", "64x128", "--overlap", "8",
                 "--out", str(rec_path)]) == 0
    rec = json.loads(rec_path.read_text())
    assert rec["flows_artifact"] == flows["file"] and rec["flows_sha256"] == flows["sha256"]
    assert rec["tiles"] == 3 and rec["psnr_mu_vs_untiled_eager"] > 30
    flows_path.unlink()
    assert main(["-q", "tiled", str(path), "--size", "64x128", "--out", str(rec_path)]) == 2


def test_tiled_finds_the_frame_flows_program_its_record_names(tmp_path):
    from dealthdr.bench.tiled import _flows_program
    from dealthdr.fileio import sha256_file

    pte, flows = tmp_path / "t.pte", tmp_path / "f.pte"
    pte.write_bytes(b"tile")
    flows.write_bytes(b"flows")
    art = {"tiled": {"flows_program": "f.pte"}}
    manifest = {"artifacts": [{"file": "f.pte", "sha256": sha256_file(flows)}]}
    assert _flows_program(pte, manifest, art) == (flows, sha256_file(flows))
    with pytest.raises(ValueError, match="names no frame flows program"):
        _flows_program(pte, manifest, {"tiled": {}})
    with pytest.raises(FileNotFoundError, match="frame flows program of t.pte is missing"):
        _flows_program(pte, {"artifacts": []}, art)
    flows.write_bytes(b"other")
    with pytest.raises(ValueError, match="sha256 differs"):
        _flows_program(pte, manifest, art)


def test_stream_benchmark_records_both_modes(tmp_path):
    """`device_bench stream` on a tiny clip: both modes run, write the same frames, and the
    record carries what the benchmark compares (values are the machine's, not asserted)."""
    out = tmp_path / "stream.json"
    assert main(["stream", "--size", "32x32", "--frames", "6", "--repeats", "1",
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["max_abs_stream_vs_windows"] <= 1e-5
    for mode in ("stream", "windows"):
        assert rec[mode]["seconds_median"] > 0 and rec[mode]["peak_rss_mb_max"] > 0
        assert rec[mode]["runs"][0]["psnr_mu_full_windows"] is not None
    assert rec["speedup"] > 0 and rec["machine"]["threads"] == 1


def test_discover_plans_stream_fuse_jobs_and_skips_apple_and_per_frame_methods(tmp_path):
    """A streaming program is timed once per centre through its fuse method (one output frame's
    steady state); its per-frame methods and Core ML packages are not jobs of their own."""
    from dealthdr.export.artifacts import artifact_record
    from dealthdr.export.buckets import make_buckets

    from dealthdr.bench.jobs import discover

    cal = {"buckets": [{"s": "15", "ratio": [0.5, 0.25, 0.1]}]}
    bucket = make_buckets(cal, [15.0], SIZE, ("short",), 8)[0]
    for name in ("w.pte", "st.pte", "st.mlpackage", "w.mlpackage"):
        (tmp_path / name).write_bytes(name.encode())
    stream = {"kind": "fuse", "methods": ["encode_short", "fuse_short"]}
    recs = [artifact_record(tmp_path / "w.pte", tmp_path, "executorch-xnnpack", "fp32", bucket,
                            SIZE, {}, frames=5, method="forward_short"),
            artifact_record(tmp_path / "st.pte", tmp_path, "executorch-xnnpack", "fp32", bucket,
                            SIZE, {}, frames=5, method="fuse_short", stream=stream),
            artifact_record(tmp_path / "st.pte", tmp_path, "executorch-xnnpack", "fp32", bucket,
                            SIZE, {}, frames=5, method="encode_short",
                            stream={**stream, "kind": "encode"}),
            artifact_record(tmp_path / "st.mlpackage", tmp_path, "coreml", "fp16", bucket, SIZE,
                            {}, frames=5, function="fuse_short", stream=stream),
            artifact_record(tmp_path / "w.mlpackage", tmp_path, "coreml", "fp16", bucket, SIZE,
                            {}, frames=5, function="s15_short")]
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": "dealthdr-export-manifest/1", "artifacts": recs,
         "model": {"variant": "tiny", "checkpoint_sha256": "0" * 64}}))
    jobs = discover([tmp_path], [SIZE], [1], runtimes=("executorch",), verify=False)
    got = sorted((j.backend, j.method) for j in jobs)
    assert got == [("xnnpack", "forward_short"), ("xnnpack-stream", "fuse_short")]
    assert all(("stream" in j.extra) == (j.backend == "xnnpack-stream") for j in jobs)


def test_summary_keeps_variants_apart():
    from dealthdr.bench.summary import summarise, text

    recs = _stream({"0": (100, 100), "15": (150, 150)}, runtime="torch")
    recs = [{**r, "backend": "eager-cpu"} for r in recs]
    recs += [{**r, "variant": "s", "attention_ratio": r["attention_ratio"] / 2,
              "latency_ms_median": 3 * r["latency_ms_median"]} for r in recs]
    report = summarise(recs)
    assert sorted(g["variant"] for g in report["groups"]) == ["s", "tiny"]
    out = text(report)
    assert "R per s-bucket, tiny: s0=0.0000, s15=0.4128" in out
    assert "R per s-bucket, s: s0=0.0000, s15=0.2064" in out
    assert any(ln.startswith("s        torch/eager-cpu") and "s15:450" in ln
               for ln in out.splitlines())


def test_records_name_the_commit_they_were_measured_on():
    import subprocess

    import dealthdr
    from dealthdr.bench.run import host_fields
    from dealthdr.sysinfo import machine_record

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(dealthdr.__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = None
    for rec in (host_fields("host"), machine_record()):
        assert (rec["commit"] is None if head is None
                else rec["commit"] in (head, f"{head}-dirty")), rec
        assert bool(rec["dirty_paths"]) == str(rec["commit"]).endswith("-dirty"), rec


def test_a_dirty_record_names_the_paths_that_differed(monkeypatch):
    """`-dirty` alone does not say whether code or only an earlier record differed: the
    record lists the modified tracked paths (git status porcelain, renames as 'old -> new')."""
    import subprocess

    from dealthdr import sysinfo

    outputs = {"rev-parse": "abc123\n",
               "status": " M README.md\nM  dealthdr/model/fgma.py\nR  a.py -> b.py\n"}

    def fake_git(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 0, stdout=outputs[cmd[1]], stderr="")
    monkeypatch.setattr(sysinfo.subprocess, "run", fake_git)
    assert sysinfo._git_state() == ("abc123-dirty",
                                    ("README.md", "a.py -> b.py", "dealthdr/model/fgma.py"))
    outputs["status"] = ""
    assert sysinfo._git_state() == ("abc123", ())


def test_the_commit_is_the_one_the_process_started_from(monkeypatch):
    """Read once, when the command starts: a record written after a long run names the code
    that ran, even if HEAD moved meanwhile (git is not asked again)."""
    from dealthdr import sysinfo

    started = sysinfo.source_commit()

    def git_again(*args, **kwargs):
        raise AssertionError("git asked again at write time")
    monkeypatch.setattr(sysinfo.subprocess, "run", git_again)
    assert sysinfo.source_commit() == started
    assert sysinfo.machine_record()["commit"] == started


# ---------------------------------------------------------------- layout

class ConvsThenReshape(nn.Module):
    """Two convolutions with a ReLU between (one layout throughout: channels last), then a
    reshape, which XNNPACK runs only on an NCHW map."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(4, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.second(torch.relu(self.first(x))).reshape(1, 8, -1).softmax(-1)


def test_layout_lists_the_conversions_xnnpack_inserts_by_module(capsys):
    from dealthdr.bench.layout import conversions

    x = torch.rand(1, 4, 12, 10)
    found = conversions(torch.export.export(ConvsThenReshape().eval(), (x,)))
    assert found["partitions"] == 1 and found["permutes"] == []
    rows = {(r["direction"], r["producer_module"],
             tuple((x["op"], x["module"]) for x in r["readers"])): r for r in found["conversions"]}
    back = rows[("to NCHW", "second", (("view_copy", ""),))]     # the reshape reads NCHW
    assert back["producer_op"] == "convolution" and back["count"] == 1
    assert back["elements"] == 8 * 12 * 10
    assert rows[("to NHWC", "", (("convolution", "first"),))]["elements"] == 4 * 12 * 10
    assert not any(r["producer_module"] == "first" for r in found["conversions"])
    assert len(rows) == 2

    for argv, msg in ((["--s", "0,15"], "--s takes one bucket"), (["--top", "0"], "--top")):
        assert main(["-q", "layout", *argv]) == 2
        assert msg in capsys.readouterr().err


def test_a_malformed_manifest_is_named(tmp_path):
    from dealthdr.bench.jobs import read_manifest

    (tmp_path / "manifest.json").write_text("{'not': json")
    with pytest.raises(ValueError, match="manifest.json is not a manifest"):
        read_manifest(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": "x"}))
    with pytest.raises(ValueError, match="is not an export manifest"):
        read_manifest(tmp_path / "manifest.json")
    assert main(["-q", "run", "--artifacts", str(tmp_path), "--sizes", "32x32",
                 "--out", str(tmp_path / "r.jsonl")]) == 2
    assert not (tmp_path / "r.jsonl").exists()
