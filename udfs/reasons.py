"""Reason codes: why an item is in a user's list, up to MAX_REASONS per item, each a fact the
ranker can check when it writes the list (the lookup services add the editorial `pinned` and
`boosted`):

- `bought_before`: the user's memory (UserState.memory) holds a purchase of the item;
- `viewed_recently`: the user interacted with it (viewed, or more) within
  scoring.reasons_recent_s before the newest event the list is made from;
- `trending_in:<category>`: the item is on the trending board of one of the user's top categories,
  which is where the candidate source took it from;
- `popular_with:<segment>`: the item is among the candidates the source took from the board of
  what the users now in one of the user's segments interact with (candidates.per_segment);
- `model:<code>`: the feature group with the largest positive contribution to the model's score,
  from LightGBM's TreeSHAP (`pred_contrib`), computed for the first scoring.reason_top_k items of
  each list only (MODEL_CODES names the groups).
"""

from __future__ import annotations

import numpy as np

from udfs.features import UserState

MAX_REASONS = 3

# feature name prefix -> readable code, first match wins; a feature none matches is named as is
MODEL_CODES = (
    ("ui_", "your_history"), ("category_affinity", "your_interests"), ("item_affinity", "your_interests"),
    ("item_popularity", "popular_now"), ("category_popularity", "popular_category"),
    ("item_conversion", "often_bought"), ("item_repurchase_rate", "bought_again_often"),
    ("item_category_share", "top_in_category"), ("price_vs_usual", "price_fits_you"), ("item_price", "price"),
    ("recency_s", "your_recent_activity"), ("since_", "your_recent_activity"), ("views_", "your_activity"),
    ("clicks_", "your_activity"), ("carts_", "your_activity"), ("purchases_", "your_purchases"),
    ("spend_", "your_purchases"), ("mean_purchase", "your_purchases"), ("session", "your_activity"),
    ("avg_basket", "your_purchases"),
)


def model_code(feature: str) -> str:
    return "model:" + next((code for prefix, code in MODEL_CODES if feature.startswith(prefix)), feature)


def strongest(contributions: np.ndarray, names: tuple[str, ...]) -> list[str]:
    """Per row of LightGBM contributions (features then the bias column): the readable code of
    the feature with the largest positive contribution ("" where none is positive)."""
    if len(contributions) == 0:
        return []
    per_feature = contributions[:, : len(names)]
    best = per_feature.argmax(axis=1)
    return [model_code(names[b]) if per_feature[n, b] > 0 else "" for n, b in enumerate(best)]


class ReasonFacts:
    """What one user's reasons are checked against: their memory, the trending boards of their
    top categories and the boards of their segments (each as far as candidates were drawn from it)."""

    def __init__(self, state: UserState, memory_half_lives: int, category_boards: dict[str, set[str]],
                 recent_ms: int, segment_boards: dict[str, set[str]] | None = None) -> None:
        self.state, self.nh = state, memory_half_lives
        self.boards = [(c, category_boards.get(c, set())) for c in state.top_categories(3)]
        self.segment_boards = list((segment_boards or {}).items())
        self.since = state.feature_ts - recent_ms

    def of(self, item_id: str, model: str = "") -> tuple[str, ...]:
        out: list[str] = []
        m = self.state.memory.get(item_id)
        if m is not None:
            if m[self.nh + 2]:  # the last purchase's time: it was bought
                out.append("bought_before")
            if m[self.nh + 1] >= self.since:
                out.append("viewed_recently")
        for category, board in self.boards:
            if item_id in board:
                out.append(f"trending_in:{category}")
                break
        for segment, board in self.segment_boards:
            if item_id in board:
                out.append(f"popular_with:{segment}")
                break
        if model:
            out.append(model)
        return tuple(out[:MAX_REASONS])
