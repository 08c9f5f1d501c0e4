"""The closed loop's simulated users (traffic.closed_loop): they click what they are interested in,
more often near the top, carry the answer's request id, and follow the simulator's funnel."""

from __future__ import annotations

import numpy as np

from traffic.closed_loop import ShownResponder
from traffic.simulator import Simulator


def test_clicks_follow_interest_and_position():
    sim = Simulator(seed=3, users=50, items=400, categories=8)
    responder = ShownResponder(sim, seed=4)
    user = sim.users[0]
    liked = sim.categories[int(np.argmax(user.interests))]
    disliked = sim.categories[int(np.argmin(user.interests))]
    item_of = {c: next(i.item_id for i in sim.items if i.category == c) for c in (liked, disliked)}
    assert responder.click_chance(user, item_of[liked], 1) > responder.click_chance(user, item_of[disliked], 1)
    assert responder.click_chance(user, item_of[liked], 1) > responder.click_chance(user, item_of[liked], 8)
    assert responder.click_chance(user, "not-in-the-catalog", 1) == 0.0


def test_a_liked_list_gets_more_clicks_than_a_disliked_one_and_events_carry_the_request_id():
    sim = Simulator(seed=3, users=50, items=400, categories=8)
    responder = ShownResponder(sim, seed=5)
    clicks = {"liked": 0, "disliked": 0}
    for user in sim.users:
        order = np.argsort(user.interests)
        for kind, cat in (("liked", order[-1]), ("disliked", order[0])):
            shown = [i.item_id for i in sim.items if i.category == sim.categories[cat]][:10]
            events = responder.respond(user, shown, f"req-{user.user_id}-{kind}", 1_700_000_000_000)
            assert all(e["request_id"] == f"req-{user.user_id}-{kind}" and e["item_id"] in shown for e in events)
            assert all(e["type"] in ("click", "add_to_cart", "purchase") for e in events)
            assert all(e["ts"] > 1_700_000_000_000 for e in events)
            clicks[kind] += sum(e["type"] == "click" for e in events)
    assert clicks["liked"] > 2 * clicks["disliked"]
