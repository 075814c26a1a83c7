"""Shared-prefix scoring for :mod:`recbole_ckf.recommend`: one user's top-k prompts of one task (rating, ctr,
explanation) differ only after the user's history ("User <u> rated: ... . How many stars will the user give
<item> ...?"), so the common token prefix is run ONCE per (user, task), its KV cache repeated for the k items, and
only each item's remaining tokens are run (about half the prompt tokens of the top-k at the default settings).

Exact by construction, up to float rounding: the prompts are encoded exactly as the plain path encodes them
(truncation included), the prefix is their longest common token prefix (slots included: the history's item slots
go with it, each prompt's own item slots with its suffix), each suffix keeps the positions it has in its full
prompt, and the suffixes are left-padded after the prefix with the padding masked out. The sliding-window
layers of Gemma-3 count the window in cache entries; a group whose prefix + padded suffix + generated tokens
would reach the window falls back to the plain path (never at the default ``max_length``).
"""

import dataclasses

import torch

from recbole_ckf.data.collate import collate
from recbole_ckf.evaluator.inference import eval_mode, llm_device, prompt_only, to_device
from recbole_ckf.model.multi_lora import activate


def common_prefix(encoded, item_token_id):
    """Length of the longest common prefix of ``encoded`` (Encoded prompts of one user): the same tokens AND the
    same items in its item slots (every item slot is the same placeholder token), leaving every prompt at least
    one token of its own (the position that answers)."""
    first = encoded[0].input_ids
    n = min(len(e.input_ids) for e in encoded) - 1
    for e in encoded[1:]:
        ids = e.input_ids
        k = 0
        while k < n and ids[k] == first[k]:
            k += 1
        n = k
    slots = [t for t in range(n) if first[t] == item_token_id]
    for j, t in enumerate(slots):
        if any(e.slot_items[j] != encoded[0].slot_items[j] for e in encoded[1:]):
            return t  # the prompts' own item: the prefix ends before it
    return max(n, 0)


def _window_ok(model, total):
    window = getattr(model.llm.get_base_model().config, "sliding_window", None)
    return window is None or total < int(window)


def _masks(model, mask, queries, dtype):
    """The decoder's attention masks (per layer type where the model has them) for ``queries`` new columns over
    the cache + new keys whose padding is ``mask`` [G, K]: causal in column order, padding masked. No window
    (the groups stay below it)."""
    keys = mask.shape[1]
    q = torch.arange(keys - queries, keys, device=mask.device)
    allowed = (torch.arange(keys, device=mask.device)[None, :] <= q[:, None])[None] & mask[:, None, :].bool()
    allowed = allowed.unsqueeze(1)
    config = model.llm.get_base_model().config
    if getattr(config, "_attn_implementation", "sdpa") != "sdpa":
        allowed = torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed,
                                                                                          torch.finfo(dtype).min)
    types = getattr(config, "layer_types", None)
    return {t: allowed for t in set(types)} if types else allowed


def _prefill(model, encoded, slotted, device, extra=0):
    """Run the group's shared prefix once, then its suffixes (left-padded) on the prefix's repeated KV cache.
    Returns ``(hidden at each prompt's last token [G, H], cache, attention mask [G, T], last positions [G])``, or
    None where the group cannot share (one prompt, no common prefix, or the cache, with ``extra`` generated
    tokens, would reach the sliding window)."""
    n = common_prefix(encoded, model.item_token_id) if len(encoded) > 1 else 0
    if n == 0 or not _window_ok(model, n + max(len(e.input_ids) - n for e in encoded) + extra):
        return None
    decoder = model.llm.get_base_model().model
    pad = model.tokenizer.pad_token_id
    head = encoded[0]
    n_items = head.input_ids[:n].count(model.item_token_id)
    prefix = dataclasses.replace(head, input_ids=head.input_ids[:n], labels=head.labels[:n],
                                 slot_items=list(head.slot_items[:n_items]), prompt_len=n)
    batch = to_device(collate([prefix], pad), device)
    out = decoder(inputs_embeds=model.input_embeddings(batch, slotted), attention_mask=batch["attention_mask"],
                  position_ids=torch.arange(n, device=device)[None], use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(encoded))
    suffixes = [dataclasses.replace(e, input_ids=e.input_ids[n:], labels=e.labels[n:],
                                    slot_items=list(e.slot_items[n_items:]), prompt_len=len(e.input_ids) - n)
                for e in encoded]
    batch = collate(suffixes, pad)
    width = batch["input_ids"].shape[1]
    ids = torch.full_like(batch["input_ids"], pad)
    mask = torch.zeros((len(encoded), n + width), dtype=torch.long)
    mask[:, :n] = 1
    pos = torch.zeros((len(encoded), width), dtype=torch.long)
    for b, s in enumerate(suffixes):  # left padding: every suffix ends in the last column
        k = len(s.input_ids)
        ids[b, width - k:] = torch.tensor(s.input_ids)
        mask[b, n + width - k:] = 1
        pos[b, width - k:] = torch.arange(n, n + k)
    batch = to_device(dict(batch, input_ids=ids), device)
    mask, pos = mask.to(device), pos.to(device)
    embeds = model.input_embeddings(batch, slotted)
    out = decoder(inputs_embeds=embeds, attention_mask=_masks(model, mask, width, embeds.dtype), position_ids=pos,
                  past_key_values=cache, use_cache=True)
    return out.last_hidden_state[:, -1], out.past_key_values, mask, pos[:, -1]


def shared_answer_logits(model, encoder, samples, slotted=True, autocast=False):
    """``[len(samples), C]`` answer-set logits (as ``predict_answer_logits``) of ONE user's samples of one task
    with a fixed answer set, sharing their common prefix; None where the group cannot share."""
    device = llm_device(model)
    with eval_mode(model, autocast):
        encoded = [prompt_only(e) for e in encoder.encode_all(samples, slotted)]
        activate(model.llm, samples[0].task)
        state = _prefill(model, encoded, slotted, device)
        if state is None:
            return None
        hidden = state[0]
        return model._choice_logits(hidden, {"task": samples[0].task, "n_choices": None}).float().cpu()


def shared_explanations(model, encoder, samples, slotted=True, max_new_tokens=24, autocast=False):
    """Greedy explanations (as ``generate_explanations``) of ONE user's explanation samples, sharing their
    common prefix; None where the group cannot share."""
    tok = model.tokenizer
    eos = tok.eos_token_id
    stops = [eos] + [t for t in tok.encode("\n", add_special_tokens=False)[-1:] if t != eos]
    device = llm_device(model)
    with eval_mode(model, autocast):
        encoded = encoder.encode_all(samples, slotted, with_answer=False)
        activate(model.llm, "explanation")
        state = _prefill(model, encoded, slotted, device, int(max_new_tokens))
        if state is None:
            return None
        hidden, past, mask, positions = state
        embed = model.llm.get_base_model().get_input_embeddings()
        decoder = model.llm.get_base_model().model
        stop_t = torch.tensor(stops, device=device)
        done = torch.zeros(len(samples), dtype=torch.bool, device=device)
        rows = [[] for _ in samples]
        for step in range(int(max_new_tokens)):  # the loop of evaluator.generation.greedy_decode
            next_ids = model.logits(hidden).argmax(-1)
            for b in torch.nonzero(~done).flatten().tolist():
                rows[b].append(int(next_ids[b]))
            done |= torch.isin(next_ids, stop_t)
            if bool(done.all()) or step + 1 == max_new_tokens:
                break
            positions = positions + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            embeds = embed(next_ids[:, None])
            out = decoder(inputs_embeds=embeds, attention_mask=_masks(model, mask, 1, embeds.dtype),
                          position_ids=positions[:, None], past_key_values=past, use_cache=True)
            past, hidden = out.past_key_values, out.last_hidden_state[:, -1]
    stop_set = set(stops)
    rows = [row[: next((j for j, t in enumerate(row) if t in stop_set), len(row))] for row in rows]
    return [tok.decode(row, skip_special_tokens=True).strip() for row in rows]


def _by_user(samples):
    groups = {}
    for k, s in enumerate(samples):
        groups.setdefault(s.user, []).append(k)
    return list(groups.values())


def answer_logits_by_user(model, encoder, samples, slotted=True, batch_size=16, autocast=False):
    """``predict_answer_logits`` of ``samples`` (one task), each user's samples sharing their prefix; groups that
    cannot share go through ``predict_answer_logits`` together."""
    from recbole_ckf.evaluator.inference import predict_answer_logits

    out, rest = [None] * len(samples), []
    for idx in _by_user(samples):
        logits = shared_answer_logits(model, encoder, [samples[k] for k in idx], slotted, autocast)
        if logits is None:
            rest += idx
        for k, row in zip(idx, logits if logits is not None else ()):
            out[k] = row
    if rest:
        logits = predict_answer_logits(model, encoder, [samples[k] for k in rest], slotted, batch_size, autocast)
        for k, row in zip(rest, logits):
            out[k] = row
    return torch.stack(out)


def explanations_by_user(model, encoder, samples, slotted=True, batch_size=16, max_new_tokens=None,
                         autocast=False):
    """``generate_explanations`` of ``samples``, each user's samples sharing their prefix; groups that cannot
    share go through ``generate_explanations`` together."""
    from recbole_ckf.evaluator.generation import DEFAULT_EXPLANATION_TOKENS, generate_explanations
    from recbole_ckf.evaluator.inference import config_value

    max_new_tokens = max_new_tokens or config_value(model.config, "explanation_max_tokens",
                                                    DEFAULT_EXPLANATION_TOKENS)
    out, rest = [None] * len(samples), []
    for idx in _by_user(samples):
        texts = shared_explanations(model, encoder, [samples[k] for k in idx], slotted, max_new_tokens, autocast)
        if texts is None:
            rest += idx
        for k, text in zip(idx, texts or ()):
            out[k] = text
    if rest:
        texts = generate_explanations(model, encoder, [samples[k] for k in rest], slotted, batch_size,
                                      max_new_tokens, autocast)
        for k, text in zip(rest, texts):
            out[k] = text
    return out
