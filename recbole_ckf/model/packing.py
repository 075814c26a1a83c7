"""Attention masks of packed candidate rows (:meth:`~recbole_ckf.model.ckf.CKF.packed_logprobs`).

A packed row is ``[prompt, candidate 1, ..., candidate K]``: prompt tokens are causal among themselves,
candidate k's tokens see the whole prompt and their own earlier tokens, never another candidate. Sliding-window
layers (Gemma-3: 5 of 6) get their own mask, where the window is measured in position ids
(``pos_q - pos_kv < sliding_window``), not in packed indices; the mask of every layer type is passed to the
decoder (a dict keyed by ``config.layer_types``), so transformers' own index-based window is never applied.
"""

import torch

from recbole_ckf.errors import CKFError

PACKED_ATTENTION = ("sdpa", "eager")


def check_packed_attention(attn_impl):
    """Packed rows need custom 4-D masks: only the sdpa and eager attention implementations take them."""
    if attn_impl not in PACKED_ATTENTION:
        raise CKFError(
            f"llm: packed candidate scoring needs attn_implementation 'sdpa' or 'eager' (custom block masks), "
            f"this model uses {attn_impl!r}; load the model with sdpa or eager attention")


def block_masks(seg, pos, config, attn_impl, dtype):
    """The attention mask(s) of packed ``[prompt, candidate 1, ..., candidate K]`` rows.

    ``seg``: 0 prompt, k >= 1 candidate block k, -1 padding; ``pos``: the position ids. Returns what the decoder
    takes as ``attention_mask``: a dict keyed by layer type for decoders with ``config.layer_types`` (Gemma-3),
    else one 4-D mask. Boolean (True = attend) for sdpa, additive for eager.
    """
    B, T = seg.shape
    idx = torch.arange(T, device=seg.device)
    valid = seg >= 0
    causal = (idx[:, None] >= idx[None, :]).unsqueeze(0)
    visible = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
    allowed = causal & visible & valid[:, None, :] & valid[:, :, None]
    allowed |= (~valid[:, :, None]) & torch.eye(T, dtype=torch.bool, device=seg.device)  # padding sees itself
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is not None:
        in_window = (pos[:, :, None] - pos[:, None, :]) < window
        sliding = allowed & (in_window | ~valid[:, :, None])
    else:
        sliding = allowed

    def fmt(mask):
        mask = mask.unsqueeze(1)
        if attn_impl == "sdpa":
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)

    if layer_types:
        masks = {"full_attention": fmt(allowed)}
        if "sliding_attention" in layer_types:
            masks["sliding_attention"] = fmt(sliding)
        unknown = set(layer_types) - set(masks)
        if unknown:
            raise CKFError(f"llm: packed candidate scoring does not support the attention layer types "
                           f"{sorted(unknown)} of this model")
        return masks
    uses_window = window is not None and getattr(config, "use_sliding_window", True)
    return fmt(sliding if uses_window else allowed)
