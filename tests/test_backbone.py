"""The frozen CF backbone: same split, final (propagated) tables, checkpoints, no leakage, clear errors."""

import glob
import os
import sys

import numpy as np
import pytest
import torch

import recbole_ckf  # noqa: F401  (RecBole compatibility fixes)
from recbole_ckf.config import Config
from recbole_ckf.errors import CKFError
from recbole_ckf.model.backbone import (
    CFTables,
    build_backbone_config,
    export_tables,
    load_backbone_checkpoint,
    train_backbone,
)
from recbole_ckf.data import load_data

SMALL_BACKBONE = {"embedding_size": 8, "n_layers": 2, "epochs": 2, "train_batch_size": 4096,
                  "eval_batch_size": 4096, "stopping_step": 2}
QUIET = {"show_progress": False, "state": "WARNING"}


def _ckf_config(dataset="amazon-instruments", **extra):
    """The CKF model's Config; a BPR config with the same keys stands in while CKF cannot be imported
    (both are general, pairwise models, so RecBole's data_preparation treats them alike)."""
    config_dict = {"backbone": "LightGCN", "backbone_config": dict(SMALL_BACKBONE), "backbone_checkpoint": None,
                   **QUIET, **extra}
    try:
        return Config("CKF", dataset, config_dict=config_dict)
    except (ImportError, CKFError):
        return Config("BPR", dataset, config_dict=config_dict)


def _pairs(dataset):
    inter = dataset.inter_feat
    return set(zip(inter[dataset.uid_field].tolist(), inter[dataset.iid_field].tolist()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One LightGCN backbone trained on amazon-instruments' training split (what the trainer saw is recorded)."""
    from recbole.trainer import Trainer

    tmp = tmp_path_factory.mktemp("backbone")
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["pytest"])
    mp.chdir(tmp)
    seen = {}
    fit = Trainer.fit

    def spy(self, train_data, valid_data=None, **kwargs):
        seen.update(trainer=self, train_data=train_data, valid_data=valid_data, threads=torch.get_num_threads())
        return fit(self, train_data, valid_data, **kwargs)

    mp.setattr(Trainer, "fit", spy)
    threads = torch.get_num_threads()
    try:
        config = _ckf_config()
        dataset, train_data, valid_data, test_data = load_data(config)
        tables = train_backbone(config, train_data, valid_data, saved_dir=str(tmp / "saved"))
    finally:
        mp.undo()
    return dict(config=config, dataset=dataset, train_data=train_data, valid_data=valid_data, test_data=test_data,
                tables=tables, seen=seen, threads_before=threads, threads_after=torch.get_num_threads())


def test_backbone_trains_on_backbone_threads_and_restores_the_count(trained):
    assert trained["config"]["backbone_threads"] == 1
    assert trained["seen"]["threads"] == 1
    assert trained["threads_after"] == trained["threads_before"]


def test_backbone_tables_are_bitwise_identical_across_processes(tmp_path):
    """Two CKF runs (tiny LM, 2 torch threads) train the same LightGCN: bitwise identical tables. With 2 threads
    during the backbone's own training they differed by up to 1.5e-7 from one process to the next (not when
    LightGCN trained alone in a process: something a CKF run sets up before the backbone trains matters)."""
    import subprocess

    from conftest import REPO

    tables = []
    for k in range(2):
        folder = tmp_path / str(k)
        run = subprocess.run(
            [sys.executable, os.path.join(REPO, "run_recbole_ckf.py"), "--model=CKF", "--dataset=amazon-instruments",
             "--llm=tiny", f"--llm_cache_dir={tmp_path / 'cache'}", f"--checkpoint_dir={folder / 'saved'}",
             "--tasks=['ctr']", "--train_samples_per_task=4", "--epochs=1", "--valid_users=4", "--eval_users=4",
             "--score_fusion=none", "--show_progress=False", "--state=WARNING"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore",
                 "HF_HUB_OFFLINE": "1"})
        assert run.returncode == 0, run.stderr[-2000:]
        path, = glob.glob(str(folder / "saved" / "LightGCN-*.pth"))
        tables.append(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
    assert tables[0].keys() == tables[1].keys()
    for key in tables[0]:
        assert torch.equal(tables[0][key], tables[1][key]), key


def test_backbone_config_uses_the_ckf_split_and_its_own_training_keys(trained):
    config = trained["config"]
    backbone = build_backbone_config(config)
    assert backbone["model"] == "LightGCN"
    assert backbone["dataset"] == config["dataset"] and backbone["data_path"] == config["data_path"]
    assert backbone["eval_args"] == config["eval_args"] and backbone["seed"] == config["seed"]
    assert backbone["load_col"] == config["load_col"]
    assert backbone["embedding_size"] == 8 and backbone["n_layers"] == 2 and backbone["epochs"] == 2
    assert backbone["train_batch_size"] == 4096  # from backbone_config, not the CKF run's batch size
    assert backbone["reg_weight"] is not None  # LightGCN's own property file was read
    assert backbone["train_neg_sample_args"]["distribution"] == "uniform"


def test_lightgcn_tables_are_the_propagated_ones(trained):
    tables, config = trained["tables"], trained["config"]
    assert isinstance(tables, CFTables) and tables.model_name == "LightGCN"
    n_users, n_items = trained["dataset"].user_num, trained["dataset"].item_num
    assert tables.user_emb.shape == (n_users, 8) and tables.item_emb.shape == (n_items, 8)
    assert tables.user_emb.dtype == torch.float32 and tables.dim == 8
    assert not tables.user_emb.requires_grad and not tables.item_emb.requires_grad
    assert tables.valid_result and "ndcg@3" in tables.valid_result

    # the best epoch's model, rebuilt from RecBole's checkpoint
    backbone = build_backbone_config(config)
    model = backbone.model_class(backbone, trained["train_data"].dataset)
    checkpoint = torch.load(tables.checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    with torch.no_grad():
        user_all, item_all = model.forward()
    assert torch.allclose(tables.user_emb, user_all) and torch.allclose(tables.item_emb, item_all)
    assert not torch.allclose(tables.user_emb, model.user_embedding.weight)  # not the raw tables
    # the tables are copies: the model moving cannot move them
    with torch.no_grad():
        model.user_embedding.weight.add_(1.0)
    assert torch.allclose(tables.user_emb, user_all)


def test_train_then_load_checkpoint_gives_identical_tables(trained):
    tables = trained["tables"]
    assert os.path.isfile(tables.checkpoint)
    loaded = load_backbone_checkpoint(trained["config"], tables.checkpoint, trained["train_data"].dataset)
    assert loaded.model_name == "LightGCN" and loaded.valid_result == {} and loaded.checkpoint == tables.checkpoint
    assert torch.equal(loaded.user_emb, tables.user_emb) and torch.equal(loaded.item_emb, tables.item_emb)
    assert not loaded.user_emb.requires_grad


def test_backbone_trains_on_training_interactions_only(trained):
    seen, train_data = trained["seen"], trained["train_data"]
    train_pairs = _pairs(train_data.dataset)
    held_out = _pairs(trained["valid_data"].dataset) | _pairs(trained["test_data"].dataset)
    assert held_out and not (train_pairs & held_out)

    loader = seen["train_data"]
    assert loader.dataset is train_data.dataset  # the CKF run's own training split, not a new split
    uid, iid = loader.dataset.uid_field, loader.dataset.iid_field
    fed = set()
    for batch in loader:
        fed |= set(zip(batch[uid].tolist(), batch[iid].tolist()))
        negatives = set(zip(batch[uid].tolist(), batch["neg_" + iid].tolist()))
        assert not (negatives & train_pairs)  # negatives are never the user's training items
    assert fed == train_pairs and not (fed & held_out)
    # LightGCN's graph holds the training interactions only
    graph = seen["trainer"].model.interaction_matrix.tocoo()
    assert set(zip(graph.row.tolist(), graph.col.tolist())) == train_pairs
    # validation ran on the CKF run's validation split and candidates
    assert seen["valid_data"].dataset is trained["valid_data"].dataset
    assert seen["valid_data"]._sampler is trained["valid_data"]._sampler


def test_bpr_and_neumf_tables(trained):
    train_dataset = trained["train_data"].dataset
    bpr_config = build_backbone_config(_ckf_config(backbone="BPR"))
    bpr = bpr_config.model_class(bpr_config, train_dataset)
    user, item = export_tables(bpr)
    assert torch.equal(user, bpr.user_embedding.weight.detach()) and torch.equal(item, bpr.item_embedding.weight.detach())
    assert not user.requires_grad and bpr.training  # the model's mode is left as it was

    neumf_config = build_backbone_config(_ckf_config(backbone="NeuMF", backbone_config={
        "mf_embedding_size": 4, "mlp_embedding_size": 6, "mlp_hidden_size": [8]}))
    neumf = neumf_config.model_class(neumf_config, train_dataset)
    user, item = export_tables(neumf)
    assert user.shape == (train_dataset.user_num, 10) and item.shape == (train_dataset.item_num, 10)
    assert torch.equal(user[:, :4], neumf.user_mf_embedding.weight.detach())
    assert torch.equal(item[:, 4:], neumf.item_mlp_embedding.weight.detach())

    vae_config = build_backbone_config(_ckf_config(backbone="MultiVAE"))
    with pytest.raises(CKFError, match="no user and item embedding tables"):
        export_tables(vae_config.model_class(vae_config, train_dataset))


@pytest.mark.parametrize("backbone, message", [
    ("SASRec", "is a sequential model"),
    ("Pop", "is a traditional model"),
    ("DeepFM", "is a context model"),
    ("CKF", "plugin model"),
    ("LightGcn", "did you mean 'LightGCN'"),
])
def test_non_general_backbone_is_rejected(backbone, message):
    with pytest.raises(CKFError, match=message) as err:
        build_backbone_config(_ckf_config(backbone=backbone))
    assert "\n" not in str(err.value)


def test_backbone_config_cannot_change_the_split():
    with pytest.raises(CKFError, match="backbone_config may not set 'eval_args'"):
        build_backbone_config(_ckf_config(backbone_config={"eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}}}))


def _tiny_dataset(folder, n_users=30, n_items=12):
    """A small leave-one-out-able data set: every user rates 6 items on 6 days."""
    rng = np.random.default_rng(0)
    os.makedirs(folder / "tiny", exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(n_users):
        for t, i in enumerate(rng.choice(n_items, size=6, replace=False)):
            lines.append(f"u{u}\ti{i}\t{1 + (u + t) % 5}\t{1000 + 86400 * t}")
    (folder / "tiny" / "tiny.inter").write_text("\n".join(lines) + "\n")
    return str(folder)


def test_checkpoint_of_another_data_set_or_model_or_split_is_rejected(trained, tmp_path):
    data_path = _tiny_dataset(tmp_path)
    tiny_config = _ckf_config("tiny", data_path=data_path,
                              load_col={"inter": ["user_id", "item_id", "rating", "timestamp"]},
                              backbone_config={**SMALL_BACKBONE, "epochs": 1})
    _, tiny_train, tiny_valid, _ = load_data(tiny_config)
    torch.manual_seed(7)
    np.random.seed(7)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    tiny = train_backbone(tiny_config, tiny_train, tiny_valid, saved_dir=str(tmp_path / "saved"))
    assert torch.equal(torch.get_rng_state(), torch_state)  # the caller's random state is left alone
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert tiny.user_emb.shape == (31, 8)  # 30 users + padding

    amazon = trained["dataset"]
    with pytest.raises(CKFError) as err:
        load_backbone_checkpoint(trained["config"], tiny.checkpoint, trained["train_data"].dataset)
    message = str(err.value)
    assert tiny.checkpoint in message and "31 users" in message and f"{amazon.user_num} users" in message
    assert "tiny" in message and "\n" not in message

    with pytest.raises(CKFError, match="holds a LightGCN model, but backbone is 'BPR'"):
        load_backbone_checkpoint(_ckf_config(backbone="BPR"), trained["tables"].checkpoint,
                                 trained["train_data"].dataset)

    random_split = _ckf_config(eval_args={"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user",
                                          "mode": "uni9"})
    with pytest.raises(CKFError, match="trained on the split"):
        load_backbone_checkpoint(random_split, trained["tables"].checkpoint, trained["train_data"].dataset)

    with pytest.raises(CKFError, match="not found"):
        load_backbone_checkpoint(trained["config"], str(tmp_path / "missing.pth"), trained["train_data"].dataset)
