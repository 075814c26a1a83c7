"""Tokenization and collation of task samples: answer-only labels, slot positions, one task per batch.

An encoded sample is ``[bos] prompt answer [eos]``; labels are -100 on the prompt (answer-only loss). A prompt
that would exceed ``max_length`` drops its oldest history items (never a slot in the middle of the prompt), so
the slots always match the items given to ``inject_slots``.
"""

import dataclasses
import os

import torch

from recbole_ckf.data.item_text import stat_features
from recbole_ckf.utils import atomic_path, stable_hash

IGNORE = -100


@dataclasses.dataclass
class Encoded:
    task: str
    input_ids: list
    labels: list          # -100 outside the answer
    prompt_len: int       # tokens before the answer
    slot_items: list      # item ids of the item slots, in prompt order
    user: int
    history: list         # the history actually shown (after any truncation)
    label: float
    candidates: list
    answer: str
    pool: list = None     # item ids pooled into p_u
    user_stats: list = None  # stat_features of the user's earlier ratings (the bridge's s_u)
    slot_stats: list = None  # stat_features of each slot's item, without this user's rating (s_v), slot order
    blocks: list = None   # pointwise sequential (a packed row): the token count of each candidate's block, in
                          # candidate order; the row is [prefix, block 1, ..., block K] and has no answer tokens


class Encoder:
    """Turns :class:`~recbole_ckf.data.tasks.Sample` objects into token ids for one tokenizer."""

    def __init__(self, tokenizer, renderer, max_length, eos_tasks=None):
        self.tokenizer, self.renderer, self.max_length = tokenizer, renderer, max_length
        if eos_tasks is None:  # free-text answers end with eos; one-token answers (Yes/No, digits, letters) do not
            eos_tasks = ("explanation",) + (("sequential",) if renderer.sequential_answer == "title" else ())
        self.eos_tasks = set(eos_tasks)

    def _ids(self, text, special):
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def encode(self, sample, slotted, with_answer=True):
        return self.encode_all([sample], slotted, with_answer)[0]

    def _answers(self, samples, with_answer):
        if not with_answer:
            return [[] for _ in samples]
        ids = self.tokenizer([self.renderer.answer(s) for s in samples], add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return [a + [eos] if (s.task in self.eos_tasks and eos is not None) else a for s, a in zip(samples, ids)]

    def _stats(self, sample, slot_items):
        """(s_u, [s_v per slot]): the rating statistics the bridge may take (``bridge_stats``)."""
        stats = getattr(self.renderer.item_texts, "stats", None)
        s_u = stat_features(*(sample.user_stats or (0, None)))
        return s_u, [stat_features(*(stats.of(i, sample.user) if stats is not None else (0, None))) for i in slot_items]

    def encode_all(self, samples, slotted, with_answer=True):
        """Encode many samples with one batched tokenizer call (the Rust tokenizer works in parallel)."""
        if self.renderer.sequential_answer == "pointwise" and any(s.task == "sequential" for s in samples):
            return [self.encode_packed(s, slotted) if s.task == "sequential" else self.encode(s, slotted, with_answer)
                    for s in samples]
        answers = self._answers(samples, with_answer)
        rendered = [self.renderer.render(s, slotted) for s in samples]
        prompts = self.tokenizer([r[0] for r in rendered], add_special_tokens=True)["input_ids"]
        out = []
        for sample, (_, slot_items), prompt_ids, answer_ids in zip(samples, rendered, prompts, answers):
            # too long: drop the oldest history items (rare; re-tokenised one by one)
            while len(prompt_ids) + len(answer_ids) > self.max_length and sample.history:
                sample = dataclasses.replace(sample, history=sample.history[1:], history_ratings=(
                    sample.history_ratings[1:] if sample.history_ratings else None))
                prompt, slot_items = self.renderer.render(sample, slotted)
                prompt_ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
            out.append(Encoded(sample.task, prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids,
                               len(prompt_ids), slot_items, sample.user, list(sample.history), sample.label,
                               list(sample.candidates), sample.answer, list(sample.pool),
                               *self._stats(sample, slot_items)))
        return out


    def encode_packed(self, sample, slotted):
        """A pointwise sequential sample as ONE packed row ``[bos prefix, block 1, ..., block K]``
        (:meth:`~recbole_ckf.data.templates.PromptRenderer.render_blocks`): block k asks about candidate k, the
        answer (Yes for the true candidate) is read after its last token. The prefix is tokenised as a prompt
        (with bos), each block alone, so a block's tokens do not depend on the other candidates. Too long (prefix
        + the longest block > ``max_length``): the oldest history items are dropped, as for every prompt."""
        while True:
            prefix, prefix_items, blocks = self.renderer.render_blocks(sample, slotted)
            prefix_ids = self.tokenizer(prefix, add_special_tokens=True)["input_ids"]  # as every prompt: bos
            block_ids = self.tokenizer([b for b, _ in blocks], add_special_tokens=False)["input_ids"]
            longest = max((len(b) for b in block_ids), default=0)
            if len(prefix_ids) + longest <= self.max_length or not sample.history:
                break
            sample = dataclasses.replace(sample, history=sample.history[1:], history_ratings=(
                sample.history_ratings[1:] if sample.history_ratings else None))
        row = prefix_ids + [t for b in block_ids for t in b]
        slot_items = prefix_items + [i for _, items in blocks for i in items]
        return Encoded(sample.task, row, [IGNORE] * len(row), len(row), slot_items, sample.user,
                       list(sample.history), sample.label, list(sample.candidates), sample.answer, list(sample.pool),
                       *self._stats(sample, slot_items), blocks=[len(b) for b in block_ids])


def packed_layout(prefix, blocks):
    """``(segments, positions)`` (lists) of a packed row of ``prefix`` tokens then blocks of ``blocks`` tokens each:
    segment 0 for the prefix, k for block k; positions count through the prefix and restart after it for every
    block (each block sits where it would alone)."""
    seg, pos = [0] * prefix, list(range(prefix))
    for k, n in enumerate(blocks, 1):
        seg += [k] * n
        pos += list(range(prefix, prefix + n))
    return seg, pos


def cached(cache_dir, key, build):
    """Load ``build()``'s result from ``<cache_dir>/<key>.pt`` or build and store it atomically."""
    if not cache_dir:
        return build()
    path = os.path.join(cache_dir, f"{key}.pt")
    if os.path.isfile(path):
        try:
            return torch.load(path, weights_only=False)
        except Exception:  # a damaged cache file is rebuilt, never trusted
            pass
    value = build()
    try:
        with atomic_path(path) as tmp:
            torch.save(value, tmp)
    except OSError:
        pass  # a read-only cache folder only costs time
    return value


def cache_key(*parts):
    return stable_hash(parts)


def collate(batch, pad_id):
    """Pad a list of :class:`Encoded` of one task into tensors (right padding). ``history`` holds the items
    pooled into p_u (``Encoded.pool``), padded to the longest pool of the batch; ``user_stats`` [B, S] and
    ``slot_stats`` [n_slots, S] the bridge's statistics inputs."""
    n = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), n), dtype=torch.long)
    pools = [e.pool if e.pool is not None else e.history for e in batch]
    none = stat_features(0, None)
    hist = torch.zeros((len(batch), max(1, max(len(p) for p in pools))), dtype=torch.long)
    hist_mask = torch.zeros_like(hist, dtype=torch.bool)
    for b, e in enumerate(batch):
        k = len(e.input_ids)
        input_ids[b, :k] = torch.tensor(e.input_ids)
        labels[b, :k] = torch.tensor(e.labels)
        attention[b, :k] = 1
        h = pools[b]
        if h:
            hist[b, :len(h)] = torch.tensor(h)
            hist_mask[b, :len(h)] = True
    packed = {}
    if batch[0].blocks is not None:  # pointwise sequential rows: block layout and the end of every block
        seg = torch.full((len(batch), n), -1, dtype=torch.long)
        pos = torch.zeros((len(batch), n), dtype=torch.long)
        ends, owner = [], []
        for b, e in enumerate(batch):
            s, p = packed_layout(len(e.input_ids) - sum(e.blocks), e.blocks)
            seg[b, :len(s)], pos[b, :len(p)] = torch.tensor(s), torch.tensor(p)
            end = len(e.input_ids) - sum(e.blocks)
            for k in e.blocks:
                end += k
                ends.append(b * n + end - 1)
                owner.append(b)
        packed = {"segments": seg, "positions": pos, "block_ends": torch.tensor(ends, dtype=torch.long),
                  "block_owner": torch.tensor(owner, dtype=torch.long)}
    return {
        **packed,
        "task": batch[0].task,
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention,
        "prompt_len": torch.tensor([e.prompt_len for e in batch]),
        "slot_items": torch.tensor([i for e in batch for i in e.slot_items], dtype=torch.long),
        "user_stats": torch.tensor([e.user_stats or none for e in batch], dtype=torch.float),
        "slot_stats": torch.tensor([s for e in batch for s in (e.slot_stats or [none] * len(e.slot_items))],
                                   dtype=torch.float).reshape(-1, len(none)),
        "users": torch.tensor([e.user for e in batch], dtype=torch.long),
        "history": hist,
        "history_mask": hist_mask,
        "label": torch.tensor([e.label for e in batch], dtype=torch.float),
        # sequential: candidates per sample (the listwise answer's letters past them are masked)
        "n_choices": torch.tensor([len(e.candidates) for e in batch]) if batch[0].candidates else None,
    }
