"""The meta-network bridge (p_u, W_u, e_u_tilde, h_u, h_v) and the vectorised slot injection."""

import pytest
import torch

from recbole_ckf.model.meta_network import HistoryPooling, MetaNetworkBridge, inject_slots

D, H = 8, 16


def _history(B=4, L=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    e_u = torch.randn(B, D, generator=g)
    e_H = torch.randn(B, L, D, generator=g)
    lengths = torch.tensor([5, 3, 1, 0][:B])  # the last user has an empty history
    mask = torch.arange(L)[None, :] < lengths[:, None]
    return e_u, e_H, mask


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_W_u_starts_at_identity(pooling):
    torch.manual_seed(0)
    bridge = MetaNetworkBridge(D, H, pooling=pooling)
    e_u, e_H, mask = _history()
    W_u = bridge.user_mapping(e_H, mask)
    assert W_u.shape == (4, D, D)
    assert torch.allclose(W_u, torch.eye(D).expand(4, D, D), atol=1e-6)
    assert torch.allclose(bridge.personalise(e_u, e_H, mask), e_u, atol=1e-6)  # e_u_tilde == e_u at init


def test_meta_network_learns_personal_mappings():
    # The zero-initialised last layer must still receive gradient, and after one step W_u differs by user.
    torch.manual_seed(0)
    bridge = MetaNetworkBridge(D, H)
    e_u, e_H, mask = _history()
    bridge.user_tokens(e_u, e_H, mask).pow(2).sum().backward()
    assert bridge.meta_net[-1].weight.grad.abs().sum() > 0
    with torch.no_grad():  # a plain SGD step (torch.optim's first use costs seconds of imports)
        for p in bridge.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    W_u = bridge.user_mapping(e_H, mask)
    assert not torch.allclose(W_u[0], W_u[1])


def test_masked_mean_ignores_padding_and_empty_history_is_zero():
    pool = HistoryPooling(D, "mean")
    e_u, e_H, mask = _history()
    p_u = pool(e_H, mask)
    assert torch.allclose(p_u[0], e_H[0].mean(0), atol=1e-6)
    assert torch.allclose(p_u[1], e_H[1, :3].mean(0), atol=1e-6)
    assert torch.allclose(p_u[2], e_H[2, 0], atol=1e-6)
    assert torch.equal(p_u[3], torch.zeros(D))
    e_H2 = e_H.clone()
    e_H2[~mask] = 1e6  # garbage in the padding changes nothing
    assert torch.allclose(pool(e_H2, mask), p_u, atol=1e-6)


def test_attention_pooling_masks_padding_and_handles_empty_history():
    torch.manual_seed(0)
    pool = HistoryPooling(D, "attention")
    with torch.no_grad():
        pool.query.normal_()  # non-uniform scores, not the mean it starts as
    e_u, e_H, mask = _history()
    e_H.requires_grad_(True)
    p_u = pool(e_H, mask)
    assert torch.equal(p_u[3], torch.zeros(D))
    assert torch.allclose(p_u[2], e_H[2, 0], atol=1e-6)  # one item: all weight on it
    assert not torch.allclose(p_u[0], e_H[0].mean(0), atol=1e-4)
    e_H2 = e_H.detach().clone()
    e_H2[~mask] = 1e6
    assert torch.allclose(pool(e_H2, mask), p_u, atol=1e-5)
    p_u.sum().backward()
    assert torch.isfinite(e_H.grad).all()
    assert torch.equal(e_H.grad[~mask], torch.zeros_like(e_H.grad[~mask]))


def test_attention_pooling_starts_as_mean():
    e_u, e_H, mask = _history()
    assert torch.allclose(HistoryPooling(D, "attention")(e_H, mask), HistoryPooling(D, "mean")(e_H, mask), atol=1e-6)


def test_empty_history_gives_well_defined_tokens():
    torch.manual_seed(0)
    for pooling in ("mean", "attention"):
        bridge = MetaNetworkBridge(D, H, pooling=pooling)
        e_u = torch.randn(2, D)
        h_u = bridge.user_tokens(e_u, torch.zeros(2, 0, D), torch.zeros(2, 0, dtype=torch.bool))
        assert h_u.shape == (2, H) and torch.isfinite(h_u).all()


def test_shared_mapping_ablation():
    torch.manual_seed(0)
    bridge = MetaNetworkBridge(D, H, meta_network=False)
    assert not hasattr(bridge, "meta_net") and not hasattr(bridge, "pool")
    e_u, e_H, mask = _history()
    with torch.no_grad():
        bridge.delta_W.normal_()
    W_u = bridge.user_mapping(e_H, mask)
    assert all(torch.equal(W_u[0], W_u[i]) for i in range(4))
    assert bridge.user_tokens(e_u, e_H, mask).shape == (4, H)
    assert torch.allclose(MetaNetworkBridge(D, H, meta_network=False).user_mapping(e_H, mask)[0], torch.eye(D))


def test_token_shapes_and_scale():
    torch.manual_seed(0)
    bridge = MetaNetworkBridge(D, H, token_norm=2.0)
    e_u, e_H, mask = _history()
    h_u = bridge.user_tokens(e_u, e_H, mask)
    h_v = bridge.item_tokens(torch.randn(3, 7, D) * 50)  # any leading dims, any CF scale
    assert h_u.shape == (4, H) and h_v.shape == (3, 7, H)
    assert torch.allclose(h_v.norm(dim=-1), torch.full((3, 7), 2.0), rtol=1e-3)
    assert torch.allclose(h_u.norm(dim=-1), torch.full((4,), 2.0), rtol=1e-3)
    raw = MetaNetworkBridge(D, H, token_norm=None)
    assert raw.proj_item.norm is None


def test_statistics_start_silent_then_separate_tokens():
    # bridge_stats: the zero maps leave every token as it was at init; one step later two items that differ
    # only in their statistics get different tokens (the gradient reaches S_item through s_v)
    torch.manual_seed(0)
    plain, bridge = MetaNetworkBridge(D, H), MetaNetworkBridge(D, H, n_stats=3)
    bridge.load_state_dict({**plain.state_dict(), **{k: v for k, v in bridge.state_dict().items() if "stats" in k}})
    e_u, e_H, mask = _history()
    s_u, e_v = torch.randn(4, 3), torch.randn(D).expand(2, D)
    s_v = torch.tensor([[0.5, 0.8, 0.0], [0.5, -0.6, 0.0]])
    assert torch.equal(bridge.user_tokens(e_u, e_H, mask, s_u), plain.user_tokens(e_u, e_H, mask))
    assert torch.equal(bridge.item_tokens(e_v, s_v), plain.item_tokens(e_v))
    (bridge.item_tokens(e_v, s_v)[0].sum() + bridge.user_tokens(e_u, e_H, mask, s_u).sum()).backward()
    assert bridge.stats_item.weight.grad.abs().sum() > 0 and bridge.stats_user.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in bridge.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    h_v = bridge.item_tokens(e_v, s_v)
    assert not torch.allclose(h_v[0], h_v[1])


def test_anchored_tokens_start_at_the_anchors_then_learn_cf():
    # bridge_anchor: every user token starts as a_user and every item token as a_item (a slotted prompt starts
    # as the text prompt with one ordinary word per slot); after one step the tokens depart from them, and
    # two items with different CF embeddings get different tokens
    torch.manual_seed(0)
    a_user, a_item = torch.randn(H), torch.randn(H)
    bridge = MetaNetworkBridge(D, H, token_norm=2.0, anchors=(a_user, a_item))
    e_u, e_H, mask = _history()
    e_v = torch.randn(2, D)
    assert torch.equal(bridge.user_tokens(e_u, e_H, mask), a_user.expand(4, H))
    assert torch.equal(bridge.item_tokens(e_v), a_item.expand(2, H))
    opt = torch.optim.SGD(bridge.parameters(), lr=0.1)
    for _ in range(2):  # the gain moves first, then the MLP behind it
        opt.zero_grad()
        loss = (bridge.item_tokens(e_v) @ torch.randn(H)).sum()
        loss = loss + (bridge.user_tokens(e_u, e_H, mask) @ torch.randn(H)).sum()
        loss.backward()
        opt.step()
    h_v = bridge.item_tokens(e_v)
    assert not torch.allclose(h_v[0], h_v[1]) and not torch.allclose(h_v[0], a_item)
    assert "anchor_item" not in bridge.state_dict()  # rebuilt from the LLM, never saved


USER, ITEM = 98, 99


def _batch():
    input_ids = torch.tensor(
        [
            [1, USER, 2, ITEM, 3, ITEM, 0, 0],  # 1 user slot, 2 item slots
            [USER, 4, 5, 6, ITEM, 7, 8, 9],  # 1 user slot, 1 item slot
            [2, 3, ITEM, ITEM, ITEM, USER, 4, USER],  # 2 user slots, 3 item slots
        ]
    )
    inputs_embeds = torch.randn(3, 8, H)
    h_u = torch.randn(3, H, requires_grad=True)
    h_v = torch.randn(6, H, requires_grad=True)
    return input_ids, inputs_embeds, h_u, h_v


def test_inject_slots_every_sample():
    torch.manual_seed(0)
    input_ids, inputs_embeds, h_u, h_v = _batch()
    before = inputs_embeds.clone()
    out = inject_slots(inputs_embeds, input_ids, USER, ITEM, h_u, h_v)
    assert torch.equal(inputs_embeds, before)  # not modified in place
    expected = before.clone()
    item_rows = iter(h_v.detach())
    for b in range(3):
        for t in range(8):
            if input_ids[b, t] == USER:
                expected[b, t] = h_u[b].detach()
            elif input_ids[b, t] == ITEM:
                expected[b, t] = next(item_rows)
    assert torch.equal(out.detach(), expected)  # slots exact, every other row unchanged

    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    user_b, user_t = (input_ids == USER).nonzero(as_tuple=True)
    item_b, item_t = (input_ids == ITEM).nonzero(as_tuple=True)
    assert torch.allclose(h_v.grad, weights[item_b, item_t])
    expected_u = torch.zeros(3, H).index_add_(0, user_b, weights[user_b, user_t])
    assert torch.allclose(h_u.grad, expected_u)  # sample 2 sums over its two user slots


def test_inject_slots_grad_to_untouched_rows_and_dtype():
    input_ids, inputs_embeds, h_u, h_v = _batch()
    inputs_embeds = inputs_embeds.to(torch.bfloat16).requires_grad_(True)
    out = inject_slots(inputs_embeds, input_ids, USER, ITEM, h_u, h_v)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    slot = (input_ids == USER) | (input_ids == ITEM)
    assert (inputs_embeds.grad[slot] == 0).all() and (inputs_embeds.grad[~slot] == 1).all()
    assert h_u.grad is not None and h_v.grad is not None


def test_inject_slots_count_mismatch():
    input_ids, inputs_embeds, h_u, h_v = _batch()
    with pytest.raises(ValueError, match="h_v"):
        inject_slots(inputs_embeds, input_ids, USER, ITEM, h_u, h_v[:5])
    with pytest.raises(ValueError, match="h_u"):
        inject_slots(inputs_embeds, input_ids, USER, ITEM, h_u[:2], h_v)
    with pytest.raises(ValueError, match="h_u"):
        inject_slots(inputs_embeds, input_ids, USER, ITEM, None, h_v)
    with pytest.raises(ValueError, match="different"):
        inject_slots(inputs_embeds, input_ids, ITEM, ITEM, h_u, h_v)


def test_inject_slots_without_slots_is_identity():
    input_ids = torch.arange(8).view(1, 8)
    inputs_embeds = torch.randn(1, 8, H)
    assert torch.equal(inject_slots(inputs_embeds, input_ids, USER, ITEM, None, None), inputs_embeds)
