"""Explanation task: greedy decoding of the review headline.

Prompts are re-padded on the LEFT for generation (``Encoder`` pads right for training), with the
slotted ``inputs_embeds`` built by ``model.input_embeddings``; positions come from the attention mask, so a padded
prompt generates what it generates alone. :func:`greedy_decode` is a plain KV-cached greedy loop rather than
``generate``: it computes the LM head at one position per step only. The prompt is encoded without an
answer, so it never depends on the reference. Decoding stops at eos or at a newline (a headline is one line);
texts are cut there, decoded without special tokens and stripped; empty texts stay in ``text.pred`` (they
score 0, they are not dropped). Prompts are batched by length, so little of a batch is padding.
"""

import torch

from recbole_ckf.data.collate import collate
from recbole_ckf.evaluator.inference import batches, config_value, eval_mode, length_sorted, llm_device, \
    n_batches, progress, to_device
from recbole_ckf.model.multi_lora import activate

DEFAULT_EXPLANATION_TOKENS = 24


def greedy_decode(model, embeds, attention_mask, max_new_tokens, stops):
    """Greedy decoding from left-padded ``inputs_embeds`` with a KV cache: one decoder step per new token,
    logits only at the last position (a full-vocabulary row per sample: Gemma's 262k-token head over every
    prompt position would cost gigabytes). Returns the new token ids per sample, cut before the first stop."""
    base = model.llm.get_base_model()
    decoder, embed = base.model, base.get_input_embeddings()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = decoder(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
    past, hidden = out.past_key_values, out.last_hidden_state[:, -1]
    positions, mask = position_ids[:, -1], attention_mask
    stops = torch.tensor(stops, device=embeds.device)
    done = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
    rows = [[] for _ in range(embeds.shape[0])]
    for step in range(int(max_new_tokens)):
        next_ids = model.logits(hidden).argmax(-1)
        for b in torch.nonzero(~done).flatten().tolist():
            rows[b].append(int(next_ids[b]))
        done |= torch.isin(next_ids, stops)
        if bool(done.all()) or step + 1 == max_new_tokens:
            break
        positions = positions + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = decoder(inputs_embeds=embed(next_ids[:, None]), attention_mask=mask, position_ids=positions[:, None],
                      past_key_values=past, use_cache=True)
        past, hidden = out.past_key_values, out.last_hidden_state[:, -1]
    stop_set = set(stops.tolist())
    return [row[: next((j for j, t in enumerate(row) if t in stop_set), len(row))] for row in rows]


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
        activate(model.llm, "explanation")
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
            embeds = model.input_embeddings(batch, slotted)
            for k, row in zip(idx, greedy_decode(model, embeds, batch["attention_mask"], max_new_tokens, stops)):
                texts[k] = tok.decode(row, skip_special_tokens=True).strip()
    return texts
