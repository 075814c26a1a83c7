"""Multi-LoRA: one task-shared LoRA adapter plus one adapter per task on the same frozen LLM (CKF, DESIGN.md 4).

A task's forward pass runs with the adapters ``["shared", "task_<task>"]`` both active. peft's LoRA layers
(``peft.tuners.lora.layer.Linear.forward``, peft 0.21) loop over every active adapter and add its delta::

    y = W x + sum_{a in active} scaling_a * B_a(A_a(dropout_a(x)))      scaling_a = alpha / r_a

so shared + task is a plain sum, as the paper asks. Only the active adapters may learn from the batch:
``LoraLayer.set_adapter`` sets ``requires_grad`` True on the active adapters and False on every other one,
and :func:`activate` re-applies that rule itself (so it holds whatever peft version or earlier call left
behind). The authors' code never activated the task adapters, so they never trained; here a batch of task t
gives gradients to "shared" and "task_t" only.

Kept apart like peft's tuners/lora: the configuration (:class:`MultiLoraConfig`), the adapter layers (peft's
own ``LoraLayer``, which are not re-implemented) and the model-level operations (attach, activate,
parameters, state dict).
"""

from dataclasses import asdict, dataclass, field

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

SHARED = "shared"

# Attention and MLP projections of Gemma-3 / Llama / Qwen / Mistral style decoders (matched by module-name
# suffix, so every layer's q_proj etc. is adapted). A config list: other architectures name their own.
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def task_adapter(task):
    """The adapter name of a task: ``"ctr"`` -> ``"task_ctr"``."""
    return f"task_{task}"


# --------------------------------------------------------------------------------------------- config


@dataclass
class MultiLoraConfig:
    """What :func:`attach_multi_lora` built; kept on the peft model as ``model.ckf_multi_lora``."""

    tasks: list
    r_shared: int = 8
    r_task: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    multi_lora: bool = True  # False is the ablation: one LoRA ("shared") for all tasks

    def __post_init__(self):
        self.tasks = list(self.tasks)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be a non-empty list of distinct names, got {self.tasks}")
        for task in self.tasks:
            # adapter names become nn.ModuleDict keys, which may not contain "."
            if not isinstance(task, str) or not task or "." in task:
                raise ValueError(f"invalid task name {task!r}")
        self.target_modules = list(self.target_modules)

    @property
    def adapter_names(self):
        if not self.multi_lora:
            return [SHARED]
        return [SHARED] + [task_adapter(t) for t in self.tasks]

    def active_for(self, task):
        """The adapters a batch of ``task`` runs (and trains) with."""
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; this model's tasks are {self.tasks}")
        return [SHARED, task_adapter(task)] if self.multi_lora else [SHARED]

    def lora_config(self, adapter):
        return LoraConfig(
            r=self.r_shared if adapter == SHARED else self.r_task,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",  # a bias would be shared by all adapters, so no per-task separation
            task_type="CAUSAL_LM",
        )


# ---------------------------------------------------------------------------------------------- model


def attach_multi_lora(
    model,
    tasks,
    r_shared=8,
    r_task=8,
    alpha=16.0,
    dropout=0.05,
    target_modules=None,
    multi_lora=True,
):
    """Wrap a causal LM in peft with adapter "shared" plus "task_<t>" for every task (only "shared" when
    ``multi_lora=False``). The base weights are frozen; "shared" is left active. Modifies ``model`` in place
    (peft injects its layers) and returns the peft model."""
    config = MultiLoraConfig(
        tasks=tasks,
        r_shared=r_shared,
        r_task=r_task,
        alpha=alpha,
        dropout=dropout,
        target_modules=DEFAULT_TARGET_MODULES if target_modules is None else target_modules,
        multi_lora=multi_lora,
    )
    peft_model = get_peft_model(model, config.lora_config(SHARED), adapter_name=SHARED)
    for adapter in config.adapter_names[1:]:
        peft_model.add_adapter(adapter, config.lora_config(adapter))
    peft_model.ckf_multi_lora = config
    _set_active(peft_model, [SHARED])
    return peft_model


def get_multi_lora_config(model):
    config = getattr(model, "ckf_multi_lora", None)
    if config is None:
        raise ValueError("this model was not built by attach_multi_lora")
    return config


def _lora_layers(model):
    return (m for m in model.modules() if isinstance(m, LoraLayer))


def _set_active(model, adapters):
    # Several names at once go to the LoraModel (base_model): PeftModel.set_adapter takes a single name.
    # PeftModel.active_adapter stays "shared", which is only used to pick a config, and all are LoRA.
    model.base_model.set_adapter(adapters)
    for layer in _lora_layers(model):
        for layer_name in layer.adapter_layer_names:  # lora_A, lora_B, lora_embedding_A, ...
            for adapter, module in getattr(layer, layer_name).items():
                module.requires_grad_(adapter in adapters)


def activate(model, task):
    """Make forward passes use "shared" + "task_<task>" (summed), and let only those two require grad.

    Returns the list of active adapters. With ``multi_lora=False`` only "shared" is active."""
    adapters = get_multi_lora_config(model).active_for(task)
    _set_active(model, adapters)
    return adapters


def active_adapters(model):
    return list(model.base_model.active_adapters)


def named_lora_parameters(model):
    """(name, parameter) of every adapter's LoRA weights (all adapters, active or not), names as in
    ``model.state_dict()``."""
    ids = {
        id(p)
        for layer in _lora_layers(model)
        for layer_name in layer.adapter_layer_names
        for p in getattr(layer, layer_name).parameters()
    }
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


def trainable_lora_parameters(model):
    """The parameters to give the optimizer: the LoRA weights of ALL adapters, not only the active ones.

    The optimizer is built once but the active task changes per batch; :func:`activate` decides which
    adapters get gradients. Adapters outside the batch's task have ``grad is None`` after
    ``zero_grad()`` (``set_to_none=True``, torch's default), and torch's optimizers skip such parameters,
    so neither their weights nor their Adam moments move. (``zero_grad(set_to_none=False)`` would let
    momentum and weight decay move them: do not use it.)
    """
    return [p for _, p in named_lora_parameters(model)]


def lora_state_dict(model):
    """Only the adapter weights (every adapter), detached CPU copies: a small checkpoint."""
    return {n: p.detach().to("cpu", copy=True) for n, p in named_lora_parameters(model)}


def load_lora_state_dict(model, state_dict):
    """Load :func:`lora_state_dict` output; its keys must be exactly this model's adapter weights."""
    params = dict(named_lora_parameters(model))
    missing = sorted(set(params) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"LoRA state dict does not match the model (different tasks, ranks or target modules?): "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''} ({len(unexpected)})"
        )
    with torch.no_grad():
        for name, value in state_dict.items():
            if params[name].shape != value.shape:
                raise ValueError(
                    f"{name}: shape {tuple(value.shape)} in the state dict, "
                    f"{tuple(params[name].shape)} in the model (different rank?)"
                )
            params[name].copy_(value)


def multi_lora_config_dict(model):
    """The attach_multi_lora arguments as a plain dict, to store next to :func:`lora_state_dict`."""
    return asdict(get_multi_lora_config(model))
