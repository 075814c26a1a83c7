"""Multi-LoRA on a tiny Llama: shared + task adapters, summed, and only the active ones learn."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from recbole_ckf.model.multi_lora import (
    DEFAULT_TARGET_MODULES,
    SHARED,
    activate,
    active_adapters,
    attach_multi_lora,
    lora_state_dict,
    load_lora_state_dict,
    named_lora_parameters,
    trainable_lora_parameters,
)

TASKS = ["ctr", "sequential", "rating"]
ADAPTERS = ["shared", "task_ctr", "task_sequential", "task_rating"]


def _tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    return LlamaForCausalLM(config)


def _model(multi_lora=True, seed=0):
    model = attach_multi_lora(
        _tiny_llama(seed), TASKS, r_shared=4, r_task=2, alpha=8, dropout=0.0, multi_lora=multi_lora
    )
    model.eval()  # no dropout anywhere: outputs are compared exactly
    return model


def _adapter_of(name):
    # ...q_proj.lora_A.task_ctr.weight -> task_ctr
    return name.split(".")[-2]


def _randomise_B(model, seed=1):
    # B starts at zero (LoRA's init), which would make every delta vanish; give every adapter a real delta.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in named_lora_parameters(model):
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


INPUT_IDS = torch.tensor([[1, 5, 9, 13, 17, 21], [2, 4, 8, 16, 32, 64]])


@pytest.fixture(scope="module")
def model():
    return _model()


def test_adapters_and_frozen_base(model):
    assert sorted(model.peft_config) == sorted(ADAPTERS)
    lora = dict(named_lora_parameters(model))
    assert {_adapter_of(n) for n in lora} == set(ADAPTERS)
    modules = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora}
    assert modules == set(DEFAULT_TARGET_MODULES)  # every attention and MLP projection is adapted
    for name, p in model.named_parameters():
        if name not in lora:
            assert not p.requires_grad, name
    assert len(trainable_lora_parameters(model)) == len(lora)  # all adapters go to the optimizer
    assert active_adapters(model) == [SHARED]


@pytest.mark.parametrize("task", TASKS)
def test_activate_sets_requires_grad(model, task):
    assert activate(model, task) == ["shared", f"task_{task}"]
    assert active_adapters(model) == ["shared", f"task_{task}"]
    grads = {_adapter_of(n) for n, p in model.named_parameters() if p.requires_grad}
    assert grads == {"shared", f"task_{task}"}
    for name, p in named_lora_parameters(model):
        assert p.requires_grad == (_adapter_of(name) in ("shared", f"task_{task}")), name


def test_activate_unknown_task(model):
    with pytest.raises(ValueError, match="unknown task"):
        activate(model, "nope")


def test_optimizer_step_moves_only_shared_and_task_adapter():
    model = _model()
    model.train()
    _randomise_B(model)  # so that A gets gradients too
    optimizer = torch.optim.AdamW(trainable_lora_parameters(model), lr=1e-2, weight_decay=0.1)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}

    def step(task):
        activate(model, task)
        before = lora_state_dict(model)
        optimizer.zero_grad()  # set_to_none: inactive adapters keep grad None and are skipped
        model(input_ids=INPUT_IDS, labels=INPUT_IDS).loss.backward()
        optimizer.step()
        after = lora_state_dict(model)
        return {_adapter_of(n) for n in before if not torch.equal(before[n], after[n])}

    assert step("ctr") == {"shared", "task_ctr"}
    # a second task after the first: ctr's Adam moments and weight decay must not move ctr's adapter now
    assert step("rating") == {"shared", "task_rating"}
    assert step("ctr") == {"shared", "task_ctr"}
    for n, p in model.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), n


def test_active_adapters_are_summed():
    model = _model()
    _randomise_B(model)
    base_model = model.base_model

    activate(model, "ctr")
    both = _logits(model, INPUT_IDS)
    base_model.set_adapter(["shared"])
    shared_only = _logits(model, INPUT_IDS)
    base_model.set_adapter(["task_ctr"])
    task_only = _logits(model, INPUT_IDS)
    with model.disable_adapter():
        base = _logits(model, INPUT_IDS)
    assert not torch.allclose(both, shared_only) and not torch.allclose(both, task_only)
    assert not torch.allclose(shared_only, base) and not torch.allclose(task_only, base)

    # Per layer the deltas add: W x + s_s B_s A_s x + s_t B_t A_t x. Check that on one adapted layer.
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 32)
    base_model.set_adapter(["shared", "task_ctr"])
    with torch.no_grad():
        y = layer(x)
        expected = layer.base_layer(x)
        for a in ("shared", "task_ctr"):
            expected = expected + layer.scaling[a] * layer.lora_B[a](layer.lora_A[a](x))
    assert torch.allclose(y, expected, atol=1e-6)
    assert layer.scaling["shared"] == 8 / 4 and layer.scaling["task_ctr"] == 8 / 2


def test_state_dict_round_trip():
    model = _model()
    _randomise_B(model, seed=3)
    sd = lora_state_dict(model)
    assert all(".lora_" in n for n in sd) and all(not v.requires_grad for v in sd.values())

    other = _model(seed=0)  # same base weights, fresh (B = 0) adapters
    activate(model, "sequential")
    activate(other, "sequential")
    assert not torch.allclose(_logits(model, INPUT_IDS), _logits(other, INPUT_IDS))
    load_lora_state_dict(other, sd)
    for task in TASKS:
        activate(model, task)
        activate(other, task)
        assert torch.equal(_logits(model, INPUT_IDS), _logits(other, INPUT_IDS))

    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(other, {k: v for k, v in sd.items() if "task_ctr" not in k})
    with pytest.raises(ValueError, match="does not match"):
        load_lora_state_dict(_model(multi_lora=False), sd)


def test_single_lora_ablation():
    model = _model(multi_lora=False)
    assert list(model.peft_config) == ["shared"]
    assert {_adapter_of(n) for n, _ in named_lora_parameters(model)} == {"shared"}
    for task in TASKS:
        assert activate(model, task) == ["shared"]
        assert {_adapter_of(n) for n, p in model.named_parameters() if p.requires_grad} == {"shared"}
