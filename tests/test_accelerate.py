"""CKF under ``accelerate launch`` with two CPU processes (DDP over gloo), the way a multi-GPU run works.

How to get two CPU processes: with accelerate 1.x, ``accelerate launch --cpu --num_processes 2`` starts ONE
process (its simple launcher; several CPU processes need an MPI hostfile). ``--multi_gpu --num_processes 2``
starts two through torchrun on any machine; without a GPU (and with ``--use_gpu=False``) the trainer asks
Accelerate for a CPU process group, so they train as one DDP job.

The run goes through the real ``run_recbole_ckf.py`` (via ``runpy``) with one addition: after ``fit``, every
process writes what it trained (LoRA of every adapter, the bridge, the CF tables, its run folder), so that the
test can check that both processes hold the very same model.
"""

import glob
import os
import socket
import subprocess
import sys
import textwrap

import torch

from conftest import REPO

DRIVER = textwrap.dedent("""
    import os, runpy, sys
    import torch
    sys.path.insert(0, {repo!r})
    from recbole_ckf.model.multi_lora import lora_state_dict
    from recbole_ckf.model.ckf import CKF
    from recbole_ckf.trainer import trainer

    fit, forward, steps, lrs = trainer.CKFTrainer.fit, CKF.forward, [], []
    adamw_step = torch.optim.AdamW.step

    def recorded_step(self, *args, **kwargs):  # the learning rates every optimizer step uses
        lrs.append([group["lr"] for group in self.param_groups])
        return adamw_step(self, *args, **kwargs)

    def recorded_forward(self, batch, slotted=True):
        steps.append((batch["task"], slotted, batch["users"].tolist(), len(lrs)))  # len(lrs): the optimizer step
        return forward(self, batch, slotted)

    def fit_and_dump(self, *args, **kwargs):
        out = fit(self, *args, **kwargs)
        model, acc = self.model, self.accelerator
        torch.save({{"lora": lora_state_dict(model.llm), "bridge": model.bridge.state_dict(),
                    "user": model.user_table.cpu(), "item": model.item_table.cpu(), "run_dir": self.run_dir,
                    "processes": acc.num_processes, "type": str(acc.distributed_type), "steps": steps,
                    "lrs": lrs}},
                   f"rank{{acc.process_index}}.pt")
        return out

    trainer.CKFTrainer.fit = fit_and_dump
    CKF.forward = recorded_forward
    torch.optim.AdamW.step = recorded_step
    sys.argv = [os.path.join({repo!r}, "run_recbole_ckf.py")] + sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(tmp_path, batch_size):
    return ["--model=CKF", "--dataset=amazon-instruments", "--llm=tiny", f"--llm_cache_dir={tmp_path / 'cache'}",
            "--use_gpu=False", "--epochs=2", "--eval_step=2", "--train_samples_per_task=8",
            f"--train_batch_size={batch_size}", "--valid_users=8", "--eval_users=8", "--explanation_max_tokens=3",
            "--show_progress=False", "--state=INFO",
            "--backbone_config={'embedding_size': 16, 'epochs': 1, 'train_batch_size': 8192, 'n_layers': 1}"]


def _env(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               HF_HOME=str(tmp_path / "hf"))  # no accelerate config file of the machine applies
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    return env


def test_two_process_cpu_run(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(repo=REPO))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(driver), *_args(tmp_path, 2)]
    run = subprocess.run(command, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=420)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]

    # one log: the second process reports errors only, so every line comes once
    assert output.count("test result") == 1, output[-4000:]
    assert output.count("best valid") == 1
    assert "ctr:auc" in output and "sequential:ndcg@3" in output and "explanation:rouge-l" in output

    # both processes trained one model together
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for r in ranks:
        assert r["processes"] == 2 and r["type"] == "DistributedType.MULTI_CPU"
    first, second = ranks
    assert first["run_dir"] == second["run_dir"]  # one run folder, named by the main process
    # the same task and prompt form at every step, each process with its own share of the batch (a share longer
    # than max_tokens_per_pass runs as several forward passes of that step)
    def by_step(rank):
        out = {}
        for task, slotted, users, step in rank["steps"]:
            out.setdefault(step, [task, slotted, []])[2].extend(users)
        return [out[k] for k in sorted(out)]

    first_steps, second_steps = by_step(first), by_step(second)
    assert len(first_steps) == len(second_steps) == 2 * 4 * 2  # 2 epochs, 8 samples per task, 2 per process and step
    assert [s[:2] for s in first_steps] == [s[:2] for s in second_steps]
    assert {s[0] for s in first_steps} == {"ctr", "sequential", "rating", "explanation"}
    assert all(len(a[2]) == len(b[2]) == 2 for a, b in zip(first_steps, second_steps))
    assert any(a[2] != b[2] for a, b in zip(first_steps, second_steps))
    assert len(first["steps"]) > len(first_steps)  # some sequential shares ran in two passes (no_sync, then sync)
    assert torch.equal(first["user"], second["user"]) and torch.equal(first["item"], second["item"])
    # 5 adapters x (A, B) x 4 attention projections (lora_target_modules) x 2 layers of the tiny LM
    assert first["lora"].keys() == second["lora"].keys() and len(first["lora"]) == 80
    for name in first["lora"]:  # every adapter, shared and per task: the gradients were all-reduced
        assert torch.equal(first["lora"][name], second["lora"][name]), name
    for name in first["bridge"]:
        assert torch.equal(first["bridge"][name], second["bridge"][name]), name
    assert any(v.abs().sum() > 0 for n, v in first["lora"].items() if "lora_B" in n)  # it did train

    # the main process alone trained the backbone and wrote the checkpoints
    assert len(glob.glob(str(tmp_path / "saved" / "LightGCN-*.pth"))) == 1
    runs = glob.glob(str(tmp_path / "saved" / "CKF-*"))
    assert len(runs) == 1 and sorted(os.listdir(runs[0])) == ["best", "last"]
    saved = torch.load(os.path.join(runs[0], "last", "adapters.pt"), weights_only=False)
    assert all(torch.equal(saved[n], first["lora"][n]) for n in saved)

    # the learning rates: the very sequence of one process training the same global batches (2 x 2 = 4), although
    # Accelerate's scheduler wrapper steps the schedule once per process at every optimizer step
    single = tmp_path / "single"
    single.mkdir()
    run = subprocess.run([sys.executable, str(driver), *_args(tmp_path, 4)], cwd=single, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    one = torch.load(single / "rank0.pt", weights_only=False)
    assert one["processes"] == 1 and len(one["lrs"]) == len(first["lrs"]) == 16
    assert first["lrs"] == second["lrs"]
    for a, b in zip(one["lrs"], first["lrs"]):
        assert a == [float(x) for x in b] or all(abs(x - y) < 1e-12 for x, y in zip(a, b)), (one["lrs"], first["lrs"])
    assert first["lrs"][-1][0] < first["lrs"][len(first["lrs"]) // 2][0]  # the cosine decays to the end
