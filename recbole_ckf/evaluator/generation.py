"""Explanation task: greedy decoding of the review headline.

Prompts are re-padded on the LEFT for generation (``Encoder`` pads right for training), with the
slotted ``inputs_embeds`` built by ``model.input_embeddings``; ``generate`` derives the positions from the
attention mask, so a padded prompt generates exactly what it generates alone. The prompt is encoded without an
answer, so it never depends on the reference. Generated texts are cut at the first eos, decoded without
special tokens and stripped; empty texts stay in ``text.pred`` (they score 0, they are not dropped).
"""

import torch

from recbole_ckf.data.collate import collate
from recbole_ckf.evaluator.inference import batches, config_value, eval_mode, llm_device, max_history, \
    n_batches, progress, to_device
from recbole_ckf.model.multi_lora import activate

DEFAULT_EXPLANATION_TOKENS = 24


def generate_explanations(model, encoder, samples, slotted=True, batch_size=16, max_new_tokens=None,
                          autocast=False, show_progress=False):
    """Greedy (KV-cached) explanations of ``samples``: one string per sample, possibly empty."""
    from transformers import GenerationConfig

    max_new_tokens = max_new_tokens or config_value(model.config, "explanation_max_tokens",
                                                    DEFAULT_EXPLANATION_TOKENS)
    tok = model.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    gen_config = GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                                  eos_token_id=eos, pad_token_id=pad, use_cache=True)
    device = llm_device(model)
    texts = []
    with eval_mode(model, autocast):
        activate(model.llm, "explanation")
        encoded = encoder.encode_all(samples, slotted, with_answer=False)
        for chunk in progress(batches(encoded, batch_size), show_progress, n_batches(len(encoded), batch_size),
                              "explanation"):
            batch = collate(chunk, pad, max_history(model))
            n = batch["input_ids"].shape[1]
            left_ids = torch.full_like(batch["input_ids"], pad)
            left_mask = torch.zeros_like(batch["attention_mask"])
            for b, enc in enumerate(chunk):  # re-pad on the left: generation appends after the last column
                k = len(enc.input_ids)
                left_ids[b, n - k:] = torch.tensor(enc.input_ids)
                left_mask[b, n - k:] = 1
            batch = to_device(dict(batch, input_ids=left_ids, attention_mask=left_mask), device)
            embeds = model.input_embeddings(batch, slotted)
            out = model.llm.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                     generation_config=gen_config)
            if out.shape[1] > max_new_tokens:  # some versions return the (dummy) prompt ids too
                out = out[:, -max_new_tokens:]
            for row in out.tolist():
                if eos in row:
                    row = row[: row.index(eos)]
                texts.append(tok.decode(row, skip_special_tokens=True).strip())
    return texts
