"""Shared-prefix scoring for :mod:`recbole_ckf.recommend`: one user's top-k prompts of one task (rating, ctr,
explanation) differ only after the user's history ("User <u> rated: ... . How many stars will the user give
<item> ...?"), so the common prefix is run ONCE per (user, task), its KV cache copied to the user's k rows, and
only each item's remaining tokens are run (about half the prompt tokens of the top-k at the default settings).
Several users go through one forward pass (``batch_size`` prompts, at least one user's), their prefixes and
suffixes left-padded; explanations are decoded for all of them together (KV-cached greedy, as
:meth:`~recbole_ckf.model.ckf.CKF.greedy_decode`).

Exact by construction, up to float rounding: the prompts are encoded exactly as the plain path encodes them
(truncation included); the prefix is their longest common token prefix with the same items in its slots (every
item slot is the same placeholder token: the prefix ends before a prompt's own item); each token keeps the
position it has in its full prompt; the attention masks are explicit (causal in column order, padding masked).
The sliding-window layers of Gemma-3 count the window in cache entries, so a chunk whose padded prefix + suffix
(+ generated tokens) would reach the window goes through the plain path (never at the default ``max_length``).
"""

import dataclasses

import torch

from recbole_ckf.data.collate import collate
from recbole_ckf.evaluator.common import eval_mode, llm_device, prompt_only, to_device


def common_prefix(encoded, item_token_id):
    """Length of the longest common prefix of ``encoded`` (Encoded prompts of one user): the same tokens AND the
    same items in its item slots, leaving every prompt at least one token of its own (the one that answers)."""
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


def _masks(model, mask, queries, dtype):
    """The decoder's attention masks (per layer type where the model has them) for the last ``queries`` columns
    of ``mask`` [G, K] (1 = a real token, 0 = padding; the earlier columns are in the cache): causal in column
    order, padding masked (a padding query sees itself only). No window (the chunks stay below it)."""
    keys = mask.shape[1]
    q = torch.arange(keys - queries, keys, device=mask.device)
    k = torch.arange(keys, device=mask.device)
    real = mask.bool()
    allowed = (k[None, :] <= q[:, None])[None] & real[:, None, :]
    allowed |= (~real[:, q])[:, :, None] & (k[None, None, :] == q[None, :, None])
    allowed = allowed.unsqueeze(1)
    config = model.decoder_config
    if model.attention_implementation != "sdpa":
        allowed = torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed,
                                                                                          torch.finfo(dtype).min)
    types = getattr(config, "layer_types", None)
    return {t: allowed for t in set(types)} if types else allowed


def _left_pad(rows, pad, width, start):
    """``(ids, mask, positions)`` [len(rows), width] of token lists left-padded; row b's positions start at
    ``start[b]``."""
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            ids[b, width - len(row):] = torch.tensor(row)
            mask[b, width - len(row):] = 1
            pos[b, width - len(row):] = torch.arange(start[b], start[b] + len(row))
    return ids, mask, pos


def _prefill(model, groups, slotted, device, extra=0):
    """Run the users' shared prefixes (``groups``: per user, its Encoded prompts), then every prompt's suffix on
    its user's prefix cache. Returns ``(hidden at each prompt's last token [G, H], cache, mask [G, K], last
    positions [G])`` in the order of the flattened groups, or None where the chunk cannot share (a group
    without common prefix, or the cache, with ``extra`` generated tokens, would reach the sliding window)."""
    pad = model.tokenizer.pad_token_id
    cuts = [common_prefix(g, model.item_token_id) for g in groups]
    width_p = max(cuts)
    width_s = max(len(e.input_ids) - n for g, n in zip(groups, cuts) for e in g)
    window = getattr(model.decoder_config, "sliding_window", None)
    if min(cuts) == 0 or (window is not None and width_p + width_s + extra >= int(window)):
        return None
    heads = []
    for g, n in zip(groups, cuts):
        n_items = g[0].input_ids[:n].count(model.item_token_id)
        heads.append((n_items, dataclasses.replace(g[0], input_ids=g[0].input_ids[:n], labels=g[0].labels[:n],
                                                   slot_items=list(g[0].slot_items[:n_items]),
                                                   slot_stats=list(g[0].slot_stats[:n_items]), prompt_len=n)))
    ids, pmask, pos = _left_pad([h.input_ids for _, h in heads], pad, width_p, [0] * len(groups))
    batch = to_device(dict(collate([h for _, h in heads], pad), input_ids=ids), device)
    embeds = model.input_embeddings(batch, slotted)
    pmask = pmask.to(device)
    _, cache = model.decoder_pass(embeds, _masks(model, pmask, width_p, embeds.dtype), pos.to(device))
    owner = torch.tensor([u for u, g in enumerate(groups) for _ in g], device=device)
    cache.batch_select_indices(owner)
    suffixes, starts = [], []
    for g, n, (n_items, _) in zip(groups, cuts, heads):
        for e in g:
            suffixes.append(dataclasses.replace(e, input_ids=e.input_ids[n:], labels=e.labels[n:],
                                                slot_items=list(e.slot_items[n_items:]),
                                                slot_stats=list(e.slot_stats[n_items:]), prompt_len=len(e.input_ids) - n))
            starts.append(n)
    ids, smask, pos = _left_pad([s.input_ids for s in suffixes], pad, width_s, starts)
    batch = to_device(dict(collate(suffixes, pad), input_ids=ids), device)
    mask = torch.cat([pmask[owner], smask.to(device)], dim=1)
    pos = pos.to(device)
    embeds = model.input_embeddings(batch, slotted)
    hidden, cache = model.decoder_pass(embeds, _masks(model, mask, width_s, embeds.dtype), pos, cache)
    return hidden[:, -1], cache, mask, pos[:, -1]


def _decode(model, state, stops, max_new_tokens):
    """Greedy KV-cached decoding from a :func:`_prefill` state (the model's greedy loop, with this module's
    explicit masks at every step)."""
    return model.greedy_decode(*state, stops, max_new_tokens,
                               step_mask=lambda mask, dtype: _masks(model, mask, 1, dtype))


def _chunks(samples, batch_size):
    """Sample indices grouped by user (first-seen order), users packed into chunks of at most ``batch_size``
    prompts (at least one user each)."""
    groups = {}
    for k, s in enumerate(samples):
        groups.setdefault(s.user, []).append(k)
    chunk = []
    for idx in groups.values():
        if chunk and sum(map(len, chunk)) + len(idx) > batch_size:
            yield chunk
            chunk = []
        chunk.append(idx)
    if chunk:
        yield chunk


def answer_logits_by_user(model, encoder, samples, slotted=True, batch_size=16, autocast=False):
    """``predict_answer_logits`` of ``samples`` (one task with a fixed answer set), each user's prompts sharing
    their prefix; chunks that cannot share go through ``predict_answer_logits`` together."""
    from recbole_ckf.evaluator.pointwise import predict_answer_logits

    out, rest = [None] * len(samples), []
    device = llm_device(model)
    task = samples[0].task if samples else None
    with eval_mode(model, autocast):
        encoded = [prompt_only(e) for e in encoder.encode_all(samples, slotted)]
        for chunk in _chunks(samples, batch_size):
            model.set_task(task)
            state = _prefill(model, [[encoded[k] for k in idx] for idx in chunk], slotted, device)
            flat = [k for idx in chunk for k in idx]
            if state is None:
                rest += flat
                continue
            logits = model.choice_logits(state[0], task).float().cpu()
            for k, row in zip(flat, logits):
                out[k] = row
    if rest:
        logits = predict_answer_logits(model, encoder, [samples[k] for k in rest], slotted, batch_size, autocast)
        for k, row in zip(rest, logits):
            out[k] = row
    return torch.stack(out) if out else torch.zeros(0, 0)


def explanations_by_user(model, encoder, samples, slotted=True, batch_size=16, max_new_tokens=None,
                         autocast=False):
    """``generate_explanations`` of ``samples``, each user's prompts sharing their prefix; chunks that cannot
    share go through ``generate_explanations`` together."""
    from recbole_ckf.evaluator.common import config_value
    from recbole_ckf.evaluator.explanation import DEFAULT_EXPLANATION_TOKENS, generate_explanations

    max_new_tokens = int(max_new_tokens or config_value(model.config, "explanation_max_tokens",
                                                        DEFAULT_EXPLANATION_TOKENS))
    tok = model.tokenizer
    stops = [tok.eos_token_id] + [t for t in tok.encode("\n", add_special_tokens=False)[-1:] if t != tok.eos_token_id]
    out, rest = [None] * len(samples), []
    device = llm_device(model)
    with eval_mode(model, autocast):
        encoded = encoder.encode_all(samples, slotted, with_answer=False)
        for chunk in _chunks(samples, batch_size):
            model.set_task("explanation")
            state = _prefill(model, [[encoded[k] for k in idx] for idx in chunk], slotted, device, max_new_tokens)
            flat = [k for idx in chunk for k in idx]
            if state is None:
                rest += flat
                continue
            for k, row in zip(flat, _decode(model, state, stops, max_new_tokens)):
                out[k] = tok.decode(row, skip_special_tokens=True).strip()
    if rest:
        texts = generate_explanations(model, encoder, [samples[k] for k in rest], slotted, batch_size,
                                      max_new_tokens, autocast)
        for k, text in zip(rest, texts):
            out[k] = text
    return out
