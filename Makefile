# mote-edge: `make demo` sets up and runs the main job; `make test` runs the tests.
# Both create .venv and install the package with its extras on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT := out

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml setup.py $(wildcard native/*.c native/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[export,dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Until the .mote runtime exists, the demo runs the torch reference model on the synthetic tiny
# checkpoint (random weights: the answer is noise, the pipeline is real).
demo: $(STAMP)
	$(BIN)/mote-edge synth --preset tiny -o $(OUT)/tiny-ckpt --force
	$(BIN)/mote-edge reference $(OUT)/tiny-ckpt --image examples/images/shapes.png \
		--prompt "What color is the circle?" --max-new-tokens 16

bench: $(STAMP)
	$(BIN)/python benchmarks/kernels.py

clean:
	rm -rf $(OUT) build *.egg-info mote_edge/*.so
