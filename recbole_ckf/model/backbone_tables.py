"""The final user and item tables of a trained RecBole general model, as CKF's frozen backbone exports them.

:func:`export_tables` (called by :mod:`recbole_ckf.model.backbone` after training or loading a checkpoint) reads:

* propagating models (LightGCN, NGCF, DGCF, SpectralCF, NCL, SGL, ...: a ``forward()`` without arguments, or
  SGL's ``forward(train_graph)``, that returns ``(user_all_embeddings, item_all_embeddings, ...)``): that
  output, computed under ``torch.no_grad()`` in eval mode (no node or message dropout) - the propagated
  tables the model scores with, not the raw ``user_embedding.weight``;
* NeuMF: ``[user_mf_embedding | user_mlp_embedding]`` and ``[item_mf_embedding | item_mlp_embedding]``
  concatenated along d (only the parts it trains: ``mf_train`` / ``mlp_train``), so that both the GMF and
  the MLP view of a user reach the bridge;
* embedding models (BPR, ENMF, LINE, NNCF, ConvNCF, SimpleX, ...): their ``user_embedding``/``item_embedding``
  (or ``user_emb``/``item_emb``) weights;
* anything else (FISM and NAIS have no user table, the auto-encoders none at all): a one-line CKFError.

The tables are copied to the CPU as detached float32 tensors with ``requires_grad=False``: later training of
CKF can neither move them nor send gradient into the backbone.
"""

import inspect

import torch

from recbole_ckf.errors import CKFError


def _freeze(table):
    return table.detach().to("cpu", torch.float32).clone().contiguous().requires_grad_(False)


def _weight(module):
    if isinstance(module, torch.nn.Embedding):
        return module.weight
    if isinstance(module, (torch.nn.Parameter, torch.Tensor)) and module.dim() == 2:
        return module
    return None


def _forward_tables(model):
    """(user, item) from the model's propagation, or None when it has none."""
    forward = getattr(model, "forward", None)
    if forward is None:
        return None
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return None
    required = [p for p in params if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not required:
        args = ()
    elif len(required) == 1 and getattr(model, "train_graph", None) is not None:
        args = (model.train_graph,)  # SGL: forward(graph), scored with the full training graph
    else:
        return None
    try:
        out = forward(*args)
    except (NotImplementedError, TypeError):  # e.g. DiffRec has no forward of its own
        return None
    if not isinstance(out, (tuple, list)) or len(out) < 2:
        return None
    user, item = out[0], out[1]
    if not (torch.is_tensor(user) and torch.is_tensor(item) and user.dim() == 2 and item.dim() == 2):
        return None
    if user.shape[0] != model.n_users or item.shape[0] != model.n_items:
        return None
    return user, item


def _neumf_tables(model):
    users, items = [], []
    if getattr(model, "mf_train", True):
        users.append(model.user_mf_embedding.weight)
        items.append(model.item_mf_embedding.weight)
    if getattr(model, "mlp_train", True):
        users.append(model.user_mlp_embedding.weight)
        items.append(model.item_mlp_embedding.weight)
    return torch.cat(users, dim=1), torch.cat(items, dim=1)


_TABLE_NAMES = (("user_embedding", "item_embedding"), ("user_emb", "item_emb"),
                ("user_embeddings", "item_embeddings"), ("embedding_user", "embedding_item"))


def export_tables(model):
    """The final ``(user_emb, item_emb)`` tables of a RecBole general model, frozen (see the module docstring)."""
    name = type(model).__name__
    n_users, n_items = getattr(model, "n_users", None), getattr(model, "n_items", None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            tables = None
            if hasattr(model, "user_mf_embedding") and hasattr(model, "user_mlp_embedding"):
                tables = _neumf_tables(model)  # NeuMF
            if tables is None and n_users is not None:
                tables = _forward_tables(model)
            if tables is None:
                for user_attr, item_attr in _TABLE_NAMES:
                    user, item = _weight(getattr(model, user_attr, None)), _weight(getattr(model, item_attr, None))
                    if user is not None and item is not None:
                        tables = (user, item)
                        break
    finally:
        model.train(was_training)
    if tables is None:
        raise CKFError(f"backbone '{name}' has no user and item embedding tables to export (no forward() that "
                       f"returns (user, item) embeddings, no user_embedding/item_embedding); choose a model such "
                       f"as BPR, LightGCN, NeuMF or NGCF")
    user, item = tables
    if n_users is not None and (user.shape[0] != n_users or item.shape[0] != n_items):
        raise CKFError(f"backbone '{name}': its tables have {user.shape[0]} users and {item.shape[0]} items, the "
                       f"data set {n_users} and {n_items}")
    if user.shape[1] != item.shape[1]:
        raise CKFError(f"backbone '{name}': user and item tables differ in width ({user.shape[1]} vs "
                       f"{item.shape[1]})")
    return _freeze(user), _freeze(item)
