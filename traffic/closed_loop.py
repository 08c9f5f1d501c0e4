"""Simulated users who respond to what they are shown: the closed loop of bench.experiment.

A user asks the real service for a list (gRPC), looks down it with position bias (the chance to
examine position p is 1 / p^POSITION_DECAY), and clicks an examined item in proportion to their
latent interest in its category (traffic.simulator's users, so a model trained on their history
can learn it). A click may go on to the cart and a purchase, with the simulator's funnel. Every
event carries the answer's request_id, as a page sends it back.
"""

from __future__ import annotations

import numpy as np

from traffic.simulator import Simulator, SimUser

POSITION_DECAY = 0.8
BASE_CLICK = 0.12  # click chance of an examined item in a category of average interest


class ShownResponder:
    def __init__(self, sim: Simulator, seed: int = 0, base_click: float = BASE_CLICK) -> None:
        self.sim = sim
        self.rng = np.random.default_rng(seed)
        self.base_click = base_click
        self.index = {item.item_id: n for n, item in enumerate(sim.items)}
        self.category_index = {c: n for n, c in enumerate(sim.categories)}

    def click_chance(self, user: SimUser, item_id: str, position: int) -> float:
        """P(click) for an item shown at `position` (1 = top): examination x interest."""
        idx = self.index.get(item_id)
        if idx is None:  # not in this simulator's catalog
            return 0.0
        interest = user.interests[self.category_index[self.sim.items[idx].category]] * len(self.sim.categories)
        return min(1.0, self.base_click * min(interest, 4.0) / position ** POSITION_DECAY)

    def respond(self, user: SimUser, shown: list[str], request_id: str, t_ms: int) -> list[dict]:
        """The events of one user shown `shown` (item ids, top first) at t_ms."""
        events: list[dict] = []
        t = float(t_ms)
        for position, item_id in enumerate(shown, 1):
            if self.rng.random() >= self.click_chance(user, item_id, position):
                continue
            item = self.sim.items[self.index[item_id]]
            affordable = min(1.0, user.spend / max(item.price, 1.0))
            steps = ["click"]
            if self.rng.random() < 0.4 * affordable + 0.05:
                steps.append("add_to_cart")
                if self.rng.random() < user.buy_rate + 0.3:
                    steps.append("purchase")
            for etype in steps:
                t += float(self.rng.exponential(2000.0))
                events.append({**self.sim._event(user, item, etype, t, self.rng), "request_id": request_id})
        return events
