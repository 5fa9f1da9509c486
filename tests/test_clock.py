"""The clock worker (daemon/clock.py): what it learns from commits and when it rescans."""

from __future__ import annotations

from datetime import timedelta

from daemon.clock import MAX_SLEEP, Timekeeper
from daemon.decide import State, apply, decide
from daemon.dispatch import Dispatcher
from daemon.metrics import Metrics
from tests.conftest import NewStore
from tests.helpers import NOW, alert, make_config, webhook


async def test_a_commit_brings_an_earlier_deadline_without_a_scan(new_store: NewStore) -> None:
    """After a commit the worker takes the changed incidents' deadlines (an earlier one
    replaces what it knew, a later one does not); a rescan reads every open incident."""
    config = make_config()
    store = new_store()
    dispatcher = Dispatcher(store, config, Metrics(), lambda: NOW, lambda _: None)
    keeper = Timekeeper(dispatcher, Metrics(), lambda: NOW)
    decision = decide(webhook(alert({"alertname": "PostgresDown", "service": "postgres-payments",
                                     "severity": "critical"})), config, State(), NOW)
    (incident,) = decision.incidents

    keeper.consider(decision.incidents)
    assert keeper._next == NOW + timedelta(minutes=5)  # the tier-1 rule's ack_within
    later = incident.deadlines.ack_by
    assert later is not None
    keeper._next = later - timedelta(minutes=1)
    keeper.consider(decision.incidents)
    assert keeper._next == later - timedelta(minutes=1)  # a later deadline changes nothing

    dispatcher.state = apply(State(), decision)
    keeper.wake()
    delay = await keeper.step()
    assert keeper._next == later
    assert delay == min(MAX_SLEEP, (later - NOW).total_seconds())
