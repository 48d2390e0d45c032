# jigclu: every target sets itself up; a fresh machine needs only python3 (and root for the
# optional Fashion-MNIST Debian package).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.jigclu-installed
FMNIST := /usr/share/datasets/fashion-mnist
# pytest workers etc. stay modest: CI has 2 cores
PYTEST_ARGS ?=

.PHONY: setup data postgres test test-fast demo demo-pretrain bench bench-quality bench-recipe bench-sweeps bench-stream faults gpu-check clean help

help:
	@echo "make demo   - set up, then run the demo (real data, short run, report)"
	@echo "make test   - set up, then run the whole test suite"
	@echo "make bench  - set up, then run the speed benchmarks (writes benchmarks/RESULTS.md)"
	@echo "make bench-quality - set up, then the quality table: ablation, JigClu vs SimCLR at equal time, probe table (RESULTS.md; ~80 min)"
	@echo "make bench-recipe - set up, then jigclu searches its own recipe: JigClu and SimCLR sweeps, leaders 30 min x 2 seeds, the recipes before it (RESULTS.md; ~4.8 h, resumable)"
	@echo "make bench-sweeps - set up, then a full sweep vs ASHA vs promotion on 27 configs x 3 seeds (RESULTS.md; ~75 min, resumable)"
	@echo "make bench-stream - set up, then peak RSS per Ray Train worker and img/s, in-memory vs Ray Data, 12k/120k images (RESULTS.md; ~15 min)"
	@echo "make faults - set up, then run the fault matrix (faults injected from outside; ~8 min)"
	@echo "make gpu-check - set up, then check the CUDA path (2-rank global montage, augment, bf16, img/s, memory)"

setup: $(STAMP) data postgres

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: pip takes these two from this machine's disk when they are there
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -e ".[test,plots]"
	touch $(STAMP)

# Fashion-MNIST from Debian (real, no download at run time). Optional: without root or apt
# we carry on and the demo and tests use scikit-learn's bundled digits instead.
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "note: could not install dataset-fashion-mnist; using scikit-learn digits"; \
	else echo "note: Fashion-MNIST not installed (needs root: apt-get install dataset-fashion-mnist); using digits"; fi

# PostgreSQL from Debian, for the shared-study test (tests/test_study_postgres.py starts its own server
# on 127.0.0.1 and stops it). Optional: without root or apt we carry on and that test skips.
postgres:
	@if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	  || echo "note: could not install postgresql; the PostgreSQL study test will skip"; \
	else echo "note: PostgreSQL not installed (needs root: apt-get install postgresql); its study test will skip"; fi

test: setup
	$(BIN)/python -m pytest tests -m "not faults" --durations=30 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest tests -m "not ray and not slow" $(PYTEST_ARGS)

# The demo is the main job: a small real sweep (TPE + the promotion scheduler, then its two leaders
# re-run with two more seeds each) and its report: 6 min 34 s on 2 AVX-512 cores (rungs on the probe);
# its 400 s budget bounds it on slower CPUs too (not yet timed on AVX2).
DEMO_SWEEP = $(shell [ -f $(FMNIST)/train-images-idx3-ubyte.gz ] && echo pretrain_fashion || echo pretrain_digits)

demo: setup
	$(BIN)/jigclu tune --config tune/configs/$(DEMO_SWEEP).yaml name=demo-$$(date +%Y%m%d-%H%M%S)

# A single real pretraining run (no sweep), for a quick look at the training loop.
demo-pretrain: setup
	$(BIN)/jigclu pretrain --config configs/demo.yaml \
	  data.dataset=$(if $(filter pretrain_fashion,$(DEMO_SWEEP)),fashion_mnist,digits) \
	  $(if $(filter pretrain_digits,$(DEMO_SWEEP)),data.image_size=32 data.limit=null,) \
	  name=demo-$$(date +%Y%m%d-%H%M%S)

bench: setup
	$(BIN)/python -m benchmarks.speed.run_all

bench-quality: setup
	$(BIN)/python -m benchmarks.quality.quality

# jigclu searching its own small-image recipe (issue #26): the JigClu and SimCLR recipe sweeps (35 min each on
# 2 cores), then each one's two leaders trained 30 min x 2 seeds on one core each and scored on the test split
# (~2.5 h): ## Recipe search. Resumable: a sweep cut short continues, a finished one (test_scores.json) and finished finals are kept
# (bench-results/recipe).
RECIPE = bench-results/recipe
bench-recipe: setup
	for s in recipe_fashion recipe_simclr_fashion; do [ -f $(RECIPE)/$$s/test_scores.json ] || \
	  $(BIN)/jigclu tune --config tune/configs/$$s.yaml --no-progress --no-report output_dir=$(RECIPE) || exit 1; done
	$(BIN)/python -m benchmarks.quality.recipe_finals --results $(RECIPE)/finals \
	  --sweeps $(RECIPE)/recipe_fashion,$(RECIPE)/recipe_simclr_fashion

# Full sweep (3 seeds: the true values) vs ASHA and the promotion scheduler, kNN or probe at the rungs, on the
# same 27 configs; Spearman per rung (~75 min on 2 AVX512 cores; resumable: bench-results/sweeps)
bench-sweeps: setup
	$(BIN)/python -m benchmarks.quality.asha_vs_full

# Peak RSS per Ray Train worker and img/s, in-memory reader vs Ray Data, on 12k and 120k synthetic
# JPEG images (generated once into $TMPDIR/jigclu-bench-stream): ## Streaming data (~15 min on 2 cores)
bench-stream: setup
	$(BIN)/python -m benchmarks.speed.stream_memory

# Faults injected from outside a real run (kill, Ctrl-C, full disk, S3 outage...): ## Fault matrix
faults: setup
	$(BIN)/python -m pytest tests -m faults $(PYTEST_ARGS)
	$(BIN)/python -m benchmarks.faults.fault_matrix

# One prepared check for a machine with CUDA (under 5 minutes); prints one line and passes without one.
gpu-check: setup
	$(BIN)/python -m benchmarks.gpu_check

clean:
	rm -rf runs sweeps .pytest_cache
