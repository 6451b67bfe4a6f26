# Two commands: `make demo` (the main job on the shipped data) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO_PRETRAIN := runs/demo-pretrain
DEMO_FINETUNE := runs/demo-finetune

.PHONY: demo test bench install docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Fine-tune the shipped general language model on the authors' text (ULMFiT's target-domain
# step), fine-tune a classifier on the authors task with gradual unfreezing, export, then classify
# through the reloaded SavedModel. The last line printed is the export directory.
demo: install
	$(BIN)/tftune pretrain --from lstm-glove-general --corpus pretrained/authors/train.csv --out $(DEMO_PRETRAIN) --force
	$(BIN)/tftune finetune --from $(DEMO_PRETRAIN) --train pretrained/authors/train.csv \
		--valid pretrained/authors/valid.csv --test pretrained/authors/test.csv --out $(DEMO_FINETUNE) --force
	$(BIN)/tftune predict $(DEMO_FINETUNE)/export \
		"It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife." \
		"The harpooneers stood at the bows while the whale sounded far below the ship." \
		"O Captain! my Captain! our fearful trip is done, the ship has weather'd every rack." \
		"Father Brown blinked at the policeman and said that the cross was the only answer to the riddle."
	@$(BIN)/python -c "import pathlib; print(pathlib.Path('$(DEMO_FINETUNE)/export').resolve())"

# Two workers (pytest-xdist), each file in one of them so module fixtures are built once.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The benchmark suite (about 2 h on 2 cores); results go to bench/results/, see bench/README.md.
bench: install
	$(BIN)/python -m bench

# The documentation site, from docs/ and mkdocs.yml, into site/ (open site/index.html).
# tests/test_docs.py builds it too whenever mkdocs is installed.
$(VENV)/.docs-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf runs site .pytest_cache
