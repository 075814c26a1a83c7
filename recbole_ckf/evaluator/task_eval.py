"""Deterministic evaluation of CKF's four tasks through RecBole's evaluator.

:func:`evaluate_tasks` scores every test sample with the model, hands the scores to RecBole's own
:class:`~recbole.evaluator.collector.Collector` (which builds ``rec.score`` / ``data.label`` / ``rec.topk`` /
``rec.meanrank`` exactly as RecBole's trainer does) or, for the generated texts, puts them into a
:class:`~recbole.evaluator.collector.DataStruct` as ``text.pred`` / ``text.ref``, and lets RecBole's
:class:`~recbole.evaluator.Evaluator` compute the metrics, for all users and for warm / cold users
(:func:`recbole_ckf.evaluator.groups.evaluate_by_group`). Nothing is sampled: two evaluations of one model give
identical numbers.

=============  ==================================================================  ===========================
task           score                                                               RecBole metrics
=============  ==================================================================  ===========================
ctr            ``model.predict_ctr``: P(Yes) against P(No) at the answer position   AUC, LogLoss (+ GAUC)
rating         ``model.predict_rating``: expectation over the five digit tokens     RMSE, MAE (1-5 scale)
sequential     likelihood of each candidate's text as the answer (see below)       Hit@1, Hit@3, NDCG@3, MRR
explanation    greedy decoding (KV cache), new tokens only, stop at eos             BLEU-1/4, ROUGE-1/2/L,
                                                                                   Distinct-1/2
=============  ==================================================================  ===========================

Sequential scoring. Candidate c's answer is what the model is trained to write for it (see
:meth:`~recbole_ckf.data.collate.Encoder.encode`): the tokens of ``renderer.answer`` (the item text), then
eos. Its score is the **mean** log-probability of those tokens (log-softmax over the full vocabulary) given the
prompt. Mean, not sum: the item texts differ in length (up to ``item_text_words`` words plus eos), and a sum
penalises every extra token, so the shortest texts would win whatever the user; the mean ranks by how well the
text fits (``reduction="sum"``, i.e. log P(answer), is available; config key ``sequential_score``). All
candidates share ONE prompt: a sample's prompt is encoded once, its history truncated (if ``max_length``
requires it) so that the *longest* candidate answer fits, the way training truncates prompt + answer; so the
prompt never depends on which candidate is the true one.

The batched scorer (:func:`score_candidates`) runs one forward pass per batch of samples over
``[prompt, candidate 1, ..., candidate K]`` packed into one row, with a block attention mask: prompt tokens are
causal among themselves, candidate k's tokens see the whole prompt and their own earlier tokens, never another
candidate. Positions restart after the prompt for every candidate (``prompt_len + j``), so each candidate sees
exactly the positions it would see alone. Sliding-window layers (Gemma-3: 5 of 6) get their own mask, where
the window is measured in those positions (``pos_q - pos_kv < sliding_window``), not in packed indices; the
mask of every layer type is passed to the decoder (a dict keyed by ``config.layer_types``), so transformers'
own index-based window is never applied to the packed row. A candidate's last token (eos) predicts nothing and
is not fed; identical candidate texts of one sample are run once and get identical scores. This is the same
computation as one forward pass of ``prompt + candidate`` per candidate (:func:`score_candidates_naive`, which
uses the training forward, ``model.hidden_states``), to float rounding, at the cost of one prompt instead of K.
(The alternative, a KV cache of the prompt repeated for the K candidates, gives the same numbers; the packed
row needs no cache bookkeeping and its sliding window is exact by construction.)

Ties. Candidates with equal scores are ranked in the order they appear in the prompt (a stable sort). That
order is a seeded permutation of RecBole's list that does not depend on the label (``TaskBuilder``), so ties are
broken at random but reproducibly. RecBole's ``Collector`` then gets the rank-derived scores ``K - rank``
(no ties left for its ``torch.topk``) and builds ``rec.topk`` itself.

GAUC needs users with several ctr test samples of both labels; with leave-one-out every user has one, so it is
left out of the result and logged as "n/a". Where some users qualify, RecBole's GAUC gets ``rec.meanrank`` of
exactly those users (RecBole's GAUC would drop the others itself, with a warning).

Explanation. Prompts are re-padded on the LEFT for generation (``Encoder`` pads right for training), with the
slotted ``inputs_embeds`` built by ``model.input_embeddings``; ``generate`` derives the positions from the
attention mask, so a padded prompt generates exactly what it generates alone. The prompt is encoded without an
answer, so it never depends on the reference. Generated texts are cut at the first eos, decoded without
special tokens and stripped; empty texts stay in ``text.pred`` (they score 0, they are not dropped).
"""

import collections
import contextlib
import dataclasses
import logging
import time

import torch
from recbole.evaluator import Evaluator
from recbole.evaluator.collector import Collector, DataStruct

import recbole_ckf.evaluator  # noqa: F401  (registers the text metrics into RecBole's registry)
from recbole_ckf.errors import CKFError
from recbole_ckf.data.collate import collate
from recbole_ckf.evaluator.groups import DEFAULT_COLD_THRESHOLD, evaluate_by_group, split_by_activity
from recbole_ckf.evaluator.text_metrics import PRED_KEY, REF_KEY
from recbole_ckf.model.multi_lora import activate

logger = logging.getLogger(__name__)

TASKS = ("ctr", "sequential", "rating", "explanation")
#: RecBole metric names per task (``metrics:`` of the per-task evaluator config)
TASK_METRICS = {
    "ctr": ["AUC", "LogLoss"],
    "rating": ["RMSE", "MAE"],
    "sequential": ["Hit", "NDCG", "MRR"],
    "explanation": ["BLEU-1", "BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L", "Distinct-1", "Distinct-2"],
}
LABEL_FIELD = "label"
DEFAULT_EXPLANATION_TOKENS = 24
_LOGIT_CHUNK_ELEMENTS = 1 << 25  # rows x vocab per log-softmax chunk (Gemma: 128 rows, 128 MiB in float32)


# ---------------------------------------------------------------------------------------------------------
# RecBole evaluator plumbing

class MetricConfig(dict):
    """A plain dict that RecBole's Evaluator, Collector and metric classes accept as their config.

    They only index it (``config["metrics"]``, ``config["topk"]``, ``config["metric_decimal_place"]``, ...);
    keys not set here are looked up in ``base`` (the run's Config, or a dict), and are ``None`` when absent,
    as with RecBole's Config.
    """

    def __init__(self, base=None, **values):
        super().__init__(values)
        self.base = base

    def __missing__(self, key):
        if self.base is None:
            return None
        try:
            return self.base[key]
        except KeyError:
            return None


def metric_config(config, metrics, topk=None):
    """The evaluator config of one task: ``metrics``, ``topk``, the run's ``metric_decimal_place``."""
    decimals = _get(config, "metric_decimal_place", 4)
    return MetricConfig(
        config, metrics=list(metrics), topk=list(topk or [1]), metric_decimal_place=decimals,
        eval_args={"mode": "uni"}, device=torch.device("cpu"), LABEL_FIELD=LABEL_FIELD)


def _get(config, key, default):
    try:
        value = config[key]
    except KeyError:
        value = None
    return default if value is None else value


def _collect(mconfig, scores, labels=None, positive_u=None, positive_i=None):
    """RecBole's Collector turns scores into the DataStruct its metrics read (as in RecBole's trainer)."""
    collector = Collector(mconfig)
    if scores.dim() == 1:  # value metrics squeeze(-1) what they read: [N, 1] keeps a one-sample group 1-D
        scores, labels = scores.unsqueeze(-1), (labels.unsqueeze(-1) if labels is not None else None)
    interaction = {LABEL_FIELD: labels if labels is not None else torch.zeros(scores.shape[0])}
    if positive_u is None:
        positive_u = positive_i = torch.zeros(0, dtype=torch.long)
    collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
    return collector.get_data_struct()


@dataclasses.dataclass
class _Part:
    """One evaluator call: its config, the collected data (one row per entry of ``users``), kept keys."""
    mconfig: MetricConfig
    data: DataStruct
    users: list
    keep: tuple = None
    min_rows: int = 1  # RecBole's LogLoss cannot take a single sample (np.float64 turns it into a scalar)


# ---------------------------------------------------------------------------------------------------------
# encoding

def _prompt_only(enc):
    return dataclasses.replace(enc, input_ids=enc.input_ids[: enc.prompt_len], labels=enc.labels[: enc.prompt_len])


def encode_candidates(encoder, samples, slotted):
    """``[(prompt, answers), ...]`` per sample: the shared prompt (an ``Encoded`` without answer tokens) and the
    answer token ids of each candidate in prompt order (item text + eos, tokenized by the encoder exactly as
    training answers are). Each prompt is truncated so that its longest candidate answer fits."""
    out, probes = [], []
    for sample in samples:
        texts = [encoder.renderer.item_texts[c] for c in sample.candidates]
        answers = encoder._answers([dataclasses.replace(sample, answer=t) for t in texts], True)
        longest = max(range(len(texts)), key=lambda k: len(answers[k])) if texts else None
        probes.append(dataclasses.replace(sample, answer=texts[longest] if texts else ""))
        out.append(answers)
    prompts = [_prompt_only(e) for e in encoder.encode_all(probes, slotted)]
    return list(zip(prompts, out))


def _device(model):
    return next(model.llm.parameters()).device


def _to(batch, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _max_history(model):
    return int(_get(model.config, "max_history", 5))


@contextlib.contextmanager
def _eval_mode(model, autocast):
    was_training = model.training
    model.eval()
    device = _device(model)
    # autocast=False leaves the caller's autocast state alone (e.g. the trainer's accelerator.autocast())
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    try:
        with torch.no_grad(), amp:
            yield
    finally:
        model.train(was_training)


def _batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _progress(iterable, show, total, desc):
    if not show:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, ncols=100)


def _n_batches(n, size):
    return (n + size - 1) // size


# ---------------------------------------------------------------------------------------------------------
# sequential: candidate scoring

def _reduce(logprobs, reduction):
    if reduction == "mean":
        return logprobs.mean()
    if reduction == "sum":
        return logprobs.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _row_logprobs(model, hidden, rows, targets):
    """log p(targets[i] | hidden[rows[i]]), log-softmax over the full vocabulary, chunked over unique rows."""
    out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    if not len(targets):
        return out
    rows = torch.as_tensor(rows, device=hidden.device)
    targets = torch.as_tensor(targets, device=hidden.device)
    unique, inverse = torch.unique(rows, return_inverse=True)
    vocab = model.llm.get_base_model().lm_head.weight.shape[0]
    chunk = max(1, _LOGIT_CHUNK_ELEMENTS // vocab)
    for start in range(0, unique.numel(), chunk):
        logp = model._logits(hidden[unique[start:start + chunk]]).float().log_softmax(-1)
        sel = (inverse >= start) & (inverse < start + chunk)
        out[sel] = logp[inverse[sel] - start, targets[sel]]
    return out


def _block_masks(seg, pos, config, attn_impl, dtype):
    """The attention mask(s) of packed ``[prompt, candidate 1, ..., candidate K]`` rows.

    ``seg``: 0 prompt, k >= 1 candidate block k, -1 padding; ``pos``: the position ids. Returns what the decoder
    takes as ``attention_mask``: a dict keyed by layer type for decoders with ``config.layer_types`` (Gemma-3),
    else one 4-D mask. Boolean (True = attend) for sdpa, additive for eager.
    """
    B, T = seg.shape
    idx = torch.arange(T, device=seg.device)
    valid = seg >= 0
    causal = (idx[:, None] >= idx[None, :]).unsqueeze(0)
    visible = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
    allowed = causal & visible & valid[:, None, :] & valid[:, :, None]
    allowed |= (~valid[:, :, None]) & torch.eye(T, dtype=torch.bool, device=seg.device)  # padding sees itself
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is not None:
        in_window = (pos[:, :, None] - pos[:, None, :]) < window
        sliding = allowed & (in_window | ~valid[:, :, None])
    else:
        sliding = allowed

    def fmt(mask):
        mask = mask.unsqueeze(1)
        if attn_impl == "sdpa":
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)

    if layer_types:
        masks = {"full_attention": fmt(allowed)}
        if "sliding_attention" in layer_types:
            masks["sliding_attention"] = fmt(sliding)
        unknown = set(layer_types) - set(masks)
        if unknown:
            raise CKFError(f"llm: packed candidate scoring does not support the attention layer types {sorted(unknown)} of this model")
        return masks
    uses_window = window is not None and getattr(config, "use_sliding_window", True)
    return fmt(sliding if uses_window else allowed)


def _packed_scores(model, prompts, answers, slotted, reduction, device):
    """Scores of one batch: ``prompts`` (Encoded, prompt only) and ``answers`` (per sample, per candidate ids)."""
    base = model.llm.get_base_model()
    attn_impl = getattr(base.config, "_attn_implementation", "sdpa")
    pad_id = model.tokenizer.pad_token_id
    prompt_batch = collate(prompts, pad_id, _max_history(model))
    rows_ids, rows_seg, rows_pos = [], [], []
    owners = []  # per sample: for each candidate, its unique block number
    blocks = []  # per sample: list of (start index, answer ids) of unique answers
    for enc, cands in zip(prompts, answers):
        ids, seg, pos = list(enc.input_ids), [0] * enc.prompt_len, list(range(enc.prompt_len))
        seen, owner, blk = {}, [], []
        for ans in cands:
            key = tuple(ans)
            if key not in seen:
                seen[key] = len(blk)
                blk.append((len(ids), ans))
                fed = ans[:-1]  # the last answer token predicts nothing
                ids += fed
                seg += [len(blk)] * len(fed)
                pos += [enc.prompt_len + j for j in range(len(fed))]
            owner.append(seen[key])
        rows_ids.append(ids), rows_seg.append(seg), rows_pos.append(pos)
        owners.append(owner), blocks.append(blk)
    T = max(len(r) for r in rows_ids)
    B = len(prompts)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    for b in range(B):
        n = len(rows_ids[b])
        input_ids[b, :n] = torch.tensor(rows_ids[b])
        seg[b, :n] = torch.tensor(rows_seg[b])
        pos[b, :n] = torch.tensor(rows_pos[b])
    batch = dict(prompt_batch, input_ids=input_ids)
    batch = _to(batch, device)
    seg, pos = seg.to(device), pos.to(device)

    activate(model.llm, "sequential")
    embeds = model.input_embeddings(batch, slotted)
    mask = _block_masks(seg, pos, base.config, attn_impl, embeds.dtype)
    hidden = base.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state

    # rows of `hidden` (flattened B*T) that predict each answer token
    rows, targets, owner_of = [], [], []
    n_blocks = 0
    for b, enc in enumerate(prompts):
        for start, ans in blocks[b]:
            for j, tok in enumerate(ans):
                rows.append(b * T + (enc.prompt_len - 1 if j == 0 else start + j - 1))
                targets.append(tok)
                owner_of.append(n_blocks)
            n_blocks += 1
    logp = _row_logprobs(model, hidden.reshape(B * T, -1), rows, targets)
    owner_of = torch.tensor(owner_of, device=logp.device)
    block_scores = [_reduce(logp[owner_of == k], reduction) for k in range(n_blocks)]
    out, k0 = [], 0
    for b in range(B):
        out.append(torch.stack([block_scores[k0 + o] for o in owners[b]]).cpu())
        k0 += len(blocks[b])
    return out


def _check_attention(model):
    impl = getattr(model.llm.get_base_model().config, "_attn_implementation", "sdpa")
    if impl not in ("sdpa", "eager"):
        raise CKFError(
            f"llm: packed candidate scoring needs attn_implementation 'sdpa' or 'eager' (custom block masks), "
            f"this model uses {impl!r}; load the model with sdpa or eager attention")


def score_candidates(model, encoder, samples, slotted=True, batch_size=16, reduction="mean", autocast=False,
                     show_progress=False):
    """Score every candidate of every sequential sample in one batched pass per ``batch_size`` samples.

    Returns a list (one entry per sample) of float32 CPU tensors ``[len(sample.candidates)]``: the mean (or sum,
    ``reduction="sum"``) log-probability of each candidate's answer tokens, in prompt order.
    """
    _check_attention(model)
    device = _device(model)
    scores = []
    with _eval_mode(model, autocast):
        encoded = encode_candidates(encoder, samples, slotted)
        for chunk in _progress(_batches(encoded, batch_size), show_progress, _n_batches(len(encoded), batch_size),
                               "sequential"):
            prompts = [p for p, _ in chunk]
            answers = [a for _, a in chunk]
            scores += _packed_scores(model, prompts, answers, slotted, reduction, device)
    return scores


def score_candidates_naive(model, encoder, samples, slotted=True, reduction="mean", autocast=False):
    """The reference scorer: one forward pass of ``prompt + candidate answer`` per candidate, through the
    training forward (``model.hidden_states``, right padding, the model's own causal masks). Same output as
    :func:`score_candidates`; K times the prompt work."""
    device = _device(model)
    scores = []
    with _eval_mode(model, autocast):
        for prompt, answers in encode_candidates(encoder, samples, slotted):
            row = []
            for ans in answers:
                enc = dataclasses.replace(prompt, input_ids=prompt.input_ids + ans,
                                          labels=[-100] * prompt.prompt_len + ans)
                batch = _to(collate([enc], model.tokenizer.pad_token_id, _max_history(model)), device)
                hidden = model.hidden_states(batch, slotted)[0]
                at = list(range(prompt.prompt_len - 1, prompt.prompt_len - 1 + len(ans)))
                logp = model._logits(hidden[at]).float().log_softmax(-1)
                row.append(_reduce(logp[torch.arange(len(ans)), torch.tensor(ans, device=logp.device)], reduction))
            scores.append(torch.stack(row).cpu())
    return scores


def rank_candidates(scores):
    """Candidate indices from best to worst: by score, ties in prompt order (a stable sort); NaN ranks last."""
    s = torch.nan_to_num(scores.double(), nan=float("-inf"))
    return sorted(range(len(s)), key=lambda k: (-s[k].item(), k))


def ranking_scores(scores_list, width=None):
    """``[N, width]`` scores for RecBole's Collector without ties: ``K - rank`` per candidate, ``-inf`` padding."""
    width = width or max(len(s) for s in scores_list)
    out = torch.full((len(scores_list), width), float("-inf"))
    for b, scores in enumerate(scores_list):
        for rank, k in enumerate(rank_candidates(scores)):
            out[b, k] = float(len(scores) - rank)
    return out


# ---------------------------------------------------------------------------------------------------------
# explanation: greedy decoding

def generate_explanations(model, encoder, samples, slotted=True, batch_size=16, max_new_tokens=None,
                          autocast=False, show_progress=False):
    """Greedy (KV-cached) explanations of ``samples``: one string per sample, possibly empty."""
    from transformers import GenerationConfig

    max_new_tokens = max_new_tokens or _get(model.config, "explanation_max_tokens", DEFAULT_EXPLANATION_TOKENS)
    tok = model.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    gen_config = GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                                  eos_token_id=eos, pad_token_id=pad, use_cache=True)
    device = _device(model)
    texts = []
    with _eval_mode(model, autocast):
        activate(model.llm, "explanation")
        encoded = encoder.encode_all(samples, slotted, with_answer=False)
        for chunk in _progress(_batches(encoded, batch_size), show_progress, _n_batches(len(encoded), batch_size),
                               "explanation"):
            batch = collate(chunk, pad, _max_history(model))
            n = batch["input_ids"].shape[1]
            left_ids = torch.full_like(batch["input_ids"], pad)
            left_mask = torch.zeros_like(batch["attention_mask"])
            for b, enc in enumerate(chunk):  # re-pad on the left: generation appends after the last column
                k = len(enc.input_ids)
                left_ids[b, n - k:] = torch.tensor(enc.input_ids)
                left_mask[b, n - k:] = 1
            batch = _to(dict(batch, input_ids=left_ids, attention_mask=left_mask), device)
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


# ---------------------------------------------------------------------------------------------------------
# per-task evaluation

def _ctr_parts(model, encoder, samples, config, slotted, batch_size, autocast, show_progress):
    scores = predict_points(model, encoder, samples, slotted, batch_size, autocast, show_progress)
    labels = torch.tensor([s.label for s in samples], dtype=torch.float)
    users = [s.user for s in samples]
    mconfig = metric_config(config, TASK_METRICS["ctr"])
    parts = [_Part(mconfig, _collect(mconfig, scores, labels), users, min_rows=2)]
    # GAUC: users with several test samples of both labels (RecBole's rec.meanrank, -inf padded rows)
    by_user = collections.OrderedDict()
    for k, s in enumerate(samples):
        by_user.setdefault(s.user, []).append(k)
    eligible = [u for u, ks in by_user.items() if len({labels[k].item() for k in ks}) == 2]
    if eligible:
        width = max(len(by_user[u]) for u in eligible) + 1  # >= one -inf column: RecBole reads the length there
        matrix = torch.full((len(eligible), width), float("-inf"))
        pos_u, pos_i = [], []
        for r, u in enumerate(eligible):
            for j, k in enumerate(by_user[u]):
                matrix[r, j] = scores[k]
                if labels[k] > 0.5:
                    pos_u.append(r), pos_i.append(j)
        gconfig = metric_config(config, ["GAUC"])
        parts.append(_Part(gconfig, _collect(gconfig, matrix, positive_u=torch.tensor(pos_u),
                                             positive_i=torch.tensor(pos_i)), eligible))
    else:
        logger.info("ctr: gauc n/a (no user has several test samples with both labels; leave-one-out gives one)")
    return parts


def predict_points(model, encoder, samples, slotted=True, batch_size=16, autocast=False, show_progress=False):
    """The model's score of each ctr sample (P(Yes) against P(No)) or rating sample (expected stars), as a float
    tensor ``[len(samples)]``. All samples must be of one task, ``ctr`` or ``rating``."""
    tasks = {s.task for s in samples}
    if not tasks:
        return torch.zeros(0)
    if len(tasks) != 1 or not tasks <= {"ctr", "rating"}:
        raise ValueError(f"predict_points scores ctr or rating samples of one task, got {sorted(tasks)}")
    task = tasks.pop()
    predict = model.predict_ctr if task == "ctr" else model.predict_rating
    device = _device(model)
    out = []
    with _eval_mode(model, autocast):
        # encoded with the answer (one token whatever the label), then cut to the prompt: the prompt is
        # truncated exactly as in training and never depends on the label
        encoded = [_prompt_only(e) for e in encoder.encode_all(samples, slotted)]
        for chunk in _progress(_batches(encoded, batch_size), show_progress, _n_batches(len(encoded), batch_size),
                               task):
            batch = _to(collate(chunk, model.tokenizer.pad_token_id, _max_history(model)), device)
            out.append(predict(batch, slotted).float().cpu())
    return torch.cat(out)


def _rating_parts(model, encoder, samples, config, slotted, batch_size, autocast, show_progress):
    scores = predict_points(model, encoder, samples, slotted, batch_size, autocast, show_progress)
    labels = torch.tensor([s.label for s in samples], dtype=torch.float)
    mconfig = metric_config(config, TASK_METRICS["rating"])
    return [_Part(mconfig, _collect(mconfig, scores, labels), [s.user for s in samples], min_rows=2)]


def _sequential_parts(model, encoder, samples, config, slotted, batch_size, autocast, show_progress):
    reduction = _get(config, "sequential_score", "mean")
    scores = score_candidates(model, encoder, samples, slotted, batch_size, reduction, autocast, show_progress)
    width = max(len(s.candidates) for s in samples)
    topk = sorted({1, 3, width})
    mconfig = metric_config(config, TASK_METRICS["sequential"], topk)
    matrix = ranking_scores(scores, width)
    positive_u = torch.arange(len(samples))
    positive_i = torch.tensor([int(s.label) for s in samples])
    keep = ("hit@1", "hit@3", "ndcg@3", f"mrr@{width}")
    return [_Part(mconfig, _collect(mconfig, matrix, positive_u=positive_u, positive_i=positive_i),
                  [s.user for s in samples], keep)]


def _explanation_parts(model, encoder, samples, config, slotted, batch_size, autocast, show_progress):
    preds = generate_explanations(model, encoder, samples, slotted, batch_size,
                                  _get(config, "explanation_max_tokens", DEFAULT_EXPLANATION_TOKENS), autocast,
                                  show_progress)
    data = DataStruct()
    data.set(PRED_KEY, preds)
    data.set(REF_KEY, [s.answer for s in samples])
    return [_Part(metric_config(config, TASK_METRICS["explanation"]), data, [s.user for s in samples])]


_PARTS = {"ctr": _ctr_parts, "rating": _rating_parts, "sequential": _sequential_parts,
          "explanation": _explanation_parts}


def evaluate_tasks(model, samples, encoder, config, train_counts, slotted=True, show_progress=False,
                   batch_size=None, autocast=False):
    """Evaluate CKF on the test (or validation) samples of each task, deterministically.

    Args:
        model: a :class:`~recbole_ckf.model.ckf.CKF` with its CF tables set.
        samples: ``{task: [Sample, ...]}`` (``TaskBuilder.eval_samples``); tasks without samples are skipped.
        encoder: the :class:`~recbole_ckf.data.collate.Encoder` of the model's tokenizer and renderer.
        config: the run's Config (or a dict): ``cold_user_threshold``, ``eval_batch_size``,
            ``explanation_max_tokens`` (default 24), ``metric_decimal_place``, ``sequential_score``
            (``mean``, the default, or ``sum``).
        train_counts: training interactions per user id (mapping or array), for the warm / cold split.
        slotted: prompts with the h_u / h_v slots (True) or text-only prompts.
        batch_size: samples per forward pass (default ``eval_batch_size``).
        autocast: run under bf16 autocast. Default off: the caller's precision (float32, exact, unless the
            caller is inside an autocast context, e.g. the trainer's ``accelerator.autocast()``).

    Returns:
        an OrderedDict ``{"task:metric": value}`` for all users, then ``"task:metric[warm]"`` and
        ``"task:metric[cold]"`` (cold: fewer than ``cold_user_threshold`` training interactions). A group without
        samples has no keys; GAUC has keys only where some user qualifies (see the module docstring).
    """
    batch_size = int(batch_size or _get(config, "eval_batch_size", 16))
    threshold = _get(config, "cold_user_threshold", DEFAULT_COLD_THRESHOLD)
    result = collections.OrderedDict()
    for task, task_samples in samples.items():
        if task not in _PARTS:
            raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
        if not task_samples:
            continue
        if task not in model.tasks:
            raise ValueError(f"the model was not built for task {task!r} (its tasks: {model.tasks})")
        start = time.perf_counter()
        parts = _PARTS[task](model, encoder, task_samples, config, slotted, batch_size, autocast, show_progress)
        grouped = collections.OrderedDict((g, collections.OrderedDict()) for g in ("all", "warm", "cold"))
        for part in parts:
            if len(part.users) < part.min_rows:
                logger.warning("%s: %s need at least %d samples, got %d: left out", task,
                               ", ".join(part.mconfig["metrics"]), part.min_rows, len(part.users))
                continue
            evaluator = Evaluator(part.mconfig)
            masks = split_by_activity(part.users, train_counts, threshold)
            for group, mask in masks.items():
                if 0 < mask.sum() < part.min_rows:
                    logger.info("%s: only %d %s sample(s): %s left out for them", task, mask.sum(), group,
                                ", ".join(part.mconfig["metrics"]))
                    mask[:] = False
            for group, res in evaluate_by_group(evaluator, part.data, masks).items():
                if res is None:
                    continue
                for key, value in res.items():
                    if part.keep is None or key in part.keep:
                        grouped[group][key] = value
        for group, values in grouped.items():
            suffix = "" if group == "all" else f"[{group}]"
            if not values:
                logger.info("%s: no %s users among the %d samples", task, group, len(task_samples))
            for key, value in values.items():
                result[f"{task}:{key}{suffix}"] = value
        logger.info("%s: %d samples evaluated in %.1f s", task, len(task_samples), time.perf_counter() - start)
    return result


def format_results(result):
    """A compact table of :func:`evaluate_tasks` output: one line per task and metric, columns all/warm/cold."""
    rows = collections.OrderedDict()
    for key, value in result.items():
        name, group = key, "all"
        if key.endswith("]") and "[" in key:
            name, group = key[:-1].split("[", 1)
        rows.setdefault(name, {})[group] = value
    width = max([len(n) for n in rows] + [len("task:metric")])

    def cell(v):
        if v is None:
            return f"{'n/a':>9}"
        try:
            return f"{float(v):>9.4f}"
        except (TypeError, ValueError):
            return f"{str(v):>9}"

    lines = [f"{'task:metric':<{width}} {'all':>9} {'warm':>9} {'cold':>9}"]
    for name, groups in rows.items():
        lines.append(f"{name:<{width}} " + " ".join(cell(groups.get(g)) for g in ("all", "warm", "cold")))
    return "\n".join(lines)
