# golf: one command trains, quantises, compresses, checks the byte budget, evaluates and records.
# Settings pass through as the challenge's env names: make train-and-submit NUM_LAYERS=10 SEEDS=1,2,3
PY ?= python3
export PYTHONUNBUFFERED := 1

# --- data ---------------------------------------------------------------------------------------
CORPUS ?= shakespeare
VAL ?=
TOKENIZER ?= sp
VOCAB_SIZE ?= 1024
CASEOPS ?= 0
BYTE_SIDECAR ?= 0
TEXT_FIELD ?= text
DATA_OUT ?=
VARIANT ?= sp1024
TRAIN_SHARDS ?= 80
# --- runs / records -----------------------------------------------------------------------------
NAME ?=
PRESET ?=
SEEDS ?=
TRACK ?=
RECORD ?=
ARTIFACT ?=
A ?=
B ?=
PROMPT ?=
OUT ?=
GITHUB_ID ?=
AUTHOR ?=
# --- make study ---------------------------------------------------------------------------------
ARMS ?=
BASELINE ?=
CONTEXTS ?= 256,512,1024
COMMON ?=
LOCAL ?=
GLOBAL ?=
FLOOR ?=
PROBES ?= 0
WHY ?=
NOTE ?=

.PHONY: help install data data-fineweb train train-and-submit quantize eval ablate study study-rerender leaderboard verify submission \
        bundle check-size generate test bench bench-data bench-train bench-quant bench-eval bench-mixers gpu-check

help:
	@echo "make train-and-submit   train -> quantise -> size check -> eval -> record (CPU: tiny preset, default corpus)"
	@echo "make test               the unit tests (CPU)"
	@echo "make data [CORPUS=... VAL=... TOKENIZER=sp|byte VOCAB_SIZE=1024|4096|8192 CASEOPS=0|1 BYTE_SIDECAR=0|1]"
	@echo "make data-fineweb VARIANT=sp1024|sp4096|sp8192|byte260|sp8192_lossless_caps_caseops_v1_reserved TRAIN_SHARDS=N"
	@echo "make ablate NAME=x A='ENV=..' B='ENV=..' SEEDS=1,2,3 | make leaderboard | make verify RECORD=path"
	@echo "make study NAME=x ARMS='base=;mem=ENV=..' BASELINE=base CONTEXTS=256,512,1024 SEEDS=1,2,3 [LOCAL=a GLOBAL=b] [PROBES=1] | make study-rerender RECORD=path WHY=..."
	@echo "make submission RECORD=records/<track>/<record> GITHUB_ID=you [OUT=dir]   (the challenge's PR folder)"
	@echo "make bundle | make check-size ARTIFACT=path | make bench-{data,train,quant,eval,mixers}"

# Installs into the Python that runs make. CPU torch 2.13.0 unless a torch (e.g. a CUDA build) is
# already importable: we never replace a GPU user's torch.
install: .deps.stamp
.deps.stamp: requirements.txt
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

data: install
	$(PY) -m golf.data.prepare --corpus "$(CORPUS)" --val "$(VAL)" --tokenizer $(TOKENIZER) \
	    --vocab-size $(VOCAB_SIZE) --text-field "$(TEXT_FIELD)" $(if $(DATA_OUT),--out "$(DATA_OUT)") \
	    $(if $(filter 1,$(CASEOPS)),--caseops) $(if $(filter 1,$(BYTE_SIDECAR)),--byte-sidecar)

data-fineweb: install
	$(PY) -m golf.data.fineweb --variant $(VARIANT) --train-shards $(TRAIN_SHARDS)

train: install
	$(PY) train_gpt.py

train-and-submit: install
	$(PY) -m golf.submit.cli submit $(if $(NAME),--name "$(NAME)") $(if $(PRESET),--preset $(PRESET)) \
	    $(if $(SEEDS),--seeds $(SEEDS)) $(if $(TRACK),--track $(TRACK))

ablate: install
	$(PY) -m golf.submit.cli ablate --name "$(NAME)" --a "$(A)" --b "$(B)" $(if $(SEEDS),--seeds $(SEEDS)) \
	    $(if $(PRESET),--preset $(PRESET))

# The memory-bench grid (golf/submit/study.py): ARMS is ';'-separated name=SETTINGS
study: install
	$(PY) -m golf.submit.cli study --name "$(NAME)" --arms "$(ARMS)" --baseline "$(BASELINE)" --contexts "$(CONTEXTS)" \
	    --common "$(COMMON)" $(if $(SEEDS),--seeds $(SEEDS)) $(if $(PRESET),--preset $(PRESET)) \
	    $(if $(LOCAL),--local $(LOCAL)) $(if $(GLOBAL),--global $(GLOBAL)) $(if $(FLOOR),--floor $(FLOOR)) \
	    $(if $(filter 1,$(PROBES)),--probes)

# Rebuild a study record's tables and figures from its own files after a report rule changed
study-rerender: install
	$(PY) -m golf.submit.cli study-rerender --record "$(RECORD)" --why "$(WHY)" $(if $(NOTE),--note "$(NOTE)")

leaderboard: install
	$(PY) -m golf.submit.leaderboard

verify: install
	$(PY) -m golf.submit.cli verify --record "$(RECORD)" $(if $(ARTIFACT),--artifact "$(ARTIFACT)") \
	    $(if $(SEEDS),--seeds $(SEEDS))

# The challenge's pull-request folder from a record: make submission RECORD=records/<track>/<record> GITHUB_ID=you [OUT=dir]
submission: install
	$(PY) -m golf.submit.cli submission --record "$(RECORD)" $(if $(OUT),--out "$(OUT)") \
	    $(if $(GITHUB_ID),--github-id "$(GITHUB_ID)") $(if $(AUTHOR),--author "$(AUTHOR)")

bundle: install
	$(PY) -m golf.compress.bundle $(if $(RECORD),--record "$(RECORD)")

check-size: install
	$(PY) quantize.py --check "$(ARTIFACT)"

generate: install
	$(PY) -m golf.eval.generate --artifact "$(ARTIFACT)" $(if $(PROMPT),--prompt "$(PROMPT)")

# The README's test command; .ci/run calls exactly this.
test: install
	$(PY) -m pytest -q tests

bench: bench-data bench-train bench-quant bench-eval bench-mixers

# On a CUDA machine: the tests only a GPU can run, then the speed figures the issues ask for
# (record, baseline and frontier tokens/s, frontier with/without DOC_ATTENTION, stride-64 eval time for 62M tokens, mixers vs attention).
gpu-check: install
	$(PY) -m pytest -q tests -k cuda
	$(PY) -m golf.bench.train --preset record
	$(PY) -m golf.bench.train --preset baseline
	$(PY) -m golf.bench.train --preset frontier
	$(PY) -m golf.bench.train --preset frontier --doc-attention 0 --doc-packing 0 --out bench/train_frontier_nodoc.json
	$(PY) -m golf.bench.eval
	$(PY) -m golf.bench.mixers
	$(PY) -m golf.bench.summary

bench-data: install
	$(PY) -m golf.bench.data
bench-train: install
	$(PY) -m golf.bench.train $(if $(PRESET),--preset $(PRESET))
# make bench-quant [CHECKPOINT=runs/<id>/final.pt DATA_PATH=... [CROSS=1] [MAX_TOKENS=N]]
bench-quant: install
	$(PY) -m golf.bench.quant $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)" --data-path "$(DATA_PATH)") \
	    $(if $(CROSS),--cross) $(if $(MAX_TOKENS),--max-tokens $(MAX_TOKENS))
bench-eval: install
	$(PY) -m golf.bench.eval
bench-mixers: install
	$(PY) -m golf.bench.mixers
