"""Deterministic evaluation of the four tasks (recbole_ckf.evaluator.task_eval and its scorers), tiny test LM.

One CKF model (tiny LM, random CF tables instead of a trained backbone) on amazon-instruments, 16 test users
chosen to mix warm/cold users and liked/disliked items.
"""

import dataclasses
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import recbole_ckf  # noqa: F401  (compatibility fixes before recbole)
from recbole_ckf.evaluator import task_eval
from recbole_ckf.evaluator.explanation import generate_explanations
from recbole_ckf.evaluator.pointwise import predict_points
from recbole_ckf.evaluator.sequential import ranking_scores, score_candidates, score_candidates_naive
from recbole_ckf.evaluator.task_eval import evaluate_tasks, format_results

COLD = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from recbole.utils import init_seed

    from recbole_ckf.config import Config
    from recbole_ckf.data.collate import Encoder
    from recbole_ckf.data.tasks import TaskBuilder, candidate_lists
    from recbole_ckf.data import load_data

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["pytest"])
        mp.chdir(tmp_path_factory.mktemp("task_eval"))
        config = Config("CKF", "amazon-instruments", config_dict={
            "llm": "tiny", "show_progress": False, "valid_users": 20, "state": "WARNING",
            "eval_batch_size": 8, "explanation_max_tokens": 6, "cold_user_threshold": COLD, "precision": "fp32",
            "sequential_answer": "label"})
        dataset, train_data, valid_data, test_data = load_data(config)
        init_seed(config["seed"], True)
        model = config.model_class(config, train_data.dataset)
        gen = torch.Generator().manual_seed(0)
        model.set_cf_tables(torch.randn(dataset.user_num, 16, generator=gen),
                            torch.randn(dataset.item_num, 16, generator=gen))
        uid = dataset.uid_field
        train_counts = np.bincount(train_data.dataset.inter_feat[uid].numpy(), minlength=dataset.user_num)
        test_users = test_data.dataset.inter_feat[uid].numpy()
        ratings = test_data.dataset.inter_feat[config["RATING_FIELD"]].numpy()
        users = []
        for liked, warm, n in ((True, True, 5), (True, False, 5), (False, True, 3), (False, False, 3)):
            pick = [int(u) for u, r in zip(test_users, ratings)
                    if (r >= config["ctr_threshold"]) == liked and (train_counts[u] >= COLD) == warm]
            users += pick[:n]
        lists = candidate_lists(test_data, config["seed"])
        builder = TaskBuilder(config, dataset, train_data.dataset, model.tasks, model.item_texts)
        samples = builder.eval_samples(test_data.dataset, lists, users)
        encoder = Encoder(model.tokenizer, model.renderer, config["max_length"])
        yield dict(config=config, model=model, encoder=encoder, samples=samples, train_counts=train_counts)


@pytest.fixture(scope="module")
def results(setup):
    s = setup
    first = evaluate_tasks(s["model"], s["samples"], s["encoder"], s["config"], s["train_counts"])
    second = evaluate_tasks(s["model"], s["samples"], s["encoder"], s["config"], s["train_counts"])
    return first, second


def _short(samples, n):
    """Samples with their first ``n`` candidates only (the naive scorer costs one forward pass per candidate)."""
    return [dataclasses.replace(s, candidates=s.candidates[:n]) for s in samples]


def test_batched_candidate_scores_equal_naive(setup):
    model, encoder = setup["model"], setup["encoder"]
    full = setup["samples"]["sequential"][:3]
    assert [len(s.candidates) for s in full] == [10, 10, 10]
    assert len(score_candidates(model, encoder, full[:1])[0]) == 10
    samples = _short(full, 4)
    batched = score_candidates(model, encoder, samples, batch_size=3)
    naive = score_candidates_naive(model, encoder, samples)
    assert [len(b) for b in batched] == [4, 4, 4]
    for b, n in zip(batched, naive):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, n, atol=2e-5, rtol=1e-5)
    # text-only prompts and the sum reduction too
    b = score_candidates(model, encoder, samples[:1], slotted=False, reduction="sum")
    n = score_candidates_naive(model, encoder, samples[:1], slotted=False, reduction="sum")
    torch.testing.assert_close(b[0], n[0], atol=1e-4, rtol=1e-5)


def test_sliding_window_measured_in_positions(setup):
    """With a window far shorter than the packed row, the packed scores still equal the one-candidate passes
    (the window counts positions, not packed indices), and the window does change the scores."""
    model, encoder = setup["model"], setup["encoder"]
    samples = _short(setup["samples"]["sequential"][:1], 4)
    config = model.llm.get_base_model().config
    assert "sliding_attention" in config.layer_types
    full = score_candidates(model, encoder, samples)
    window = config.sliding_window
    config.sliding_window = 24
    try:
        batched = score_candidates(model, encoder, samples)
        naive = score_candidates_naive(model, encoder, samples)
    finally:
        config.sliding_window = window
    torch.testing.assert_close(batched[0], naive[0], atol=2e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], full[0], atol=1e-4)


def test_unsupported_attention_is_a_one_line_error(setup):
    """The packed scorer builds its own block masks: an LM loaded with another attention implementation (e.g.
    flash attention from a user's folder) gets a CKFError naming the fix, before any forward pass."""
    from recbole_ckf.errors import CKFError

    model, encoder = setup["model"], setup["encoder"]
    config = model.llm.get_base_model().config
    impl = config._attn_implementation
    config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(CKFError, match="sdpa or eager") as err:
            score_candidates(model, encoder, setup["samples"]["sequential"][:1])
    finally:
        config._attn_implementation = impl
    assert "\n" not in str(err.value)


def test_two_evaluations_identical_with_groups(results, setup):
    first, second = results
    assert first == second
    assert list(first) == list(second)
    expected = {
        "ctr": ["auc", "logloss"],
        "sequential": ["hit@1", "hit@3", "ndcg@3", "mrr@10"],
        "rating": ["rmse", "mae"],
        "explanation": ["bleu-1", "bleu-4", "rouge-1", "rouge-2", "rouge-l", "distinct-1", "distinct-2"],
    }
    for task, metrics in expected.items():
        for metric in metrics:
            for suffix in ("", "[warm]", "[cold]"):
                assert f"{task}:{metric}{suffix}" in first, f"{task}:{metric}{suffix}"
    assert not any("gauc" in k for k in first)  # leave-one-out: one ctr sample per user
    assert not any(k.startswith("sequential:hit@10") for k in first)
    for key, value in first.items():
        assert isinstance(value, float) and np.isfinite(value), (key, value)
    assert 1.0 <= first["rating:mae"] <= 4.0
    table = format_results(first)
    assert "sequential:ndcg@3" in table and "warm" in table.splitlines()[0]


def test_ctr_auc_equals_sklearn(results, setup):
    s = setup
    samples = s["samples"]["ctr"]
    labels = np.array([x.label for x in samples])
    assert 0 < labels.sum() < len(labels)
    scores = predict_points(s["model"], s["encoder"], samples).numpy()
    decimals = s["config"]["metric_decimal_place"]
    assert results[0]["ctr:auc"] == pytest.approx(round(roc_auc_score(labels, scores), decimals), abs=1e-12)
    warm = np.array([s["train_counts"][x.user] >= COLD for x in samples])
    assert results[0]["ctr:auc[warm]"] == pytest.approx(
        round(roc_auc_score(labels[warm], scores[warm]), decimals), abs=1e-12)


def test_gauc_where_users_have_both_labels(setup):
    s = setup
    base = s["samples"]["ctr"][:4]
    samples = []
    for k, x in enumerate(base):  # every user gets a liked and a disliked sample (users 0, 1) or only one
        samples.append(x)
        if k < 2:
            samples.append(type(x)(**{**x.__dict__, "item": x.history[-1] if x.history else 1,
                                      "label": 1.0 - x.label, "answer": "No" if x.label else "Yes"}))
    result = evaluate_tasks(s["model"], {"ctr": samples}, s["encoder"], s["config"], s["train_counts"])
    scores = predict_points(s["model"], s["encoder"], samples).numpy()
    labels = np.array([x.label for x in samples])
    aucs, weights = [], []
    for u in {x.user for x in samples[:4]}:
        rows = [i for i, x in enumerate(samples) if x.user == u]
        aucs.append(roc_auc_score(labels[rows], scores[rows]))
        weights.append(labels[rows].sum())
    assert result["ctr:gauc"] == pytest.approx(np.average(aucs, weights=weights), abs=1e-4)


def test_ranking_ties_and_recbole_topk(setup):
    from recbole.evaluator.collector import Collector

    scores = [torch.tensor([0.5, 0.9, 0.9, 0.1]), torch.tensor([2.0, 2.0, 2.0, 2.0])]
    matrix = ranking_scores(scores)
    # ties broken by prompt order: [1, 2, 0, 3] and [0, 1, 2, 3]
    assert matrix.tolist() == [[2.0, 4.0, 3.0, 1.0], [4.0, 3.0, 2.0, 1.0]]
    assert torch.equal(ranking_scores(scores), matrix)
    mconfig = task_eval.metric_config(setup["config"], task_eval.TASK_METRICS["sequential"], [1, 3, 4])
    collector = Collector(mconfig)
    collector.eval_batch_collect(matrix, {}, torch.tensor([0, 1]), torch.tensor([2, 3]))
    topk = collector.get_data_struct().get("rec.topk")
    assert topk.tolist() == [[0, 1, 0, 0, 1], [0, 0, 0, 1, 1]]


def test_generation_left_padding_and_empty_texts(setup, monkeypatch):
    s = setup
    model, encoder = s["model"], s["encoder"]
    samples = s["samples"]["explanation"][:4]
    together = generate_explanations(model, encoder, samples, batch_size=4, max_new_tokens=6)
    alone = [generate_explanations(model, encoder, [x], batch_size=1, max_new_tokens=6)[0] for x in samples]
    assert together == alone
    assert all(isinstance(t, str) for t in together)

    # decoding stops at eos or at a newline, whichever comes first
    from recbole_ckf.evaluator import explanation

    word = model.tokenizer("Great", add_special_tokens=False)["input_ids"]
    newline = model.tokenizer.encode("\n", add_special_tokens=False)[-1]
    eos = model.tokenizer.eos_token_id
    script = [word + [newline, 5], [eos] + word, word + [eos, newline]]
    calls = iter(range(100))

    def scripted_logits(hidden, token_ids=None):  # the k-th step of every row emits script[row][k]
        k = next(calls)
        out = torch.full((hidden.shape[0], len(model.tokenizer)), -1e4)
        for b in range(hidden.shape[0]):
            out[b, script[b][min(k, len(script[b]) - 1)]] = 0.0
        return out
    monkeypatch.setattr(model, "logits", scripted_logits)
    monkeypatch.setattr(explanation, "length_sorted", lambda encoded: list(range(len(encoded))))
    texts = generate_explanations(model, encoder, samples[:3], batch_size=3, max_new_tokens=len(word) + 2)
    assert texts == ["Great", "", "Great"]
    monkeypatch.undo()

    # ... and an empty text is scored like any other prediction (ROUGE-1 averages its 0 in)
    refs = [x.answer for x in samples]
    monkeypatch.setattr(task_eval, "generate_explanations", lambda *a, **k: [""] + refs[1:])
    result = evaluate_tasks(model, {"explanation": samples}, encoder, s["config"], s["train_counts"])
    assert result["explanation:rouge-1"] == pytest.approx(100.0 * 3 / 4, abs=1e-3)


# ---- listwise ranking, calibration, fusion --------------------------------------------------------------------
def test_listwise_scores_equal_per_candidate_scores_of_the_same_labels(setup):
    """One pass per user gives each candidate the logit of its letter at the answer position: the same number
    as scoring that candidate's letter alone (prompt + letter, the training forward, full-vocabulary logits)."""
    from recbole_ckf.data.collate import collate
    from recbole_ckf.evaluator.common import prompt_only
    from recbole_ckf.evaluator.pointwise import predict_answer_logits

    s = setup
    model, encoder = s["model"], s["encoder"]
    samples = s["samples"]["sequential"][:3]
    listwise = predict_answer_logits(model, encoder, samples, batch_size=3)
    assert listwise.shape == (3, 10)
    letters = model.answer_ids["sequential"]
    model.eval()
    for k, x in enumerate(samples):
        prompt = prompt_only(encoder.encode(x, slotted=True))
        for c in range(len(x.candidates)):
            enc = dataclasses.replace(prompt, input_ids=prompt.input_ids + [letters[c]],
                                      labels=[-100] * prompt.prompt_len + [letters[c]])
            with torch.no_grad():
                hidden = model.hidden_states(collate([enc], model.tokenizer.pad_token_id), True)[0]
                alone = model.logits(hidden[prompt.prompt_len - 1:prompt.prompt_len])[0, letters[c]]
            torch.testing.assert_close(listwise[k, c], alone, atol=1e-4, rtol=1e-5)


def test_calibration_keeps_the_ranking_and_fits_the_base_rate():
    from recbole_ckf.evaluator.calibration import apply_linear, apply_platt, fit_linear, fit_platt

    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(400, generator=gen) < 0.85).float()
    logits = labels * 0.5 - 1.0 + torch.randn(400, generator=gen)  # informative, but centred on "No"
    a, b = fit_platt(logits, labels)
    prob = apply_platt(logits, (a, b))
    assert a > 0 and abs(float(prob.mean()) - 0.85) < 0.02
    assert roc_auc_score(labels, prob) == pytest.approx(roc_auc_score(labels, logits), abs=1e-12)
    # an anti-correlated validation set cannot flip the ranking: the slope stays positive
    assert fit_platt(-logits, labels)[0] > 0
    stars = torch.randint(1, 6, (300,), generator=gen).float()
    raw = 3.0 + 0.2 * (stars - 3.0)  # right order, squeezed scale
    torch.testing.assert_close(apply_linear(raw, fit_linear(raw, stars), 1.0, 5.0), stars, atol=1e-4, rtol=0)
    # an uninformative model: cross-validation picks the validation mean, not a line stretched over noise
    noise = 4.0 + 0.5 * torch.randn(300, generator=gen)
    assert fit_linear(noise, stars) == pytest.approx((0.0, float(stars.double().mean())))
    # an anti-correlated one never gets a negative slope
    assert fit_linear(6.0 - stars, stars)[0] >= 0.0


def test_fusion_weight_one_is_the_backbone_and_zero_is_ckf(setup):
    from recbole_ckf.evaluator.fusion import blend_lists, fit_list_weight
    from recbole_ckf.evaluator.task_eval import score_tasks, task_metrics

    s = setup
    scores = score_tasks(s["model"], {"sequential": s["samples"]["sequential"]}, s["encoder"], s["config"])
    seq = scores["sequential"]
    for w, row in ((1.0, "backbone"), (0.0, None)):
        result = task_metrics(scores, s["config"], s["train_counts"], {"sequential": {"backbone_weight": w}})
        for metric in ("hit@1", "hit@3", "ndcg@3", "mrr@10"):
            reference = result[f"sequential:{metric}[{row}]" if row else f"sequential:{metric}"]
            assert result[f"sequential:{metric}[fusion]"] == reference, (w, metric)
    # the fitted weight is never below either end on the data it is fitted on
    positives = seq.labels.long().tolist()
    w = fit_list_weight(seq.raw, seq.backbone, positives)
    from recbole_ckf.evaluator.fusion import _ndcg_at
    fitted = _ndcg_at(blend_lists(seq.raw, seq.backbone, w), positives)
    assert fitted >= _ndcg_at(seq.raw, positives) and fitted >= _ndcg_at(seq.backbone, positives)
    # the backbone's lists are ranked by e_u . e_v of the frozen tables
    x = s["samples"]["sequential"][0]
    expected = (s["model"].user_table[x.user] * s["model"].item_table[torch.tensor(x.candidates)]).sum(-1)
    torch.testing.assert_close(seq.backbone[0], expected)


# ---- pointwise sequential answers (one packed row per user) -----------------------------------------------------
@pytest.fixture(scope="module")
def pointwise(setup):
    """The setup's model and samples with ``sequential_answer: pointwise`` (same weights, same samples)."""
    from recbole_ckf.data.collate import Encoder
    from recbole_ckf.data.templates import PromptRenderer
    from recbole_ckf.model.llm import answer_token_ids

    model = setup["model"]
    renderer = PromptRenderer(setup["config"]["prompt_templates"], model.item_texts, model.renderer.user_token,
                              model.renderer.item_token, sequential_answer="pointwise",
                              stats=setup["config"]["prompt_stats"])
    saved = model.answer_ids.get("sequential"), model.answer_head["sequential"]
    model.answer_ids["sequential"] = answer_token_ids(model.tokenizer, ["Yes", "No"])
    model.answer_head["sequential"] = torch.nn.Parameter(0.01 * torch.randn(2, model.hidden_size))
    yield model, Encoder(model.tokenizer, renderer, setup["config"]["max_length"])
    model.answer_ids["sequential"], model.answer_head["sequential"] = saved


def test_pointwise_packed_scores_equal_one_prompt_per_candidate(setup, pointwise):
    """A packed row [prefix, block 1, ..., block K] gives candidate k the score logit(Yes) - logit(No) that the
    prompt prefix + block k gets alone (its own causal pass, the training forward), for rows of different
    lengths in one batch, slotted and text-only."""
    from recbole_ckf.data.collate import Encoded, collate
    from recbole_ckf.evaluator.pointwise import predict_answer_logits

    model, encoder = pointwise
    samples = setup["samples"]["sequential"][:3]
    samples = [samples[0], _short(samples[1:2], 6)[0], samples[2]]
    yes, no = model.answer_ids["sequential"]
    model.eval()
    for slotted in (True, False):
        packed = predict_answer_logits(model, encoder, samples, slotted, batch_size=3)
        assert packed.shape == (3, 10) and torch.isinf(packed[1, 6:]).all()
        for k, x in enumerate(samples):
            enc = encoder.encode(x, slotted)
            assert enc.blocks is not None and len(enc.blocks) == len(x.candidates)
            prefix = len(enc.input_ids) - sum(enc.blocks)
            start = prefix
            for c, n in enumerate(enc.blocks):
                alone = enc.input_ids[:prefix] + enc.input_ids[start:start + n]
                items = enc.slot_items[:len(x.history)] + ([x.candidates[c]] if slotted else [])
                one = Encoded("sequential", alone, [-100] * len(alone), len(alone), items, x.user, enc.history,
                              x.label, [], "", enc.pool, enc.user_stats,
                              enc.slot_stats[:len(items)] if slotted else [])
                with torch.no_grad():
                    hidden = model.hidden_states(collate([one], model.tokenizer.pad_token_id), slotted)[0, -1]
                    logits = model.choice_logits(hidden[None], "sequential")[0]
                torch.testing.assert_close(packed[k, c], logits[0] - logits[1], atol=1e-4, rtol=1e-5)
                start += n


def test_pointwise_training_loss_is_a_softmax_over_the_candidates(setup, pointwise):
    """The training loss of a packed batch is the cross-entropy of the true candidate under a softmax over the
    candidates' scores, and it reaches the bridge and the sequential answer head."""
    from recbole_ckf.data.collate import collate

    model, encoder = pointwise
    samples = setup["samples"]["sequential"][:2]
    batch = collate([encoder.encode(x, True) for x in samples], model.tokenizer.pad_token_id)
    model.train()
    model.zero_grad()
    loss = model.calculate_loss(batch)
    with torch.no_grad():
        scores = model.answer_logits(batch)
    expected = torch.nn.functional.cross_entropy(scores, torch.tensor([int(x.label) for x in samples]))
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    loss.backward()
    assert model.answer_head["sequential"].grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.bridge.proj_item.parameters())
    model.zero_grad()
    model.eval()


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(setup):
    """``gradient_checkpointing: True`` recomputes the decoder layers in backward: the loss and every trainable
    gradient (LoRA, bridge, answer head) are those of the plain backward, for slotted and text-only prompts."""
    from recbole_ckf.data.collate import collate

    model, encoder = setup["model"], setup["encoder"]
    base = model.llm.get_base_model()
    lora, bridge, head = model.trainable_parameters()
    params = lora + bridge + head
    batch = collate([encoder.encode(x, True) for x in setup["samples"]["rating"][:3]], model.tokenizer.pad_token_id)

    def run(slotted):
        model.zero_grad()
        loss = model.calculate_loss(batch, slotted)
        loss.backward()
        return loss.detach(), [None if p.grad is None else p.grad.clone() for p in params]

    model.train()
    try:
        plain = [run(True), run(False)]
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        assert base.is_activation_checkpointing
        checkpointed = [run(True), run(False)]
    finally:
        base.activation_checkpointing_disable()
        model.zero_grad()
        model.eval()
    for (loss_a, grads_a), (loss_b, grads_b) in zip(plain, checkpointed):
        torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-6)
        assert sum(g is not None and g.abs().sum() > 0 for g in grads_a) > 10  # (LoRA B starts at 0: A gets none)
        for a, b in zip(grads_a, grads_b):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("task", ["sequential", "explanation"])
def test_a_batch_split_into_passes_gives_the_batch_gradient(setup, pointwise, task):
    """``max_tokens_per_pass``: a batch cut into passes (each loss weighted by its share of rows / answer tokens)
    gives the loss and gradients of the batch in one pass."""
    from recbole_ckf.data.collate import collate
    from recbole_ckf.trainer.schedule import token_chunks, training_passes

    model, encoder = pointwise
    rows = [encoder.encode(x, True) for x in setup["samples"][task][:3]]
    budget = max(len(r.input_ids) for r in rows) + 1  # one row per pass
    assert [len(c) for c in token_chunks(rows, budget)] == [1, 1, 1]
    assert [len(c) for c in token_chunks(rows, None)] == [3]
    params = [p for group in model.trainable_parameters() for p in group]

    def run(passes):
        model.zero_grad()
        total = 0.0
        for batch, weight in passes:
            part = model.calculate_loss(batch, True) * weight
            part.backward()
            total = total + part.detach()
        return total, [None if p.grad is None else p.grad.clone() for p in params]

    model.train()
    try:
        whole = run([(collate(rows, model.tokenizer.pad_token_id), 1.0)])
        split = run(training_passes(model, rows, budget))
    finally:
        model.zero_grad()
        model.eval()
    assert len(training_passes(model, rows, budget)) == 3
    torch.testing.assert_close(whole[0], split[0], atol=1e-5, rtol=1e-5)
    assert sum(g is not None and g.abs().sum() > 0 for g in whole[1]) > 10
    for a, b in zip(whole[1], split[1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
