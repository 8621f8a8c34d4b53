# mote-edge: `make demo` sets up and runs the main job; `make test` runs the tests.
# Both create .venv and install the package with its extras on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT := out
MODELS := models
# Every install pins the tested versions (constraints.txt), the isolated build environment's setuptools too.
PIN := -c constraints.txt --build-constraint constraints.txt

.PHONY: train-tiny ship-tiny accuracy-tiny demo test lint-imports test-arm test-selftest bench bench-kernels bench-memory bench-decode bench-sweep bench-accuracy bench-peer bench-deps install wheel-check constraints clean

$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard native/*.c native/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip -c constraints.txt
	$(BIN)/python -m pip install --quiet $(PIN) -e '.[export,dev,serve]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) lint-imports
	$(BIN)/python -m pytest -q

# The one import direction of .importlinter, checked on a copy of the source laid out as a wheel installs it
# (the import names map onto top-level folders: exporters/ -> mote_edge.exporters, ...), in seconds.
IMPORT_TREE := $(OUT)/import-tree
lint-imports: $(STAMP)
	rm -rf $(IMPORT_TREE) && mkdir -p $(IMPORT_TREE)
	cp -r mote_edge $(IMPORT_TREE)/mote_edge
	cp -r exporters $(IMPORT_TREE)/mote_edge/exporters
	cp -r runtime $(IMPORT_TREE)/mote_edge/runtime
	cp -r training $(IMPORT_TREE)/mote_edge/training
	cd $(IMPORT_TREE) && PYTHONPATH=. $(abspath $(BIN))/lint-imports $(abspath .importlinter) --no-cache

# Every SIMD kernel path against the scalar path, bit for bit, in C (native/tests/arm_selftest.c; no Python).
# test-arm: an aarch64 static build run under qemu-user twice, with a CPU that has the dot product
# (-cpu max: neon and dotprod paths) and one without it (-cpu cortex-a57: neon), plus MOTE_KERNEL_PATH=neon
# on the first; then the same at -O3. Installs nothing: needs Debian's gcc-aarch64-linux-gnu and qemu-user-static.
# test-selftest: the same driver built for this machine (x86-64: avx2 / avx512 against scalar).
ARM_CC ?= aarch64-linux-gnu-gcc
QEMU_ARM ?= qemu-aarch64-static
SELFTEST_SRC := native/tests/arm_selftest.c $(filter-out native/module.c,$(wildcard native/*.c))
SELFTEST_FLAGS := -std=c11 -O2 -ffp-contract=off -Wall -Wextra -Wno-unused-parameter -Inative
test-arm:
	@command -v $(ARM_CC) >/dev/null 2>&1 || { echo "test-arm: $(ARM_CC) not found (apt-get install -y gcc-aarch64-linux-gnu qemu-user-static)" >&2; exit 1; }
	@command -v $(QEMU_ARM) >/dev/null 2>&1 || { echo "test-arm: $(QEMU_ARM) not found (apt-get install -y qemu-user-static)" >&2; exit 1; }
	mkdir -p build/arm
	$(ARM_CC) $(SELFTEST_FLAGS) -static -o build/arm/arm_selftest $(SELFTEST_SRC) -lpthread -lm
	$(QEMU_ARM) -cpu max build/arm/arm_selftest --expect-best dotprod
	$(QEMU_ARM) -cpu cortex-a57 build/arm/arm_selftest --expect-best neon
	MOTE_KERNEL_PATH=neon $(QEMU_ARM) -cpu max build/arm/arm_selftest --expect-current neon
	# and with setup.py's optimization flags (-O3), what pip builds
	$(ARM_CC) $(SELFTEST_FLAGS) -O3 -fno-strict-aliasing -static -o build/arm/arm_selftest_o3 $(SELFTEST_SRC) -lpthread -lm
	$(QEMU_ARM) -cpu max build/arm/arm_selftest_o3 --expect-best dotprod
	$(QEMU_ARM) -cpu cortex-a57 build/arm/arm_selftest_o3 --expect-best neon

test-selftest:
	mkdir -p build/selftest
	$(CC) $(SELFTEST_FLAGS) -o build/selftest/selftest $(SELFTEST_SRC) -lpthread -lm
	build/selftest/selftest

# The main job: export the shipped trained tiny MoTE at 4 bits, check it, and answer questions about a
# held-out task image under a memory budget, with the memory and speed report. Then fit its lookahead
# predictors on 200 training questions (tiny-mote-la.mote: what the expert prefetch predicts with).
demo: $(STAMP)
	$(BIN)/mote-edge export examples/tiny-mote --bits 4 -o $(OUT)/tiny-mote.mote --force
	$(BIN)/mote-edge info $(OUT)/tiny-mote.mote
	$(BIN)/mote-edge verify $(OUT)/tiny-mote.mote
	$(BIN)/mote-edge run $(OUT)/tiny-mote.mote --image examples/images/task-0.png \
		--prompt "How many shapes are there?" --memory-budget 40MB
	$(BIN)/mote-edge run $(OUT)/tiny-mote.mote --image examples/images/task-0.png \
		--prompt "What color is the star?" --memory-budget 40MB --report
	$(BIN)/python -m mote_edge.training.calibration -n 200 -o $(OUT)/calib-tiny/calib.jsonl
	$(BIN)/mote-edge fit-lookahead $(OUT)/tiny-mote.mote -o $(OUT)/tiny-mote-la.mote --force \
		--calib $(OUT)/calib-tiny/calib.jsonl --samples 200 --ignore-eos

bench: bench-memory bench-kernels bench-decode bench-sweep bench-accuracy bench-peer

# The [bench] extra, installed on first use: matplotlib for the plots, gguf and llama-cpp-python for bench-peer
# (llama-cpp-python builds llama.cpp from source: ~10-20 min on 2 cores the first time)
bench-deps: $(STAMP)
	$(BIN)/python -c "import matplotlib, gguf, llama_cpp" 2>/dev/null || $(BIN)/python -m pip install --quiet $(PIN) -e '.[bench]'

# The paper's memory table from the exporter's own layout planner (seconds)
bench-memory: $(STAMP)
	$(BIN)/python benchmarks/memory_table.py

# Runtime vs torch reference and onnxruntime (dense-equivalent, fp32 + int4) decode speed on the synth
# Qwen2.5-0.5B MoTE (~6 GB of disk, ~8 min and 6.5 GB RAM the first time for the ONNX export)
bench-decode: $(MODELS)/q05-b4.mote
	test -f $(MODELS)/q05-ckpt/config.json || $(BIN)/mote-edge synth --preset qwen2.5-0.5b-e8 -o $(MODELS)/q05-ckpt --force
	OPENBLAS_NUM_THREADS=1 $(BIN)/python benchmarks/decode_speed.py $(MODELS)/q05-ckpt $(MODELS)/q05-b4.mote

$(MODELS)/q15-b4.mote: | $(STAMP)
	test -f $(MODELS)/q15-ckpt/config.json || $(BIN)/mote-edge synth --preset qwen2.5-1.5b-e8 -o $(MODELS)/q15-ckpt --force
	$(BIN)/mote-edge export $(MODELS)/q15-ckpt --bits 4 -o $@

$(MODELS)/q05-b4.mote: | $(STAMP)
	test -f $(MODELS)/q05-ckpt/config.json || $(BIN)/mote-edge synth --preset qwen2.5-0.5b-e8 -o $(MODELS)/q05-ckpt --force
	$(BIN)/mote-edge export $(MODELS)/q05-ckpt --bits 4 -o $@

# Budget sweeps of both synth presets (min feasible -> full cache; tiny-MoTE-skewed and uniform routing);
# writes benchmarks/out/budget-sweep.json and a PNG per model (~15 GB of disk and ~15 min the first time)
bench-sweep: bench-deps $(MODELS)/q05-b4.mote $(MODELS)/q15-b4.mote
	$(BIN)/python benchmarks/budget_sweep.py $(MODELS)/q05-b4.mote $(MODELS)/q15-b4.mote

# Held-out accuracy against expert memory through the runtime, int4/3/2 (~20 min on 1 thread)
bench-accuracy: bench-deps
	$(BIN)/python benchmarks/accuracy_memory.py --run

# mote-edge next to llama.cpp on the synth 0.5B's dims: GGUFs written in out/peer/ (dense Q4_0 and qwen2moe with
# ternary experts, 2.0 GB, ~5 min the first time), decode and prefill tok/s, MB / token, effective GB/s and
# % of the same run's DRAM bandwidth at 1 and 2 threads (~8 min; writes out/peer/peer-llamacpp.json)
bench-peer: bench-deps $(MODELS)/q05-b4.mote
	$(BIN)/python benchmarks/peer_llamacpp.py $(MODELS)/q05-b4.mote

# Kernel speed vs numpy and onnxruntime MatMulNBits, cold weights (~4 min; writes benchmarks/out/kernels.json)
bench-kernels: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python benchmarks/kernel_speed.py

# What a user gets from `pip install <wheel>` (no extras): build the wheel, install it into a clean venv
# (out/wheel-venv), check it holds every module and asset, has no torch, and that its CLI and Engine answer
# about the .mote `make demo` wrote. Runs from inside that venv's folder so the source tree cannot be imported.
WHEEL_VENV := $(OUT)/wheel-venv
wheel-check: $(STAMP)
	test -f $(OUT)/tiny-mote.mote || $(MAKE) demo
	# a stale build/lib or *.egg-info/SOURCES.txt would put modules the config no longer lists into the wheel
	rm -rf dist build *.egg-info $(WHEEL_VENV)
	$(BIN)/python -m pip wheel --quiet --no-deps $(PIN) -w dist .
	$(BIN)/python .ci/wheel_contents.py dist/mote_edge-*.whl
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet -c constraints.txt dist/mote_edge-*.whl
	cd $(WHEEL_VENV) && set -e; \
	if bin/python -c "import torch" 2>/dev/null; then echo "wheel-check: torch is importable without extras" >&2; exit 1; fi; \
	bin/python -c "import mote_edge, sys; from mote_edge.runtime.engine import Engine; \
		sys.exit(0 if mote_edge.__file__.startswith('$(abspath $(WHEEL_VENV))') else 'mote_edge came from ' + mote_edge.__file__)"; \
	bin/mote-edge info $(abspath $(OUT))/tiny-mote.mote; \
	bin/mote-edge fit-lookahead $(abspath $(OUT))/tiny-mote.mote -o $(abspath $(OUT))/wheel-la.mote --force --samples 8; \
	answer=$$(bin/mote-edge run $(abspath $(OUT))/tiny-mote.mote --image $(abspath examples/images/task-0.png) \
		--prompt "What color is the star?" --memory-budget 40MB); \
	echo "$$answer"; \
	test -n "$$(echo "$$answer" | tr -d '[:space:]')" || { echo "wheel-check: mote-edge run printed nothing" >&2; exit 1; }
	@echo "wheel-check: ok"

# Regenerate constraints.txt from the newest releases pyproject.toml admits (see the file's header)
constraints:
	rm -rf $(OUT)/constraints-venv
	$(PYTHON) -m venv $(OUT)/constraints-venv
	$(OUT)/constraints-venv/bin/python -m pip install --quiet --upgrade pip
	$(OUT)/constraints-venv/bin/python -m pip install --quiet -e '.[export,dev,serve,bench]'
	{ sed -n '/^#/p' constraints.txt; $(OUT)/constraints-venv/bin/python -m pip freeze --all --exclude-editable \
		| sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(OUT)/constraints-venv
	git diff --stat constraints.txt || true

clean:
	rm -rf $(OUT) build dist *.egg-info mote_edge/*.so

# Train the tiny MoTE from scratch (DESIGN.md section 7; not part of CI): data + task tokenizer, the dense VLM,
# then MoTE and fp-MoE up-cycling, into out/train/ (log.jsonl has the held-out accuracy after every phase).
# The phases (steps, lr, row mix) are the recipe RECIPE in training/recipes.py: s7 (default, ~30 min on 2
# cores) or s6 (~59 min, what examples/ ship). `make ship-tiny` copies the result to examples/ as fp16;
# `make accuracy-tiny` writes the PTQ rows of docs/ACCURACY.md. Timings: docs/ACCURACY.md.
RECIPE ?= s7
train-tiny: $(STAMP)
	$(BIN)/python -m mote_edge.training.train --out $(OUT)/train --recipe $(RECIPE) --stages dense
	# MoTE and the fp-MoE baseline are independent up-cyclings of the dense model: one process and one
	# thread each (~1.2x the throughput of running them one after the other on 2 threads)
	$(BIN)/python -m mote_edge.training.train --out $(OUT)/train --recipe $(RECIPE) --stages mote --threads 1 & \
		mote=$$!; \
	$(BIN)/python -m mote_edge.training.train --out $(OUT)/train --recipe $(RECIPE) --stages fp --threads 1; \
		fp=$$?; wait $$mote; test $$? -eq 0 -a $$fp -eq 0

# Replace examples/tiny-mote and examples/tiny-moe-fp with train-tiny's models (fp16) and score them on the
# 200-question test set. The shipped pair was trained with RECIPE=s6's phases; docs/ACCURACY.md states its accuracy and a
# test holds the shipped tiny-mote to it, so ship other models together with their figures.
ship-tiny: $(STAMP)
	$(BIN)/python -m mote_edge.training.ship --out $(OUT)/train

# docs/ACCURACY.md's PTQ tables from train-tiny's outputs (~15 min; not part of train-tiny's budget)
accuracy-tiny: $(STAMP)
	$(BIN)/python -m mote_edge.training.report dense=$(OUT)/train/dense mote=$(OUT)/train/mote fp-moe=$(OUT)/train/fp \
		--bits 4,3,2
	for b in 3 2; do \
		$(BIN)/python -m mote_edge.training.report mote=$(OUT)/train/mote fp-moe=$(OUT)/train/fp --no-reference \
			--bits 4 --recipe shared_expert=$$b,fp_expert=$$b && \
		$(BIN)/python -m mote_edge.training.report dense=$(OUT)/train/dense --no-reference --bits 4 --recipe ffn=$$b \
			|| exit 1; \
	done
	$(BIN)/python -m mote_edge.training.summary $(OUT)/train/report.jsonl

# Long structure fuzzing of .mote metadata (not in CI; tests/test_fuzz_structure.py runs a short
# deterministic share): FUZZ_MINUTES of random mutants from a fresh seed, any crash saved to
# tests/fuzz_corpus/ (which CI replays).
FUZZ_MINUTES ?= 10
.PHONY: fuzz
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz_long.py --minutes $(FUZZ_MINUTES)
