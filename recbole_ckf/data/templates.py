"""Prompt templates with embedding slots, and their text-only twins (for the curriculum).

A template (set per task in ``prompt_templates``, see ``properties/CKF.yaml``) may use:

* ``{user}``        -> "User <|ckf_user|>" (slotted) / "The user" (text-only)
* ``{history}``     -> the user's earlier items, oldest first, "<|ckf_item|> text (4 stars); ..." — each item
                       gets one item slot; ``(n stars)`` only in tasks whose history shows ratings
* ``{item}``        -> "<|ckf_item|> text" / "text": the item asked about
* ``{candidates}``  -> "(1) <|ckf_item|> text; (2) ..." (sequential task)

Slots appear in the order history, item, candidates only if the template names them in that order; the
renderer returns the item ids in the order their slots appear in the prompt, which is what
``inject_slots`` expects.
"""

import re
import string

from recbole_ckf.errors import CKFError

FIELDS = ("user", "history", "item", "candidates")
REQUIRED = {"ctr": ("item",), "rating": ("item",), "explanation": ("item",), "sequential": ("candidates",)}


def check_template(task, template):
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise CKFError(f"prompt_templates.{task}: {err}") from None
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise CKFError(f"prompt_templates.{task}: unknown placeholder '{{{unknown[0]}}}' (expected {', '.join(FIELDS)})")
    for needed in REQUIRED[task]:
        if needed not in names:
            raise CKFError(f"prompt_templates.{task}: the template must contain '{{{needed}}}'")
    return names


class PromptRenderer:
    """Renders a sample's prompt, slotted or text-only."""

    def __init__(self, templates, item_texts, user_token, item_token, show_ratings=("ctr", "rating", "explanation")):
        self.templates = dict(templates)
        self.order = {task: check_template(task, t) for task, t in self.templates.items()}
        self.item_texts = item_texts
        self.user_token, self.item_token = user_token, item_token
        self.show_ratings = set(show_ratings)

    def _item(self, item, slotted):
        text = self.item_texts[item]
        return f"{self.item_token} {text}" if slotted else text

    def render(self, sample, slotted):
        """Return ``(prompt, slot_items)``: the prompt string and the item ids of its item slots, in order."""
        task = sample.task
        pieces, slot_items = {}, {}
        pieces["user"] = f"User {self.user_token}" if slotted else "The user"
        ratings = task in self.show_ratings and sample.history_ratings is not None
        hist = []
        for k, item in enumerate(sample.history):
            text = self._item(item, slotted)
            if ratings:
                text += f" ({int(round(sample.history_ratings[k]))} stars)"
            hist.append(text)
        pieces["history"] = "; ".join(hist) if hist else "nothing yet"
        slot_items["history"] = list(sample.history)
        pieces["item"] = self._item(sample.item, slotted)
        slot_items["item"] = [sample.item]
        pieces["candidates"] = "; ".join(f"({k + 1}) {self._item(c, slotted)}" for k, c in enumerate(sample.candidates))
        slot_items["candidates"] = list(sample.candidates)
        prompt = self.templates[task].format(**pieces)
        if not slotted:
            return prompt, []
        items = [i for name in self.order[task] for i in slot_items.get(name, [])]
        return prompt, items

    def answer(self, sample):
        """The answer text the LM learns. No leading space: templates end with "Answer:\n", so that the answer
        tokens are the same whether tokenised alone or after the prompt (Gemma's digits are one token only
        without a space; see ``llm.answer_token_ids``)."""
        return sample.answer


def normalise_space(text):
    return re.sub(r"\s+", " ", text).strip()
