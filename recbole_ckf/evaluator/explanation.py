"""Explanation task: greedy decoding of the review headline.

Prompts are re-padded on the LEFT for generation (``Encoder`` pads right for training), with the
slotted ``inputs_embeds`` built by the model; positions come from the attention mask, so a padded prompt
generates what it generates alone. The decoding is the model's (:meth:`~recbole_ckf.model.ckf.CKF.generate`: a
plain KV-cached greedy loop rather than transformers' ``generate``, the LM head at one position per step only);
this module batches, pads and decodes the texts. The prompt is encoded without an answer, so it never depends on
the reference. Decoding stops at eos or at a newline (a headline is one line);
texts are cut there, decoded without special tokens and stripped; empty texts stay in ``text.pred`` (they
score 0, they are not dropped). Prompts are batched by length, so little of a batch is padding.
"""

import torch

from recbole_ckf.data.collate import collate
from recbole_ckf.evaluator.common import batches, config_value, eval_mode, length_sorted, llm_device, \
    n_batches, progress, to_device

DEFAULT_EXPLANATION_TOKENS = 24


def generate_explanations(model, encoder, samples, slotted=True, batch_size=16, max_new_tokens=None,
                          autocast=False, show_progress=False):
    """Greedy (KV-cached) explanations of ``samples``: one string per sample, possibly empty."""
    max_new_tokens = max_new_tokens or config_value(model.config, "explanation_max_tokens",
                                                    DEFAULT_EXPLANATION_TOKENS)
    tok = model.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    stops = [eos] + [t for t in tok.encode("\n", add_special_tokens=False)[-1:] if t != eos]
    device = llm_device(model)
    texts = [None] * len(samples)
    with eval_mode(model, autocast):
        encoded = encoder.encode_all(samples, slotted, with_answer=False)
        order = length_sorted(encoded)
        for idx in progress(batches(order, batch_size), show_progress, n_batches(len(order), batch_size),
                            "explanation"):
            chunk = [encoded[k] for k in idx]
            batch = collate(chunk, pad)
            n = batch["input_ids"].shape[1]
            left_ids = torch.full_like(batch["input_ids"], pad)
            left_mask = torch.zeros_like(batch["attention_mask"])
            for b, enc in enumerate(chunk):  # re-pad on the left: decoding appends after the last column
                k = len(enc.input_ids)
                left_ids[b, n - k:] = torch.tensor(enc.input_ids)
                left_mask[b, n - k:] = 1
            batch = to_device(dict(batch, input_ids=left_ids, attention_mask=left_mask), device)
            for k, row in zip(idx, model.generate(batch, slotted, max_new_tokens, stops)):
                texts[k] = tok.decode(row, skip_special_tokens=True).strip()
    return texts
