# T = tokens, E = experts, k = experts per token, P = ranks (simulated in one process), H = hidden, R = rows sent
"""The layer's row units (assignment, token = dedup) and the fp8 codec, in one process: every rank's rows are
run through that rank's experts (the exchange simulated by slicing), and the layer's output must equal the
float64 reference; dedup must send one row per (token, destination rank); fp8 must stay within its bound."""

import pytest
import torch

from moebench.bench.layer import forward as moe
from moebench.bench.layer.overlap import parse_overlap, pipeline
from moebench.bench.layer.presets import Preset
from moebench.bench.layer.units import UNITS
from moebench.bench.layer.workloads import make_tokens
from moebench.collectives import DISPATCH_COMBINE, codec, fp8
from moebench.collectives.codec import RAW, join_columns
from moebench.kernels import routing_from_topk

MICRO = Preset("micro-test", 32, 48, 8, 2, "swiglu", "test shape")
WIDE = Preset("micro-wide", 200, 24, 8, 8, "swiglu", "k = E, H not a multiple of 128")


def loopback(pair_name: str, preset: Preset, P: int, x_TH, forced, cf=None, kernel="dynamic"):
    """One rank's forward with every destination rank simulated here: (y_TH, permuted)."""
    pair = DISPATCH_COMBINE[pair_name]
    unit, codec, El = UNITS[pair.unit], pair.codec, preset.E // P
    ids_Tk, weights_Tk = forced
    routing = routing_from_topk(ids_Tk, weights_Tk, preset.E, cf, validate=False)
    permuted = unit.permute(codec.encode(x_TH), routing, P, El)
    send, out = permuted.send_AW, []
    for d, (start, n) in enumerate(zip([0, *torch.tensor(permuted.send_splits).cumsum(0).tolist()],
                                       permuted.send_splits)):  # fmt: skip
        weights = moe.make_weights(preset, x_TH.dtype, "cpu", 3, d * El, El)
        layer = moe.LayerConfig(preset, pair_name, "flat", kernel, capacity_factor=cf)
        payload, meta = unit.unpack(send[start : start + n], preset.k)
        y, _, _ = unit.run_experts(codec.decode(payload, x_TH.dtype, preset.H), meta, weights, layer)
        out.append(y.to(codec.combine_dtype(x_TH.dtype)))
    return unit.unpermute(torch.cat(out), permuted, x_TH.shape[0], x_TH.dtype), permuted


def draw(T: int, preset: Preset, P: int, kind: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.softmax(torch.randn(T, preset.k, generator=g), dim=-1)
    if kind == "random":
        ids = torch.stack([torch.randperm(preset.E, generator=g)[: preset.k] for _ in range(T)])
    elif kind == "one-rank":  # every expert of every token on rank 0
        ids = torch.stack([torch.randperm(preset.E // P, generator=g)[: preset.k] for _ in range(T)])
    else:  # idle: two experts for every token, the others get nothing
        ids = torch.tensor([1, preset.E - 1]).repeat(T, 1)
    return ids, weights


CASES = [(MICRO, 1, "random"), (MICRO, 5, "random"), (MICRO, 300, "random"), (MICRO, 7, "idle"),
         (MICRO, 300, "idle")]  # fmt: skip


@pytest.mark.parametrize("pair_name", ["plain", "dedup"])
@pytest.mark.parametrize("P", [1, 2, 4])
@pytest.mark.parametrize("preset,T,kind", CASES)
@pytest.mark.parametrize("cf", [None, 1.0])
def test_units_match_the_reference(pair_name, P, preset, T, kind, cf):
    x_TH = make_tokens(T, preset.H, seed=T)
    forced = draw(T, preset, P, kind, seed=T + P)
    y, _ = loopback(pair_name, preset, P, x_TH, forced, cf)
    ref = moe.reference_forward(x_TH, preset, cf, 3, forced)
    assert torch.linalg.vector_norm(y.double() - ref) <= 1e-5 * torch.linalg.vector_norm(ref)


@pytest.mark.parametrize("T", [1, 3, 300])  # host path (<= 256 rows) and tensor path
def test_rows_of_any_width_and_dtype(T):
    """Rows whose bytes are not a multiple of the id's 8 (fp16, H = 33: 66 + 8 bytes) take the host path's copying
    id reader and writer, fp32 rows (H = 32: 128 + 8) its in-place one; both give the reference's output."""
    for H, dtype, tolerance in ((33, torch.float16, 2e-2), (32, torch.float32, 1e-5)):
        preset = Preset(f"micro-{H}", H, 48, 8, 2, "swiglu")
        x_TH = make_tokens(T, H, seed=T).to(dtype)
        forced = draw(T, preset, 2, "random", seed=T)
        y, permuted = loopback("plain", preset, 2, x_TH, forced)
        assert permuted.send_AW.shape[1] == H * x_TH.element_size() + 8 and y.dtype == dtype
        ref = moe.reference_forward(x_TH.float(), preset, None, 3, forced)
        assert torch.linalg.vector_norm(y.double() - ref) <= tolerance * torch.linalg.vector_norm(ref)


@pytest.mark.parametrize("widths", [(1024, 8), (66, 8), (264, 4, 4), (3, 5), (0, 8), (16, 0)])
@pytest.mark.parametrize("rows", [0, 1, 7])
@pytest.mark.parametrize("path", ["words", "cat"])
def test_join_columns_equals_a_byte_cat(widths, rows, path, monkeypatch):
    """Byte columns joined in integer words (int64 for 1024 + 8, int16 for 66 + 8, uint8 for 3 + 5), or for a
    small output in one cat, equal torch.cat of the bytes, with and without the gather, from a strided slice of
    wider rows too."""
    byte_cat = torch.cat
    if path == "words":
        monkeypatch.setattr(codec, "SMALL_JOIN_BYTES", -1)
        monkeypatch.setattr(torch, "cat", None)  # the word path must not fall back to it
    g = torch.Generator().manual_seed(rows)
    parts = [torch.randint(0, 256, (rows, w), dtype=torch.uint8, generator=g) for w in widths]
    assert torch.equal(join_columns(parts), byte_cat(parts, dim=1))
    source = torch.randint(0, 256, (5, widths[0] + 8), dtype=torch.uint8, generator=g)[:, 8:]  # stride != width
    index = torch.randint(0, 5, (rows,), generator=g)
    want = byte_cat([source.index_select(0, index), *parts[1:]], dim=1)
    assert torch.equal(join_columns([source, *parts[1:]], index), want)
    word = {(1024, 8): torch.int64, (66, 8): torch.int16, (264, 4, 4): torch.int32, (3, 5): torch.uint8}
    assert codec._word([source, *parts]) == word.get(widths, torch.int64)


@pytest.mark.parametrize("T", [1, 4, 300])  # host path (<= 256 rows) and tensor path
@pytest.mark.parametrize("P", [1, 2, 4])
def test_dedup_sends_a_token_once_per_destination_rank_and_k_equal_e(T, P):
    preset = WIDE  # k = E: every token has an expert on every rank
    x_TH = make_tokens(T, preset.H, seed=1)
    forced = draw(T, preset, P, "random", seed=2)
    y, permuted = loopback("dedup", preset, P, x_TH, forced)
    assert permuted.send_splits == (T,) * P  # one row per token per rank, not k / P of them
    assert permuted.send_AW.shape[1] == preset.H * 4 + 8 * preset.k
    ids = permuted.send_AW[:, -8 * preset.k : -4 * preset.k].contiguous().view(torch.int32)
    assert ((ids >= 0).sum(dim=1) == preset.k // P).all()  # each row carries that rank's E / P experts
    ref = moe.reference_forward(x_TH, preset, None, 3, forced)
    assert torch.linalg.vector_norm(y.double() - ref) <= 1e-5 * torch.linalg.vector_norm(ref)


@pytest.mark.parametrize("T", [3, 300])
def test_dedup_rows_count_distinct_token_rank_pairs(T):
    P, preset = 4, MICRO
    forced = draw(T, preset, P, "random", seed=5)
    _, permuted = loopback("dedup", preset, P, make_tokens(T, preset.H, seed=5), forced)
    dest = forced[0] // (preset.E // P)
    want = [int(((dest == d).any(dim=1)).sum()) for d in range(P)]
    assert list(permuted.send_splits) == want
    _, plain = loopback("plain", preset, P, make_tokens(T, preset.H, seed=5), forced)
    assert sum(plain.send_splits) == T * preset.k and sum(want) <= T * preset.k
    assert T < 300 or sum(want) < T * preset.k  # 300 tokens: some send both experts to one rank


def test_one_rank_gets_every_expert_of_every_token():
    P, preset, T = 2, MICRO, 6
    forced = draw(T, preset, P, "one-rank", seed=3)
    x_TH = make_tokens(T, preset.H, seed=3)
    y, permuted = loopback("dedup", preset, P, x_TH, forced)
    assert permuted.send_splits == (T, 0)  # the other rank gets a zero-row chunk
    ref = moe.reference_forward(x_TH, preset, None, 3, forced)
    assert torch.linalg.vector_norm(y.double() - ref) <= 1e-5 * torch.linalg.vector_norm(ref)


@pytest.mark.parametrize("H", [1, 128, 200, 448])
def test_fp8_codec_round_trip_within_its_bound(H):
    x = torch.randn(37, H, generator=torch.Generator().manual_seed(H)) * torch.logspace(-3, 3, 37)[:, None]
    x[3] = 0.0  # an all-zero row: scale 1, decodes to zeros
    payload = fp8.encode(x)
    assert payload.dtype == torch.uint8 and payload.shape == (37, H + 4 * -(-H // 128))
    assert fp8.payload_bytes(H) == payload.shape[1]
    back = fp8.decode(payload, torch.float32, H)
    err = (back - x).abs()
    bound = fp8.elementwise_bound(x)
    assert (err <= bound).all() and err.max() > 0  # quantized, and within the stated error
    assert torch.equal(back[3], torch.zeros(H))
    strided = torch.cat([payload, torch.zeros(37, 8, dtype=torch.uint8)], dim=1)[:, :-8]  # a slice of wider rows
    assert torch.equal(fp8.decode(strided, torch.float32, H), back)


def test_fp8_wire_bytes_formula_and_zero_rows():
    pair = DISPATCH_COMBINE["fp8"]
    assert pair.wire_row_bytes(448, torch.bfloat16, 8) == (448 + 4 * 4 + 8, 448 * 2)
    assert pair.wire_row_bytes(256, torch.float32) == (256 + 8, 256 * 2)  # combine in bf16 from an fp32 layer
    assert DISPATCH_COMBINE["plain"].wire_row_bytes(256, torch.float32, 8) == (256 * 4 + 8, 256 * 4)
    assert fp8.encode(torch.zeros(0, 200)).shape == (0, 208)
    assert fp8.decode(torch.zeros(0, 208, dtype=torch.uint8), torch.float32, 200).shape == (0, 200)
    assert RAW.exact and not fp8.CODEC.exact


@pytest.mark.parametrize("pair_name", ["fp8", "fp8-dedup"])
def test_fp8_layer_error_is_real_and_within_its_bound(pair_name):
    T, P, preset = 64, 2, MICRO
    x_TH = make_tokens(T, preset.H, seed=9)
    forced = draw(T, preset, P, "random", seed=9)
    y, _ = loopback(pair_name, preset, P, x_TH, forced)
    ref = moe.reference_forward(x_TH, preset, None, 3, forced)
    err = float(torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref))
    codec = DISPATCH_COMBINE[pair_name].codec
    assert 1e-4 < err <= codec.rel_error_bound
    ref_q = moe.reference_forward(x_TH, preset, None, 3, forced, expert_input=codec.reference(x_TH))  # torch's e4m3
    err_q = float(torch.linalg.vector_norm(y.double() - ref_q) / torch.linalg.vector_norm(ref_q))
    assert err_q <= 1e-5 + codec.combine_error_bound  # only the bf16 combine is left: 2^-8


def test_fp8_layer_check_catches_a_coarser_quantizer(monkeypatch):
    """A quantizer keeping 2 mantissa bits (e5m2-grade) stays inside the loose bound but fails the tight one."""
    T, P, preset = 64, 2, WIDE
    x_TH = make_tokens(T, preset.H, seed=4)
    forced = draw(T, preset, P, "random", seed=4)
    codec = DISPATCH_COMBINE["fp8"].codec
    e5m2 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e5m2).float()
    monkeypatch.setattr(fp8, "FP8", torch.float8_e5m2)  # encode and decode both e5m2: consistent, but coarser
    monkeypatch.setattr(fp8, "_VALUES", e5m2)
    y, _ = loopback("fp8", preset, P, x_TH, forced)
    monkeypatch.undo()
    ref = moe.reference_forward(x_TH, preset, None, 3, forced)
    err = float(torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref))
    assert err <= codec.rel_error_bound  # the loose bound alone would pass it
    ref_q = moe.reference_forward(x_TH, preset, None, 3, forced, expert_input=codec.reference(x_TH))
    err_q = float(torch.linalg.vector_norm(y.double() - ref_q) / torch.linalg.vector_norm(ref_q))
    assert err_q > 1e-5 + codec.combine_error_bound


@pytest.mark.parametrize(("T", "C", "want"), [(5, 3, [(0, 1), (1, 3), (3, 5)]), (1, 4, [(0, 1)]), (0, 2, [(0, 0)]),
                                              (8, 2, [(0, 4), (4, 8)])])  # fmt: skip
def test_pipeline_chunks_cover_the_batch_once(T, C, want):
    assert pipeline.chunk_bounds(T, C) == want


def test_overlap_modes_parse_and_refuse_in_one_line():
    assert parse_overlap("chunks:4").chunks == 4 and parse_overlap("dual").chunks == 2
    assert parse_overlap("none").forward is None
    for bad, says in (("chunks", "needs a whole number"), ("chunks:1.5", "needs a whole number"),
                      ("dual:3", "takes no value"), ("ring", "unknown overlap")):  # fmt: skip
        with pytest.raises(ValueError, match=says):
            parse_overlap(bad)


def test_pipeline_sums_every_chunks_kernel_stats():
    from moebench.kernels import KernelStats

    parts = [KernelStats(4, 8, 3, 4, 0, 1, 100), KernelStats(4, 8, torch.tensor(5), 8, 1, 3, 300)]
    total = pipeline._summed(parts)
    assert (total.num_useful_rows, total.num_executed_rows, total.num_dropped, total.num_padded_rows) == (8, 12, 1, 4)
    assert total.peak_extra_bytes == 300 and total.useful_flops == sum(p.useful_flops for p in parts)


def test_layer_config_checks_the_gate_options_once():
    """The host gate skips route's option checks: a LayerConfig refuses bad ones when it is made."""
    with pytest.raises(ValueError, match="capacity_factor"):
        moe.LayerConfig(MICRO, "plain", "flat", "dynamic", capacity_factor=-1.0)
    with pytest.raises(ValueError, match="k must be"):
        moe.LayerConfig(Preset("micro-k", 32, 48, 4, 5, "swiglu"), "plain", "flat", "dynamic")


@pytest.mark.parametrize("pair_name", ["plain", "dedup", "fp8", "fp8-dedup"])
def test_a_rank_with_no_tokens(pair_name):
    x_TH = make_tokens(0, MICRO.H)
    forced = (torch.zeros(0, MICRO.k, dtype=torch.int64), torch.zeros(0, MICRO.k))
    y, permuted = loopback(pair_name, MICRO, 2, x_TH, forced)
    assert y.shape == (0, MICRO.H) and y.dtype == torch.float32 and permuted.send_splits == (0, 0)


@pytest.mark.parametrize("sigma", [1.0, 1e-2, 1e-4])
def test_fp8_bound_holds_for_fp16_rows_down_to_the_subnormal_range(sigma):
    x = (torch.randn(200, 1000, generator=torch.Generator().manual_seed(7)) * sigma).half()
    back = fp8.decode(fp8.encode(x), torch.float16, 1000).to(torch.bfloat16).to(torch.float16)  # combine in bf16
    assert ((back.float() - x.float()).abs() <= fp8.elementwise_bound(x)).all()
