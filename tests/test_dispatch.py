"""The dispatcher: decisions on in-memory state, committed to a real store (each backend)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from daemon.config import Config
from daemon.decide import Decision, decide
from daemon.dispatch import Dispatcher, collector_paused
from daemon.errors import StoreError
from daemon.metrics import Metrics
from tests.conftest import NewStore
from tests.helpers import NOW, BeforeWrite, alert, resolved, undamped, webhook


class GatedStore(BeforeWrite):
    """In front of a store class: writes wait for the test, and may then fail like a bad
    disk."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gates: dict[str, asyncio.Event] = {}
        self.failing: set[str] = set()

    async def before_write(self, decision: Decision) -> None:
        """Wait for the alert's gate, then fail or let it be written."""
        name = decision.explanations[0].alertname
        if name in self.gates:
            await self.gates[name].wait()
        if name in self.failing:
            raise StoreError(f"could not write {name} to {type(self).__name__}: disk I/O error")


@pytest.fixture
async def store(new_store: NewStore) -> AsyncIterator[GatedStore]:
    """An open gated store of the test's backend on a fresh database."""
    opened: GatedStore = new_store(GatedStore)
    await opened.open()
    yield opened
    await opened.close()


def on(service: str, name: str) -> dict[str, object]:
    """A critical alert on a service of the example map."""
    return alert({"alertname": name, "service": service, "severity": "critical"})


class TestDispatcher:
    async def test_failed_commit_is_forgotten_so_the_retry_pages(
        self, store: GatedStore, config: Config
    ) -> None:
        """After a failed commit the engine forgets that decision, so Alertmanager's retry pages."""
        dispatcher = Dispatcher(store, config, Metrics(), lambda: NOW, lambda _: None)
        store.failing.add("PaymentsDown")

        with pytest.raises(StoreError):
            await dispatcher.handle(webhook(on("payments", "PaymentsDown")))
        store.failing.clear()
        retried = await dispatcher.handle(webhook(on("payments", "PaymentsDown")))

        assert {(e.action, e.target) for e in retried.events} == {
            ("trigger", "shop-app-oncall"), ("trigger", "checkout-owner"),
            ("trigger", "command-center"), ("trigger", "business-line")}

    async def test_failure_does_not_forget_a_commit_still_in_flight(
        self, store: GatedStore, config: Config
    ) -> None:
        """A failed commit does not make the engine forget another decision committed meanwhile."""
        dispatcher = Dispatcher(store, config, Metrics(), lambda: NOW, lambda _: None)
        store.gates = {"CartDown": asyncio.Event(), "OrdersDown": asyncio.Event()}
        store.failing.add("CartDown")
        cart = webhook(on("cart", "CartDown"))
        orders = webhook(on("orders", "OrdersDown"))
        failing = asyncio.create_task(dispatcher.handle(cart))
        in_flight = asyncio.create_task(dispatcher.handle(orders))
        await asyncio.sleep(0)  # both decided, both commits waiting

        store.gates["CartDown"].set()
        with pytest.raises(StoreError):
            await failing
        store.gates["OrdersDown"].set()
        first = await in_flight

        store.failing.clear()

        assert first.events
        assert (await dispatcher.handle(orders)).events == ()
        assert (await dispatcher.handle(cart)).events

    async def test_kept_failing_bitset_is_what_the_failing_services_say(
        self, store: GatedStore, config: Config
    ) -> None:
        """The dispatcher keeps the failing services as a bitset, so that correlating an
        alert need not build it; through opening, joining, a merge, a resolution and a
        reload it stays what the incidents' services say, and decisions match the ones
        made without it."""
        dispatcher = Dispatcher(store, undamped(config), Metrics(), lambda: NOW,
                                lambda _: None)
        graph = config.graph

        def kept() -> int:
            failing = dispatcher.state.failing
            assert failing is not None
            assert failing[0] is dispatcher.config.graph
            assert failing[1] == dispatcher.config.graph.mask(dispatcher.state.by_service)
            return failing[1]

        await dispatcher.load()
        assert kept() == 0
        cart = on("cart", "CartDown")
        payments_db = on("postgres-payments", "PaymentsDbDown")
        steps = [
            webhook(cart),                     # opens one fire
            webhook(payments_db),              # another, unrelated to cart
            webhook(on("checkout", "CheckoutDown")),  # connected to both: they merge
            webhook(resolved(cart), resolved(payments_db)),
        ]
        for step in steps:
            before = dispatcher.state
            without = decide(step, dispatcher.config, replace(before, failing=None), NOW)
            decision = await dispatcher.handle(step)
            assert [(e.action, e.dedup_key) for e in decision.events] == [
                (e.action, e.dedup_key) for e in without.events]
            assert [i.id for i in decision.incidents] == [i.id for i in without.incidents]
            kept()
        # One fire, failing where its alerts failed (an incident keeps its services).
        assert len(dispatcher.state.open) == 1
        everything = graph.mask(["cart", "postgres-payments", "checkout"])
        assert kept() == everything

        await dispatcher.load()
        assert kept() == everything

    async def test_refresh_forgets_resolutions_past_retention(
        self, store: GatedStore, config: Config
    ) -> None:
        """After the store drops old resolutions, a refresh drops them from memory too."""
        from datetime import timedelta  # noqa: PLC0415

        now = [NOW]
        dispatcher = Dispatcher(store, config, Metrics(), lambda: now[0], lambda _: None)
        for n in range(5):
            await dispatcher.handle(webhook(resolved_alert(f"Gone{n}")))
        assert len(dispatcher.state.resolved) == 5

        now[0] = NOW + timedelta(hours=config.settings.resolved_retention_hours + 1)
        await store.cleanup(now[0], now[0] - timedelta(
            hours=config.settings.resolved_retention_hours))
        await dispatcher.refresh()

        assert dispatcher.state.resolved == {}


class TestTruncationMetric:
    async def test_cut_summaries_and_details_are_counted(
        self, store: GatedStore, config: Config
    ) -> None:
        """Each event cut to fit PagerDuty counts once per part cut; an uncut one not at all."""
        metrics = Metrics()
        dispatcher = Dispatcher(store, config, metrics, lambda: NOW, lambda _: None)
        huge = alert({"alertname": "HugeAnn", "service": "checkout", "severity": "warning"},
                     annotations={"description": "trace\n" * 120_000, "summary": "x" * 2000})

        decision = await dispatcher.handle(webhook(huge))

        assert len(decision.events) == 4  # three technical pages cut, the business update not
        counted = metrics.events_truncated
        assert (counted.labels("summary")._value.get(),
                counted.labels("details")._value.get()) == (3, 3)


def resolved_alert(name: str) -> dict[str, object]:
    """A resolved alert never seen firing: the engine remembers its resolution."""
    return alert({"alertname": name, "service": "payments"}, status="resolved")


class TestCollectorPaused:
    """Steps allocate thousands of objects: the cyclic collector waits until they are made."""

    @pytest.mark.parametrize("in_thread", [False, True])
    async def test_a_step_runs_with_the_collector_off_and_it_is_back_after(
        self, store: GatedStore, config: Config, in_thread: bool
    ) -> None:
        dispatcher = Dispatcher(store, config, Metrics(), lambda: NOW, lambda _: None)
        await dispatcher.load()
        seen: list[bool] = []

        def step(config: Config, state: Any, now: Any) -> Decision:
            seen.append(gc.isenabled())
            return decide(webhook(on("payments", "PaymentsDown")), config, state, now)

        assert gc.isenabled()
        decision = await dispatcher.run(step, in_thread=in_thread)

        assert seen == [False]
        assert gc.isenabled()
        assert decision.events  # the step's decision was made and committed

    async def test_a_failing_step_turns_the_collector_back_on(
        self, store: GatedStore, config: Config
    ) -> None:
        dispatcher = Dispatcher(store, config, Metrics(), lambda: NOW, lambda _: None)
        await dispatcher.load()

        def step(config: Config, state: Any, now: Any) -> Decision:
            raise ValueError("a bug in a step")

        with pytest.raises(ValueError, match="a bug in a step"):
            await dispatcher.run(step)
        assert gc.isenabled()

    def test_a_collector_turned_off_by_someone_else_stays_off(self) -> None:
        gc.disable()
        try:
            with collector_paused():
                assert not gc.isenabled()
            assert not gc.isenabled()
        finally:
            gc.enable()
