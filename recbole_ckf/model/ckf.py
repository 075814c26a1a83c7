r"""CKF
################################################
Reference:
    Zhao et al. "Collaborative Knowledge Fusion: A Novel Method for Multi-task Recommender Systems via LLMs."
    arXiv 2410.20642, TKDE 2025.

A frozen RecBole CF backbone gives e_u and e_v; a meta-network maps each user's embedding through a
personalised W_u built from the pooled history p_u; the results fill the user/item slots of task prompts
fed to a frozen LLM tuned with one shared plus one task-specific LoRA adapter per task.

Unlike the authors' code: every sample of a batch gets its embeddings (one vectorised injection), the task
adapters are active and trained, the bridge is saved with the adapters, scoring is deterministic (no
sampling), and unparseable answers cannot occur (answers are scored over fixed token sets).
"""

import torch
import torch.nn.functional as F
from torch import nn
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_ckf.data.fields import available_tasks, resolve_text_fields
from recbole_ckf.data.item_text import N_STATS, build_item_texts, token_text
from recbole_ckf.data.templates import LABELS, PromptRenderer
from recbole_ckf.model.llm import ITEM_TOKEN, TINY_LABEL, USER_TOKEN, answer_token_ids, load_llm, resolve_precision
from recbole_ckf.model.meta_network import MetaNetworkBridge, inject_slots
from recbole_ckf.model.multi_lora import activate, attach_multi_lora, trainable_lora_parameters
from recbole_ckf.model.packing import block_masks, check_packed_attention

_LOGIT_CHUNK_ELEMENTS = 1 << 25  # rows x vocab per log-softmax chunk (Gemma: 128 rows, 128 MiB in float32)


class CKF(GeneralRecommender):
    r"""CKF as a RecBole model. A general model (pairwise input), so RecBole's ``data_preparation`` gives it the
    very train loader and ``uniN`` evaluation loaders that BPR/LightGCN get; the backbone trains on them."""

    input_type = InputType.PAIRWISE
    type = ModelType.GENERAL

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.config = config
        self.tasks, self.unavailable_tasks = available_tasks(config)
        self.use_cf = config["use_cf"]
        # item descriptions from the training split only (``dataset`` here is the training split)
        self.item_texts, self.item_text_note = build_item_texts(config, dataset, dataset)

        # the frozen LM weights in bf16 where that is faster (see llm.resolve_precision); the adapters, the
        # bridge and the optimizer states stay float32
        self.precision = resolve_precision(config["precision"], config["device"])
        llm = load_llm(config["llm"], config["llm_cache_dir"], texts=self._corpus(config, dataset, self.item_texts),
                       seed=config["seed"], dtype=torch.bfloat16 if self.precision == "bf16" else torch.float32)
        self.llm_name = TINY_LABEL if llm.is_tiny else llm.name
        self.tokenizer = llm.tokenizer
        self.user_token_id, self.item_token_id = llm.user_token_id, llm.item_token_id
        self.hidden_size = llm.hidden_size
        with torch.no_grad():
            self.embed_norm = float(llm.model.get_input_embeddings().weight.norm(dim=-1).float().mean()) * \
                self._embed_scale(llm.model)
            # bridge_anchor: the slot tokens start as the LLM's own embeddings of " user" / " item"
            self.anchors = tuple(self._word_embedding(llm, w) for w in (" user", " item")) \
                if config["bridge_anchor"] else None
        self.llm = attach_multi_lora(
            llm.model, self.tasks, r_shared=config["lora_r_shared"], r_task=config["lora_r_task"],
            alpha=config["lora_alpha"], dropout=config["lora_dropout"],
            target_modules=list(config["lora_target_modules"]), multi_lora=config["multi_lora"])
        for p in trainable_lora_parameters(self.llm):
            p.data = p.data.float()
        if config["gradient_checkpointing"]:
            # training keeps each decoder layer's input only and recomputes the layer in backward: less memory,
            # more time. Non-reentrant: LoRA weights get gradients even where the layer input needs none
            # (text-only prompts)
            base = self.llm.get_base_model()
            enable = getattr(base, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.sequential_answer = config["sequential_answer"] or "label"
        if "sequential" in self.tasks and self.sequential_answer != "label":  # packed rows need custom block masks
            check_packed_attention(self.attention_implementation)
        self.renderer = PromptRenderer(config["prompt_templates"], self.item_texts, USER_TOKEN, ITEM_TOKEN,
                                       sequential_answer=self.sequential_answer, stats=config["prompt_stats"])
        # tasks whose answer is one token of a fixed set: their loss and scores use only that set's logits
        self.answer_ids = {
            "ctr": answer_token_ids(self.tokenizer, ["Yes", "No"]),
            "rating": answer_token_ids(self.tokenizer, ["1", "2", "3", "4", "5"]),
        }
        if self.sequential_answer == "label":
            self.answer_ids["sequential"] = answer_token_ids(self.tokenizer, list(LABELS[: config["n_candidates"]]))
        elif self.sequential_answer == "pointwise":  # Yes / No after each candidate's block of a packed row
            self.answer_ids["sequential"] = self.answer_ids["ctr"]
        # answer_head: a trainable delta on the LM-head rows of each task's answer tokens (a learnt verbaliser).
        # Its gradient (p - y) h reads the answer position's features directly, which LoRA alone could not do in a
        # few hundred noisy ctr/rating steps. Written here: peft's trainable tokens would also change the tied
        # input embedding of "Yes", "4", ... in every prompt; this changes the answer logits of one task only.
        self.answer_head = nn.ParameterDict(
            {task: nn.Parameter(torch.zeros(len(ids), self.hidden_size)) for task, ids in self.answer_ids.items()}
            if config["answer_head"] else {})
        # The frozen CF tables e_u / e_v and the bridge are created by set_cf_tables (their size d comes
        # from the backbone).
        self.bridge = None
        self.register_buffer("user_table", torch.zeros(0), persistent=True)
        self.register_buffer("item_table", torch.zeros(0), persistent=True)

    # ---- construction helpers ------------------------------------------------------------------------
    @staticmethod
    def _corpus(config, dataset, item_texts):
        """Training-split text for the tiny test tokenizer (templates, item texts, headlines)."""
        corpus = list(config["prompt_templates"].values()) + [str(t) for t in item_texts[1:]]
        fields = resolve_text_fields(config)
        if "summary" in fields:
            corpus += token_text(dataset, fields["summary"][1], dataset.inter_feat[fields["summary"][1]].numpy())
        return corpus + ["Yes", "No", "1 2 3 4 5 stars", " ".join(f"({c})" for c in LABELS)]

    @staticmethod
    def _embed_scale(llm):
        scale = getattr(llm.get_input_embeddings(), "embed_scale", None)  # Gemma scales by sqrt(H)
        return float(scale) if scale is not None else 1.0

    @staticmethod
    def _word_embedding(llm, word):
        """[H] float32: the mean input embedding (with any embedding multiplier) of ``word``'s tokens."""
        ids = torch.as_tensor(llm.tokenizer(word, add_special_tokens=False)["input_ids"])
        return llm.model.get_input_embeddings()(ids.to(llm.model.device)).float().mean(0).cpu()

    def set_cf_tables(self, user_emb, item_emb):
        """Install the frozen backbone tables e_u / e_v and build the bridge for their dimension d."""
        d = user_emb.shape[1]
        self.user_table = user_emb.detach().float().to(self.device if self.user_table.numel() == 0 else self.user_table.device)
        self.item_table = item_emb.detach().float().to(self.user_table.device)
        if self.bridge is None or self.bridge.d != d:
            self.bridge = MetaNetworkBridge(
                d, self.hidden_size, pooling=self.config["pooling"], meta_network=self.config["meta_network"],
                token_norm=self.embed_norm, tied_init=self.config["bridge_tied_init"] is not False,
                n_stats=N_STATS if self.config["bridge_stats"] else 0, anchors=self.anchors).to(self.user_table.device)

    def trainable_parameters(self):
        """(LoRA parameters, bridge parameters, answer-head rows): the only parameters CKF trains."""
        bridge = list(self.bridge.parameters()) if (self.bridge is not None and self.use_cf) else []
        return trainable_lora_parameters(self.llm), bridge, list(self.answer_head.parameters())

    # ---- forward -------------------------------------------------------------------------------------
    def input_embeddings(self, batch, slotted):
        """``inputs_embeds`` of a batch; slotted prompts get h_u / h_v at their slots (one vectorised step)."""
        ids = batch["input_ids"]
        embeds = self.llm.get_input_embeddings()(ids)
        if not slotted:
            return embeds
        e_u = self.user_table[batch["users"]]
        e_H = self.item_table[batch["history"]]
        h_u = self.bridge.user_tokens(e_u, e_H, batch["history_mask"], batch["user_stats"])
        h_v = self.bridge.item_tokens(self.item_table[batch["slot_items"]], batch["slot_stats"]) \
            if batch["slot_items"].numel() else None
        return inject_slots(embeds, ids, self.user_token_id, self.item_token_id, h_u, h_v)

    def hidden_states(self, batch, slotted):
        """Last hidden states of the decoder (no LM head: logits are computed only where needed; no KV cache).
        Packed rows (``batch["segments"]``, pointwise sequential) get block attention masks and their positions."""
        activate(self.llm, batch["task"])
        decoder = self.llm.get_base_model().model
        embeds = self.input_embeddings(batch, slotted)
        mask, positions = batch["attention_mask"], None
        if "segments" in batch:
            positions = batch["positions"]
            mask = block_masks(batch["segments"], positions, self.decoder_config, self.attention_implementation,
                               embeds.dtype)
        out = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
        return out.last_hidden_state

    def block_scores(self, hidden, batch):
        """Pointwise sequential: [B, K] scores logit(Yes) - logit(No) after each candidate's block of the packed
        rows (-inf past a row's candidates), from the decoder's ``hidden`` [B, T, H]."""
        ends, owner = batch["block_ends"], batch["block_owner"]
        logits = self.choice_logits(hidden.reshape(-1, hidden.shape[-1])[ends], "sequential")
        # the k-th block of row b goes to column k: its index among the blocks owned by b
        first = torch.searchsorted(owner, owner, right=False)
        column = torch.arange(owner.numel(), device=owner.device) - first
        scores = torch.full((hidden.shape[0], int(column.max()) + 1 if owner.numel() else 0), float("-inf"),
                            dtype=logits.dtype, device=logits.device)
        return scores.index_put((owner, column), logits[:, 0] - logits[:, 1])

    def logits(self, hidden, token_ids=None, delta=None):
        """LM-head logits of ``hidden`` [N, H], over the whole vocabulary or only over ``token_ids`` (float32);
        ``delta`` [len(token_ids), H] is added to those rows (the answer head)."""
        head = self.llm.get_base_model().lm_head
        if token_ids is None:
            logits = (hidden @ head.weight.T).float()
        else:  # a handful of rows: cheap to take in float32
            rows = head.weight[token_ids].float()
            logits = hidden.float() @ (rows if delta is None else rows + delta).T
        cap = getattr(self.llm.get_base_model().config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def forward(self, batch, slotted=True):
        """The training loss of one task batch (``forward`` so that Accelerate/DDP wrappers see the call)."""
        return self.calculate_loss(batch, slotted)

    def calculate_loss(self, batch, slotted=True):
        """Answer-only cross-entropy, logits only where a label is. Tasks with a one-token answer from a fixed
        set (ctr: Yes/No, rating: 1-5, listwise sequential: the candidate letters) take the softmax over that
        set only, as they are scored; explanations (and title answers) over the whole vocabulary."""
        hidden = self.hidden_states(batch, slotted)
        task = batch["task"]
        if "block_ends" in batch:  # pointwise sequential: a softmax over the candidates' Yes-against-No scores
            return F.cross_entropy(self.block_scores(hidden, batch), batch["label"].long().to(hidden.device))
        if self._restricted_loss(task):
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            logits = self.choice_logits(hidden[rows, batch["prompt_len"] - 1], task, batch.get("n_choices"))
            answer = batch["labels"][rows, batch["prompt_len"]]
            targets = (answer[:, None] == torch.as_tensor(self.answer_ids[task], device=answer.device)).float().argmax(-1)
            return F.cross_entropy(logits, targets)
        targets = batch["labels"][:, 1:]
        where = targets != -100
        return F.cross_entropy(self.logits(hidden[:, :-1][where]), targets[where])

    def loss_units(self, batch):
        """What :meth:`calculate_loss` averages over: rows for one-token answers and packed sequential rows,
        answer tokens otherwise. A batch trained in several passes weights each pass's loss by its share."""
        if "block_ends" in batch or self._restricted_loss(batch["task"]):
            return int(batch["input_ids"].shape[0])
        return int((batch["labels"][:, 1:] != -100).sum())

    def _restricted_loss(self, task):
        """Whether ``task``'s loss is a softmax over its fixed one-token answers (one term per row)."""
        return task in self.answer_ids and self.config["restricted_loss"] is not False

    # ---- scoring (deterministic): what the evaluator calls ------------------------------------------
    @property
    def lm_device(self):
        """The device of the LLM's weights (where batches go)."""
        return next(self.llm.parameters()).device

    @property
    def decoder_config(self):
        """The LLM's config (``layer_types``, ``sliding_window``), for callers that build attention masks."""
        return self.llm.get_base_model().config

    @property
    def attention_implementation(self):
        """The LLM's attention implementation ('sdpa', 'eager', ...): the mask format its decoder takes."""
        return getattr(self.decoder_config, "_attn_implementation", "sdpa")

    def set_task(self, task):
        """Activate the shared adapter and ``task``'s adapter for the passes that follow."""
        activate(self.llm, task)

    def embed_tokens(self, ids):
        """Plain input embeddings of token ids (no slots): the tokens fed while decoding."""
        return self.llm.get_base_model().get_input_embeddings()(ids)

    def decoder_pass(self, embeds, attention_mask, position_ids, past_key_values=None, use_cache=True):
        """One pass of the decoder (no LM head; the active adapters) over ``inputs_embeds`` [B, T, H].
        ``attention_mask``: a 2-D padding mask, or the 4-D mask(s) per layer type the caller built; with
        ``past_key_values`` the pass continues that cache. Returns ``(last hidden states [B, T, H], cache)``."""
        out = self.llm.get_base_model().model(inputs_embeds=embeds, attention_mask=attention_mask,
                                              position_ids=position_ids, past_key_values=past_key_values,
                                              use_cache=use_cache)
        return out.last_hidden_state, out.past_key_values

    def choice_logits(self, hidden, task, n_choices=None):
        """[N, C] logits of ``task``'s answer set at ``hidden`` [N, H]; with ``n_choices`` [N], the letters past
        a sample's number of candidates are masked (-inf)."""
        logits = self.logits(hidden, self.answer_ids[task], self.answer_head[task] if task in self.answer_head else None)
        if n_choices is not None:
            logits = logits.masked_fill(torch.arange(logits.shape[1], device=logits.device) >= n_choices[:, None].to(
                logits.device), float("-inf"))
        return logits

    @torch.no_grad()
    def answer_logits(self, batch, slotted=True):
        """[B, C] logits of the task's answer set at the answer position (ctr: Yes, No; rating: 1..5;
        listwise sequential: the candidate letters, -inf past each sample's candidates); pointwise sequential:
        :meth:`block_scores`."""
        hidden = self.hidden_states(batch, slotted)
        if "block_ends" in batch:
            return self.block_scores(hidden, batch)
        return self.choice_logits(hidden[torch.arange(hidden.shape[0]), batch["prompt_len"] - 1], batch["task"],
                                  batch.get("n_choices"))

    def token_logprobs(self, hidden, rows, targets):
        """[len(targets)] float32: log p(targets[i] | hidden[rows[i]]), log-softmax over the full vocabulary,
        computed in chunks over the unique rows (a few full-vocabulary rows at a time)."""
        out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
        if not len(targets):
            return out
        rows = torch.as_tensor(rows, device=hidden.device)
        targets = torch.as_tensor(targets, device=hidden.device)
        unique, inverse = torch.unique(rows, return_inverse=True)
        vocab = self.llm.get_base_model().lm_head.weight.shape[0]
        chunk = max(1, _LOGIT_CHUNK_ELEMENTS // vocab)
        for start in range(0, unique.numel(), chunk):
            logp = self.logits(hidden[unique[start:start + chunk]]).log_softmax(-1)
            sel = (inverse >= start) & (inverse < start + chunk)
            out[sel] = logp[inverse[sel] - start, targets[sel]]
        return out

    def check_packed_attention(self):
        """Raise a CKFError where this LLM's attention cannot take the masks of :meth:`packed_logprobs`."""
        check_packed_attention(self.attention_implementation)

    @torch.no_grad()
    def packed_logprobs(self, batch, slotted, segments, positions, rows, targets):
        """Packed candidate scoring (sequential task, title answers): ONE decoder pass over rows that pack
        ``[prompt, candidate 1, ..., candidate K]`` (``batch["input_ids"]`` [B, T]; ``segments`` [B, T]: 0 prompt,
        k candidate block k, -1 padding; ``positions`` [B, T]: position ids, restarting after the prompt for each
        candidate), with block attention (:func:`~recbole_ckf.model.packing.block_masks`). Returns
        :meth:`token_logprobs` at ``rows`` of the flattened [B * T] hidden states."""
        self.set_task("sequential")
        embeds = self.input_embeddings(batch, slotted)
        mask = block_masks(segments, positions, self.decoder_config, self.attention_implementation, embeds.dtype)
        hidden, _ = self.decoder_pass(embeds, mask, positions, use_cache=False)
        return self.token_logprobs(hidden.reshape(hidden.shape[0] * hidden.shape[1], -1), rows, targets)

    @torch.no_grad()
    def generate(self, batch, slotted, max_new_tokens, stops, task="explanation"):
        """Greedy decoding (KV cache) of LEFT-padded prompts (``batch["attention_mask"]`` 0 on the left; positions
        from the mask, so a padded prompt generates what it generates alone): the new token ids per sample, cut
        before the first of ``stops``."""
        self.set_task(task)
        embeds = self.input_embeddings(batch, slotted)
        mask = batch["attention_mask"]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden, past = self.decoder_pass(embeds, mask, position_ids)
        return self.greedy_decode(hidden[:, -1], past, mask, position_ids[:, -1], stops, max_new_tokens)

    @torch.no_grad()
    def greedy_decode(self, hidden, past, mask, positions, stops, max_new_tokens, step_mask=None):
        """The greedy loop from a prefilled state: ``hidden`` [B, H] at each prompt's last token, its cache
        ``past``, the 2-D ``mask`` of the cached columns and the last ``positions`` [B]. One decoder step per new
        token, the LM head at that one position only (Gemma's 262k-token head over every prompt position would
        cost gigabytes). ``step_mask(mask, dtype)``, where given, builds each step's attention mask from the 2-D
        mask (default: the 2-D mask itself). Returns the new token ids per sample, cut before the first stop."""
        stop_t = torch.tensor(stops, device=hidden.device)
        done = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        rows = [[] for _ in range(hidden.shape[0])]
        for step in range(int(max_new_tokens)):
            next_ids = self.logits(hidden).argmax(-1)
            for b in torch.nonzero(~done).flatten().tolist():
                rows[b].append(int(next_ids[b]))
            done |= torch.isin(next_ids, stop_t)
            if bool(done.all()) or step + 1 == max_new_tokens:
                break
            positions = positions + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            embeds = self.embed_tokens(next_ids[:, None])
            out, past = self.decoder_pass(embeds, mask if step_mask is None else step_mask(mask, embeds.dtype),
                                          positions[:, None], past)
            hidden = out[:, -1]
        stop_set = set(stop_t.tolist())
        return [row[: next((j for j, t in enumerate(row) if t in stop_set), len(row))] for row in rows]

    @torch.no_grad()
    def predict_ctr(self, batch, slotted=True):
        """P(Yes) against P(No) at the answer position."""
        return self.answer_logits(batch, slotted).softmax(-1)[:, 0]

    @torch.no_grad()
    def predict_rating(self, batch, slotted=True):
        """The expectation of the rating over the probabilities of the five digit tokens."""
        probs = self.answer_logits(batch, slotted).softmax(-1)
        return probs @ torch.arange(1, 6, dtype=probs.dtype, device=probs.device)

    @torch.no_grad()
    def backbone_scores(self, users, items):
        """The frozen backbone's score e_u . e_v of (user, item) pairs (the score BPR/LightGCN rank by)."""
        users, items = torch.as_tensor(users), torch.as_tensor(items)
        return (self.user_table[users] * self.item_table[items]).sum(-1).cpu()

    def predict(self, interaction):
        raise TypeError("CKF scores prompts, not (user, item) pairs: use recbole_ckf.evaluator.task_eval")

    def full_sort_predict(self, interaction):
        raise TypeError("CKF ranks RecBole's uniN candidate lists; full-sort ranking is not supported")
