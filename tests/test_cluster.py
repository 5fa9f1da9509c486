"""How a replica judges the others on its database (daemon/cluster.py): a dry-run replica
stands aside while replicas that page for real are seen, or left without stopping cleanly;
differing configurations are reported, not refused. The real processes are in
tests/test_ha.py; these are the pure rules and the digest they compare."""

from __future__ import annotations

import shutil
from pathlib import Path

from daemon.cluster import FORGOTTEN_AFTER, SEEN_WITHIN, decision_digest, judge
from daemon.store import Replica
from tests.helpers import SETTINGS, make_config

NOW = 1_800_000_000.0


def replica(name: str, *, dry_run: bool = False, digest: str = "same",
            seen_ago: float = 1.0) -> Replica:
    return Replica(name, dry_run, digest, NOW - seen_ago)


def test_replicas_that_agree_say_nothing() -> None:
    verdict = judge(replica("me"), [replica("b"), replica("c")], NOW)
    assert verdict.refusal is None
    assert verdict.warnings == ()
    assert (verdict.live, verdict.dry_run, verdict.configurations) == (3, 0, 1)


def test_a_dry_run_replica_alone_decides() -> None:
    """A cluster in dry-run as a whole (a trial of the HA setup) works as one replica does."""
    verdict = judge(replica("me", dry_run=True), [replica("b", dry_run=True)], NOW)
    assert verdict.refusal is None
    assert (verdict.live, verdict.dry_run) == (0, 2)


def test_a_dry_run_replica_beside_a_live_one_refuses_naming_it() -> None:
    verdict = judge(replica("me", dry_run=True), [replica("host-a:12:ab")], NOW)
    assert verdict.refusal is not None
    assert "in dry-run" in verdict.refusal
    assert "host-a:12:ab" in verdict.refusal
    assert "routing keys" in verdict.refusal
    assert (verdict.live, verdict.dry_run) == (1, 1)


def test_a_live_replica_beside_dry_run_ones_warns_and_decides() -> None:
    peers = [replica(f"dry-{i}", dry_run=True) for i in range(5)]
    verdict = judge(replica("me"), peers, NOW)
    assert verdict.refusal is None
    (warning,) = verdict.warnings
    assert "5 replica(s)" in warning
    assert "are in dry-run" in warning
    assert "dry-0, dry-1, dry-2 and 2 more" in warning  # named, but not all of a crowd


def test_a_live_replica_that_did_not_stop_cleanly_keeps_dry_run_aside() -> None:
    """Its row stays (a clean stop deletes it): not counted as running, but the database is
    a live one."""
    gone = replica("crashed", seen_ago=SEEN_WITHIN + 60)
    verdict = judge(replica("me", dry_run=True), [gone], NOW)
    assert verdict.refusal is not None
    assert "did not stop cleanly" in verdict.refusal
    assert "crashed" in verdict.refusal
    assert f"last seen {round(SEEN_WITHIN + 60)}s ago" in verdict.refusal
    assert verdict.live == 0  # not running


def test_dry_run_replicas_gone_are_not_counted() -> None:
    gone = replica("old-dry", dry_run=True, seen_ago=SEEN_WITHIN + 1)
    verdict = judge(replica("me"), [gone], NOW)
    assert verdict.warnings == ()
    assert (verdict.live, verdict.dry_run) == (1, 0)
    assert FORGOTTEN_AFTER > SEEN_WITHIN


def test_different_configurations_are_reported_by_digest() -> None:
    verdict = judge(replica("me", digest="aaa"),
                    [replica("b", digest="bbb"), replica("c", digest="aaa")], NOW)
    assert verdict.refusal is None
    (warning,) = verdict.warnings
    assert "2 different configurations" in warning
    assert "aaa on me, c" in warning
    assert "bbb on b" in warning
    assert verdict.configurations == 2


def test_the_digest_ignores_where_a_replica_listens_keeps_state_and_logs(
        tmp_path: Path) -> None:
    """Replicas on one database differ in these; what decides pages does not. A rule's
    change, or the routing of PagerDuty, is told apart."""
    base = make_config()
    elsewhere = make_config(listen="0.0.0.0:9999", state=tmp_path / "other.db")
    assert decision_digest(elsewhere) == decision_digest(base)
    assert elsewhere.digest != base.digest  # the reload metric's digest does see them
    assert decision_digest(make_config(dry_run=True)) == decision_digest(base)  # told apart
    assert decision_digest(make_config(pagerduty_url="http://127.0.0.1:1/x")) != \
        decision_digest(base)

    # The same settings from another place (each replica's own file) digest the same; the
    # rules changed do not.
    copy = tmp_path / "firehouse.yml"
    shutil.copy(SETTINGS, copy)
    text = copy.read_text(encoding="utf-8")
    root = SETTINGS.parent
    for name in ("rules", "dependency_maps"):
        shutil.copytree(root / name, tmp_path / name)
    moved = make_config(copy)
    assert decision_digest(moved) == decision_digest(base), text
    rule = next((tmp_path / "rules").glob("*.yaml"))
    rule.write_text(rule.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    assert decision_digest(make_config(copy)) != decision_digest(base)
