"""Two-stage recommendation from a CKF checkpoint (recbole_ckf.recommend; ``run_recbole_ckf.py --recommend``).

One tiny CKF (``llm: tiny``, one epoch, tiny budgets) is trained on amazon-instruments once for the module; the
tests recommend for two users from its run folder: the rows and their columns, ranks 1..k, CKF scores in
descending order (mode ckf), never an item the user already has (in any split), the backbone stage being exactly
the top N of e_u . e_v, the fusion and backbone modes, the JSON / MD outputs written atomically, and the
one-line error (exit status 2) of an unknown user id through the real command line, the batched path (all
users' prompts together, each user's top-k prompts sharing their prefix) against one user at a time, and the
shared-prefix scorers against the evaluator's plain ones.
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import recbole_ckf
from conftest import REPO, small_config
from recbole_ckf.errors import CKFError
from recbole_ckf.recommend import COLUMNS, Recommender, format_table, write_recommendations

DATASET = "amazon-instruments"
USERS = ["AV8MDYLHHTUOY", "A33H0WC9MI8OVW"]  # the first two reviewers of the atomic file
TOPK = 5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny CKF: its run folder, the overrides to reload it, and a loaded :class:`Recommender`."""
    from recbole_ckf.quick_start import run_recbole_ckf

    tmp = tmp_path_factory.mktemp("recommend")
    cache = str(tmp / "cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["pytest"])
        mp.chdir(tmp)
        run_recbole_ckf(model="CKF", dataset=DATASET, config_dict=small_config(
            llm="tiny", llm_cache_dir=cache, epochs=1, train_samples_per_task=8, train_batch_size=4,
            valid_users=16, eval_users=16, explanation_max_tokens=3, eval_batch_size=16, eval_step=1,
            checkpoint_dir=str(tmp / "saved"), backbone="BPR", precision="fp32",  # batched == per user to 2e-4
            backbone_config={"embedding_size": 16, "epochs": 1, "train_batch_size": 8192}))
        folders = glob.glob(str(tmp / "saved" / "CKF-*"))
        assert len(folders) == 1 and os.path.isdir(os.path.join(folders[0], "best"))
        overrides = {"llm_cache_dir": cache, "explanation_max_tokens": 3, "show_progress": False, "state": "WARNING"}
        rec = Recommender(folders[0], config_dict=overrides)
    return dict(tmp=tmp, folder=folders[0], overrides=overrides, rec=rec)


def _all_items(rec, token):
    """Every item of user ``token`` in the whole data set (all splits), as RecBole ids."""
    ds = rec.dataset
    uid = ds.field2token_id[ds.uid_field][token]
    users, items = ds.inter_feat[ds.uid_field].numpy(), ds.inter_feat[ds.iid_field].numpy()
    return set(int(i) for i in items[users == uid]), uid


def _item_id(rec, token):
    return int(rec.dataset.field2token_id[rec.dataset.iid_field][token])


def test_ckf_rows_columns_ranks_and_order(run):
    rec = run["rec"]
    rows = rec.recommend(USERS, topk=TOPK, rerank="ckf", retrieve=20)  # 20: two stratified lists of 10
    assert len(rows) == TOPK * len(USERS)
    for row in rows:
        assert list(row) == [k for k, _ in COLUMNS]
    for token in USERS:
        mine = [r for r in rows if r["user"] == token]
        assert [r["rank"] for r in mine] == list(range(1, TOPK + 1))
        scores = [r["ckf_score"] for r in mine]
        assert all(isinstance(s, float) for s in scores) and scores == sorted(scores, reverse=True)
        own, uid = _all_items(rec, token)
        ids = [_item_id(rec, r["item"]) for r in mine]
        assert len(set(ids)) == TOPK and not own & set(ids) and 0 not in ids  # nothing the user already has
        assert {i for i, _ in rec.retrieve(uid, 20)} >= set(ids)  # re-ranked from the retrieved items
        for r, item in zip(mine, ids):
            assert r["item_text"] == rec.model.renderer.item_text(item, uid)
            assert 1.0 <= r["rating"] <= 5.0 and 0.0 <= r["p_like"] <= 1.0
            assert isinstance(r["explanation"], str) and "\n" not in r["explanation"]
            assert r["fused_score"] is None
    assert rec.last_settings["rerank"] == "ckf" and rec.last_settings["retrieve"] == 20
    table = format_table(rows)
    assert table.splitlines()[0].startswith("| user | rank | item | item text | backbone score | CKF score |")
    assert "fused score" not in table and len(table.splitlines()) == 2 + len(rows)


def test_backbone_stage_is_the_top_n_of_eu_ev(run):
    rec = run["rec"]
    for token in USERS:
        own, uid = _all_items(rec, token)
        scores = (rec.model.user_table[uid] @ rec.model.item_table.T).double().cpu().numpy()
        scores[0] = -np.inf
        scores[list(own)] = -np.inf
        expected = np.argsort(-scores, kind="stable")[:20]
        got = rec.retrieve(uid, 20)
        assert [i for i, _ in got] == [int(i) for i in expected]
        assert np.allclose([s for _, s in got], scores[expected], atol=1e-5)
        # the same through the model's public score
        assert torch.allclose(rec.model.backbone_scores([uid] * 20, [i for i, _ in got]).double(),
                              torch.tensor([s for _, s in got], dtype=torch.float64), atol=1e-5)

    rows = rec.recommend(USERS[:1], topk=TOPK, rerank="backbone")
    got = rec.retrieve(_all_items(rec, USERS[0])[1], TOPK)
    assert [_item_id(rec, r["item"]) for r in rows] == [i for i, _ in got]
    assert all(r["ckf_score"] is None and r["rating"] is not None and r["p_like"] is not None for r in rows)


def test_fusion_mode_uses_the_weight_fitted_on_validation(run):
    """The run's evaluation fitted the blend on validation and stored it in the checkpoint's meta.json."""
    rec = run["rec"]
    rows = rec.recommend(USERS[:1], topk=TOPK, rerank="fusion")
    fused = [r["fused_score"] for r in rows]
    assert fused == sorted(fused, reverse=True) and all(r["ckf_score"] is not None for r in rows)
    fitted = rec.meta["adjust"]["sequential"]["backbone_weight"]
    assert 0.0 <= fitted <= 1.0 and rec.last_settings["fusion_weight"] == fitted
    assert rec.last_settings["retrieve"] == 10  # the default: one list of n_candidates
    with pytest.raises(CKFError, match="recommend_rerank"):
        rec.recommend(USERS[:1], rerank="best")
    with pytest.raises(CKFError, match="unknown user 'nobody' in data set 'amazon-instruments'; closest known"):
        rec.recommend(["nobody"])


@pytest.mark.parametrize("rerank", ["ckf", "fusion"])
def test_batched_equals_one_user_at_a_time(run, rerank):
    """All users' prompts through the LM together (small batches, so a batch mixes users and lengths) give the
    per-user path's rows: the same items in the same order, the same explanations, scores equal to float noise."""
    rec = run["rec"]
    tokens = rec.dataset.field2id_token[rec.dataset.uid_field]
    users = (USERS + [str(tokens[u]) for u in rec.test_users[:6] if str(tokens[u]) not in USERS])[:5]
    assert len(users) >= 4
    size, shared = rec.batch_size, rec.shared_batch_size
    try:
        rec.batch_size, rec.shared_batch_size = 3, 3
        batched = rec.recommend(users, topk=TOPK, rerank=rerank)
        assert rec.last_settings["batched"] is True
    finally:
        rec.batch_size, rec.shared_batch_size = size, shared
    single = rec.recommend(users, topk=TOPK, rerank=rerank, batched=False)
    assert rec.last_settings["batched"] is False
    assert [(r["user"], r["rank"], r["item"]) for r in batched] == [(r["user"], r["rank"], r["item"]) for r in single]
    for b, s in zip(batched, single):
        assert b["item_text"] == s["item_text"] and b["explanation"] == s["explanation"]
        for key in ("backbone_score", "ckf_score", "fused_score", "rating", "p_like"):
            assert (b[key] is None) == (s[key] is None), key
            if b[key] is not None:
                assert b[key] == pytest.approx(s[key], abs=2e-4), (key, b, s)


def test_shared_prefix_equals_the_plain_scorers(run):
    """Each user's top-k prompts of a task, their common prefix run once (recommend_shared; several users per
    forward pass, left-padded), against the evaluator's plain functions: same logits and explanations; the
    prefix ends right before the prompts' own item slot (every slot is the same placeholder token)."""
    from recbole_ckf.evaluator.common import prompt_only
    from recbole_ckf.evaluator.explanation import generate_explanations
    from recbole_ckf.evaluator.pointwise import predict_answer_logits
    from recbole_ckf.recommend_shared import _prefill, answer_logits_by_user, common_prefix, explanations_by_user

    rec = run["rec"]
    model, enc = rec.model, rec.encoder
    pairs = []
    for token in USERS:
        uid = _all_items(rec, token)[1]
        pairs += [(uid, i) for i, _ in rec.retrieve(uid, 3 if token == USERS[0] else 5)]
    for task in ("rating", "ctr"):
        samples = [rec._sample(task, u, i) for u, i in pairs]
        encoded = [prompt_only(e) for e in enc.encode_all(samples, True)]
        n = common_prefix(encoded[:3], model.item_token_id)
        assert 0 < n < min(len(e.input_ids) for e in encoded[:3])
        assert encoded[0].input_ids[n] == model.item_token_id  # cut right before the item's own slot
        with torch.no_grad():
            assert _prefill(model, [encoded[:3], encoded[3:]], True, next(model.parameters()).device) is not None
        plain = predict_answer_logits(model, enc, samples, True, 16)
        for size in (1, 16):  # one user per pass; both users in one pass
            assert torch.allclose(answer_logits_by_user(model, enc, samples, True, size), plain, atol=1e-4)
    samples = [rec._sample("explanation", u, i) for u, i in pairs]
    assert explanations_by_user(model, enc, samples, True, 16, 3) == generate_explanations(model, enc, samples, True,
                                                                                          16, 3)


def test_python_api_and_atomic_outputs(run, monkeypatch, tmp_path):
    import recbole_ckf.utils as utils

    writes = []
    for name in ("atomic_write_json", "atomic_write_text"):
        original = getattr(utils, name)
        monkeypatch.setattr(utils, name, lambda path, obj, _o=original, _n=name: writes.append((_n, path)) or _o(path, obj))
    rows = recbole_ckf.recommend(run["folder"] + "/best", ",".join(USERS), topk=3, config_dict=run["overrides"])
    assert [(r["user"], r["rank"]) for r in rows] == [(u, k) for u in USERS for k in (1, 2, 3)]
    json_path, md_path = str(tmp_path / "out" / "recs.json"), str(tmp_path / "out" / "recs.md")
    write_recommendations(rows, json_path, {"rerank": "ckf"})
    write_recommendations(rows, md_path)
    assert writes[0] == ("atomic_write_json", json_path) and writes[-1] == ("atomic_write_text", md_path)
    data = json.load(open(json_path, encoding="utf-8"))
    assert data["rows"] == json.loads(json.dumps(rows)) and data["settings"] == {"rerank": "ckf"}
    assert format_table(rows) in open(md_path, encoding="utf-8").read()
    assert sorted(os.listdir(tmp_path / "out")) == ["recs.json", "recs.md"]  # no temporary left
    with pytest.raises(CKFError, match="should end with .json or .md"):
        write_recommendations(rows, str(tmp_path / "recs.csv"))


def test_cli_unknown_user_is_one_line_and_exit_2(run):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "run_recbole_ckf.py"), f"--checkpoint={run['folder']}", "--recommend",
         "--users=AV8MDYLHHTUOX", "--topk=3", f"--llm_cache_dir={run['overrides']['llm_cache_dir']}"],
        cwd=run["tmp"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: unknown user 'AV8MDYLHHTUOX' in data set 'amazon-instruments'; closest "
                               "known: AV8MDYLHHTUOY")


@pytest.mark.parametrize("argv, message", [
    (["--users=A"], "--users is an option of --recommend"),
    (["--checkpoint=x", "--recommend"], "--recommend needs --users="),
    (["--recommend=maybe", "--users=A"], "--recommend takes no value"),
    (["--recommend", "--users=A"], "recommend needs --checkpoint=DIR"),
    (["--checkpoint=x", "--recommend", "--users=A", "--topk=0"], "topk: expected an integer >= 1"),
    (["--checkpoint=x", "--recommend", "--users=A", "--output=r.csv"], "output: 'r.csv' should end with .json or .md"),
])
def test_cli_mistakes_are_one_line(argv, message, capsys):
    sys.path.insert(0, REPO)
    import run_recbole_ckf

    assert run_recbole_ckf.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
