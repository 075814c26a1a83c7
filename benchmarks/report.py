"""The comparison's reports: markdown tables (protocol, one table per task, the goal, the ablations, every model's
settings) and the plot, from the report dict that ``run_benchmarks.py`` writes as ``comparison_<dataset>.json``.
"""

import json
import re

import numpy as np

METRICS = {
    "sequential": ["hit@1", "hit@3", "ndcg@3", "mrr@10"],
    "ctr": ["auc", "logloss"],
    "rating": ["rmse", "mae"],
    "explanation": ["bleu-1", "bleu-4", "rouge-1", "rouge-2", "rouge-l", "distinct-1", "distinct-2"],
}
HEADLINE = {"sequential": "ndcg@3", "ctr": "auc", "rating": "rmse", "explanation": "rouge-l"}


def _fmt(v):
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _auc_se(auc, n_pos, n_neg):
    """Hanley & McNeil (1982) standard error of an AUC with n_pos positives and n_neg negatives."""
    if not n_pos or not n_neg:
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc ** 2) + (n_neg - 1) * (q2 - auc ** 2)) / (n_pos * n_neg)
    return var ** 0.5


def markdown(report):
    ds, proto = report["dataset"], report["protocol"]
    n, total = proto["ckf_test_users"], proto["all_test_users"]
    baselines_machine = report.get("baselines_run", {}).get("machine") or report["machine"]
    lines = [f"# {ds}: CKF and RecBole baselines on the same split, users and candidate lists", "",
             f"Generated {report['generated']} by `{report['command'].strip()}`"
             + (f"; baselines from {report['baselines_run']['generated']} by "
                f"`{report['baselines_run']['command'].strip()}`." if report.get("baselines_run", {}).get("command")
                not in (None, report["command"]) else "."), "",
             "## Protocol", "",
             f"* Split: leave-one-out by time ({json.dumps(proto['split'])}, order {proto['order']}), seed "
             f"{proto['seed']}: each user's last interaction is the test case, the one before it validation.",
             f"* **CKF's test users**: `sample_users(test users, eval_users={proto['eval_users']}, seed={proto['seed']})`"
             f" = {n} of {total} test users. Every number in the main tables is computed on these users (all tasks).",
             "* Ranking: every model ranks the same lists, `candidate_lists(test_data, seed)` (RecBole's uni9: the "
             "true item + 9 negatives the user never interacted with), with `model.predict`, scored by RecBole's "
             "Collector/Evaluator: Hit@1, Hit@3, NDCG@3, MRR (= MRR@10: all 10 candidates are ranked).",
             "* ctr: label = rating >= 4 (labeled mode); AUC, LogLoss. rating: context models trained on the rating "
             "as label (min-max scaled), RMSE/MAE rescaled to 1-5. GAUC is n/a (one test interaction per user).",
             "* Model selection on the validation split only: early stopping on the validation metric "
             f"(NDCG@3 / AUC / RMSE), stopping_step {report['budget']['stopping_step']}, at most "
             f"{report['budget']['epochs']} epochs, and a wall-clock cap per model ("
             + ", ".join(f"{k} {v:g} min" for k, v in report["cap_minutes"].items())
             + ", checked before each epoch); the best-validation checkpoint is tested once. Rows stopped by the "
             "cap are budget-limited, not converged: see 'stopped by'. Each model's RecBole defaults otherwise "
             "(Adam, learning rate 0.001; embedding size 64, context models 10); sequential models with "
             f"MAX_ITEM_LIST_LENGTH {report['sequential_settings']['MAX_ITEM_LIST_LENGTH']}. 'epochs (best)': epochs "
             "trained and the epoch whose checkpoint was tested.",
             "* Same interactions: every baseline loads its data as CKF does (`normalize_all: "
             f"{report['protocol'].get('normalize_all')}`; RecBole sorts the split by the float32 time field, so "
             "normalising it changes which same-minute interaction is last) and is refused unless its test "
             "interactions are CKF's (`recbole_ckf.evaluator.protocol.check_same_split`).",
             f"* Baselines trained on: {_machine(baselines_machine)}; baselines part {report['baseline_minutes']} min. "
             f"This report written on: {_machine(report['machine'])} (CKF's machines: each CKF source's log).", ""]
    if n < 200:
        lines += [f"With {n} users, a Hit@1 near 0.3 has a standard error of about "
                  f"{(0.3 * 0.7 / max(n, 1)) ** 0.5:.3f}: differences smaller than ~0.05-0.1 are not significant. "
                  "The all-user columns (same lists, "
                  f"{total} users) are the precise baseline numbers.", ""]
    for task in report["tasks"]:
        rows = [r for r in report["rows"] if r["task"] == task]
        if not rows:
            continue
        metrics = METRICS[task]
        head = HEADLINE[task]
        title = {"sequential": "sequential: next item among 10 candidates (uni9)",
                 "ctr": "ctr: will the user like the item (rating >= 4)",
                 "rating": "rating: stars 1-5", "explanation": "explanation: the review headline"}[task]
        lines += [f"## {title}", ""]
        cols = [f"{m} ({n} users)" for m in metrics] + [f"{head} (all {total})"]
        has_std = any(r["recbole_standard"] for r in rows)
        if has_std:
            cols.append(f"{head} RecBole standard")
        cols.append("epochs (best), stopped by")
        lines.append("| model | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for r in rows:
            cells = [_fmt(r["ckf_users"].get(m)) for m in metrics]
            cells.append(_fmt(r["all_users"].get(head)) if r["all_users"] else "n/a")
            if has_std:
                cells.append(_fmt(r["recbole_standard"].get(head)) if r["recbole_standard"] else "")
            s = r["settings"]
            cells.append(f"{s['epochs_trained']} ({s['best_epoch']}), {s['stopped_by']}" if "epochs_trained" in s
                         else "")  # best_epoch: the tested checkpoint is the one after that epoch (1-based)
            name = f"**{r['model']}**" if r["kind"] == "ckf" else r["model"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        if task == "sequential":
            lines += ["RecBole standard: RecBole's own `trainer.evaluate` (its own uni9 draw, all users). For "
                      "sequential models RecBole's negatives exclude only the target item (they may be items of "
                      "the user's history), CKF's lists exclude every item of the user, like the general models'.",
                      ""]
        if task == "ctr" and "ctr_labels" in proto:
            c = proto["ctr_labels"]
            pos, neg = c["ckf_users"]
            se = _auc_se(0.75, pos, neg)
            lines += [f"Labels among the {n} users: {pos} liked, {neg} not liked (all users: {c['all_users'][0]} / "
                      f"{c['all_users'][1]}). On these labels an AUC of 0.75 has a standard error of about "
                      f"{se:.3f} (Hanley-McNeil); the all-user column is the precise one.", ""]
    ckf = [r for r in report["rows"] if r["kind"] == "ckf"]
    if not ckf:
        lines += ["## CKF", "", "CKF (Gemma-3-270M) is **pending** for this data set: run "
                  "`python benchmarks/run_benchmarks.py --ckf` (9-13 min on 2 CPU cores) or pass "
                  "`--ckf-results FILE`.", ""]
    else:
        lines += goal_and_ablation_lines(report)
        lines += ["## CKF runs", ""]
        seen = {}
        for r in ckf:
            seen.setdefault(r["model"], r["settings"])
        for name, s in seen.items():
            lines.append(f"* {name}: " + ", ".join(f"{k}={v}" for k, v in s.items()))
        lines.append("")
    lines += ["## Settings of every trained baseline", "",
              "| model | task | settings |", "|---|---|---|"]
    for r in report["rows"]:
        if r["kind"].startswith("ckf"):
            continue
        s = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        lines.append(f"| {r['model']} | {r['task']} | {s} |")
    lines.append("")
    return "\n".join(lines)


def _machine(m):
    return f"{m['cpu_count']} CPUs ({m.get('cpu') or m.get('processor')}), torch {m['torch']}, CUDA {m['cuda']}"


def goal_and_ablation_lines(report):
    """The issue's goal (CKF against the best baseline on ctr AUC and sequential NDCG@3) and the ablation table
    (each CKF variant's headline metric per task, and its difference to CKF), on CKF's test users."""
    rows, n = report["rows"], report["protocol"]["ckf_test_users"]
    lines = [f"## Goal: CKF against the best baseline ({n} users)", "",
             "| task | metric | CKF | best baseline | CKF - best |", "|---|---|---|---|---|"]
    ckf = {r["task"]: r for r in rows if r["model"] == "CKF"}
    for task, metric in (("ctr", "auc"), ("sequential", "ndcg@3")):
        base = [r for r in rows if r["task"] == task and r["kind"] == "baseline" and metric in r["ckf_users"]]
        if task not in ckf or not base:
            continue
        best = max(base, key=lambda r: r["ckf_users"][metric])
        value, top = ckf[task]["ckf_users"].get(metric), best["ckf_users"][metric]
        gap = f"{value - top:+.4f}" if value is not None else "n/a"
        lines.append(f"| {task} | {metric} | {_fmt(value)} | {best['model']} {_fmt(top)} | {gap} |")
    fused = {r["task"]: r for r in rows if r["kind"] == "ckf_fusion"}
    own = {r["task"]: r for r in rows if r["kind"] == "ckf_backbone"}
    if fused:
        lines += ["", "Fused row (`score_fusion: backbone`, the blend fitted on validation) against CKF's own backbone "
                  "and the best baseline:", "",
                  "| task | metric | CKF + fusion | own backbone | best baseline | fusion - best |",
                  "|---|---|---|---|---|---|"]
        for task, metric in (("ctr", "auc"), ("sequential", "ndcg@3"), ("rating", "rmse")):
            if task not in fused:
                continue
            base = [r for r in rows if r["task"] == task and r["kind"] == "baseline" and metric in r["ckf_users"]]
            pick = min if metric == "rmse" else max
            best = pick(base, key=lambda r: r["ckf_users"][metric]) if base else None
            value = fused[task]["ckf_users"].get(metric)
            bb = own[task]["ckf_users"].get(metric) if task in own else None
            gap = f"{value - best['ckf_users'][metric]:+.4f}" if best and value is not None else "n/a"
            lines.append(f"| {task} | {metric} | {_fmt(value)} | {_fmt(bb) if bb is not None else '-'} | "
                         f"{(best['model'] + ' ' + _fmt(best['ckf_users'][metric])) if best else '-'} | {gap} |")
    variants = list(dict.fromkeys(r["model"] for r in rows if r["kind"] == "ckf"))  # in the order they were added
    if len(variants) < 2 or "CKF" not in variants:
        return lines + [""]
    tasks = [t for t in report["tasks"] if t in ckf]
    lines += ["", f"## Ablations ({n} users; in brackets: the variant minus CKF)", "",
              "| variant | " + " | ".join(f"{t} {HEADLINE[t]}" for t in tasks) + " |",
              "|---|" + "---|" * len(tasks)]
    for name in variants:
        cells = []
        for task in tasks:
            row = next((r for r in rows if r["model"] == name and r["task"] == task), None)
            value = row["ckf_users"].get(HEADLINE[task]) if row else None
            ref = ckf[task]["ckf_users"].get(HEADLINE[task])
            diff = f" ({value - ref:+.4f})" if name != "CKF" and value is not None and ref is not None else ""
            cells.append(_fmt(value) + diff)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + ["", "Lower is better for rmse; higher for the others.", ""]


def plot(reports, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("sequential", "ndcg@3", "sequential NDCG@3 (uni9)"), ("ctr", "auc", "ctr AUC"),
              ("rating", "rmse", "rating RMSE (1-5, lower is better)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8))
    for ax, (task, metric, title) in zip(axes, panels):
        models = []
        for rep in reports:
            for r in rep["rows"]:
                if r["task"] == task and r["model"] not in models:
                    models.append(r["model"])
        width = 0.8 / max(1, len(reports))
        x = np.arange(len(models))
        for k, rep in enumerate(reports):
            vals, alls = [], []
            for m in models:
                row = next((r for r in rep["rows"] if r["task"] == task and r["model"] == m), None)
                vals.append(row["ckf_users"].get(metric, np.nan) if row else np.nan)
                alls.append(row["all_users"].get(metric, np.nan) if row and row["all_users"] else np.nan)
            xs = x + (k - (len(reports) - 1) / 2) * width
            bars = ax.bar(xs, vals, width, label=f"{rep['dataset']} ({rep['protocol']['ckf_test_users']} users)")
            ax.plot(xs, alls, "k_", markersize=14, label="all test users" if k == len(reports) - 1 else None)
            for b, v in zip(bars, vals):
                if not np.isnan(v):
                    ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x)
        ax.set_xticklabels([_short(m) for m in models], rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        if task == "ctr":
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Same test users and candidate lists as CKF (bars: CKF's test users; dashes: all test users; "
                 "validation-only model selection)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(name):
    """A CKF variant's plot label: its name without the config in brackets ('CKF w/o CF (use_cf=False)')."""
    return re.sub(r" \(.*\)$", "", name)
