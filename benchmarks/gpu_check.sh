#!/usr/bin/env bash
# The CUDA 4-bit check: QLoRA training through the ClientApp's own code path
# (modeling.base.load_base_model with NF4 bitsandbytes, modeling.lora.attach_lora,
# modeling.training.train_round) side by side with a plain PEFT loop and TRL's SFTTrainer
# (benchmarks/train_speed.py's three arms, same batches, same initial adapter); prints the
# card's name, checks that the loss drops, prints instances/s, tokens/s, the probe loss of
# each arm and peak GPU memory, and writes the figures as JSON.
#
#   benchmarks/gpu_check.sh prepare        # on a machine with the project's .venv: fill .gpu/
#   benchmarks/gpu_check.sh run OUT_DIR    # on the GPU machine (no network needed), from the repo root
#
# `prepare` gathers what an offline GPU machine lacks into .gpu/ (about 65 MB): the
# bitsandbytes and peft wheels, and trl, datasets (with dill and multiprocess) and
# transformers at this .venv's versions (TRL's arm needs them; the machine's own
# transformers may predate what TRL's configuration passes), the default model's config
# and tokenizer (the weights are
# not needed: speed does not depend on their values, so `run` trains the same architecture
# at random initialisation), and 1,000 tokenized MACCROBAT training instances.
# `run` trains the default model's shape (SmolLM2-135M) in 4-bit and in bf16, then
# SmolLM2-1.7B's shape and LLaMA-3-8B's shape in 4-bit, batch 8; each stage has its own
# time limit and writes its JSON as soon as it ends, so a slow stage does not lose the
# others. STAGES="name ..." runs only the named stages (all four take about 11 minutes:
# where one command may run 10 at most, run them in two calls).
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
  set -e
  PY=.venv/bin/python
  mkdir -p .gpu/whl .gpu/smollm2
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl bitsandbytes==0.50.2 peft==0.21.2
  # TRL's arm, at the versions benchmarks/train_speed.py was developed with here
  versions=$($PY -c 'import importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in ("trl", "datasets", "dill", "multiprocess", "transformers")))')
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl $versions
  model=$($PY -c 'from modeling.base import resolve_model_path; print(resolve_model_path("embedded:smollm2-135m-instruct"))')
  cp "$model"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/smollm2/
  $PY -m benchmarks.train_speed --data "${DATA:-data/maccrobat}" --write-encoded .gpu/train.json
  $PY -c 'import json; p=".gpu/train.json"; json.dump(json.load(open(p))[:1000], open(p, "w"))'
  du -sh .gpu
  ;;
run)
  out=${2:?usage: gpu_check.sh run OUT_DIR}
  mkdir -p "$out"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu-site PYTHONUNBUFFERED=1
  echo "card: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
  python3 -c 'import torch, transformers, peft, trl, datasets, bitsandbytes as b; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "trl", trl.__version__, "datasets", datasets.__version__, "bitsandbytes", b.__version__, "card", torch.cuda.get_device_name(0))' | tee -a "$out/gpu.txt"
  common=(--model .gpu/smollm2 --random-init --encoded .gpu/train.json --batch-size 8 --require-loss-drop)
  status=0
  stages=" ${STAGES:-smollm2-135m-4bit smollm2-135m-bf16 smollm2-1.7b-shape-4bit llama3-8b-shape-4bit} "
  stage() {  # name, time limit (s), train_speed arguments...
    local name=$1 limit=$2; shift 2
    [[ $stages == *" $name "* ]] || return 0
    echo "== $name"
    timeout "$limit" python3 -m benchmarks.train_speed "${common[@]}" --json "$out/$name.json" "$@" 2>&1 \
      | grep -v -e Warning -e warnings.warn | tee "$out/$name.log" \
      | grep -v -e '^Loading' -e '^Writing' -e 'it/s]' -e "^{'"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" = 0 ] || status=1
  }
  stage smollm2-135m-4bit 180 --quantization 4bit --steps 24 --warmup 3 --repeats 3
  stage smollm2-135m-bf16 150 --quantization none --steps 24 --warmup 3 --repeats 3
  stage smollm2-1.7b-shape-4bit 150 --quantization 4bit --steps 12 --warmup 2 --repeats 3 \
    --arch hidden_size=2048 --arch intermediate_size=8192 --arch num_hidden_layers=24 \
    --arch num_attention_heads=32 --arch num_key_value_heads=32
  stage llama3-8b-shape-4bit 200 --quantization 4bit --steps 8 --warmup 2 --repeats 3 \
    --arch hidden_size=4096 --arch intermediate_size=14336 --arch num_hidden_layers=32 \
    --arch num_attention_heads=32 --arch num_key_value_heads=8 --arch head_dim=128 \
    --arch tie_word_embeddings=false
  exit $status
  ;;
*)
  echo "usage: $0 prepare | run OUT_DIR" >&2
  exit 2
  ;;
esac
