"""The CKF model (recbole_ckf.model.ckf) on the tiny test LM: what trains, where the bridge's tokens go,
that it learns, that a checkpoint restores it exactly, and that the ablation switches run end to end.

Most tests build CKF directly on amazon-instruments with random CF tables (``set_cf_tables``) instead of a
trained backbone; the ablation runs go through ``run_recbole_ckf`` with a 1-epoch backbone.
"""

import sys

import numpy as np
import pytest
import torch

import recbole_ckf  # noqa: F401  (compatibility fixes before recbole)
from conftest import small_config
from recbole_ckf.data.collate import Encoder, collate
from recbole_ckf.errors import CKFError
from recbole_ckf.data.tasks import TaskBuilder, candidate_lists
from recbole_ckf.model.multi_lora import (
    SHARED,
    activate,
    active_adapters,
    get_multi_lora_config,
    named_lora_parameters,
    task_adapter,
)

DATASET = "amazon-instruments"
TASKS = ["ctr", "sequential", "rating", "explanation"]


def _adapter_of(name):
    """The adapter a LoRA parameter belongs to: '...lora_A.task_ctr.weight' -> 'task_ctr'."""
    return name.split(".")[-2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from recbole.utils import init_seed

    from recbole_ckf.config import Config
    from recbole_ckf.data import load_data

    tmp = tmp_path_factory.mktemp("ckf")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["pytest"])
        mp.chdir(tmp)
        config = Config("CKF", DATASET, config_dict=small_config(
            llm="tiny", llm_cache_dir=str(tmp / "cache"), lora_dropout=0.0, explanation_max_tokens=4,
            eval_batch_size=8, precision="fp32"))
        dataset, train_data, valid_data, test_data = load_data(config)

    def make_model(seed=0):
        init_seed(config["seed"], True)
        model = config.model_class(config, train_data.dataset)
        gen = torch.Generator().manual_seed(seed)
        model.set_cf_tables(torch.randn(dataset.user_num, 16, generator=gen),
                            torch.randn(dataset.item_num, 16, generator=gen))
        return model

    model = make_model()
    builder = TaskBuilder(config, dataset, train_data.dataset, model.tasks, model.item_texts)
    lists = candidate_lists(test_data, config["seed"])
    users = sorted(lists)[:6]
    samples = builder.eval_samples(test_data.dataset, lists, users)
    more = builder.eval_samples(test_data.dataset, lists, sorted(lists)[:40])["ctr"]
    samples["ctr_liked"] = [x for x in more if x.label][:4]
    # a first-interaction sample (empty history) in every point task's batch
    full_seqs, builder.seqs = builder.seqs, {u: builder.seqs[u] for u in users[:1]}
    try:
        firsts = builder.train_samples()
    finally:
        builder.seqs = full_seqs
    for task in ("ctr", "rating", "explanation"):
        assert not firsts[task][0].history
        samples[task] = [firsts[task][0]] + samples[task]
    encoder = Encoder(model.tokenizer, model.renderer, config["max_length"])
    train_counts = np.bincount(train_data.dataset.inter_feat[dataset.uid_field].numpy(), minlength=dataset.user_num)
    return dict(config=config, dataset=dataset, model=model, make_model=make_model, samples=samples,
                encoder=encoder, train_counts=train_counts, tmp=tmp)


def _batch(s, model, task, slotted, n=4):
    enc = s["encoder"].encode_all(s["samples"][task][:n], slotted=slotted)
    return collate(enc, model.tokenizer.pad_token_id), enc


def _optimizer(model, lr=1e-3, weight_decay=0.01):
    """AdamW over what CKF trains, as the trainer builds it (LoRA of every adapter; the bridge; the answer head)."""
    lora, bridge, head = model.trainable_parameters()
    return torch.optim.AdamW([{"params": lora}, {"params": bridge}, {"params": head}], lr=lr, weight_decay=weight_decay)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---- what trains ---------------------------------------------------------------------------------------------
def test_exactly_lora_and_bridge_require_gradients(setup):
    model = setup["model"]
    lora = dict(named_lora_parameters(model.llm))
    assert {_adapter_of(n) for n in lora} == {SHARED} | {task_adapter(t) for t in TASKS}
    assert len(lora) == 5 * 2 * len(setup["config"]["lora_target_modules"]) * 2  # adapters x (A, B) x targets x layers
    lora_ids = {id(p) for p in lora.values()}
    bridge_ids = {id(p) for p in model.bridge.parameters()}
    assert bridge_ids and not lora_ids & bridge_ids
    head_ids = {id(p) for p in model.answer_head.parameters()}
    assert len(head_ids) == len(model.answer_ids)  # one answer head per task with a one-token answer set
    trained_lora, trained_bridge, trained_head = model.trainable_parameters()
    assert {id(p) for p in trained_lora} == lora_ids and {id(p) for p in trained_bridge} == bridge_ids
    assert {id(p) for p in trained_head} == head_ids

    # the frozen CF tables are buffers, never parameters
    names = dict(model.named_parameters())
    assert not any("user_table" in n or "item_table" in n for n in names)
    assert not model.user_table.requires_grad and not model.item_table.requires_grad
    assert {n for n, _ in model.named_buffers()} >= {"user_table", "item_table"}

    ever = set()
    for task in TASKS:
        activate(model.llm, task)
        grad = {n for n, p in model.named_parameters() if p.requires_grad}
        ever |= grad
        assert {_adapter_of(n) for n in grad if "lora_" in n} == {SHARED, task_adapter(task)}
        assert {n for n in grad if "lora_" not in n} == {n for n in names if n.startswith(("bridge.", "answer_head."))}
        assert all(p.requires_grad for n, p in lora.items() if _adapter_of(n) in (SHARED, task_adapter(task)))
    assert {id(names[n]) for n in ever} == lora_ids | bridge_ids | head_ids  # no base LLM weight, ever


@pytest.mark.parametrize("slotted", [True, False], ids=["slotted", "text-only"])
def test_a_task_step_moves_its_adapters_and_the_bridge_only_when_slotted(setup, slotted):
    s = setup
    model = s["make_model"]()
    model.train()
    optimizer = _optimizer(model)
    for task in TASKS:
        batch, _ = _batch(s, model, task, slotted)
        before = _snapshot(model)
        loss = model(batch, slotted=slotted)  # activate(task) happens inside model.hidden_states
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after = _snapshot(model)
        moved = {n for n in before if not torch.equal(before[n], after[n])}
        own = {SHARED, task_adapter(task)}
        for n, g in grads.items():
            if "lora_B" in n and _adapter_of(n) in own:
                assert g is not None and g.abs().sum() > 0, n  # every layer of both adapters learns
        assert {_adapter_of(n) for n in moved if "lora_" in n} == own, task
        assert all(grads[n] is None for n in before if "lora_" in n and _adapter_of(n) not in own)
        bridge_moved = {n for n in moved if n.startswith("bridge.")}
        if slotted:
            assert any(n.startswith("bridge.proj_user.") for n in bridge_moved), task
            assert any(n.startswith("bridge.proj_item.") for n in bridge_moved), task
            assert any(n.startswith("bridge.meta_net.") for n in bridge_moved), task
        else:
            assert not bridge_moved and all(p.grad is None for p in model.bridge.parameters())
        # the answer head of this task moves (tasks with a one-token answer set), no other task's
        assert {n for n in moved if n.startswith("answer_head.")} == (
            {f"answer_head.{task}"} if task in model.answer_head else set()), task
        assert not {n for n in moved if "lora_" not in n and not n.startswith(("bridge.", "answer_head."))}  # base LLM frozen


# ---- where h_u and h_v go ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["ctr", "sequential"])
def test_bridge_tokens_sit_exactly_at_every_samples_slots(setup, task):
    s = setup
    model = s["model"]
    model.eval()
    batch, enc = _batch(s, model, task, True, n=5)
    ids = batch["input_ids"]
    with torch.no_grad():
        embeds = model.input_embeddings(batch, True)
        plain = model.llm.get_input_embeddings()(ids)
        h_u = model.bridge.user_tokens(model.user_table[batch["users"]], model.item_table[batch["history"]],
                                       batch["history_mask"])
        h_v = model.bridge.item_tokens(model.item_table[batch["slot_items"]])
    assert len({len(e.pool) for e in enc}) > 1  # pooled histories of different lengths in one batch
    assert not torch.allclose(h_u[0], h_u[-1])  # personalised: samples get different user tokens
    user_pos = ids == model.user_token_id
    item_pos = ids == model.item_token_id
    assert user_pos.sum(1).tolist() == [1] * len(enc)
    assert item_pos.sum(1).tolist() == [len(e.slot_items) for e in enc]
    k = 0
    for b, e in enumerate(enc):
        (t_user,) = user_pos[b].nonzero(as_tuple=True)
        torch.testing.assert_close(embeds[b, t_user[0]], h_u[b], rtol=0, atol=0)
        for t, item in zip(item_pos[b].nonzero(as_tuple=True)[0].tolist(), e.slot_items):
            assert batch["slot_items"][k] == item
            torch.testing.assert_close(embeds[b, t], h_v[k], rtol=0, atol=0)
            torch.testing.assert_close(h_v[k], model.bridge.item_tokens(model.item_table[item]).detach())
            k += 1
    assert k == h_v.shape[0]
    other = ~(user_pos | item_pos)
    assert torch.equal(embeds[other], plain[other])
    with torch.no_grad():
        assert torch.equal(model.input_embeddings(batch, False), plain)  # text-only: nothing replaced


def test_batches_carry_each_slots_rating_statistics_without_the_users_own(setup):
    # s_u: the user's earlier ratings; s_v: each slot item's training ratings by the other users
    from recbole_ckf.data.item_text import stat_features

    s = setup
    model = s["model"]
    stats = model.item_texts.stats
    for task in ("ctr", "sequential"):
        batch, enc = _batch(s, model, task, True, n=5)
        assert batch["user_stats"].shape == (5, 3) and batch["slot_stats"].shape == (len(batch["slot_items"]), 3)
        k = 0
        for b, (e, sample) in enumerate(zip(enc, s["samples"][task][:5])):
            assert batch["user_stats"][b].tolist() == pytest.approx(stat_features(*(sample.user_stats or (0, None))))
            for item in e.slot_items:
                assert batch["slot_stats"][k].tolist() == pytest.approx(stat_features(*stats.of(item, e.user)))
                k += 1
    # a training interaction's own rating is not in its item's statistics
    u, i = next(iter(stats.own))
    n, _ = stats.of(i)
    assert stats.of(i, u)[0] == n - 1


# ---- it learns ---------------------------------------------------------------------------------------------------
def test_loss_falls_on_a_fixed_batch(setup):
    """10 AdamW steps (lr 1e-2) on one ctr batch whose answers are all "Yes". The ctr loss is the cross-entropy
    over {Yes, No} only (what ctr is scored with): it starts near log 2 and falls to a fraction of it, and
    P(Yes) against P(No) rises."""
    s = setup
    model = s["make_model"]()
    batch, _ = _batch(s, model, "ctr_liked", True)
    assert batch["label"].tolist() == [1, 1, 1, 1]
    model.eval()
    p_before = model.predict_ctr(batch)
    model.train()
    optimizer = _optimizer(model, lr=1e-2)
    losses = []
    for _ in range(10):
        loss = model(batch, slotted=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert abs(losses[0] - np.log(2)) < 0.2 and losses[-1] < 0.5 * losses[0], losses
    assert min(losses[5:]) < min(losses[:5]), losses
    model.eval()
    p_after = model.predict_ctr(batch)
    assert (p_after > p_before + 0.1).all(), (p_before, p_after)


# ---- checkpoints ---------------------------------------------------------------------------------------------------
def _outputs(s, model):
    from recbole_ckf.evaluator.task_eval import evaluate_tasks

    model.eval()
    ctr, _ = _batch(s, model, "ctr", True)
    rating, _ = _batch(s, model, "rating", True)
    samples = {t: s["samples"][t][:3] for t in TASKS}
    result = evaluate_tasks(model, samples, s["encoder"], s["config"], s["train_counts"])
    return model.predict_ctr(ctr), model.predict_rating(rating), result


def _same(a, b):
    """Result dicts equal, nan equal to nan (AUC of a group with one label is nan)."""
    return list(a) == list(b) and all(x == y or (np.isnan(x) and np.isnan(y)) for x, y in zip(a.values(), b.values()))


def test_save_load_predict_identical(setup):
    from recbole_ckf.trainer.checkpoint import load_checkpoint, save_checkpoint

    s = setup
    model = s["make_model"]()
    model.train()
    optimizer = _optimizer(model, lr=1e-2)
    for task in TASKS:  # every adapter and the bridge away from their initial values
        batch, _ = _batch(s, model, task, True)
        model(batch, slotted=True).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    ctr, rating, result = _outputs(s, model)
    path = s["tmp"] / "checkpoint"
    save_checkpoint(model, str(path))

    fresh = s["make_model"](seed=1)  # other CF tables, initial adapters and bridge
    f_ctr, f_rating, f_result = _outputs(s, fresh)
    assert not torch.allclose(f_ctr, ctr) and not torch.allclose(f_rating, rating) and not _same(f_result, result)

    assert load_checkpoint(fresh, str(path)) is None  # no trainer state in it
    l_ctr, l_rating, l_result = _outputs(s, fresh)
    assert torch.equal(l_ctr, ctr) and torch.equal(l_rating, rating)
    assert _same(l_result, result)
    assert torch.equal(fresh.user_table, model.user_table) and torch.equal(fresh.item_table, model.item_table)

    # a model built without an answer head refuses this checkpoint in one line, and the other way round
    s["config"]["answer_head"] = False
    try:
        headless = s["make_model"]()
    finally:
        s["config"]["answer_head"] = True
    with pytest.raises(CKFError, match=r"has an answer head \(answer_head.pt\), but answer_head is False"):
        load_checkpoint(headless, str(path))
    save_checkpoint(headless, str(s["tmp"] / "headless"))
    with pytest.raises(CKFError, match=r"has no answer head \(answer_head.pt\): set --answer_head=False"):
        load_checkpoint(s["make_model"](), str(s["tmp"] / "headless"))
    s["config"]["bridge_stats"] = True  # nor does a bridge that takes statistics load one that does not
    try:
        with pytest.raises(CKFError, match=r"its bridge has no rating-statistics maps: set --bridge_stats=False"):
            load_checkpoint(s["make_model"](), str(path))
    finally:
        s["config"]["bridge_stats"] = False
    s["config"]["bridge_anchor"] = True  # anchored slot tokens are rebuilt from the LLM: the setting must match
    try:
        with pytest.raises(CKFError, match=r"was trained with bridge_anchor False: set --bridge_anchor=False"):
            load_checkpoint(s["make_model"](), str(path))
    finally:
        s["config"]["bridge_anchor"] = False


# ---- the ablation switches, end to end -------------------------------------------------------------------------------
class _Recorder:
    """Wraps CKF methods during a run: every training batch, the bridge right after it is built, the backbone."""

    def __init__(self, monkeypatch):
        from recbole_ckf.model.ckf import CKF
        from recbole_ckf.trainer import trainer

        self.batches, self.bridge_grads, self.model, self.initial_bridge, self.backbones = [], [], None, None, []
        forward, set_tables, train_backbone = CKF.forward, CKF.set_cf_tables, trainer.train_backbone
        recorder = self

        def record_forward(model, batch, slotted=True):
            loss = forward(model, batch, slotted)
            ids = batch["input_ids"]
            recorder.batches.append(dict(
                task=batch["task"], slotted=slotted, active=active_adapters(model.llm),
                slots=int(((ids == model.user_token_id) | (ids == model.item_token_id)).sum())))
            return loss

        def record_tables(model, user_emb, item_emb):
            set_tables(model, user_emb, item_emb)
            if recorder.model is None:
                recorder.model = model
                recorder.initial_bridge = {k: v.clone() for k, v in model.bridge.state_dict().items()}
                for p in model.bridge.parameters():
                    p.register_hook(lambda g: recorder.bridge_grads.append(g) or g)

        def record_backbone(*args, **kwargs):
            tables = train_backbone(*args, **kwargs)
            recorder.backbones.append(tables.model_name)
            return tables

        monkeypatch.setattr(CKF, "forward", record_forward)
        monkeypatch.setattr(CKF, "set_cf_tables", record_tables)
        monkeypatch.setattr(trainer, "train_backbone", record_backbone)


ABLATIONS = {
    "use_cf-off": {"use_cf": False},
    "single-lora-no-metanet-bpr": {"multi_lora": False, "meta_network": False, "backbone": "BPR",
                                   "answer_head": False},
    "bridge-stats": {"bridge_stats": True},
    "bridge-anchor": {"bridge_anchor": True},
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_switches_run_end_to_end(monkeypatch, name):
    from recbole_ckf.quick_start import run_recbole_ckf

    switches = ABLATIONS[name]
    recorder = _Recorder(monkeypatch)
    config = small_config(
        llm="tiny", llm_cache_dir="cache", epochs=1, train_samples_per_task=8, train_batch_size=4,
        valid_users=8, eval_users=8, explanation_max_tokens=3, eval_batch_size=16, eval_step=1,
        backbone_config={"embedding_size": 16, "epochs": 1, "train_batch_size": 8192, "n_layers": 1},
        max_tokens_per_pass=None,  # one forward per batch: the recorder counts batches
        **switches)
    result = run_recbole_ckf(model="CKF", dataset=DATASET, config_dict=config)
    for key in ("ctr:auc", "sequential:ndcg@3", "rating:rmse", "explanation:rouge-l"):
        assert key in result["test_result"] and key in result["best_valid_result"]
    assert np.isfinite(result["test_result"]["rating:rmse"])

    model, batches = recorder.model, recorder.batches
    assert model is not None and len(batches) == 4 * 2  # 8 samples per task, 4 per batch
    assert {b["task"] for b in batches} == set(TASKS)
    bridge_moved = any(not torch.equal(v, model.bridge.state_dict()[k]) for k, v in recorder.initial_bridge.items())
    lora_names = {_adapter_of(n) for n, _ in named_lora_parameters(model.llm)}
    assert recorder.backbones == [switches.get("backbone", "LightGCN")]
    if not switches.get("use_cf", True):
        assert all(not b["slotted"] and b["slots"] == 0 for b in batches)  # no slot token ever
        assert recorder.bridge_grads == [] and not bridge_moved
        assert model.trainable_parameters()[1] == []
    else:
        assert any(b["slotted"] and b["slots"] > 0 for b in batches)
        assert recorder.bridge_grads and bridge_moved
    if switches.get("multi_lora", True):
        assert lora_names == {SHARED} | {task_adapter(t) for t in TASKS}
        assert all(b["active"] == [SHARED, task_adapter(b["task"])] for b in batches)
    else:
        assert lora_names == {SHARED} and get_multi_lora_config(model.llm).adapter_names == [SHARED]
        assert all(b["active"] == [SHARED] for b in batches)
    if switches.get("meta_network", True):
        assert model.bridge.meta_network and hasattr(model.bridge, "meta_net")
    else:
        assert not model.bridge.meta_network and not hasattr(model.bridge, "meta_net")
        assert not torch.equal(model.bridge.delta_W, torch.zeros_like(model.bridge.delta_W))  # the shared W learned
    if switches.get("bridge_stats"):  # the statistics maps learnt (they start at zero)
        assert all(getattr(model.bridge, m).weight.abs().sum() > 0 for m in ("stats_user", "stats_item"))
    else:
        assert not hasattr(model.bridge, "stats_item")
    if switches.get("bridge_anchor"):  # the anchors are the LLM's embeddings; the gains moved off their zero start
        assert model.anchors is not None and model.bridge.proj_item.norm.weight.abs().sum() > 0
        assert torch.equal(model.bridge.anchor_item, model.anchors[1])
    if switches.get("answer_head", True):  # ctr, rating and pointwise sequential (Yes/No) learnt their answer rows
        assert sorted(model.answer_head) == ["ctr", "rating", "sequential"]
        assert all(p.abs().sum() > 0 for p in model.answer_head.parameters())
    else:
        assert len(model.answer_head) == 0 and model.trainable_parameters()[2] == []
