"""The all-to-all cases every collective benchmark shares: rows, split matrices, checks, traffic and bandwidth.

P = world size, R = rows a rank sends, H = elements per row, S = bytes each rank sends (own chunk included).

Data are deterministic per rank (seeded by rank), so every rank rebuilds what it must receive and
checks its own output with no extra communication. A case is checked once (wrong elements, the
traffic the communicator counted, and whether that equals the algorithm's own schedule) before it
is timed: `collectives` and `calibrate` time the same cases.
"""

from __future__ import annotations

import numpy as np
import torch

from moebench.bench.layer.skews import Skew, sample_topk
from moebench.bench.layer.units import UNITS
from moebench.bench.timing import Case
from moebench.bench.units import algbw_gbs, busbw_gbs
from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE
from moebench.collectives.codec import join_columns
from moebench.collectives.schedule import traffic
from moebench.kernels import routing_from_topk

EXPERTS_PER_RANK = 8  # for a skewed split matrix: rows routed (top-1) over P * 8 experts


def sizes_between(lo: int, hi: int, factor: float) -> list[int]:
    """lo, lo * factor, ... up to hi (nccl-tests' -b -e -f)."""
    sizes, s = [], lo
    while s <= hi:
        sizes.append(s)
        s = max(int(s * factor), s + 1)
    return sizes


def row_shape(size_bytes: int, elem_bytes: int, P: int, hidden: int) -> tuple[int, int]:
    """(R, H): R rows of H elements per rank, R * H * elem_bytes <= S, at least one row per peer if S allows."""
    elems = max(size_bytes // elem_bytes, 1)
    H = max(1, min(hidden, elems // P))
    return elems // H, H


def split_matrix(R: int, P: int, skew: Skew, seed: int) -> np.ndarray:
    """[P, P]: row s = rank s's send_splits. uniform: R rows spread evenly. Any other skew: each row of rank s
    goes to the rank owning its expert, drawn (top-1) from that skew over P * 8 experts."""
    if skew.kind == "uniform":
        base = np.full((P, P), R // P, dtype=np.int64)
        base[:, : R % P] += 1
        return base
    E = P * EXPERTS_PER_RANK
    rows = [sample_topk(skew, R, E, 1, seed=seed * 1000 + s)[0][:, 0] // EXPERTS_PER_RANK for s in range(P)]
    return np.stack([np.bincount(r.numpy(), minlength=P) for r in rows]).astype(np.int64)


def rank_rows(src: int, R: int, H: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rank src's send buffer [R, H]: deterministic in (seed, src)."""
    g = torch.Generator().manual_seed(seed * 100_003 + src)
    return torch.randn(R, H, generator=g).to(dtype)


def expected_recv(me: int, splits: np.ndarray, H: int, dtype, seed: int) -> torch.Tensor:
    """What rank `me` must receive: chunk `me` of every rank's buffer, rank 0's first."""
    chunks = []
    for src in range(splits.shape[0]):
        start = int(splits[src, :me].sum())
        chunks.append(rank_rows(src, int(splits[src].sum()), H, dtype, seed)[start : start + int(splits[src, me])])
    return torch.cat(chunks)


def count_wrong(got: torch.Tensor, want: torch.Tensor, tolerance: torch.Tensor | None = None) -> int:
    """Elements of `got` that differ from `want` (by more than `tolerance`, elementwise, when given; every
    element when the shapes differ)."""
    if got.shape != want.shape:
        return max(got.numel(), want.numel(), 1)
    if tolerance is None:
        return int((got.cpu() != want.cpu()).sum())
    return int(((got.cpu().float() - want.cpu().float()).abs() > tolerance.cpu()).sum())


def checked_case(comm, row: dict, fn, check, schedule) -> Case:
    """Run `fn` once (collective: every rank, same order): count wrong elements (over all ranks; None when
    not checked), the busiest rank's traffic per link class, and whether the schedule predicts it exactly."""
    comm.traffic.reset()
    out = fn()
    wrong = check(out) if check else 0
    busiest = comm.allreduce_max(comm.traffic.as_array())
    model = traffic(schedule, comm.topology).max(axis=0)
    row.update(
        wire_intra_bytes=int(busiest[0]),
        wire_inter_bytes=int(busiest[1]),
        msgs_intra=int(busiest[2]),
        msgs_inter=int(busiest[3]),
        wrong=sum(comm.allgather_object(wrong)) if check else None,
        schedule_matches=bool(np.array_equal(busiest, model)),
    )
    return Case(row, fn, schedule)


def add_bandwidth(row: dict, logical_bytes: int, P: int) -> dict:
    """bytes, algbw and busbw of a timed row (DESIGN.md §3)."""
    row.update(
        bytes=logical_bytes,
        algbw_gbps=algbw_gbs(logical_bytes, row["time_us"]),
        busbw_gbps=busbw_gbs(logical_bytes, row["time_us"], P),
    )
    return row


def exchange_cases(comm, names, size: int, skew: Skew, hidden: int, dtype, seed: int, check: bool = True):
    """One checked case per exchange in `names` at S = size. Returns (cases, logical bytes, the send buffer)."""
    P, me = comm.world_size, comm.rank
    R, H = row_shape(size, torch.finfo(dtype).bits // 8, P, hidden)
    splits = split_matrix(R, P, skew, seed)
    send = rank_rows(me, R, H, dtype, seed).to(comm.device)
    want = expected_recv(me, splits, H, dtype, seed).to(comm.device) if check else None
    row_bytes = H * send.element_size()
    # Logical bytes (nccl-tests): what the busiest rank sends or receives, its own chunk included.
    logical = int(max(splits.sum(axis=1).max(), splits.sum(axis=0).max())) * row_bytes
    my_splits = tuple(int(n) for n in splits[me])  # a tuple, as the MoE layer passes its split counts
    cases = []
    for name in names:
        algo = ALGORITHMS[name]
        fn = lambda algo=algo: algo(comm, send, my_splits)
        schedule = algo.schedule(splits, row_bytes, comm.topology)
        row = {"algo": name, "size": size}
        cases.append(checked_case(comm, row, fn, check and (lambda out: count_wrong(out[0], want)), schedule))
    return cases, logical, send


def count_cases(comm, names, send: torch.Tensor, size: int, skew: Skew, seed: int) -> list[Case]:
    """Each exchange's count exchange alone (its plan: after it every rank knows what it receives), timed
    beside the exchanges so every algorithm row can show what its counts cost."""
    R = send.shape[0]
    send_splits = tuple(int(n) for n in split_matrix(R, comm.world_size, skew, seed)[comm.rank])
    return [
        Case({"algo": name, "size": size}, lambda algo=ALGORITHMS[name]: algo.plan(comm, send_splits)) for name in names
    ]


def library_cases(comm, send: torch.Tensor, size: int, skew: Skew, seed: int, check: bool = True) -> list[Case]:
    """The backend's all-to-all-v with the counts already known: `native-data` (the Group's call as an algorithm
    makes it, after its plan: what OSU's osu_alltoallv measures) and `floor` (the library call on arguments
    built once, in a tight loop: what Python can reach; its traffic is not metered, so neither checked nor
    counted)."""
    P, me = comm.world_size, comm.rank
    R, H = send.shape
    splits = split_matrix(R, P, skew, seed)
    # tuples, as a plan hands them to the algorithm's data call
    send_splits, recv_splits = tuple(int(n) for n in splits[me]), tuple(int(n) for n in splits[:, me])
    want = expected_recv(me, splits, H, send.dtype, seed).to(comm.device) if check else None
    row_bytes = H * send.element_size()
    schedule = ALGORITHMS["native"].schedule(splits, row_bytes, comm.topology, plan=False)
    data = checked_case(comm, {"algo": "native-data", "size": size},
                        lambda: comm.world.alltoallv(send, send_splits, recv_splits),
                        check and (lambda out: count_wrong(out, want)), schedule)  # fmt: skip
    floor_fn = comm.world.prepared_alltoallv(send, send_splits, recv_splits)
    floor = Case({"algo": "floor", "size": size, "wrong": None}, floor_fn)
    return [data, floor]


def roundtrip(comm, pair, inner: str, send: torch.Tensor, send_splits, max_rows: int | None = None):
    """A dispatch + combine call with identity processing: out must equal send (within the codec's tolerance:
    a pair with an encoding encodes before dispatch, decodes after it, and combines in its combine dtype).
    max_rows: the most rows any rank sends (a fixed-buffer pair's worst case)."""
    codec = pair.codec
    if codec.exact:

        def fn():
            recv, _, handle = pair.dispatch(comm, send, send_splits, inner=inner, max_rows_per_rank=max_rows)
            return pair.combine(comm, recv, handle)

        return fn
    H, dtype, back = send.shape[1], send.dtype, codec.combine_dtype(send.dtype)

    def encoded():
        recv, _, handle = pair.dispatch(comm, codec.encode(send), send_splits, inner=inner,
                                        max_rows_per_rank=max_rows)  # fmt: skip
        return pair.combine(comm, codec.decode(recv, dtype, H).to(back), handle).to(dtype)

    return encoded


def roundtrip_cases(comm, pairs, inners, size: int, skew: Skew, hidden: int, dtype, seed: int, check: bool = True,
                    overlaps=()):  # fmt: skip
    """`<pair>:<inner>` dispatch + combine round trips on rows duplicated across each TP group (as after a TP
    block), each checked (out == send, or within the pair's codec tolerance) and traffic-counted, with its
    dispatch's wire bytes; pairs whose rows are tokens (unit "token": dedup) by token_roundtrip_cases, on the
    same S bytes of (token, expert) rows. Returns (cases, logical bytes)."""
    P, me, L = comm.world_size, comm.rank, comm.tp.size
    R, H = row_shape(size, torch.finfo(dtype).bits // 8, P, hidden)
    splits = split_matrix(R, P, skew, seed)
    leaders = np.arange(P) // L * L  # every TP rank holds its group's first rank's rows
    send = rank_rows(int(leaders[me]), R, H, dtype, seed).to(comm.device)
    send_splits = tuple(int(n) for n in splits[leaders[me]])  # a tuple, as the MoE layer passes them
    # Both directions: dispatch sends the busiest rank's rows out, combine brings the same rows back.
    logical = 2 * int(splits.sum(axis=1).max()) * H * send.element_size()
    max_rows = int(splits[leaders].sum(axis=1).max())
    cases = []
    token_pairs = [name for name in pairs if DISPATCH_COMBINE[name].unit == "token"]
    for inner in inners:
        cases += token_roundtrip_cases(comm, token_pairs, inner, size, skew, hidden, dtype, seed, check,
                                       overlaps if inner == "native" else ())  # fmt: skip
        for name in pairs:
            pair = DISPATCH_COMBINE[name]
            if not pair.runs_over(inner) or pair.unit != "assignment":
                continue
            codec = pair.codec
            tolerance = None if codec.exact else codec.tolerance(send)
            comm.traffic.reset()
            pair.dispatch(comm, codec.encode(send) if tolerance is not None else send, send_splits, inner=inner,
                          max_rows_per_rank=max_rows)  # fmt: skip
            dispatch_bytes = comm.allreduce_max(comm.traffic.as_array())
            row_bytes, back_bytes = pair.wire_row_bytes(H, dtype)
            schedule = pair.schedule(ALGORITHMS[inner], splits[leaders], row_bytes, comm.topology, back_bytes)
            row = {"algo": f"{name}:{inner}", "pair": name, "inner": inner, "size": size}
            fn = roundtrip(comm, pair, inner, send, send_splits, max_rows)
            case = checked_case(comm, row, fn, check and (lambda out, t=tolerance: count_wrong(out, send, t)), schedule)
            row["dispatch_wire_bytes"] = int(dispatch_bytes[0] + dispatch_bytes[1])
            cases.append(case)
    if "native" in inners:  # every overlap mode's pipeline over the same rows (token pairs: above, inline)
        piped = [name for name in pairs if DISPATCH_COMBINE[name].unit == "assignment" and _pipelined(name)]
        for overlap in overlaps:
            for name in piped:
                pair = DISPATCH_COMBINE[name]
                codec, wire = pair.codec, pair.wire_row_bytes(H, dtype)
                row = {"algo": f"{name}:native", "pair": name, "inner": "native", "size": size}
                if codec.exact:  # the rows go as they are
                    encode, decode, tolerance = (lambda rows: rows), None, None
                else:
                    encode, tolerance = codec.encode, codec.tolerance(send)
                    decode = lambda recv, codec=codec: codec.decode(recv, dtype, H)
                cases.append(pipelined_case(comm, overlap, pair, row, splits[leaders], send_splits,
                                            lambda i: send[i.to(send.device)], encode, decode, send, tolerance, wire,
                                            dtype, check))  # fmt: skip
    return cases, logical


def _pipelined(name: str) -> bool:
    """Whether the overlap pipeline runs this pair over native, dropless."""
    from moebench.bench.layer.overlap import pipeline  # the layer's package imports this module's neighbours

    return pipeline.runs(DISPATCH_COMBINE[name], "native", None)


def pipelined_case(comm, overlap, pair, row: dict, splits_PP, my_splits, select, encode, decode, want_RH, tolerance,
                   wire: tuple[int, int], dtype, check) -> Case:  # fmt: skip
    """`<pair>:native (<mode>)`: a round trip's rows through the overlap mode's pipeline, its communication alone
    (pipeline.roundtrip: one count exchange of C counts per peer, chunk c + 1 dispatched before chunk c's
    combine, identity experts): what chunking costs the exchange, without the compute it would hide.

    The rows (my_splits[d] to rank d; every rank's in splits_PP [P, P]) are cut into C chunks per destination
    before the timed call: select(index, on the CPU) -> a chunk's inputs; timed: encode(inputs) -> the rows sent, and
    decode(recv) -> the values sent back (None: the rows as they came), in the pair's combine dtype; the result,
    chunk 0 first, must equal want_RH's rows in that order (within tolerance [R, H], or exactly), and the
    counted traffic the mode's own schedule (wire: dispatch and combine row bytes). row: the sequential trip's
    fields, completed here."""
    from moebench.bench.layer.overlap import pipeline

    splits_PP = np.asarray(splits_PP)
    C = max(1, min(overlap.chunks, int(splits_PP.sum(axis=1).max())))  # from every rank's rows: the same C
    parts, index = pipeline.chunk_rows(my_splits, C)
    inputs = [select(i) for i in index]
    back = pair.codec.combine_dtype(dtype)
    process = (lambda recv: recv) if decode is None else (lambda recv: decode(recv).to(back))
    trip = pipeline.roundtrip(comm, parts, lambda c: encode(inputs[c]), process)
    fn = trip if back == dtype else (lambda: trip().to(dtype))
    order = torch.cat(index).to(want_RH.device)
    want, tol = want_RH[order], None if tolerance is None else tolerance[order]
    schedule = overlap.schedule(pair, "native", pipeline.chunk_schedules(splits_PP, C), *wire, comm.topology)
    row.pop("dispatch_wire_bytes", None)  # the sequential trip's: an overlap row's dispatch is interleaved
    row.update(algo=f"{row['algo']} ({overlap.name})", overlap=overlap.name, chunks=C)
    return checked_case(comm, row, fn, check and (lambda out: count_wrong(out, want, tol)), schedule)


TOKEN_TOPK = 2  # experts per token in the token-unit round trips (mixtral's k)


def token_roundtrip_cases(comm, names, inner: str, size: int, skew: Skew, hidden: int, dtype, seed: int,
                          check: bool = True, overlaps=()) -> list[Case]:  # fmt: skip
    """`<pair>:<inner>` round trips of the token-unit pairs (dedup, fp8-dedup) on the S bytes of (token, expert)
    rows the plain round trip moves: T = R / k tokens (duplicated in each TP group), k = TOKEN_TOPK distinct
    experts each, drawn from the skew over P * 8 experts (8 per rank), grouped into one row per token and
    destination rank by the pair's unit, as the MoE layer's permute does (before the timed call). Timed: the
    rows' encoding (fp8-dedup; as the assignment pairs' round trips), the dispatch, the receiver's unpack and
    decode, and the combine of what it decoded (identity experts); row r of
    the result must be its token (exactly, or within the codec's tolerance), and the counted bytes must equal
    the pair's schedule."""
    P, me, L, k = comm.world_size, comm.rank, comm.tp.size, TOKEN_TOPK
    R, H = row_shape(size, torch.finfo(dtype).bits // 8, P, hidden)
    T, E, leader = max(R // k, 1), P * EXPERTS_PER_RANK, me // L * L
    x_TH = rank_rows(leader, T, H, dtype, seed).to(comm.device)
    ids_Tk, weights_Tk = sample_topk(skew, T, E, k, seed=seed * 1000 + leader)
    routing = routing_from_topk(ids_Tk.to(comm.device), weights_Tk.to(comm.device), E, None, validate=False)
    cases = []
    for name in names:
        pair = DISPATCH_COMBINE[name]
        if not pair.runs_over(inner):
            continue
        unit, codec = UNITS[pair.unit], pair.codec
        permuted = unit.permute(codec.encode(x_TH), routing, P, EXPERTS_PER_RANK)
        token_R = torch.as_tensor(permuted.token_A, dtype=torch.int64).cpu()
        max_rows = int(max(comm.allgather_object(permuted.send_AW.shape[0])))
        header_RW = permuted.send_AW[:, codec.payload_bytes(H, x_TH.element_size()) :]
        x_RH = x_TH[token_R.to(comm.device)]

        def fn(pair=pair, unit=unit, codec=codec, permuted=permuted, max_rows=max_rows, header_RW=header_RW,
               x_RH=x_RH):  # fmt: skip
            # an encoding is part of the round trip, as in the assignment pairs' (each row encoded, then sent)
            send = permuted.send_AW if codec.exact else join_columns([codec.encode(x_RH), header_RW])
            recv, _, handle = pair.dispatch(comm, send, permuted.send_splits, inner=inner, max_rows_per_rank=max_rows)
            payload_MW, _ = unit.unpack(recv, k)
            y_MH = codec.decode(payload_MW, dtype, H).to(codec.combine_dtype(dtype))
            return pair.combine(comm, y_MH, handle).to(dtype)

        comm.traffic.reset()
        pair.dispatch(comm, permuted.send_AW, permuted.send_splits, inner=inner, max_rows_per_rank=max_rows)
        dispatch_bytes = comm.allreduce_max(comm.traffic.as_array())
        splits = np.array(comm.allgather_object(list(permuted.send_splits)), dtype=np.int64)
        out_bytes, back_bytes = pair.wire_row_bytes(H, dtype, unit.header_bytes(k))
        schedule = pair.schedule(ALGORITHMS[inner], splits, out_bytes, comm.topology, back_bytes, max_rows)
        want_RH = x_TH.cpu()[token_R]
        tolerance = None if codec.exact else codec.tolerance(x_TH).cpu()[token_R]
        row = {"algo": f"{name}:{inner}", "pair": name, "inner": inner, "size": size, "tokens": T, "topk": k}
        check_fn = check and (lambda out, w=want_RH, t=tolerance: count_wrong(out, w, t))
        case = checked_case(comm, row, fn, check_fn, schedule)
        row["dispatch_wire_bytes"] = int(dispatch_bytes[0] + dispatch_bytes[1])
        cases.append(case)
        if not _pipelined(name):
            continue
        if codec.exact:
            select, encode = (lambda i, p=permuted: p.send_AW[i.to(p.send_AW.device)]), (lambda rows: rows)
        else:  # each chunk's rows encoded as it starts, their headers riding along

            def select(i, x_RH=x_RH, header_RW=header_RW):
                i = i.to(x_RH.device)
                return x_RH[i], header_RW[i]

            def encode(inputs, codec=codec):
                return join_columns([codec.encode(inputs[0]), inputs[1]])

        def decode(recv, unit=unit, codec=codec):
            return codec.decode(unit.unpack(recv, k)[0], dtype, H)

        for overlap in overlaps:
            cases.append(pipelined_case(comm, overlap, pair, dict(row), splits, permuted.send_splits, select, encode,
                                        decode, want_RH, tolerance, (out_bytes, back_bytes), dtype, check))  # fmt: skip
    return cases
