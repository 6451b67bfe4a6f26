# Two commands: `make demo` (the main job on the shipped data) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO_PRETRAIN := runs/demo-pretrain
DEMO_FINETUNE := runs/demo-finetune

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Pretrain on the shipped corpus, fine-tune on the shipped reviews, export, then classify
# through the reloaded SavedModel. The last line printed is the export directory.
demo: install
	$(BIN)/tftune pretrain --out $(DEMO_PRETRAIN) --force
	$(BIN)/tftune finetune --from $(DEMO_PRETRAIN) --out $(DEMO_FINETUNE) --force
	$(BIN)/tftune predict $(DEMO_FINETUNE)/export \
		"a gripping , beautifully acted film that stays with you long after the credits ." \
		"a tedious , badly written mess ; i wanted my two hours back ." \
		"the plot is thin but the performances are wonderful ."
	@$(BIN)/python -c "import pathlib; print(pathlib.Path('$(DEMO_FINETUNE)/export').resolve())"

test: install
	$(BIN)/python -m pytest -q


clean:
	rm -rf runs .pytest_cache
