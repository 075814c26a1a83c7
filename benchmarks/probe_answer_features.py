"""Can the frozen LM's answer position tell a liked item or a rating at all? A linear probe, against the rating
statistics its prompts show.

For ctr and rating, CKF's prompts show the user's earlier rating count and mean and the other users' count and
mean of the item (``prompt_stats``). This script measures how much of that a linear read-out of the frozen LM
gets from a small budget of training samples, which is what CKF's answer head and adapters must learn from:

* **probe**: the frozen LM (no adapter, no bridge; text-only prompts) encodes ``--train`` training samples per
  task and the validation samples of ``--users`` seeded validation users (the trainer's recipe); a logistic
  regression (ctr, balanced classes) or ridge regression (rating) on its standardised hidden state at the answer
  position, the regularisation chosen by cross-validation on the training samples only;
* **statistics**: the same regressions on the two numbers the prompt shows (user mean and item mean, each
  shrunk towards the global training mean with 3 pseudo-ratings), fitted on the same training samples;
* the training-mean rating (RMSE) and a random ranking (AUC 0.5).

    python benchmarks/probe_answer_features.py --dataset amazon-instruments --train 768 --users 512

Writes ``benchmarks/results/probe_answer_features_<dataset>.json`` (commit, command, machine).
"""

import argparse
import json
import os
import sys
import time

from common import RESULTS, machine_info  # noqa: E402  (puts the repository on sys.path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recbole_ckf.utils import atomic_write_json  # noqa: E402

SHRINK = 3  # pseudo-ratings at the global mean in each shrunk mean


def answer_states(model, encoder, samples, batch_size=16):
    """[N, H] float32: the frozen LM's last hidden state at each prompt's answer position (text-only prompts)."""
    from recbole_ckf.data.collate import collate
    from recbole_ckf.evaluator.common import batches, length_sorted, prompt_only

    encoded = [prompt_only(e) for e in encoder.encode_all(samples, False)]
    out = [None] * len(encoded)
    with torch.no_grad():
        for idx in batches(length_sorted(encoded), batch_size):
            batch = collate([encoded[k] for k in idx], model.tokenizer.pad_token_id)
            hidden = model.hidden_states(batch, False)
            for k, row in zip(idx, hidden[torch.arange(len(idx)), batch["prompt_len"] - 1]):
                out[k] = row.float().numpy()
    return np.stack(out)


def shown_statistics(samples, stats, global_mean):
    """[N, 2]: the user's and the item's mean rating as the prompt shows them, shrunk towards the global mean."""
    rows = []
    for s in samples:
        n_u, m_u = s.user_stats
        n_i, m_i = stats.of(s.item, s.user)
        rows.append([((m_u or 0.0) * n_u + global_mean * SHRINK) / (n_u + SHRINK),
                     ((m_i or 0.0) * n_i + global_mean * SHRINK) / (n_i + SHRINK)])
    return np.asarray(rows)


def fit_and_score(task, x_train, y_train, x_valid, y_valid):
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.metrics import roc_auc_score

    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_valid = (x_train - mean) / std, (x_valid - mean) / std
    if task == "ctr":
        model = LogisticRegressionCV(Cs=np.logspace(-4, 1, 11), class_weight="balanced", max_iter=5000)
        model.fit(x_train, y_train)
        return {"auc": round(float(roc_auc_score(y_valid, model.decision_function(x_valid))), 4),
                "C": float(model.C_[0])}
    model = RidgeCV(alphas=np.logspace(-1, 5, 13)).fit(x_train, y_train)
    return {"rmse": round(float(np.sqrt(np.mean((model.predict(x_valid) - y_valid) ** 2))), 4),
            "alpha": float(model.alpha_)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-instruments")
    parser.add_argument("--train", type=int, default=768, help="training samples per task (seeded draw)")
    parser.add_argument("--users", type=int, default=512, help="validation users (the trainer's seeded draw)")
    parser.add_argument("--llm", default="gemma-3-270m")
    args = parser.parse_args(argv)
    info = machine_info()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv

    from recbole.utils import init_seed

    from recbole_ckf.config import Config
    from recbole_ckf.data import load_data
    from recbole_ckf.data.collate import Encoder
    from recbole_ckf.data.tasks import TaskBuilder, evaluation_samples

    start = time.perf_counter()
    config = Config("CKF", args.dataset, config_dict={"llm": args.llm, "tasks": ["ctr", "rating"],
                                                       "show_progress": False, "state": "WARNING"})
    init_seed(config["seed"], config["reproducibility"])
    dataset, train_data, valid_data, _ = load_data(config)
    model = config.model_class(config, train_data._dataset).eval()
    builder = TaskBuilder(config, dataset, train_data.dataset, model.tasks, model.item_texts)
    train = builder.train_samples()
    valid = evaluation_samples(builder, valid_data, args.users, config["seed"])
    encoder = Encoder(model.tokenizer, model.renderer, config["max_length"])
    global_mean = float(np.mean([s.label for s in train["rating"]]))
    rng = np.random.default_rng(config["seed"])
    out = {"dataset": args.dataset, "llm": model.llm_name, "precision": model.precision,
           "train_samples_per_task": args.train, "valid_users": args.users, "machine": info, "tasks": {}}
    for task in ("ctr", "rating"):
        picked = [train[task][k] for k in rng.permutation(len(train[task]))[: args.train]]
        y_train = np.array([s.label for s in picked])
        y_valid = np.array([s.label for s in valid[task]])
        row = {"train_samples": len(picked), "valid_samples": len(valid[task]),
               "probe": fit_and_score(task, answer_states(model, encoder, picked), y_train,
                                      answer_states(model, encoder, valid[task]), y_valid),
               "statistics": fit_and_score(task, shown_statistics(picked, model.item_texts.stats, global_mean),
                                           y_train, shown_statistics(valid[task], model.item_texts.stats,
                                                                     global_mean), y_valid)}
        if task == "rating":
            row["training_mean_rmse"] = round(float(np.sqrt(np.mean((y_valid - global_mean) ** 2))), 4)
        out["tasks"][task] = row
        print(task, json.dumps(row), flush=True)
    out["seconds"] = round(time.perf_counter() - start, 1)
    path = os.path.join(RESULTS, f"probe_answer_features_{args.dataset}.json")
    atomic_write_json(path, out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
