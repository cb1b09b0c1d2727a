"""Label conventions shared by encoding, collation, log-probs and generation."""

IGNORE_INDEX = -100
"""The label of a position that is not trained on (prompt, padding): Hugging Face's and LLaMA-Factory's value."""


def prompt_ids(row: dict) -> list[int]:
    """The prompt tokens of one tokenized eval row: the tokens before the first response label.

    dpo rows carry `chosen_input_ids`/`chosen_labels`, kto rows `input_ids`/`labels`; in both the
    prompt is the prefix whose labels are IGNORE_INDEX. Raises ValueError for a row with no response.
    """
    ids = row.get("chosen_input_ids", row.get("input_ids"))
    labels = row.get("chosen_labels", row.get("labels"))
    if ids is None or labels is None:
        raise ValueError(f"not a tokenized preference row (columns {sorted(row)})")
    for position, label in enumerate(labels):
        if label != IGNORE_INDEX:
            return list(ids[:position])
    raise ValueError("the row has no response tokens (all labels are IGNORE_INDEX)")
