"""benchmarks/run_benchmarks.py reads CKF logs as rows of the comparison: each log is named by the ablation its
config dump shows, so the ablation table can be built from the logs of separate runs."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
run_benchmarks = pytest.importorskip("run_benchmarks")

RESULT = "05 Dec 07:19    INFO  test result: OrderedDict([('ctr:auc', 0.5), ('sequential:ndcg@3', 0.3)])\n"


def _log(**config):
    defaults = {"dataset": "amazon-instruments", "seed": "2020", "exclude_own_review": "True",
                "curriculum_midpoint": "0.3", "curriculum_floor": "0.2", "bridge_schedule": "constant",
                "restricted_loss": "True", "balance_ctr": "True", "test_history": "train_valid", "use_cf": "True",
                "bridge_anchor": "False"}
    defaults.update(config)
    return "".join(f"{k} = {v}\n" for k, v in defaults.items()) + RESULT


@pytest.mark.parametrize("config, name", [
    ({}, "CKF"),
    ({"exclude_own_review": "False"}, "CKF own review in item text (exclude_own_review=False)"),
    ({"test_history": "train"}, "CKF training-only test history (test_history=train)"),
    # all three keys of the old curriculum, not one of them
    ({"curriculum_midpoint": "0.5", "curriculum_floor": "0.0", "bridge_schedule": "cosine"},
     "CKF old curriculum (midpoint 0.5, no floor, cosine bridge rate)"),
    ({"bridge_schedule": "cosine"}, "CKF"),
    ({"bridge_anchor": "True"}, "CKF anchored slot tokens (bridge_anchor=True)"),
    ({"balance_ctr": "False"}, "CKF unbalanced ctr (balance_ctr=False)"),
])
def test_log_named_by_its_ablation(tmp_path, config, name):
    path = tmp_path / "run.log"
    path.write_text(_log(**config))
    runs = run_benchmarks.load_ckf_results(str(path), "amazon-instruments")
    assert list(runs) == [name]
    assert runs[name][0]["test_result"] == {"ctr:auc": 0.5, "sequential:ndcg@3": 0.3}


def test_log_of_another_dataset_is_skipped(tmp_path):
    path = tmp_path / "run.log"
    path.write_text(_log(dataset="ml-100k"))
    assert run_benchmarks.load_ckf_results(str(path), "amazon-instruments") == {}
