# bifrepro — every target sets itself up on first use (creates .venv and installs the project).
# Run `make help` for the list.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
UI_STAMP := $(VENV)/.installed-ui
RESULTS ?= $(CURDIR)/results
# experiments `make reproduce` runs side by side (0: the default, one at a time on every core)
REPRODUCE_JOBS ?= 0
# scale of every reproduce-* target: full (the committed results/, conf/experiment/<name>.yaml)
# or quick (conf/experiment/<name>_quick.yaml: fewer draws, seeds and sizes)
PROFILE ?= full
ifeq ($(filter full quick,$(PROFILE)),)
$(error PROFILE must be full or quick, got '$(PROFILE)')
endif
Q := $(if $(filter quick,$(PROFILE)),_quick,)
# profile of `make reproduce`: quick (~40 min on 2 cores, into results/quick/) or full (the
# committed results/, ~2.5 h on 2 cores)
REPRODUCE_PROFILE ?= quick
# Debian package with the Fashion-MNIST IDX files (installed by `make install` where apt works)
FASHION_MNIST_DEB ?= dataset-fashion-mnist
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

.PHONY: help install test test-slow lint format bench bench-accuracy bench-time-to-accuracy report demo reproduce mlflow-ui mlflow-ui-check clean \
        reproduce-toy reproduce-toy-robustness sweep-toy sweep-sampler-toy reproduce-language reproduce-language-scale reproduce-imagenet \
        reproduce-lds reproduce-lds-resnet9 reproduce-language-draws reproduce-compute reproduce-compute-lm reproduce-stagewise reproduce-stagewise-controls sweep-stagewise

help:  ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# $(call apt_install,PACKAGE,CHECK,FALLBACK): install a Debian package with apt where apt works
# (root or passwordless sudo) unless CHECK succeeds; never fails: prints what FALLBACK means.
define apt_install
if ! { $(2); } >/dev/null 2>&1; then \
  if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=no; fi; \
  if command -v apt-get >/dev/null 2>&1 && [ "$$sudo" != no ]; then \
    apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -y -qq"; \
    { $$apt install --no-install-recommends $(1) || { $$apt update && $$apt install --no-install-recommends $(1); }; } >/dev/null 2>&1 \
      && echo "installed $(1)" || echo "note: apt could not install $(1); $(3)"; \
  else echo "note: apt not usable here (no apt-get, or neither root nor sudo); $(3)"; fi; \
fi
endef

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision first, pinned to the builds that ship on this kind of machine's disk
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e ".[dev]"
	# Fashion-MNIST (data=fashion_mnist) from the Debian package where apt works (root or
	# passwordless sudo); never fails the install: without it the loader falls back to MNIST-5k
	-@$(call apt_install,$(FASHION_MNIST_DEB),dpkg -s $(FASHION_MNIST_DEB),data=fashion_mnist will fall back to MNIST-5k)
	@touch $(STAMP)

# Peer implementations that are only benchmarked against (devinterp): installed on first use.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	@touch $(BENCH_STAMP)

# Headless-browser check of the MLflow UI (playwright + Debian's chromium): installed on first use.
$(UI_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,ui]"
	-@$(call apt_install,chromium,command -v chromium || test -n "$$CHROMIUM",set CHROMIUM=/path/to/chromium)
	@touch $(UI_STAMP)

install: $(STAMP)  ## Create .venv and install bifrepro (editable) with dev tools

test: $(STAMP)  ## Run the test suite (fast tests; slow ones are marked and excluded)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)  ## Run only the slow tests
	$(PY) -m pytest -q -m slow

lint: $(STAMP)  ## Ruff lint + format check
	$(PY) -m ruff check bifrepro experiments tests bench
	$(PY) -m ruff format --check bifrepro experiments tests bench

format: $(STAMP)  ## Auto-format with ruff
	$(PY) -m ruff check --fix bifrepro experiments tests bench
	$(PY) -m ruff format bifrepro experiments tests bench

bench: $(BENCH_STAMP)  ## Performance benchmarks, ratios measured in one run: sampler overhead, batched vs sequential chains, options, bifrepro vs devinterp (3 paired repeats)
	$(PY) bench/bench_sampler.py
	$(PY) bench/bench_devinterp.py --repeats 3 --no-bf16-arm --no-mlflow --out outputs/bench

bench-accuracy: $(STAMP)  ## BIF accuracy against exact answers (linear/logistic regression, MLP, per token) -> results/accuracy/, docs/accuracy.md (<= 15 min)
	$(PY) bench/accuracy.py
	$(PY) -m bifrepro.report

bench-time-to-accuracy: $(STAMP)  ## Seconds to reach Spearman 0.9 against exact answers per sampler (long chains, every prefix timed) -> results/accuracy/time_to_target/, docs/accuracy.md (~25 min)
	$(PY) bench/time_to_accuracy.py
	$(PY) -m bifrepro.report

report: $(STAMP)  ## Regenerate the README and docs/ blocks (numbers, tables) from results/
	$(PY) -m bifrepro.report

demo: $(STAMP)  ## Tiny BIF demo on linear regression (seconds)
	$(PY) -m bifrepro.demo

reproduce: $(BENCH_STAMP)  ## Run every experiment (quick profile, ~40 min on 2 cores, into results/quick/; REPRODUCE_PROFILE=full: the committed results/, ~2.5 h); progress lines, summary table, MLflow
	$(PY) -m bifrepro.reproduce --profile $(REPRODUCE_PROFILE) --results "$(RESULTS)" --make "$(MAKE) --no-print-directory" --jobs $(REPRODUCE_JOBS)

reproduce-toy: $(STAMP)  ## Toy semantic hierarchy: influence dynamics (a few minutes)
	$(PY) -m experiments.toy_hierarchy experiment=toy_hierarchy$(Q)

reproduce-toy-robustness: $(STAMP)  ## Toy sign flips over 5 sampler x 3 init seeds: which are robust (~10 min)
	$(PY) -m experiments.toy_robustness experiment=toy_robustness$(Q)

reproduce-language: $(BENCH_STAMP)  ## Token-level BIF on a causal LM: poster examples, token benchmark, devinterp comparison (~20 min on 2 cores)
	$(PY) -m experiments.language experiment=language$(Q)
	$(PY) bench/bench_devinterp.py $(if $(Q),--repeats 1 --draws 50 --no-bf16-arm --experiment language_quick,--repeats 3)

reproduce-language-scale: $(STAMP)  ## Token links across 4 embedded LM sizes (0.16-6.8M) x 3 sampler seeds, BIF vs EK-FAC per token: cross-form benchmark with CIs, seed agreement, poster figures (~25 min on 2 cores)
	$(PY) -m experiments.language_scale experiment=language_scale$(Q)

reproduce-language-draws: $(STAMP)  ## The smallest language-scale LM with 2,000 draws per sampler seed: seed agreement of the token scores at its projected 0.5, links with low Monte Carlo noise (~10 min on 2 cores)
	$(PY) -m experiments.language_scale experiment=language_scale_draws

reproduce-imagenet: $(STAMP)  ## Influence galleries BIF vs EK-FAC: ImageNet if IMAGENET_ROOT is set, else the Fashion-MNIST stand-in (MNIST-5k if its files are missing)
	$(PY) -m experiments.imagenet experiment=imagenet$(Q)

reproduce-lds: $(STAMP)  ## LDS of BIF / EK-FAC / TRAK / GradSim vs subset fraction on Fashion-MNIST, 3 retraining and 3 sampler seeds (~15 min on 2 cores)
	$(PY) -m experiments.lds experiment=lds$(Q)

reproduce-lds-resnet9: $(STAMP)  ## LDS with a ResNet-9 (width 8) on Fashion-MNIST, 102 subset-seed pairs per alpha (~50 min; not in reproduce)
	$(PY) -m experiments.lds experiment=lds_resnet9

reproduce-compute: $(STAMP)  ## Cost of each method vs n, q, model size, draws; crossover; time-to-equal-LDS (reuses the LDS cache); then the LM family
	$(PY) -m experiments.compute experiment=compute$(Q)
	$(PY) -m experiments.compute_lm experiment=compute_lm$(Q)

reproduce-compute-lm: $(STAMP)  ## BIF vs EK-FAC across a family of causal LMs (0.15M-7.3M params): cost models, crossover, Pythia extrapolation
	$(PY) -m experiments.compute_lm experiment=compute_lm$(Q)

reproduce-stagewise: $(STAMP)  ## Stagewise influence in an LM: per-token BIF across training checkpoints, induction stage (~15 min)
	$(PY) -m experiments.stagewise_lm experiment=stagewise_lm$(Q)

reproduce-stagewise-controls: $(STAMP)  ## Stagewise controls: curriculum arms x 3 training seeds, influence-change shift, class-reweighting intervention (~30-50 min on 2 cores)
	$(PY) -m experiments.stagewise_controls experiment=stagewise_controls$(Q)

sweep-stagewise: $(STAMP)  ## The same as a sweep: train, one Hydra job per checkpoint (local_parallel; SLURM: hydra/launcher=slurm), merge
	$(PY) -m experiments.stagewise_lm experiment=stagewise_lm experiment.mode=train
	$(PY) -m experiments.stagewise_lm -m experiment=stagewise_lm hydra/launcher=local_parallel experiment.mode=checkpoint 'experiment.checkpoint_index=range(0,12)'
	$(PY) -m experiments.stagewise_lm experiment=stagewise_lm experiment.mode=merge

sweep-toy: $(STAMP)  ## Multirun sweep of the toy over localization and nbeta (parent/child MLflow runs)
	$(PY) -m experiments.toy_hierarchy -m experiment=toy_sweep

sweep-sampler-toy: $(STAMP)  ## SGLD grid (step size x gamma x nbeta) on the toy + summary figure (~10 min)
	$(PY) -m experiments.toy_hierarchy -m hydra/sweeper=sampler_grid experiment.num_checkpoints=12 sampler.num_draws=200
	$(PY) -m bifrepro.plots.calibration "$$(ls -td multirun/toy_hierarchy/*/ | head -1)" --metric spearman_bif_loo_mean

MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
mlflow-ui: $(STAMP)  ## MLflow UI against results/mlflow.db (prints each experiment's runs-table link)
	@$(PY) scripts/mlflow_ui_links.py --tracking-uri sqlite:///$(RESULTS)/mlflow.db \
		--host $(MLFLOW_HOST) --port $(MLFLOW_PORT)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(RESULTS)/mlflow.db \
		--host $(MLFLOW_HOST) --port $(MLFLOW_PORT)

mlflow-ui-check: $(UI_STAMP)  ## Open results/mlflow.db's runs table in headless Chromium; check parent/child runs, screenshot
	$(PY) scripts/mlflow_ui_check.py --tracking-uri sqlite:///$(RESULTS)/mlflow.db \
		--out $(RESULTS)/mlflow_ui/runs_table.png

clean:  ## Remove caches and Hydra outputs (keeps .venv and results/)
	rm -rf outputs multirun .pytest_cache .ruff_cache
