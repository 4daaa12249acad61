"""`python -m bench kernels` (through its add_arguments / run) and the workloads it draws from."""

import os

# Triton kernels on CPU tensors need the interpreter, chosen before triton is imported;
# MOEBENCH_TEST_DEVICE=cuda (scripts/gpu_check.sh) runs the same tests on the GPU, compiled.
os.environ["TRITON_INTERPRET"] = "1" if os.environ.get("MOEBENCH_TEST_DEVICE", "cpu") == "cpu" else "0"

import argparse
import itertools
import json
import re

import pytest
import torch

from moebench.bench import cli
from moebench.bench.commands import kernels as kernels_bench
from moebench.bench.layer import presets, skews

DEVICE = os.environ.get("MOEBENCH_TEST_DEVICE", "cpu")

REQUIRED = {"kernel", "impl", "tokens", "time_us", "useful_tflops", "padding_waste", "dropped_pct", "peak_mb"}


def parse(*argv: str) -> argparse.Namespace:
    """Flags as the CLI parses them (bad ones raise ValueError); fp32 on the test device unless argv says otherwise."""
    return cli.build_parser().parse_args(["kernels", "--device", DEVICE, "--dtype", "fp32", *argv])


def run_json(tmp_path, *argv: str) -> dict:
    out = tmp_path / "kernels.json"
    assert kernels_bench.run(parse(*argv, "-n", "2", "-w", "1", "--json", str(out))) == 0
    return json.loads(out.read_text())


def test_rows_and_columns(tmp_path, capsys):
    data = run_json(tmp_path, "--model", "mixtral-8x7b-tiny", "--tokens", "3,40", "--skew", "zipf:1.2",
                    "--capacity-factor", "none,1.0,2.0")  # fmt: skip
    rows = data["rows"]
    assert data["meta"]["benchmark"] == "kernels" and data["meta"]["model"] == "mixtral-8x7b-tiny"
    for T in (3, 40):
        got = [(r["kernel"], r["capacity_factor"]) for r in rows if r["tokens"] == T]
        assert got == [("dense", None), ("loop", None), ("padded", None), ("padded", 1.0), ("padded", 2.0),
                       ("dynamic", None), ("block_sparse", None)]  # fmt: skip
    for row in rows:
        assert set(row) >= REQUIRED and row["timing"] == "eager"  # no --cuda-graph
        assert row["time_us"] > 0 and row["useful_tflops"] > 0
        if row["kernel"] != "dense":
            assert row["rel_err"] < 1e-5 and row["correct"] and row["routing_us"] > 0
        if row["role"] == "kernel":
            assert row["peak_mb"] > 0
    padded_cf1 = next(r for r in rows if r["tokens"] == 40 and r["kernel"] == "padded" and r["capacity_factor"] == 1.0)
    assert padded_cf1["dropped_pct"] > 0 and padded_cf1["padding_waste"] >= 1.0
    out = capsys.readouterr().out
    assert "TINY" in out and "routing µs" in out and "12.8x" in out and "faster than loop" in out


def test_triton_impl_under_interpreter(tmp_path):
    out = tmp_path / "kernels.json"
    argv = ["--model", "mixtral-8x7b-tiny", "--tokens", "2", "--impl", "triton", "--capacity-factor", "1.0"]
    assert kernels_bench.run(parse(*argv, "-n", "1", "-w", "0", "--json", str(out))) == 0
    data = json.loads(out.read_text())
    kernel_rows = [r for r in data["rows"] if r["impl"] == "triton"]
    assert [r["kernel"] for r in kernel_rows] == ["padded", "dynamic", "block_sparse"]
    assert all(r["rel_err"] < 1e-5 for r in kernel_rows)


def test_save(tmp_path, monkeypatch):
    from moebench.bench import report

    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    args = parse("--model", "qwen3-30b-a3b-tiny", "--tokens", "8", "--kernels", "dynamic", "-n", "1", "-w", "0",
                 "--save", "--tag", "t")  # fmt: skip
    assert kernels_bench.run(args) == 0
    saved = sorted(p.name for p in tmp_path.rglob("kernels-t*"))
    assert saved == ["kernels-t.csv", "kernels-t.json", "kernels-t.md"]  # un-stamped: a new run replaces the old
    markdown = next(tmp_path.rglob("kernels-t.md")).read_text()
    assert "| dynamic | torch | 8 |" in markdown


def test_summary_lines():
    def row(kernel, time_us, cf=None, role="kernel", **kw):
        fields = {"frac_dense": 0.8, "dropped_pct": 1.5 if cf else 0.0, "padding_waste": 1.0, "role": role,
                  "correct": True, "p20_us": 0.95 * time_us, "p80_us": 1.05 * time_us}  # fmt: skip
        return {"tokens": 128, "skew": "uniform", "kernel": kernel, "capacity_factor": cf, "time_us": time_us,
                **fields, **kw}  # fmt: skip

    rows = [row("dense", 80.0, role="dense"), row("loop", 200.0, role="baseline"),
            row("padded", 300.0, 2.0, padding_waste=2.0), row("dynamic", 100.0), row("block_sparse", 110.0),
            row("broken", 10.0, correct=False)]  # fmt: skip
    (line,) = kernels_bench.summary_lines(rows)
    assert line.startswith("T=128 uniform: fastest dynamic 100 µs, 0.80x dense throughput")
    assert "2.00x faster than loop" in line and "padded cf=2.0 3.00x its time (drops 1.5%, waste 2.00x)" in line
    assert "block_sparse 1.10x its time" in line and "12.8x" in line and "broken" not in line
    # a baseline inside the spread is a tie, not a speedup; a fastest row that drops work says so
    rows += [row("loop", 104.0, role="baseline", tokens=64), row("padded", 100.0, 1.0, tokens=64, padding_waste=1.5)]
    line = kernels_bench.summary_lines(rows)[1]
    assert line.startswith("T=64 uniform: fastest padded cf=1.0 (drops 1.5%) 100 µs") and "ties with loop" in line


BAD_FLAGS = [
    (["--model", "gpt-5"], "unknown model preset 'gpt-5'"),
    (["--tokens", "1,x"], "argument --batch/--tokens: not a list of integers: '1,x'"),
    (["--batch", "0"], "--batch sizes must be >= 1"),
    (["--kernels", "padded,fast"], "unknown expert kernel fast"),
    (["--skew", "zipf"], "argument --skew: 'zipf'; expected uniform"),
    (["--skew", "hot:1.5"], "argument --skew: 'hot:1.5'; expected uniform"),
    (["--skew", "gate"], "argument --skew: 'gate'; expected uniform"),
    (["--capacity-factor", "0"], "argument --capacity-factor: '0': must be > 0 or none"),
    (["--capacity-factor=-1,none"], "argument --capacity-factor: '-1': must be > 0 or none"),
    (["-n", "0"], "need -n >= 1"),
    (["-d", "int8"], "unknown dtype 'int8'"),
    (["--model", "mixtral-8x7b", "--tokens", "1000000"], "at 1000000 tokens needs about"),  # refused before it starts
]


@pytest.mark.parametrize("argv,message", BAD_FLAGS)
def test_bad_flags(argv, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        kernels_bench.run(parse(*argv))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu():
    with pytest.raises(ValueError, match="no CUDA device"):
        kernels_bench.run(parse("--device", "cuda"))


@pytest.mark.skipif(DEVICE == "cuda", reason="the refusal on a CPU run")
def test_cuda_graph_needs_cuda():
    with pytest.raises(ValueError, match=re.escape("--cuda-graph needs a CUDA device (--device cuda)")):
        kernels_bench.run(parse("--cuda-graph"))


def test_cuda_graph_rows_are_labelled_and_checked(monkeypatch):
    """--cuda-graph's bookkeeping, the capture replaced (no GPU here): a row that could not be captured stays
    eager with its reason, a replay with the right output is labelled cuda-graph and passes, a replay with a
    wrong output fails its row (and the run's exit status), and the summary names the eager rows."""
    import dataclasses

    from moebench.bench import report, roofline

    argv = ["--model", "mixtral-8x7b-tiny", "--tokens", "5", "--kernels", "dynamic", "--capacity-factor", "none"]
    config = kernels_bench.parse_config(parse(*argv, "--warm-weights", "-n", "2"))
    config = dataclasses.replace(config, cuda_graph=True)
    calls = []

    def fake_capture(fn, copies):
        calls.append(len(copies))
        out = fn(*copies[0])
        if len(calls) == 1:  # dense
            return fn, None, "eager: capture refused (test)", 1
        if len(calls) == 3:  # dynamic: a replay that computes something else
            return fn, (out[0] * 1.01, out[1]), "cuda-graph", 10
        return fn, out, "cuda-graph", 10

    monkeypatch.setattr(kernels_bench.cuda_graph, "graph_or_eager", fake_capture)
    starts = []  # the rotation's counter before each prepare: a graphed row (10 calls) moves it by 10
    real_call = roofline.Rotation.__call__

    def counted(self, copies, calls=1):
        starts.append(calls)
        return real_call(self, copies, calls)

    monkeypatch.setattr(roofline.Rotation, "__call__", counted)
    roof = roofline.Roofline(read_gbps=10.0, gemm_tflops=1.0, llc_bytes=1 << 20)
    rows = kernels_bench.bench_tokens(config, skews.parse_skew("uniform"), 5, roof)
    assert [r["kernel"] for r in rows] == ["dense", "loop", "dynamic"] and calls == [1, 1, 1]
    dense, loop, dynamic = rows
    assert dense["timing"] == "eager: capture refused (test)" and "graph_rel_err" not in dense
    assert loop["timing"] == "cuda-graph" and loop["graph_rel_err"] < 1e-5 and loop["correct"]
    assert dynamic["timing"] == "cuda-graph" and dynamic["graph_rel_err"] > 1e-3 and not dynamic["correct"]
    assert report.exit_status(rows) == 1
    assert set(starts) == {1, 10}  # the eager dense row steps by one, the graphed rows by ten
    assert kernels_bench.graph_lines(rows) == ["CUDA graphs: 2 of 3 rows timed as graph replays",
                                               "T=5 dense eager: capture refused (test)"]  # fmt: skip


# ---------------------------------------------------------------------------------------------- workloads


def test_presets_exact():
    shapes = {name: (p.H, p.F, p.E, p.k) for name, p in presets.PRESETS.items()}
    assert shapes["mixtral-8x7b"] == (4096, 14336, 8, 2)
    assert shapes["deepseek-v3"] == (7168, 2048, 256, 8)
    assert shapes["qwen3-30b-a3b"] == (2048, 768, 128, 8)
    assert shapes["switch-base-128"] == (768, 3072, 128, 1)
    assert shapes["mixtral-8x7b-tiny"] == (256, 896, 8, 2)
    assert presets.get_preset("switch-base-128").act == "gelu"
    for name, p in presets.PRESETS.items():
        if p.tiny:
            full = presets.get_preset(name.removesuffix("-tiny"))
            assert (p.E, p.k, p.act) == (full.E, full.k, full.act) and p.H < full.H and p.F < full.F
    with pytest.raises(ValueError, match="valid: mixtral-8x7b, mixtral-8x7b-tiny"):
        presets.get_preset("mixtral")


SKEW_SPECS = [
    "uniform", "zipf:1.2", "lognormal:1.0", "lognormal:0", "hot:0.9", "shift", "shift:0.5", "sticky", "sticky:0",
]  # fmt: skip


CLUSTER_SKEWS = {"nodeskew", "trace"}  # need the cluster's shape or a file: tests/test_balance.py covers them


def test_every_registered_skew_is_covered():
    assert {skews.parse_skew(spec).kind for spec in SKEW_SPECS} | CLUSTER_SKEWS == set(skews.SKEWS)


@pytest.mark.parametrize("skew", SKEW_SPECS)
@pytest.mark.parametrize("E,k", [(8, 2), (256, 8), (128, 1), (4, 4)])
def test_skews_give_distinct_experts_deterministically(skew, E, k):
    ids_Tk, weights_Tk = skews.sample_topk(skew, 300, E, k, seed=7)
    assert ids_Tk.shape == (300, k) and ids_Tk.dtype == torch.int64
    assert ids_Tk.min() >= 0 and ids_Tk.max() < E
    assert (ids_Tk.sort(dim=1).values.diff(dim=1) != 0).all()  # distinct per token
    torch.testing.assert_close(weights_Tk.sum(1), torch.ones(300))
    again_Tk, _ = skews.sample_topk(skew, 300, E, k, seed=7)
    assert torch.equal(ids_Tk, again_Tk)


def test_hot_fraction_and_shift():
    E, k = 64, 2
    ids_Tk, _ = skews.sample_topk("hot:0.9", 20000, E, k)
    counts_E = torch.bincount(ids_Tk.view(-1), minlength=E).sort(descending=True).values
    n_hot = skews.hot_set_size(E, k)
    assert counts_E[:n_hot].sum() / counts_E.sum() == pytest.approx(0.9, abs=0.01)
    hot_sets = []
    for batch in range(3):
        ids_Tk, _ = skews.sample_topk("shift", 4000, E, k, batch=batch)
        hot_sets.append(set(torch.bincount(ids_Tk.view(-1), minlength=E).topk(n_hot).indices.tolist()))
    assert hot_sets[0] != hot_sets[1] != hot_sets[2]


@pytest.mark.parametrize(
    "spec",
    [
        "lognormal",
        "lognormal:-1",
        "lognormal:nan",
        "sticky:1.5",
        "sticky:x",
        "uniform:1",
        "nodeskew:-1",
        "nodeskew",
        "trace",
        "hot",
    ],
)
def test_bad_skews(spec):
    with pytest.raises(ValueError, match=re.escape(f"bad --skew {spec!r}; expected uniform, zipf:S")):
        skews.parse_skew(spec)


def test_lognormal_loads_follow_the_drawn_popularity():
    E, sigma = 256, 1.0
    ids_Tk, _ = skews.sample_topk(f"lognormal:{sigma}", 200_000, E, 1, seed=3)
    log_counts_E = torch.bincount(ids_Tk.view(-1), minlength=E).double().clamp(min=1).log()
    log_p_E = skews.lognormal_log_popularity(E, sigma, seed=3)
    assert torch.corrcoef(torch.stack([log_counts_E, log_p_E]))[0, 1] > 0.97
    assert log_counts_E.std() == pytest.approx(sigma, rel=0.2)  # per-expert loads are log-normal with sigma
    flat_Tk, _ = skews.sample_topk("lognormal:0", 200_000, E, 1, seed=3)
    counts_E = torch.bincount(flat_Tk.view(-1), minlength=E).double()
    assert counts_E.max() / counts_E.mean() < 1.3  # sigma 0: uniform


def test_sticky_hot_set_is_a_markov_chain():
    E, k = 64, 2
    n_hot = skews.hot_set_size(E, k)
    stays = skews.sticky_hot_sets(E, k, 1.0, seed=5, batches=20)
    assert all(torch.equal(s, stays[0]) for s in stays)
    moves = skews.sticky_hot_sets(E, k, 0.0, seed=5, batches=20)
    assert sum(set(a.tolist()) != set(b.tolist()) for a, b in itertools.pairwise(moves)) >= 18
    chain = skews.sticky_hot_sets(E, k, 0.9, seed=5, batches=400)
    kept = sum(a is b for a, b in itertools.pairwise(chain)) / 399
    assert kept == pytest.approx(0.9, abs=0.05)
    for batch in (0, 7, 30):  # the drawn routing puts its hot mass on that batch's hot set
        ids_Tk, _ = skews.sample_topk("sticky:0.5", 4000, E, k, seed=5, batch=batch)
        top = set(torch.bincount(ids_Tk.view(-1), minlength=E).topk(n_hot).indices.tolist())
        assert top == set(skews.sticky_hot_sets(E, k, 0.5, seed=5, batches=batch + 1)[-1].tolist())
    assert skews.varies_by_batch(skews.parse_skew("sticky")) and not skews.varies_by_batch(skews.parse_skew("hot:1"))


def test_zipf_is_skewed():
    ids_Tk, _ = skews.sample_topk("zipf:1.2", 8000, 8, 2)
    counts_E = torch.bincount(ids_Tk.view(-1), minlength=8).float()
    assert counts_E.max() / counts_E.mean() > 2.0


@pytest.mark.parametrize("threads", [1, 2])
def test_dense_ceiling_runs_each_active_expert_on_the_kernels_copies(threads):
    """The dense row computes every active expert's SwiGLU on its own rows (float64 reference), reading the
    copy the rotation hands it (the second: a ceiling on copies of its own fails), on strided views of gapped
    experts (0, 2, 4, 6 and 7; 0, 1 and 3, 7), with one row per expert (the gemv path on one thread) and T = 1."""
    from moebench.bench import roofline
    from moebench.kernels import routing_from_topk

    preset = presets.get_preset("mixtral-8x7b-tiny")
    config = kernels_bench.parse_config(parse("--model", preset.name, "--tokens", "4"))
    torch.manual_seed(0)
    E, H, F = preset.E, preset.H, preset.F
    copies = [tuple(torch.randn(E, *shape, device=DEVICE) / 16 for shape in ((H, F), (H, F), (F, H))) for _ in range(2)]
    cases = [[[0, 2], [4, 6], [7, 0], [2, 2]], [[0, 1], [3, 7]], [[4, 7]]]  # top-2 ids per token
    prior = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for ids in cases:
            ids_Tk = torch.tensor(ids, device=DEVICE)
            T = ids_Tk.shape[0]
            x_TH = torch.randn(T, H, device=DEVICE)
            problem = kernels_bench.Problem(skews.parse_skew("uniform"), x_TH, ids_Tk, torch.ones(T, 2) / 2, copies[0])
            routing = routing_from_topk(ids_Tk, torch.ones(T, 2, device=DEVICE) / 2, E, None)
            rotate = roofline.Rotation(2)
            case = kernels_bench._dense_case(config, problem, routing, copies, rotate)
            picked = case.prepare()
            assert picked is copies[1]  # the kernels' own copy, in the rotation's order
            out_ERH = case.fn(*picked).double()
            active = sorted({e for pair in ids for e in pair})
            for j, e in enumerate(active):
                tokens = [t for t in range(T) for slot in range(2) if ids[t][slot] == e]
                x = x_TH[tokens].double()
                w_gate, w_up, w_down = (w[e].double() for w in picked)
                ref = (torch.nn.functional.silu(x @ w_gate) * (x @ w_up)) @ w_down
                assert torch.allclose(out_ERH[j, : len(tokens)], ref, rtol=1e-4, atol=1e-5), (ids, e)
    finally:
        torch.set_num_threads(prior)


def test_threads_flag_limits_torch_and_numpy_blas():
    """`kernels --threads 1` runs torch and numpy's BLAS on one thread each (the one-row experts' gemvs are numpy's,
    whose OpenBLAS keeps its own thread count); both are restored afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    before_torch, before_blas = torch.get_num_threads(), threadpool_info()
    try:
        kernels_bench.parse_config(parse("--model", "mixtral-8x7b-tiny", "--tokens", "1", "--threads", "1"))
        assert torch.get_num_threads() == 1
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(n == 1 for n in blas)
    finally:
        torch.set_num_threads(before_torch)
        for pool in before_blas:
            if pool["user_api"] == "blas":
                threadpool_limits(pool["num_threads"], user_api="blas")
