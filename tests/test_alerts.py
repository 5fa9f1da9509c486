"""Tests of daemon.alerts: the webhook v4 model, parsed from real Alertmanager payloads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import daemon.alerts as alerts_module
from daemon.alerts import (
    FIRING,
    RESOLVED,
    Webhook,
    fingerprint,
    parse_alert,
    parse_body,
    parse_time,
    parse_webhook,
    to_json,
)
from daemon.errors import PayloadError

FIXTURES = Path(__file__).parent / "fixtures" / "alertmanager"
PAYLOADS = sorted(FIXTURES.rglob("*.json"))
ZERO_TIME = "0001-01-01T00:00:00Z"


def payload(name: str) -> Webhook:
    return parse_body((FIXTURES / name).read_bytes())


def raw(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_bytes())
    return data


def good_alert(**overrides: Any) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "status": "firing",
        "labels": {"alertname": "DiskFull", "severity": "critical"},
        "annotations": {"summary": "disk full"},
        "startsAt": "2026-12-03T12:21:43.724Z",
        "endsAt": ZERO_TIME,
        "generatorURL": "",
    }
    alert.update(overrides)
    return alert


def envelope(*alerts: Any, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"receiver": "r", "status": "firing", "alerts": list(alerts)}
    body.update(overrides)
    return body


def utc(year: int, month: int, day: int, hour: int, minute: int, second: int,
        micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


class TestParseBodyOnFixtures:
    """parse_body on every captured payload, and the facts each one is kept for."""

    def test_fixture_set_is_complete(self) -> None:
        """The fixture folder holds the 19 payloads its README describes, sub-folders included."""
        assert len(PAYLOADS) == 19
        assert FIXTURES / "derived" / "cloudeon_firing_max_alerts_2_truncated_1.json" in PAYLOADS

    @pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.relative_to(FIXTURES).as_posix())
    def test_every_payload_parses_completely(self, path: Path) -> None:
        """Every alert of every payload is kept, in order, with its own status and labels."""
        data = json.loads(path.read_bytes())
        webhook = parse_body(path.read_bytes())
        assert webhook.rejected == ()
        assert [a.status for a in webhook.alerts] == [a["status"] for a in data["alerts"]]
        assert [dict(a.labels) for a in webhook.alerts] == [a["labels"] for a in data["alerts"]]
        assert webhook.receiver == data["receiver"]
        assert webhook.status == data["status"]

    @pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.relative_to(FIXTURES).as_posix())
    def test_fingerprints_are_alertmanagers(self, path: Path) -> None:
        """Each alert's fingerprint is the one Alertmanager sent, or the same FNV-1a computed."""
        data = json.loads(path.read_bytes())
        webhook = parse_body(path.read_bytes())
        for alert, sent in zip(webhook.alerts, data["alerts"], strict=True):
            assert alert.fingerprint == fingerprint(alert.labels)
            if "fingerprint" in sent:
                assert alert.fingerprint == sent["fingerprint"]

    def test_single_firing_capture(self) -> None:
        """A captured single firing alert has its fields, a UTC start and no end."""
        webhook = payload("captured-am-0.25/01_api_firing.json")
        (alert,) = webhook.alerts
        assert alert.firing
        assert alert.name == "DiskFull"
        assert alert.fingerprint == "10fd2ebfb5d5241b"
        assert alert.starts_at == utc(2026, 12, 3, 12, 21, 43, 724000)
        assert alert.ends_at is None
        assert alert.annotations["summary"] == "Disk almost full on host1"
        assert alert.generator_url == "http://127.0.0.1:19090/graph?g0.expr=disk_used%3E0.95"
        assert webhook.group_key == '{}:{alertname="DiskFull"}'
        assert webhook.version == "4"
        assert webhook.external_url == "http://vm:19093"
        assert webhook.truncated_alerts == 0

    def test_resolved_capture_has_a_real_end(self) -> None:
        """A captured resolution keeps the fingerprint of its firing and gets a real endsAt."""
        (alert,) = payload("captured-am-0.25/03_api_resolved.json").alerts
        assert alert.status == RESOLVED
        assert not alert.firing
        assert alert.fingerprint == "10fd2ebfb5d5241b"
        assert alert.ends_at == utc(2026, 12, 3, 12, 22, 3, 592000)

    def test_truncated_capture(self) -> None:
        """With max_alerts 2 on a group of 5, two alerts arrive and truncatedAlerts is 3."""
        webhook = payload("captured-am-0.25/06_max_alerts2_firing_truncated3.json")
        assert webhook.truncated_alerts == 3
        assert [a.labels["instance"] for a in webhook.alerts] == ["h1", "h2"]
        assert [a.fingerprint for a in webhook.alerts] == ["02cc2c7b921216f0", "11ef14b453d771bf"]
        assert webhook.group_key == '{}/{test="maxalerts"}:{alertname="MaxTest"}'

    def test_truncated_resolution_capture(self) -> None:
        """The resolution of a truncated group is resolved for the two sent, still truncated 3."""
        webhook = payload("captured-am-0.25/08_max_alerts2_after_resolving_all.json")
        assert webhook.status == RESOLVED
        assert [a.status for a in webhook.alerts] == [RESOLVED, RESOLVED]
        assert webhook.truncated_alerts == 3

    def test_group_of_three_firing_then_resolved(self) -> None:
        """A group of three keeps three distinct fingerprints across firing and resolution."""
        firing = payload("captured-am-0.25/09_group_of_3_firing.json")
        resolved = payload("captured-am-0.25/11_group_of_3_all_resolved.json")
        fps = ["2918b3ada480545a", "d0bdb063a8be73e9", "3df8c8ed4e1b5c94"]
        assert [a.fingerprint for a in firing.alerts] == fps
        assert [a.fingerprint for a in resolved.alerts] == fps
        assert all(a.firing for a in firing.alerts)
        assert all(a.ends_at == utc(2026, 12, 3, 12, 23, 10, 81000) for a in resolved.alerts)
        assert dict(firing.common_annotations) == {"runbook_url": "https://runbooks.example/api"}

    def test_nanosecond_timestamp_from_amtool(self) -> None:
        """Go's nine fractional digits are cut to Python's six."""
        (alert,) = payload("captured-am-0.25/12_amtool_firing.json").alerts
        assert alert.starts_at == utc(2026, 12, 3, 12, 22, 19, 241852)
        assert alert.generator_url == ""
        assert alert.labels["severity"] == "info"

    def test_prometheus_chain_captures(self) -> None:
        """Alerts sent by a real Prometheus carry its labels and a sub-route groupKey."""
        firing = payload("captured-am-0.25/14_prometheus_chain_firing_up_eq_1.json")
        resolved = payload("captured-am-0.25/17_prometheus_chain_resolved_target_down.json")
        assert firing.alerts[0].fingerprint == "c35ba3fa7c0a5cb8"
        assert firing.group_key == '{}/{source="prometheus"}:{alertname="PrometheusTargetUp"}'
        assert resolved.alerts[0].status == RESOLVED
        assert resolved.alerts[0].ends_at == utc(2026, 12, 3, 12, 25, 41, 666000)

    def test_unicode_alertname_and_plus_eight_offset(self) -> None:
        """A CJK alertname survives, and +08:00 times are converted to UTC."""
        webhook = payload("cloudeon_firing_3alerts_unicode_alertname.json")
        assert len(webhook.alerts) == 3
        assert {a.name for a in webhook.alerts} == {"主机CPU使用率"}
        assert webhook.group_labels["alertname"] == "主机CPU使用率"
        assert webhook.group_key == '{}:{alertname="主机CPU使用率"}'
        assert webhook.receiver == "web\\.hook"
        first = webhook.alerts[0]
        assert first.starts_at == utc(2023, 3, 25, 6, 39, 51, 689433)
        assert first.starts_at is not None
        assert first.starts_at.tzinfo is UTC
        assert first.ends_at is None
        assert "&" in first.generator_url  # the JSON's \u0026
        assert [a.fingerprint for a in webhook.alerts] == [
            "72a2002704e27a2e", "ba18df1a61fe8e0b", "5a6e9db40eb24b04",
        ]

    def test_unicode_resolved_without_severity(self) -> None:
        """A resolved CJK alert has a real end in UTC and no severity label."""
        (alert,) = payload("cloudeon_resolved_unicode_no_severity.json").alerts
        assert alert.status == RESOLVED
        assert alert.name == "Grafana进程存活"
        assert "severity" not in alert.labels
        assert alert.labels["alertLevel"] == "exception"
        assert alert.starts_at == utc(2023, 3, 25, 7, 24, 36, 39625)
        assert alert.ends_at == utc(2023, 3, 25, 7, 27, 51, 39625)
        assert alert.fingerprint == "20453f227ff62f33"

    def test_derived_truncated_payload(self) -> None:
        """The derived max_alerts payload has two alerts and truncatedAlerts 1."""
        webhook = payload("derived/cloudeon_firing_max_alerts_2_truncated_1.json")
        assert webhook.truncated_alerts == 1
        assert len(webhook.alerts) == 2

    def test_mixed_firing_and_resolved_with_minus_two_offset(self) -> None:
        """Issue 1051 mixes statuses, has a `status` label, -02:00 times and no fingerprints."""
        webhook = payload("am_issue1051_mixed_firing_and_resolved.json")
        firing, resolved = webhook.alerts
        assert webhook.status == FIRING
        assert (firing.status, resolved.status) == (FIRING, RESOLVED)
        assert firing.labels["status"] == "firing"
        assert resolved.labels["status"] == "resolved"
        assert firing.starts_at == utc(2017, 10, 21, 17, 50, 17, 160954)
        assert firing.ends_at is None
        assert resolved.ends_at == utc(2017, 10, 21, 17, 50, 28, 806970)
        assert firing.fingerprint != resolved.fingerprint
        assert firing.fingerprint == "44a6bafcce26446c"
        assert webhook.truncated_alerts == 0

    def test_pre_019_resolved_without_fingerprint(self) -> None:
        """An old resolved notification gets its fingerprint computed and +01:00 made UTC."""
        (alert,) = payload("alertmanager_bot_resolved_pre019_no_fingerprint.json").alerts
        assert alert.fingerprint == fingerprint({"alertname": "Fire", "severity": "critical"})
        assert alert.fingerprint == "88cbf0084cf27726"
        assert alert.starts_at == utc(2018, 11, 4, 21, 43, 58, 283995)
        assert alert.ends_at == utc(2018, 11, 4, 21, 48, 13, 283995)

    def test_v3_payload_with_numeric_group_key(self) -> None:
        """Version 3's numeric groupKey becomes its digits as text; the long summary is intact."""
        data = raw("prometheus_bot_v3_very_long_annotation.json")
        assert isinstance(data["groupKey"], int)
        webhook = payload("prometheus_bot_v3_very_long_annotation.json")
        assert webhook.version == "3"
        assert webhook.group_key == "43434343434343434343"
        (alert,) = webhook.alerts
        assert len(alert.annotations["summary"]) == 4955
        assert alert.fingerprint == fingerprint(alert.labels)

    def test_subroute_payload_without_severity(self) -> None:
        """A payload from a child route keeps its regex-escaped receiver and its priority label."""
        webhook = payload("infra_prometheus_webhook_single_firing_subroute_no_severity.json")
        assert webhook.receiver == "web\\.hook-P0"
        assert webhook.group_key == (
            '{}/{priority="P0"}:{alertname="Instance Is Down", priority="P0"}'
        )
        (alert,) = webhook.alerts
        assert alert.labels["priority"] == "P0"
        assert "severity" not in alert.labels
        assert alert.fingerprint == "4e4c4c3d872bf6d8"

    def test_kubesphere_payloads_without_version_or_group_key(self) -> None:
        """Envelopes lacking version, groupKey and truncatedAlerts parse with empty defaults."""
        single = payload("kubesphere_k8s_single_firing_KubePodCrashLooping.json")
        grouped = payload("kubesphere_k8s_grouped_9_firing_CPUThrottlingHigh.json")
        assert (single.version, single.group_key, single.truncated_alerts) == ("", "", 0)
        assert single.alerts[0].fingerprint == "a4c6c4f7a49ca0ae"
        assert len(grouped.alerts) == 9
        assert len({a.fingerprint for a in grouped.alerts}) == 9
        assert {a.name for a in grouped.alerts} == {"CPUThrottlingHigh"}

    def test_minimal_snmp_payload(self) -> None:
        """Alerts without times or fingerprints get None times and computed fingerprints."""
        webhook = payload("snmp_notifier_minimal_mixed_4alerts.json")
        assert [a.status for a in webhook.alerts] == [FIRING, RESOLVED, FIRING, RESOLVED]
        assert all(a.starts_at is None and a.ends_at is None for a in webhook.alerts)
        assert all(a.generator_url == "" for a in webhook.alerts)
        assert len({a.fingerprint for a in webhook.alerts}) == 4
        assert dict(webhook.common_labels) == {}
        assert webhook.external_url == ""
        assert dict(webhook.group_labels) == {"environment": "production", "label": "test"}


class TestTwoDecoders:
    """Webhook bodies are decoded by orjson where it reads them as json does, by json where
    it refuses them or could read them otherwise; the webhook is the same either way."""

    @pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.relative_to(FIXTURES).as_posix())
    def test_every_payload_parses_as_through_json(self, path: Path) -> None:
        """Each captured payload, decoded by orjson, makes the webhook json's decoding makes."""
        raw = path.read_bytes()
        assert parse_body(raw) == parse_webhook(json.loads(raw))

    def test_only_a_number_past_64_bits_takes_a_payload_to_json(self) -> None:
        """orjson decodes every captured payload but the one whose numeric groupKey (an old
        sender's) has 20 digits."""
        refused = [p.name for p in PAYLOADS
                   if alerts_module._fast_decode(p.read_bytes()) is alerts_module._REFUSED]
        assert refused == ["prometheus_bot_v3_very_long_annotation.json"]
        assert payload(refused[0]).group_key == "43434343434343434343"

    def test_integers_past_64_bits_stay_integers(self) -> None:
        """orjson would read these as floats: json reads them, exactly."""
        wide = 2**70 + 1
        webhook = parse_body(json.dumps(envelope(
            good_alert(generatorURL=wide), truncatedAlerts=wide, groupKey=-wide)).encode())
        assert webhook.truncated_alerts == wide
        assert webhook.group_key == str(-wide)
        assert webhook.alerts[0].generator_url == str(wide)

    def test_what_orjson_refuses_is_read_by_json(self) -> None:
        """NaN, and a UTF-16 body: json reads them as it always did."""
        nan = b'{"alerts": [], "groupKey": NaN}'
        assert alerts_module._fast_decode(nan) is alerts_module._REFUSED
        assert parse_body(nan).group_key == "nan"
        utf16 = json.dumps({"alerts": [], "receiver": "caf\u00e9"}).encode("utf-16")
        assert parse_body(utf16).receiver == "café"


class TestParseBodyErrors:
    """parse_body and parse_webhook refuse unusable bodies with a message naming the field."""

    def test_not_json(self) -> None:
        """A body that is not JSON is refused with the decoder's position."""
        with pytest.raises(PayloadError) as caught:
            parse_body(b"not json")
        assert str(caught.value) == (
            "body is not valid JSON: Expecting value: line 1 column 1 (char 0)"
        )

    def test_not_utf8(self) -> None:
        """A body that is not UTF-8 text is refused as invalid JSON, not crashed on."""
        with pytest.raises(PayloadError, match=r"^body is not valid JSON: "):
            parse_body(b'{"alerts": ["\xff"]}')

    def test_integer_beyond_python_digit_limit(self) -> None:
        """A number too long for Python's int conversion is a PayloadError, not a crash."""
        with pytest.raises(PayloadError, match=r"^body is not valid JSON: Exceeds the limit"):
            parse_body(b'{"alerts": [], "truncatedAlerts": ' + b"1" * 5000 + b"}")

    def test_deeply_nested(self) -> None:
        """A body nested too deeply to decode is a PayloadError, not a crash."""
        with pytest.raises(PayloadError, match=r"^body is not valid JSON: maximum recursion"):
            parse_body(b"[" * 100_000)

    def test_json_array(self) -> None:
        """A JSON array is not a notification."""
        with pytest.raises(PayloadError) as caught:
            parse_body(b"[]")
        assert str(caught.value) == "body must be a JSON object, got list"

    def test_missing_alerts(self) -> None:
        """An object without `alerts` is refused naming the field."""
        with pytest.raises(PayloadError) as caught:
            parse_webhook({"receiver": "r", "status": "firing"})
        assert str(caught.value) == "field 'alerts' is missing"

    def test_alerts_not_a_list(self) -> None:
        """`alerts` must be a list."""
        with pytest.raises(PayloadError) as caught:
            parse_webhook(envelope(alerts={"status": "firing"}))
        assert str(caught.value) == "field 'alerts' must be a list, got dict"

    def test_bad_truncated_alerts(self) -> None:
        """`truncatedAlerts` must be a non-negative integer."""
        with pytest.raises(PayloadError) as caught:
            parse_webhook(envelope(truncatedAlerts=-1))
        assert str(caught.value) == "field 'truncatedAlerts' must be a non-negative integer"

    def test_non_string_common_label(self) -> None:
        """A non-string value in the envelope's labels refuses the whole body."""
        with pytest.raises(PayloadError) as caught:
            parse_webhook(envelope(commonLabels={"severity": 3}))
        assert str(caught.value) == "field commonLabels.severity must be a string, got int"

    def test_bad_receiver_type(self) -> None:
        """A receiver that is neither text nor a number is refused naming the field."""
        with pytest.raises(PayloadError) as caught:
            parse_webhook(envelope(receiver=["r"]))
        assert str(caught.value) == "field 'receiver' must be a string, got list"

    def test_bad_alert_is_rejected_alone_and_still_paged(self) -> None:
        """One bad alert is rejected with a reason naming its field, and kept in its place
        as far as it can be read, flagged (an alert is never dropped); the others are kept
        as they are."""
        webhook = parse_webhook(envelope(
            good_alert(labels={"alertname": "A"}),
            good_alert(status="burning", fingerprint="0123456789abcdef"),
            good_alert(labels={"alertname": "C"}),
        ))
        assert [a.name for a in webhook.alerts] == ["A", "DiskFull", "C"]
        assert len(webhook.rejected) == 1
        assert webhook.rejected[0].index == 1
        reason = "alerts[1]: field 'status' must be 'firing' or 'resolved', got 'burning'"
        assert webhook.rejected[0].reason == reason
        salvaged = webhook.alerts[1]
        assert salvaged.firing
        assert dict(salvaged.labels) == {"alertname": "DiskFull", "severity": "critical",
                                         "firehouse_malformed": "true"}
        assert salvaged.annotations["summary"] == (
            f"MALFORMED alert, paged as far as it could be read ({reason}): disk full")
        assert salvaged.fingerprint == "0123456789abcdef"  # Alertmanager's, usable
        assert salvaged.starts_at == utc(2026, 12, 3, 12, 21, 43, 724000)
        assert "firehouse_malformed" not in webhook.alerts[0].labels

    def test_what_cannot_be_read_of_a_malformed_alert_is_left_out(self) -> None:
        """Labels that are not strings, a time that does not parse, a fingerprint that is not
        one: left out, the fingerprint made from the labels kept (the same broken alert sent
        again is the same alert); a plain `resolved` is kept; a non-object is an alert too."""
        broken = good_alert(status="resolved", labels={"alertname": "X", "code": 5},
                            startsAt="not-a-date", fingerprint=7)
        webhook = parse_webhook(envelope(broken, "junk"))
        first, second = webhook.alerts
        assert not first.firing
        assert dict(first.labels) == {"alertname": "X", "firehouse_malformed": "true"}
        assert first.starts_at is None
        assert first.fingerprint == fingerprint(first.labels)
        assert parse_webhook(envelope(broken)).alerts[0].fingerprint == first.fingerprint
        assert second.firing
        assert dict(second.labels) == {"alertname": "MalformedAlert",
                                       "firehouse_malformed": "true"}
        assert [r.index for r in webhook.rejected] == [0, 1]

    def test_alert_that_is_not_an_object(self) -> None:
        """An alert that is not an object is rejected saying what it was."""
        webhook = parse_webhook(envelope("oops", good_alert()))
        assert [a.name for a in webhook.alerts] == ["MalformedAlert", "DiskFull"]
        assert webhook.rejected[0].reason == "alerts[0]: must be an object, got str"

    def test_alert_without_labels_is_malformed(self) -> None:
        """Webhook v4 always sends `labels`: an alert without them is rejected naming the
        field, and still paged as far as it can be read, flagged, under Alertmanager's
        fingerprint and with its start time."""
        body = (b'{"version":"4","status":"firing","alerts":[{"status":"firing",'
                b'"startsAt":"2026-12-04T10:00:00Z","fingerprint":"aaaa000000000002"}]}')
        webhook = parse_body(body)
        assert [(r.index, r.reason) for r in webhook.rejected] == [
            (0, "alerts[0]: field 'labels' is missing")]
        (salvaged,) = webhook.alerts
        assert salvaged.firing
        assert dict(salvaged.labels) == {"alertname": "MalformedAlert",
                                         "firehouse_malformed": "true"}
        assert salvaged.annotations["summary"] == (
            "MALFORMED alert, paged as far as it could be read (alerts[0]: field 'labels' "
            "is missing)")
        assert salvaged.fingerprint == "aaaa000000000002"
        assert salvaged.starts_at == utc(2026, 12, 4, 10, 0, 0)

    def test_null_labels_are_malformed(self) -> None:
        """`labels: null` is no label set either: rejected naming the field and the null;
        an empty label set is still an alert with no labels."""
        webhook = parse_webhook(envelope(good_alert(labels=None), good_alert(labels={})))
        assert [r.reason for r in webhook.rejected] == [
            "alerts[0]: field 'labels' must be an object of strings, got null"]
        assert webhook.alerts[0].labels["firehouse_malformed"] == "true"
        assert dict(webhook.alerts[1].labels) == {}

    def test_non_string_label_value(self) -> None:
        """A label value that is not a string rejects that alert, naming the label."""
        webhook = parse_webhook(envelope(good_alert(labels={"alertname": "A", "code": 500})))
        assert [dict(a.labels) for a in webhook.alerts] == [
            {"alertname": "A", "firehouse_malformed": "true"}]  # paged as far as read
        assert webhook.rejected[0].reason == (
            "alerts[0]: field labels.code must be a string, got int"
        )

    def test_non_string_annotation_value(self) -> None:
        """An annotation value that is null rejects that alert, naming the annotation."""
        webhook = parse_webhook(envelope(good_alert(annotations={"summary": None})))
        assert webhook.rejected[0].reason == (
            "alerts[0]: field annotations.summary must be a string, got null"
        )

    def test_bad_timestamp(self) -> None:
        """A timestamp that is not RFC 3339 rejects that alert, naming the field and value."""
        webhook = parse_webhook(envelope(good_alert(startsAt="yesterday")))
        assert webhook.rejected[0].reason == (
            "alerts[0]: field 'startsAt' is not an RFC 3339 time: 'yesterday'"
        )

    def test_timestamp_without_zone(self) -> None:
        """A timestamp without a time zone is refused rather than guessed."""
        webhook = parse_webhook(envelope(good_alert(endsAt="2026-12-03T12:21:43")))
        assert webhook.rejected[0].reason == (
            "alerts[0]: field 'endsAt' is not an RFC 3339 time: '2026-12-03T12:21:43'"
        )

    def test_timestamp_of_wrong_type(self) -> None:
        """A numeric timestamp is refused naming the field and the type."""
        webhook = parse_webhook(envelope(good_alert(startsAt=1700000000)))
        assert webhook.rejected[0].reason == (
            "alerts[0]: field 'startsAt' must be an RFC 3339 string, got int"
        )

    def test_fingerprint_of_wrong_type(self) -> None:
        """A fingerprint that is not a string rejects that alert."""
        webhook = parse_webhook(envelope(good_alert(fingerprint=12)))
        assert webhook.rejected[0].reason == (
            "alerts[0]: field 'fingerprint' must be a string, got int"
        )

    def test_unknown_fields_are_kept_out_of_the_way(self) -> None:
        """Fields Alertmanager adds later (routeLabels, notification_reason) are not fatal."""
        webhook = parse_webhook(envelope(
            good_alert(notification_reason="repeat"), routeLabels={"team": "db"},
        ))
        assert len(webhook.alerts) == 1
        assert webhook.rejected == ()


class TestParseBodyLoneSurrogates:
    """parse_body replaces lone UTF-16 surrogates, which UTF-8 cannot encode, by U+FFFD."""

    def test_lone_high_surrogate(self) -> None:
        """A lone high surrogate in an annotation becomes U+FFFD."""
        body = (b'{"alerts":[{"status":"firing","labels":{"alertname":"x"},'
                b'"annotations":{"summary":"\\ud800"}}]}')
        alert = parse_body(body).alerts[0]
        assert alert.annotations["summary"] == "\ufffd"
        assert json.dumps(to_json(alert), ensure_ascii=False).encode("utf-8")

    def test_lone_low_surrogate_in_keys_and_values(self) -> None:
        """A lone low surrogate is replaced in label names and values, and in lists."""
        body = (b'{"receiver":"r\\uDC00","alerts":[{"status":"firing","labels":'
                b'{"alertname":"x","team\\udfff":"a\\udc00b"}}],"x":[["\\udc01"]]}')
        webhook = parse_body(body)
        assert webhook.receiver == "r\ufffd"
        assert dict(webhook.alerts[0].labels) == {"alertname": "x", "team\ufffd": "a\ufffdb"}

    def test_valid_pair_is_kept(self) -> None:
        """An escaped surrogate pair is the character it encodes, next to a lone one."""
        body = (b'{"alerts":[{"status":"firing","labels":{"alertname":"\\ud83d\\udd25"},'
                b'"annotations":{"summary":"\\ud83d\\udd25 \\ud83d!"}}]}')
        alert = parse_body(body).alerts[0]
        assert alert.name == "\U0001f525"
        assert alert.annotations["summary"] == "\U0001f525 \ufffd!"

    def test_surrogate_encoded_as_utf8_bytes(self) -> None:
        """A surrogate written as raw UTF-8 bytes (CESU-8 style) is repaired too."""
        body = (b'{"alerts":[{"status":"firing","labels":{"alertname":"x"},'
                b'"annotations":{"lone":"\xed\xa0\x80","pair":"\xed\xa0\xbd\xed\xb4\xa5"}}]}')
        annotations = parse_body(body).alerts[0].annotations
        assert dict(annotations) == {"lone": "\ufffd", "pair": "\U0001f525"}

    def test_utf16_body(self) -> None:
        """A UTF-16 body, where the byte pattern cannot be seen, is repaired all the same."""
        text = ('{"alerts":[{"status":"firing","labels":{"alertname":"x"},'
                '"annotations":{"summary":"\\udbff"}}]}')
        alert = parse_body(text.encode("utf-16-le")).alerts[0]
        assert alert.annotations["summary"] == "\ufffd"

    def test_clean_body_is_not_walked(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a surrogate escape in the body, the decoded data is used as it is."""
        def walk(data: Any) -> Any:
            raise AssertionError("walked a body without surrogates")

        monkeypatch.setattr("daemon.alerts._without_lone_surrogates", walk)
        # As Alertmanager sends it: UTF-8, not \u escapes.
        body = json.dumps(envelope(good_alert(annotations={"summary": "\U0001f525 ok"})),
                          ensure_ascii=False)
        assert parse_body(body.encode()).alerts[0].annotations["summary"] == "\U0001f525 ok"


class TestParseAlert:
    """parse_alert on single alert objects."""

    def test_a_fingerprint_with_nul_is_refused(self) -> None:
        """A fingerprint is an alert's identity, and PostgreSQL's text cannot hold NUL: the
        alert is refused, naming why, rather than stored under another fingerprint."""
        with pytest.raises(PayloadError, match="'fingerprint' must not contain NUL"):
            parse_alert(good_alert(fingerprint="abc\x00def"))

    def test_given_fingerprint_is_trusted(self) -> None:
        """A fingerprint sent by Alertmanager is kept as sent."""
        assert parse_alert(good_alert(fingerprint="0123456789abcdef")).fingerprint == (
            "0123456789abcdef"
        )

    def test_empty_fingerprint_is_computed(self) -> None:
        """An empty fingerprint is replaced by the computed one."""
        alert = parse_alert(good_alert(fingerprint=""))
        assert alert.fingerprint == fingerprint(alert.labels)

    def test_labels_are_read_only(self) -> None:
        """The parsed labels cannot be changed after parsing."""
        alert = parse_alert(good_alert())
        with pytest.raises(TypeError):
            alert.labels["severity"] = "info"  # type: ignore[index]

    def test_missing_alertname(self) -> None:
        """An alert without alertname has a placeholder name."""
        assert parse_alert(good_alert(labels={})).name == "(no alertname)"


class TestFingerprint:
    """fingerprint: Alertmanager's FNV-1a 64 over sorted label names and values."""

    def test_matches_alertmanager_captures(self) -> None:
        """Known Alertmanager fingerprints are reproduced from their labels."""
        labels = {
            "alertname": "DiskFull", "instance": "host1:9100", "job": "node",
            "severity": "critical",
        }
        assert fingerprint(labels) == "10fd2ebfb5d5241b"

    def test_order_of_labels_does_not_matter(self) -> None:
        """The same labels in another order give the same fingerprint."""
        assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})

    def test_name_value_boundary_matters(self) -> None:
        """Moving a character between a name and its value changes the fingerprint."""
        assert fingerprint({"ab": "c"}) != fingerprint({"a": "bc"})

    def test_empty_label_set(self) -> None:
        """The empty label set hashes to the FNV-1a offset basis, as in Prometheus."""
        assert fingerprint({}) == "cbf29ce484222325"


class TestParseTime:
    """parse_time: RFC 3339 to UTC, Go's zero time to None."""

    def test_go_zero_time_is_none(self) -> None:
        """Go's zero time means no end."""
        assert parse_time(ZERO_TIME) is None

    def test_offset_is_converted_to_utc(self) -> None:
        """A +08:00 time is the same instant in UTC."""
        assert parse_time("2023-03-25T14:39:51+08:00") == utc(2023, 3, 25, 6, 39, 51)

    def test_lower_case_z(self) -> None:
        """A lower-case z is UTC too."""
        assert parse_time("2023-03-25T14:39:51z") == utc(2023, 3, 25, 14, 39, 51)

    def test_missing_zone_is_an_error(self) -> None:
        """A time without a zone raises ValueError."""
        with pytest.raises(ValueError, match="no time zone"):
            parse_time("2023-03-25T14:39:51")

    def test_offset_before_year_one_is_a_payload_error(self) -> None:
        """A time that an offset pushes before year 1 is refused, not crashed on."""
        webhook = parse_webhook(envelope(good_alert(startsAt="0001-01-01T00:30:00+01:00")))
        assert webhook.rejected[0].reason == (
            "alerts[0]: field 'startsAt' is not an RFC 3339 time: '0001-01-01T00:30:00+01:00'"
        )


class TestToJson:
    """to_json: the alert back in Alertmanager's field names."""

    def test_round_trip_fields(self) -> None:
        """The JSON form carries every field, with UTC ISO times and null for no end."""
        (alert,) = payload("captured-am-0.25/01_api_firing.json").alerts
        assert to_json(alert) == {
            "status": "firing",
            "labels": {
                "alertname": "DiskFull", "instance": "host1:9100", "job": "node",
                "severity": "critical",
            },
            "annotations": {
                "description": "/ is 97% full", "summary": "Disk almost full on host1",
            },
            "startsAt": "2026-12-03T12:21:43.724000+00:00",
            "endsAt": None,
            "generatorURL": "http://127.0.0.1:19090/graph?g0.expr=disk_used%3E0.95",
            "fingerprint": "10fd2ebfb5d5241b",
        }
