# moebench: `make bench` runs the main job, `make test` the tests; both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
MOEBENCH := $(VENV)/bin/moebench
STAMP := $(VENV)/.installed
# One thread per MPI rank (ranks busy-poll on 2 cores); the single-process kernel benchmark keeps torch's default.
RANK_ENV := env OMP_NUM_THREADS=1

.PHONY: install test lint bench bench-collectives bench-kernels bench-moe bench-balance bench-dispatch report gpu-check clean

install: $(STAMP)

# torch==2.13.0 first: on a CPU machine pip takes the local CPU wheel and never a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[mpi,dev]'
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install lint
	$(VENV)/bin/pytest -q

# The main job: every benchmark, quick, at 2 ranks (one per core: honest timing) and at 4 ranks
# (2 per node, TP=2: the topology shapes and large-size ratios); results under results/<machine>/.
bench: bench-collectives bench-kernels bench-moe bench-balance bench-dispatch
	$(MOEBENCH) report

bench-collectives: install
	$(RANK_ENV) $(MPIEXEC) -n 2 $(MOEBENCH) collectives -b 1K -e 16M -f 4 --overlap none,chunks:2,chunks:4 \
		--save --tag p2
	$(RANK_ENV) $(MPIEXEC) -n 4 $(MOEBENCH) collectives -b 16K -e 16M -f 4 --budget 0.5 \
		--ranks-per-node 2 --tp 2 --save --tag p4-g2-tp2

bench-kernels: install
	$(MOEBENCH) kernels --model mixtral-8x7b-tiny --batch 1,16,128,1024,4096 --skew uniform \
		--capacity-factor none,2.0 --save --tag mixtral-uniform
	$(MOEBENCH) kernels --model mixtral-8x7b-tiny --batch 4096 --skew zipf:1.2 --capacity-factor none,2.0 \
		--save --tag mixtral-zipf1.2
	$(MOEBENCH) kernels --model deepseek-v3-tiny --batch 128 --skew uniform --capacity-factor 1.0,2.0 \
		--save --tag deepseek-t128

bench-moe: install
	$(RANK_ENV) $(MPIEXEC) -n 2 $(MOEBENCH) moe --model mixtral-8x7b-tiny --batch 1,8,128,1024,4096 \
		--save --tag p2
	$(RANK_ENV) $(MPIEXEC) -n 4 $(MOEBENCH) moe --model mixtral-8x7b-tiny --batch 1,8,128,1024,4096 \
		--ranks-per-node 2 --tp 2 --budget 0.5 --save --tag p4-g2-tp2

# Dispatch variants: dedup and fp8 against plain at P=4 (k=8: deepseek-v3-tiny, qwen3-30b-a3b-tiny; bytes exact,
# timings of 4 ranks on 2 cores), and at P=2 in bf16 (fp8's byte formula; ll against plain at batch <= 8), and
# the ll and plain round trips alone, side by side (nothing else interleaved: the small-size verdict).
DISPATCH_ALGOS := native,dedup:native,fp8:native,fp8-dedup:native,hierarchical,dedup:hierarchical
bench-dispatch: install
	$(RANK_ENV) $(MPIEXEC) -n 4 $(MOEBENCH) moe --model deepseek-v3-tiny --batch 16,256 --algos $(DISPATCH_ALGOS) \
		--kernels dynamic --skew gate,uniform --ranks-per-node 2 -n 20 --budget 0.5 --save --tag dispatch-deepseek-p4
	$(RANK_ENV) $(MPIEXEC) -n 4 $(MOEBENCH) moe --model qwen3-30b-a3b-tiny --batch 16,256 --algos $(DISPATCH_ALGOS) \
		--kernels dynamic --skew gate,uniform --ranks-per-node 2 -n 20 --budget 0.5 --save --tag dispatch-qwen-p4
	$(RANK_ENV) $(MPIEXEC) -n 2 $(MOEBENCH) moe --model mixtral-8x7b-tiny -d bfloat16 --batch 1,8,128 \
		--algos native,ll:native,dedup:native,fp8:native,fp8-dedup:native --kernels dynamic --save --tag dispatch-bf16-p2
	$(RANK_ENV) $(MPIEXEC) -n 2 $(MOEBENCH) collectives -b 1K -e 64K -f 4 --algos native --pairs plain,ll -n 300 \
		--save --tag ll-p2

# Load balance (exact, single process): placements on deepseek-v3-tiny dropless, routers at cf 1.0, Switch's
# drop figure; then routers and placements timed in the layer (topk-switch / task; the hot-expert straggler).
bench-balance: install
	$(MOEBENCH) balance --model deepseek-v3-tiny --ranks 4 --ranks-per-node 2 --batch 256 --redundant 32 --window 4 \
		--skew gate,zipf:1.2,lognormal:1.0,sticky,shift,nodeskew:1,trace:traces/deepseek-v3-tiny-zipf1.2.json \
		--save --tag deepseek-p4
	$(MOEBENCH) balance --model deepseek-v3-tiny --ranks 16 --ranks-per-node 2 --batch 64 --redundant 32 --window 4 \
		--skew gate,zipf:1.2,lognormal:1.0 --routers topk,topk-group --save --tag deepseek-p16-groups
	$(MOEBENCH) balance --model deepseek-v3-tiny --ranks 4 --ranks-per-node 2 --batch 64 --window 4 \
		--skew gate,zipf:1.2,lognormal:1.0,hot:0.9 --placements contiguous --capacity-factor 1.0 --save --tag deepseek-p4-cf1.0
	$(MOEBENCH) balance --model switch-base-128-tiny --ranks 4 --ranks-per-node 2 --batch 4096 --window 2 \
		--skew uniform,gate --routers topk,capacity-aware,hash --placements contiguous --capacity-factor 1.25 \
		--save --tag switch-p4-cf1.25
	$(RANK_ENV) $(MPIEXEC) -n 2 $(MOEBENCH) moe --model mixtral-8x7b-tiny --batch 1,8,128 --skew uniform,hot:0.9 \
		--algos flat --kernels dynamic --routers topk,topk-switch:1,task,task-local --save --tag policies-p2
	$(RANK_ENV) $(MPIEXEC) -n 2 $(MOEBENCH) moe --model qwen3-30b-a3b-tiny --batch 8,128 --skew uniform,hot:0.9,zipf:1.2 \
		--algos flat --kernels dynamic --placements contiguous,eplb --redundant 16 --save --tag straggler-qwen-p2

report: install
	$(MOEBENCH) report

gpu-check: install
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Topologies (root: network namespaces + tc): an emulated cluster with a shaped 1 Gbit/s uplink per node,
# calibration and predicted-vs-measured validation of every algorithm (2x2, 2x2 with +1 ms per inter-node
# message, 4x1, and plain one-host runs), then projections to 1..256 nodes of 8-GPU nodes; results under
# $(TOPO_DIR). One rank busy-polls per core: timings move with other load, so each point is spread over rounds.
# cores from getconf, not nproc: nproc follows OMP_NUM_THREADS=1 (it wrote results/cpu-1core/)
TOPO_DIR ?= results/cpu-$(shell getconf _NPROCESSORS_ONLN)core
CLUSTER := $(MOEBENCH) cluster --timeout 1500
VALIDATE := --validate -n 30 --rounds 10
.PHONY: bench-topology
bench-topology: install
	$(CLUSTER) --nodes 2 --ranks-per-node 2 --inter-bw 1gbit calibrate --tp 2 $(VALIDATE) \
		--save --tag cluster-2x2 --profile-out $(TOPO_DIR)/profile-cluster-2x2.json
	$(CLUSTER) --nodes 2 --ranks-per-node 2 --inter-bw 1gbit --inter-latency 1ms calibrate --tp 2 $(VALIDATE) \
		--save --tag cluster-2x2-lat1ms --profile-out $(TOPO_DIR)/profile-cluster-2x2-lat1ms.json
	$(CLUSTER) --nodes 2 --ranks-per-node 2 --inter-bw 1gbit calibrate --backend torch --tp 2 $(VALIDATE) \
		--save --tag cluster-2x2-torch
	$(CLUSTER) --nodes 4 --ranks-per-node 1 --inter-bw 1gbit calibrate --tp 2 $(VALIDATE) --save --tag cluster-4x1
	$(CLUSTER) --nodes 2 --ranks-per-node 2 --inter-bw 1gbit collectives -b 4K -e 4M -f 8 -n 20 -w 3 --tp 2 \
		--save --tag cluster-2x2
	$(CLUSTER) --nodes 2 --ranks-per-node 2 --inter-bw 1gbit moe --model mixtral-8x7b-tiny --batch 1,8,128,1024 \
		--tp 2 -n 5 -w 2 --rounds 5 --save --tag cluster-2x2
	$(CLUSTER) --nodes 2 --ranks-per-node 2 --inter-bw 1gbit moe --model mixtral-8x7b-tiny --batch 1024 \
		--algos native,dedup:native,fp8:native --kernels dynamic --overlap none,chunks:2,chunks:4,dual \
		--shared-experts 1 -n 60 -w 2 --budget 0 --save --tag overlap-cluster-2x2
	$(RANK_ENV) $(MPIEXEC) -n 2 $(MOEBENCH) calibrate --ranks-per-node 1 $(VALIDATE) --save --tag host-p2
	$(RANK_ENV) $(MPIEXEC) -n 4 $(MOEBENCH) calibrate --ranks-per-node 2 --tp 2 $(VALIDATE) --save --tag host-p4-g2
	$(RANK_ENV) $(MPIEXEC) -n 2 $(MOEBENCH) calibrate --backend torch --ranks-per-node 1 $(VALIDATE) \
		--save --tag host-p2-torch
	$(MOEBENCH) project --profile h100-8gpu,h200-8gpu,a100-8gpu --nodes 1,2,4,8,16,32,64,128,256 \
		--save --tag gpu-8x
	$(MOEBENCH) project --profile $(TOPO_DIR)/profile-cluster-2x2-lat1ms.json --nodes 1,2,4,8,16,32,64 \
		--sizes 4K,32K,256K,1M,4M --tp 2 --save --tag emulated-lat1ms
