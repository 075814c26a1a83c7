"""Prompt templates with embedding slots, and their text-only twins (for the curriculum).

A template (set per task in ``prompt_templates``, see ``properties/CKF.yaml``) may use:

* ``{user}``        -> "User <|ckf_user|>" (slotted) / "The user" (text-only); with ``prompt_stats`` followed by
                       "(12 ratings, avg 4.5 stars)": the user's interactions before the predicted one
* ``{history}``     -> the user's earlier items, oldest first, "<|ckf_item|> text (4 stars); ..." — each item
                       gets one item slot; ``(n stars)`` only in tasks whose history shows ratings
* ``{item}``        -> "<|ckf_item|> text" / "text": the item asked about; with ``prompt_stats`` followed by
                       "(30 ratings, avg 4.2 stars)": the other users' training interactions with it (the
                       candidates too; history items are shown without)
* ``{candidates}``  -> "(A) <|ckf_item|> text; (B) ..." (sequential task; ``sequential_answer: label``, the
                       answer is the true candidate's letter) or "(1) <|ckf_item|> text; (2) ..."
                       (``sequential_answer: title``, the answer is the true item's text)

``sequential_answer: pointwise`` asks about one candidate at a time with the template ``sequential_pointwise``,
whose last placeholder is ``{item}``: the text before ``{item}`` is the prefix every candidate shares, the rest
(from ``{item}`` on) is rendered once per candidate (:meth:`PromptRenderer.render_blocks`), and the answer after
each candidate's block is Yes or No.

Item texts in user u's prompts leave out u's own reviews (``ItemTexts.for_user``).

Slots appear in the order history, item, candidates only if the template names them in that order; the
renderer returns the item ids in the order their slots appear in the prompt, which is what
``inject_slots`` expects.
"""

import re
import string

from recbole_ckf.data.item_text import stats_text
from recbole_ckf.errors import CKFError

FIELDS = ("user", "history", "item", "candidates")
REQUIRED = {"ctr": ("item",), "rating": ("item",), "explanation": ("item",), "sequential": ("candidates",),
            "sequential_pointwise": ("item",)}
#: candidate labels of the listwise sequential answer (each one token of Gemma's and the tiny tokenizer)
LABELS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
SEQUENTIAL_ANSWERS = ("label", "title", "pointwise")
#: the template key of each task's prompts (the pointwise sequential answer has its own template)
POINTWISE_TEMPLATE = "sequential_pointwise"


def check_template(task, template):
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise CKFError(f"prompt_templates.{task}: {err}") from None
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise CKFError(f"prompt_templates.{task}: unknown placeholder '{{{unknown[0]}}}' (expected {', '.join(FIELDS)})")
    if task not in REQUIRED:
        raise CKFError(f"prompt_templates: unknown task '{task}' (expected {', '.join(REQUIRED)})")
    for needed in REQUIRED[task]:
        if needed not in names:
            raise CKFError(f"prompt_templates.{task}: the template must contain '{{{needed}}}'")
    if task == POINTWISE_TEMPLATE and (names[-1] != "item" or names.count("item") != 1):
        raise CKFError(f"prompt_templates.{task}: '{{item}}' must be the template's last placeholder, once (the "
                       f"text before it is shared by every candidate)")
    return names


class PromptRenderer:
    """Renders a sample's prompt, slotted or text-only."""

    def __init__(self, templates, item_texts, user_token, item_token, show_ratings=("ctr", "rating", "explanation"),
                 sequential_answer="label", stats=False):
        self.templates = dict(templates)
        self.order = {task: check_template(task, t) for task, t in self.templates.items()}
        self.item_texts = item_texts
        self.user_token, self.item_token = user_token, item_token
        self.show_ratings = set(show_ratings)
        if sequential_answer not in SEQUENTIAL_ANSWERS:
            raise CKFError(f"sequential_answer: expected one of {', '.join(SEQUENTIAL_ANSWERS)}, got "
                           f"'{sequential_answer}'")
        self.sequential_answer = sequential_answer
        if sequential_answer == "pointwise" and POINTWISE_TEMPLATE not in self.templates:
            raise CKFError(f"prompt_templates: sequential_answer 'pointwise' needs the template "
                           f"'{POINTWISE_TEMPLATE}' (with '{{item}}' as its last placeholder)")
        self.stats = bool(stats) and getattr(item_texts, "stats", None) is not None

    def item_text(self, item, user=None):
        """An item's description in ``user``'s prompts (without ``user``'s own reviews)."""
        for_user = getattr(self.item_texts, "for_user", None)
        return for_user(item, user) if for_user is not None else self.item_texts[item]

    def _item(self, item, slotted, user, stats=False):
        text = self.item_text(item, user)
        if stats and self.stats:
            text += f" ({stats_text(*self.item_texts.stats.of(item, user))})"
        return f"{self.item_token} {text}" if slotted else text

    def candidate_label(self, k):
        return LABELS[k] if self.sequential_answer == "label" else str(k + 1)

    def template_of(self, task):
        """The template key of ``task``'s prompts."""
        return POINTWISE_TEMPLATE if task == "sequential" and self.sequential_answer == "pointwise" else task

    def render(self, sample, slotted):
        """Return ``(prompt, slot_items)``: the prompt string and the item ids of its item slots, in order."""
        pieces, slot_items = self._pieces(sample, slotted)
        key = self.template_of(sample.task)
        prompt = self.templates[key].format(**pieces)
        if not slotted:
            return prompt, []
        return prompt, [i for name in self.order[key] for i in slot_items.get(name, [])]

    def render_blocks(self, sample, slotted):
        """The pointwise sequential prompt of ``sample``, split for packing: ``(prefix, prefix_slot_items,
        [(block, block_slot_items) per candidate])``. The prefix is the template up to ``{item}``; block k is
        the rest with candidate k as ``{item}``: prefix + block k is the prompt asking about candidate k alone."""
        key = POINTWISE_TEMPLATE
        template = self.templates[key]
        cut = template.index("{item}")
        pieces, slot_items = self._pieces(sample, slotted)
        prefix = template[:cut].format(**pieces)
        prefix_items = [i for name in self.order[key][:-1] for i in slot_items.get(name, [])] if slotted else []
        blocks = []
        for c in sample.candidates:
            text = template[cut:].format(item=self._item(c, slotted, sample.user, stats=True))
            blocks.append((text, [c] if slotted else []))
        return prefix, prefix_items, blocks

    def _pieces(self, sample, slotted):
        """The rendered placeholders of ``sample`` and the item ids of each one's slots."""
        task = sample.task
        pieces, slot_items = {}, {}
        pieces["user"] = f"User {self.user_token}" if slotted else "The user"
        if self.stats and sample.user_stats is not None:
            pieces["user"] += f" ({stats_text(*sample.user_stats)})"
        ratings = task in self.show_ratings and sample.history_ratings is not None
        hist = []
        user = sample.user
        for k, item in enumerate(sample.history):
            text = self._item(item, slotted, user)
            if ratings:
                text += f" ({int(round(sample.history_ratings[k]))} stars)"
            hist.append(text)
        pieces["history"] = "; ".join(hist) if hist else "nothing yet"
        slot_items["history"] = list(sample.history)
        pieces["item"] = self._item(sample.item, slotted, user, stats=True)
        slot_items["item"] = [sample.item]
        pieces["candidates"] = "; ".join(f"({self.candidate_label(k)}) {self._item(c, slotted, user, stats=True)}"
                                         for k, c in enumerate(sample.candidates))
        slot_items["candidates"] = list(sample.candidates)
        return pieces, slot_items

    def answer(self, sample):
        """The answer text the LM learns. No leading space: templates end with "Answer:\n", so that the answer
        tokens are the same whether tokenised alone or after the prompt (Gemma's digits are one token only
        without a space; see ``llm.answer_token_ids``)."""
        return sample.answer


def normalise_space(text):
    return re.sub(r"\s+", " ", text).strip()
