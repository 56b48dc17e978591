# arbor — the two commands of the README, plus benchmarks.
#   make run    set up, build, run the default job (Countdown GRPO from the shipped warm start, CPU: the job
#               5–20 min on 2 cores by machine, after a first build of ~5–7 min)
#   make test   set up, build, pass every test
CARGO ?= cargo
THREADS ?= 2
TORCH_VENV ?= .venv-torch

.PHONY: run test setup setup-run build lint bench bench-peer bench-generate-peer bench-sim-peer fixtures

# everything the tests need (h5py, NVRTC for the emulator too)
setup:
	@bash scripts/setup.sh

# what building and running needs
setup-run:
	@bash scripts/setup.sh --run

build: setup-run
	$(CARGO) build --release

run: build
	./target/release/arbor train

test: setup
	bash scripts/test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --workspace -- -D warnings

bench:
	$(CARGO) bench --bench core

# arbor vs PyTorch CPU on the same config and thread count (PyTorch in $(TORCH_VENV); created
# on first use with `pip install torch transformers`, ~5 GB).
bench-peer: build
	@test -x $(TORCH_VENV)/bin/python || (python3 -m venv $(TORCH_VENV) && $(TORCH_VENV)/bin/pip install -q -r scripts/requirements-fixtures.txt)
	@bash scripts/peer/bench_peer.sh $(THREADS) $(TORCH_VENV)/bin/python

# arbor generate vs transformers generate (batch 64, prompt 16, 112 new tokens, same threads).
bench-generate-peer: build
	@test -x $(TORCH_VENV)/bin/python || (python3 -m venv $(TORCH_VENV) && $(TORCH_VENV)/bin/pip install -q -r scripts/requirements-fixtures.txt)
	@./target/release/arbor --threads $(THREADS) bench generate --model-config configs/models/bench-tiny | tee /tmp/arbor-gen.json
	@$(TORCH_VENV)/bin/python scripts/peer/hf_generate.py --model-config configs/models/bench-tiny --threads $(THREADS) | tee /tmp/hf-gen.json
	@python3 -c "import json; a=json.load(open('/tmp/arbor-gen.json')); h=json.load(open('/tmp/hf-gen.json')); print(f\"ratio arbor/transformers generate tokens/s: {a['tokens_per_s']/h['tokens_per_s']:.2f}x\")"

bench-sim-peer:
	@python3 -c "import simpy" 2>/dev/null || pip install -q simpy
	@bash scripts/peer/bench_sim_peer.sh

# Regenerate the golden fixtures (by hand; outputs are committed).
fixtures:
	@test -x $(TORCH_VENV)/bin/python || (python3 -m venv $(TORCH_VENV) && $(TORCH_VENV)/bin/pip install -q -r scripts/requirements-fixtures.txt)
	$(TORCH_VENV)/bin/python scripts/make_fixtures.py
