"""Meta-network bridge: from frozen CF embeddings to LLM input tokens (CKF, DESIGN.md "The method" 2-3).

For user u with history H_u (earlier items only)::

    p_u       = Pool({e_v : v in H_u})              # masked mean, or masked attention
    W_u       = I + reshape(MetaNet(p_u), d x d)    # personalised mapping, exactly I at init
    e_u_tilde = e_u W_u
    h_u       = [a_user +] Proj_user(e_u_tilde) [+ S_user(s_u)]  # user token, LLM hidden size
    h_v       = [a_item +] Proj_item(e_v) [+ S_item(s_v)]        # item token, LLM hidden size

a_user / a_item (``anchors``, ``bridge_anchor``): the LLM's own input embeddings of the words "user" and
"item". With anchors the projections' output gain starts at zero, so a slotted prompt starts as the text prompt
with one ordinary word per slot, and the CF signal enters as a learnt departure from it: tokens unlike any the
LLM has seen otherwise disturb its reading of the rest of the prompt (an addition to the paper).

s_u / s_v (``n_stats`` > 0, ``bridge_stats``): the user's earlier rating count and mean, the item's training
rating count and mean without this user (:func:`~recbole_ckf.data.item_text.stat_features`), through
zero-initialised linear maps: the rating statistics a CF embedding trained on implicit feedback does not hold,
as input the LLM need not parse.

The bridge does not own the CF tables: the caller looks up e_u, the history rows e_H and e_v in the frozen
backbone and passes them in, so the bridge's state dict holds only what it learns.

:func:`inject_slots` then writes h_u / h_v into the placeholder rows of ``inputs_embeds`` for every sample
of a batch at once.
"""

import math

import torch
from torch import nn

POOLINGS = ("mean", "attention")


class HistoryPooling(nn.Module):
    """p_u = Pool({e_v : v in H_u}) over a padded history [B, L, d] with a mask [B, L].

    Users with an empty history get p_u = 0 (no NaN, no special case for the caller).
    """

    def __init__(self, d, pooling="mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        if pooling == "attention":
            # score_j = q . K(e_j) / sqrt(d). q starts at zero, so the scores start equal and attention
            # pooling starts as exactly the masked mean; it departs from it only as far as training asks.
            self.key = nn.Linear(d, d)
            self.query = nn.Parameter(torch.zeros(d))

    def forward(self, e_H, mask):
        mask = mask.to(dtype=torch.bool)
        if self.pooling == "mean":
            weights = mask.to(e_H.dtype)
            weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)  # empty history -> all 0
        else:
            scores = self.key(e_H) @ self.query / math.sqrt(e_H.shape[-1])  # [B, L]
            # A finite fill (not -inf) keeps an all-padding row free of NaN in forward and backward;
            # multiplying by the mask afterwards zeroes padding, so an empty history pools to 0.
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=1) * mask.to(scores.dtype)
        return torch.einsum("bl,bld->bd", weights, e_H)


def _two_layer_mlp(d_in, d_hidden, d_out, dropout):
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


class TokenProjection(nn.Module):
    """Proj: Linear-GELU-Linear into the LLM hidden size, optionally normalised to the LLM's token scale.

    An LLM has only ever seen input rows of its own embedding scale (for Gemma-3 that already includes its
    sqrt(hidden) embedding multiplier). CF embeddings come from any RecBole model at any scale, so with
    ``token_norm`` set the output goes through a LayerNorm whose gain starts at token_norm / sqrt(H): a
    LayerNorm output has RMS ~1, i.e. L2 norm ~sqrt(H), so each token starts with L2 norm ~token_norm,
    like the rows it replaces, and the gain stays learnable. ``token_norm=None`` leaves the MLP output raw.
    """

    def __init__(self, d, hidden_size, proj_hidden=None, dropout=0.0, token_norm=1.0, zero_gain=False):
        super().__init__()
        self.mlp = _two_layer_mlp(d, proj_hidden or hidden_size, hidden_size, dropout)
        self.norm = None
        if token_norm is not None:
            self.norm = nn.LayerNorm(hidden_size)
            # zero_gain: the output starts at exactly 0 (added to an anchor token); the gain, like a LoRA's B,
            # gets a gradient at once and the MLP from the step after
            nn.init.constant_(self.norm.weight, 0.0 if zero_gain else token_norm / math.sqrt(hidden_size))

    def forward(self, x):
        x = self.mlp(x)
        return x if self.norm is None else self.norm(x)


class MetaNetworkBridge(nn.Module):
    """The CKF bridge: personalised mapping W_u of the user embedding, then projection into the LLM.

    Args:
        d: CF embedding dimension.
        hidden_size: LLM hidden size H.
        meta_hidden: hidden width of the MetaNet (default ``2 * d``).
        pooling: ``"mean"`` or ``"attention"`` over the history embeddings.
        meta_network: ``False`` is the ablation: one mapping W shared by all users (no MetaNet, no pooling).
        dropout: dropout inside the MetaNet and the projections.
        proj_hidden: hidden width of Proj_user / Proj_item (default ``hidden_size``).
        token_norm: typical L2 norm of the LLM's input-embedding rows (the caller measures it on the
            embedding table, including any embedding multiplier); ``None`` disables output normalisation.
        tied_init: Proj_item starts with Proj_user's weights (``False``: independent random initialisations).
        n_stats: width of the rating-statistics features s_u / s_v added to the tokens (0: none).
        anchors: ``(a_user, a_item)``, two [H] input embeddings the tokens start from (the projections' gain
            then starts at zero); ``None``: the tokens are the projections' output alone (the paper).
    """

    def __init__(
        self,
        d,
        hidden_size,
        meta_hidden=None,
        pooling="mean",
        meta_network=True,
        dropout=0.0,
        proj_hidden=None,
        token_norm=1.0,
        tied_init=True,
        n_stats=0,
        anchors=None,
    ):
        super().__init__()
        self.d = d
        self.hidden_size = hidden_size
        self.meta_network = meta_network
        self.register_buffer("identity", torch.eye(d), persistent=False)
        if meta_network:
            self.pool = HistoryPooling(d, pooling)
            # MetaNet predicts the departure of W_u from I (a residual), and its last layer starts at zero:
            # W_u == I for every user at init (e_u_tilde == e_u, the shared starting point), and weight
            # decay pulls W_u towards I rather than towards the zero map. The LayerNorm on p_u keeps the
            # pre-activations O(1) whatever the CF model's scale; p_u = 0 (empty history) stays well defined.
            self.meta_net = nn.Sequential(
                nn.LayerNorm(d),
                nn.Linear(d, meta_hidden or 2 * d),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(meta_hidden or 2 * d, d * d),
            )
            nn.init.zeros_(self.meta_net[-1].weight)
            nn.init.zeros_(self.meta_net[-1].bias)
        else:
            # Ablation: one W = I + delta_W for all users. Pooling/MetaNet are not built at all, so no
            # parameter goes unused (DDP would reject unused parameters).
            self.delta_W = nn.Parameter(torch.zeros(d, d))
        zero_gain = anchors is not None and token_norm is not None
        self.proj_user = TokenProjection(d, hidden_size, proj_hidden, dropout, token_norm, zero_gain)
        self.proj_item = TokenProjection(d, hidden_size, proj_hidden, dropout, token_norm, zero_gain)
        # not saved: the caller rebuilds them from the LLM whenever it builds the bridge
        self.register_buffer("anchor_user", torch.zeros(hidden_size) if anchors is None else anchors[0].float(),
                             persistent=False)
        self.register_buffer("anchor_item", torch.zeros(hidden_size) if anchors is None else anchors[1].float(),
                             persistent=False)
        if tied_init:
            # Proj_item starts as a copy of Proj_user (they learn apart): a user token and the tokens of the items
            # its CF embedding scores high then start out alike in the LLM's input space, a likeness attention
            # can read from the first step (W_u starts at I, so e~_u = e_u)
            self.proj_item.load_state_dict(self.proj_user.state_dict())
        self.n_stats = n_stats
        if n_stats:
            # zero maps: the tokens start exactly as without statistics and take them up only as training asks
            self.stats_user, self.stats_item = nn.Linear(n_stats, hidden_size), nn.Linear(n_stats, hidden_size)
            for layer in (self.stats_user, self.stats_item):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def user_mapping(self, e_H, mask):
        """W_u [B, d, d] from the history embeddings e_H [B, L, d] and their mask [B, L]."""
        if not self.meta_network:
            return (self.identity + self.delta_W).expand(e_H.shape[0], self.d, self.d)
        p_u = self.pool(e_H, mask)
        return self.identity + self.meta_net(p_u).view(-1, self.d, self.d)

    def personalise(self, e_u, e_H, mask):
        """e_u_tilde = e_u W_u, [B, d]."""
        W_u = self.user_mapping(e_H, mask)
        return torch.bmm(e_u.unsqueeze(1), W_u).squeeze(1)

    def user_tokens(self, e_u, e_H, mask, s_u=None):
        """h_u = (a_user +) Proj_user(e_u W_u) (+ S_user(s_u) with statistics), [B, H]."""
        h_u = self.anchor_user + self.proj_user(self.personalise(e_u, e_H, mask))
        return h_u + self.stats_user(s_u.to(h_u.dtype)) if self.n_stats else h_u

    def item_tokens(self, e_v, s_v=None):
        """h_v = (a_item +) Proj_item(e_v) (+ S_item(s_v) with statistics), [..., H] for e_v [..., d]."""
        h_v = self.anchor_item + self.proj_item(e_v)
        return h_v + self.stats_item(s_v.to(h_v.dtype)) if self.n_stats else h_v


def inject_slots(inputs_embeds, input_ids, user_token_id, item_token_id, h_u, h_v):
    """Return ``inputs_embeds`` [B, T, H] with its placeholder rows replaced by the bridge's tokens (out of place).

    Every position where ``input_ids == user_token_id`` in sample b gets ``h_u[b]`` (h_u: [B, H]); the
    positions where ``input_ids == item_token_id`` get the rows of ``h_v`` ([n_item_slots, H]) in row-major
    order of the slots, i.e. the order of ``(input_ids == item_token_id).nonzero()``. All samples are written
    in one out-of-place ``index_put``, so autograd reaches h_u and h_v (and the untouched rows of
    inputs_embeds). ``h_u`` / ``h_v`` may be ``None`` when the batch has no slot of that kind.
    """
    if user_token_id == item_token_id:
        raise ValueError("user_token_id and item_token_id must be different tokens")
    if inputs_embeds.shape[:2] != input_ids.shape:
        raise ValueError(
            f"inputs_embeds {tuple(inputs_embeds.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )
    B, _, H = inputs_embeds.shape
    user_b, user_t = (input_ids == user_token_id).nonzero(as_tuple=True)
    item_b, item_t = (input_ids == item_token_id).nonzero(as_tuple=True)

    rows, b_idx, t_idx = [], [], []
    if user_b.numel():
        if h_u is None or tuple(h_u.shape) != (B, H):
            got = None if h_u is None else tuple(h_u.shape)
            raise ValueError(f"h_u must be [batch, hidden] = {(B, H)} for {user_b.numel()} user slots, got {got}")
        rows.append(h_u[user_b])  # one user token per sample, repeated at each of its user slots
        b_idx.append(user_b)
        t_idx.append(user_t)
    n_item = item_b.numel()
    got_item = 0 if h_v is None else h_v.shape[0]
    if got_item != n_item or (h_v is not None and h_v.shape[-1] != H):
        got = None if h_v is None else tuple(h_v.shape)
        raise ValueError(f"h_v must be [n_item_slots, hidden] = {(n_item, H)}, got {got}")
    if n_item:
        rows.append(h_v)
        b_idx.append(item_b)
        t_idx.append(item_t)
    if not rows:
        return inputs_embeds
    values = torch.cat(rows).to(inputs_embeds.dtype)  # e.g. a float32 bridge feeding a bf16 LLM
    return inputs_embeds.index_put((torch.cat(b_idx), torch.cat(t_idx)), values)
