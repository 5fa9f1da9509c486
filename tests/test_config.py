"""Tests of daemon.config: settings from file and environment, and the whole config checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import (
    Config,
    Settings,
    Target,
    dry_run_state_warning,
    load_config,
    load_store_settings,
    mask,
)
from daemon.errors import ConfigError, Problem

ROOT = Path(__file__).parent.parent
SHIPPED = ROOT / "firehouse.yml"
SHIPPED_TARGETS = (
    "command-center", "ops-management", "business-line", "shop-app-oncall", "identity-oncall",
    "dba-oncall", "storage-oncall", "network-oncall", "messaging-oncall", "data-oncall",
    "checkout-owner", "login-owner", "search-owner",
)
# Shaped like a PagerDuty integration key (32 characters), and unlike anything else here.
SECRET = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY42"
FILE_SECRET = "F1LEKEYF1LEKEYF1LEKEYF1LEKEYF1L7"

MAP = """\
services:
  web:
    tier: 1
    component: application
    owners:
      technical_lead: app-oncall
"""
RULES = """\
rules:
  - name: everyone
    page: [technical_lead, incident_lead]
"""
SETTINGS = """\
listen: 127.0.0.1:9095
state: data/firehouse.db
rules: [rules]
dependency_maps: [maps]
roles:
  incident_lead: command-center
targets:
  command-center: {}
  app-oncall: {}
"""


def env_var(target: str) -> str:
    return "FIREHOUSE_ROUTING_KEY_" + target.upper().replace("-", "_")


def all_keys() -> dict[str, str]:
    """A routing key for every shipped target, as the environment would give them."""
    return {env_var(name): f"{SECRET[:-2]}{index:02d}" for index, name in
            enumerate(SHIPPED_TARGETS)}


def write(tmp_path: Path, settings: str = SETTINGS, map_text: str = MAP,
          rules: str = RULES) -> Path:
    """A small complete configuration under tmp_path; returns the settings file."""
    (tmp_path / "maps").mkdir(exist_ok=True)
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "maps" / "web.yaml").write_text(map_text, encoding="utf-8")
    (tmp_path / "rules" / "rules.yaml").write_text(rules, encoding="utf-8")
    path = tmp_path / "firehouse.yml"
    path.write_text(settings, encoding="utf-8")
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    """The lines of the ConfigError that loading `path` must raise."""
    with pytest.raises(ConfigError) as caught:
        load_config(path, env or {})
    return str(caught.value).splitlines()


class TestShippedConfig:
    """load_config on the shipped firehouse.yml, maps and rules."""

    def test_loads_with_an_empty_environment(self) -> None:
        """The shipped settings load, with paths relative to the file and dry run on."""
        config = load_config(SHIPPED, env={})
        settings = config.settings
        assert isinstance(config, Config)
        assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 9095)
        assert settings.state == ROOT / "data" / "firehouse.db"
        assert settings.rules == (ROOT / "rules",)
        assert settings.dependency_maps == (ROOT / "dependency_maps",)
        assert settings.pagerduty_url == "https://events.pagerduty.com"
        assert settings.pagerduty_timeout == 10.0
        assert settings.service_labels == ("service", "job")
        assert settings.severity_labels == ("severity", "priority")
        assert tuple(settings.targets) == SHIPPED_TARGETS
        assert dict(settings.roles) == {
            "incident_lead": "command-center", "senior_management": "ops-management",
            "business_line": "business-line",
        }
        assert settings.dry_run is True
        assert settings.bearer_token == ""
        assert config.warnings == ()
        assert len(config.graph.services) == 27
        assert len(config.rules) == 5
        assert config.target_for_role("incident_lead") == "command-center"
        assert len(config.digest) == 16

    def test_dry_run_auto_is_off_with_every_key(self) -> None:
        """With a routing key for every target, `dry_run: auto` sends for real."""
        config = load_config(SHIPPED, env=all_keys())
        assert config.settings.dry_run is False
        assert config.settings.targets["dba-oncall"].routing_key == all_keys()[
            "FIREHOUSE_ROUTING_KEY_DBA_ONCALL"
        ]

    def test_dry_run_auto_with_some_keys_names_the_missing(self) -> None:
        """With keys for only some targets, auto means live and each keyless target is an error."""
        keys = all_keys()
        del keys["FIREHOUSE_ROUTING_KEY_SEARCH_OWNER"]
        line = SHIPPED.read_text(encoding="utf-8").splitlines().index("  search-owner: {}") + 1
        assert problems_of(SHIPPED, keys) == [
            f"{SHIPPED}:{line}: targets.search-owner: has no routing key (set "
            "$FIREHOUSE_ROUTING_KEY_SEARCH_OWNER); a page to it would be lost",
        ]

    def test_digest_changes_with_the_settings(self) -> None:
        """A different setting gives a different digest; the same one the same digest."""
        first = load_config(SHIPPED, env={}).digest
        assert load_config(SHIPPED, env={}).digest == first
        assert load_config(SHIPPED, env={"FIREHOUSE_LISTEN": ":9999"}).digest != first


class TestEnvironmentOverrides:
    """FIREHOUSE_* variables override the settings file."""

    def test_listen(self, tmp_path: Path) -> None:
        """FIREHOUSE_LISTEN sets host and port; an empty host means every interface."""
        path = write(tmp_path)
        settings = load_config(path, {"FIREHOUSE_LISTEN": "[::1]:8080"}).settings
        assert (settings.listen_host, settings.listen_port) == ("::1", 8080)
        settings = load_config(path, {"FIREHOUSE_LISTEN": ":8081"}).settings
        assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 8081)

    def test_state_is_relative_to_the_working_directory(self, tmp_path: Path) -> None:
        """FIREHOUSE_STATE is taken as given, not relative to the settings file."""
        path = write(tmp_path)
        settings = load_config(path, {"FIREHOUSE_STATE": "elsewhere/fh.db"}).settings
        assert settings.state == Path("elsewhere/fh.db")

    def test_pagerduty_url(self, tmp_path: Path) -> None:
        """FIREHOUSE_PAGERDUTY_URL replaces the URL, without a trailing slash."""
        path = write(tmp_path)
        url = "http://127.0.0.1:18080/"
        assert load_config(path, {"FIREHOUSE_PAGERDUTY_URL": url}).settings.pagerduty_url == (
            "http://127.0.0.1:18080"
        )

    def test_rules_and_maps_as_path_lists(self, tmp_path: Path) -> None:
        """FIREHOUSE_RULES and FIREHOUSE_DEPENDENCY_MAPS take colon-separated paths."""
        path = write(tmp_path)
        other = tmp_path / "other"
        other.mkdir()
        (other / "more.yaml").write_text(MAP.replace("web:", "api:"), encoding="utf-8")
        (other / "rules.yaml").write_text(RULES.replace("everyone", "all"), encoding="utf-8")
        config = load_config(path, {
            "FIREHOUSE_DEPENDENCY_MAPS": f"{tmp_path / 'maps'}:{other / 'more.yaml'}",
            "FIREHOUSE_RULES": str(other / "rules.yaml"),
        })
        assert config.settings.dependency_maps == (tmp_path / "maps", other / "more.yaml")
        assert set(config.graph.services) == {"web", "api"}
        assert [r.name for r in config.rules] == ["all"]

    def test_webhook_token(self, tmp_path: Path) -> None:
        """FIREHOUSE_WEBHOOK_TOKEN sets the bearer token, which is kept out of repr."""
        path = write(tmp_path)
        settings = load_config(path, {"FIREHOUSE_WEBHOOK_TOKEN": "s3cret-token"}).settings
        assert settings.bearer_token == "s3cret-token"
        assert "s3cret-token" not in repr(settings)

    @pytest.mark.parametrize(("value", "dry"), [("true", True), ("1", True), ("yes", True)])
    def test_dry_run_forced_on(self, tmp_path: Path, value: str, dry: bool) -> None:
        """FIREHOUSE_DRY_RUN=true keeps dry run on even with every key present."""
        path = write(tmp_path)
        env = {"FIREHOUSE_DRY_RUN": value, env_var("command-center"): SECRET,
               env_var("app-oncall"): SECRET}
        assert load_config(path, env).settings.dry_run is dry

    def test_dry_run_false_without_keys_names_the_variables(self, tmp_path: Path) -> None:
        """FIREHOUSE_DRY_RUN=false with keyless targets is an error naming each variable."""
        path = write(tmp_path)
        assert problems_of(path, {"FIREHOUSE_DRY_RUN": "false"}) == [
            f"{path}:8: targets.command-center: has no routing key (set "
            "$FIREHOUSE_ROUTING_KEY_COMMAND_CENTER); a page to it would be lost",
            f"{path}:9: targets.app-oncall: has no routing key (set "
            "$FIREHOUSE_ROUTING_KEY_APP_ONCALL); a page to it would be lost",
        ]

    def test_bad_dry_run_value_names_the_variable(self, tmp_path: Path) -> None:
        """A bad value from the environment is reported against the variable, not the file."""
        path = write(tmp_path)
        assert problems_of(path, {"FIREHOUSE_DRY_RUN": "perhaps"}) == [
            "$FIREHOUSE_DRY_RUN: dry_run: must be auto, true or false (got 'perhaps')",
        ]

    def test_bad_listen_from_environment(self, tmp_path: Path) -> None:
        """A bad FIREHOUSE_LISTEN is reported against the variable."""
        path = write(tmp_path)
        assert problems_of(path, {"FIREHOUSE_LISTEN": "localhost"}) == [
            "$FIREHOUSE_LISTEN: listen: must be HOST:PORT (got 'localhost')",
        ]

    def test_empty_variable_is_ignored(self, tmp_path: Path) -> None:
        """An empty variable does not override the file."""
        path = write(tmp_path)
        assert load_config(path, {"FIREHOUSE_LISTEN": ""}).settings.listen_port == 9095


class TestRoutingKeys:
    """Routing keys from the environment and from files; dry run follows them."""

    def test_key_from_default_variable(self, tmp_path: Path) -> None:
        """A target's key comes from FIREHOUSE_ROUTING_KEY_<NAME> by default."""
        path = write(tmp_path)
        env = {env_var("app-oncall"): SECRET, env_var("command-center"): FILE_SECRET}
        target = load_config(path, env).settings.targets["app-oncall"]
        assert target.routing_key == SECRET
        assert target.key_source == "$FIREHOUSE_ROUTING_KEY_APP_ONCALL"
        assert target.masked == "****EY42"

    def test_key_from_named_variable(self, tmp_path: Path) -> None:
        """routing_key_env names another variable."""
        path = write(tmp_path, SETTINGS.replace(
            "app-oncall: {}", "app-oncall: {routing_key_env: PD_APP_KEY}"))
        env = {"PD_APP_KEY": SECRET, env_var("command-center"): FILE_SECRET}
        target = load_config(path, env).settings.targets["app-oncall"]
        assert (target.routing_key, target.key_source) == (SECRET, "$PD_APP_KEY")

    def test_key_from_file_relative_to_settings(self, tmp_path: Path) -> None:
        """routing_key_file is read, stripped, relative to the settings file."""
        path = write(tmp_path, SETTINGS.replace(
            "app-oncall: {}", "app-oncall: {routing_key_file: secrets/app.key}"))
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "app.key").write_text(FILE_SECRET + "\n", encoding="utf-8")
        target = load_config(path, {env_var("command-center"): SECRET}).settings.targets[
            "app-oncall"
        ]
        assert target.routing_key == FILE_SECRET
        assert target.key_source == str(tmp_path / "secrets" / "app.key")

    def test_unreadable_key_file(self, tmp_path: Path) -> None:
        """A key file that cannot be read is a problem naming the setting and the path."""
        path = write(tmp_path, SETTINGS.replace(
            "app-oncall: {}", "app-oncall: {routing_key_file: missing.key}"))
        assert problems_of(path) == [
            f"{path}:9: targets.app-oncall.routing_key_file: cannot read: No such file or "
            f"directory (got {str(tmp_path / 'missing.key')!r})",
        ]

    def test_key_file_that_is_not_text(self, tmp_path: Path) -> None:
        """A key file that is not UTF-8 is a problem, not a crash, and quotes none of it."""
        path = write(tmp_path, SETTINGS.replace(
            "app-oncall: {}", "app-oncall: {routing_key_file: app.key}"))
        (tmp_path / "app.key").write_bytes(b"\xff\xfe" + FILE_SECRET.encode())
        lines = problems_of(path)
        assert lines == [
            f"{path}:9: targets.app-oncall.routing_key_file: cannot read: not UTF-8 text "
            f"(got {str(tmp_path / 'app.key')!r})",
        ]

    def test_key_file_with_windows_line_ending(self, tmp_path: Path) -> None:
        """A key file's final CRLF is no part of the key."""
        path = write(tmp_path, SETTINGS.replace(
            "app-oncall: {}", "app-oncall: {routing_key_file: app.key}"))
        (tmp_path / "app.key").write_bytes(FILE_SECRET.encode() + b"\r\n")
        target = load_config(path, {env_var("command-center"): SECRET}).settings.targets[
            "app-oncall"
        ]
        assert target.routing_key == FILE_SECRET

    def test_short_key_from_variable(self, tmp_path: Path) -> None:
        """A key of the wrong length is refused, naming target and variable, never the key."""
        path = write(tmp_path)
        env = {env_var("app-oncall"): "short", "FIREHOUSE_DRY_RUN": "true"}
        assert problems_of(path, env) == [
            "$FIREHOUSE_ROUTING_KEY_APP_ONCALL: targets.app-oncall: routing key must be 32 "
            "characters, got 5",
        ]

    @pytest.mark.parametrize(("key", "where", "length"), [
        (SECRET + " ", "at the end", 33),
        ("\t" + SECRET, "at the start", 33),
        (SECRET[:16] + " " + SECRET[17:], "inside", 32),
        (" " + SECRET[1:-1] + "\n", "at the start and at the end", 32),
    ])
    def test_key_with_whitespace_from_variable(self, tmp_path: Path, key: str, where: str,
                                               length: int) -> None:
        """A key from the environment is judged as given: whitespace in it is refused."""
        path = write(tmp_path)
        env = {env_var("app-oncall"): key, env_var("command-center"): SECRET}
        lines = problems_of(path, env)
        assert lines == [
            "$FIREHOUSE_ROUTING_KEY_APP_ONCALL: targets.app-oncall: routing key must be 32 "
            f"characters without whitespace, got {length} with whitespace {where}",
        ]
        assert SECRET[2:-2] not in "\n".join(lines)

    def test_short_key_from_file(self, tmp_path: Path) -> None:
        """A bad key from a file is refused naming the target and the file, never the key."""
        path = write(tmp_path, SETTINGS.replace(
            "app-oncall: {}", "app-oncall: {routing_key_file: app.key}"))
        (tmp_path / "app.key").write_text("abc12\n", encoding="utf-8")
        lines = problems_of(path, {env_var("command-center"): SECRET})
        assert lines == [
            f"{tmp_path / 'app.key'}: targets.app-oncall: routing key must be 32 characters, "
            "got 5",
        ]
        assert "abc12" not in lines[0]

    def test_key_file_with_trailing_space(self, tmp_path: Path) -> None:
        """Only a key file's final line break is stripped; a space before it is an error."""
        path = write(tmp_path, SETTINGS.replace(
            "app-oncall: {}", "app-oncall: {routing_key_file: app.key}"))
        (tmp_path / "app.key").write_text(FILE_SECRET + " \n", encoding="utf-8")
        assert problems_of(path, {env_var("command-center"): SECRET}) == [
            f"{tmp_path / 'app.key'}: targets.app-oncall: routing key must be 32 characters "
            "without whitespace, got 33 with whitespace at the end",
        ]

    def test_empty_key_file(self, tmp_path: Path) -> None:
        """An empty key file is a problem, not a target silently left without a key."""
        path = write(tmp_path, SETTINGS.replace(
            "app-oncall: {}", "app-oncall: {routing_key_file: app.key}"))
        (tmp_path / "app.key").write_text("\n", encoding="utf-8")
        assert problems_of(path, {env_var("command-center"): SECRET}) == [
            f"{path}:9: targets.app-oncall.routing_key_file: is empty "
            f"(got {str(tmp_path / 'app.key')!r})",
        ]

    def test_dry_run_auto_without_keys(self, tmp_path: Path) -> None:
        """`dry_run: auto` with no key at all is dry."""
        assert load_config(write(tmp_path), {}).settings.dry_run is True

    def test_dry_run_auto_with_keys(self, tmp_path: Path) -> None:
        """`dry_run: auto` with every key is live."""
        env = {env_var("command-center"): SECRET, env_var("app-oncall"): SECRET}
        assert load_config(write(tmp_path), env).settings.dry_run is False

    def test_dry_run_false_in_file_with_a_keyless_target(self, tmp_path: Path) -> None:
        """`dry_run: false` in the file with one keyless target names that target's variable."""
        path = write(tmp_path, SETTINGS + "dry_run: false\n")
        assert problems_of(path, {env_var("app-oncall"): SECRET}) == [
            f"{path}:8: targets.command-center: has no routing key (set "
            "$FIREHOUSE_ROUTING_KEY_COMMAND_CENTER); a page to it would be lost",
        ]


class TestSecretsStaySecret:
    """Routing keys never appear in a repr or in an error."""

    def test_target_repr(self) -> None:
        """A Target's repr shows its name and source, never its key."""
        target = Target("dba-oncall", SECRET, "$FIREHOUSE_ROUTING_KEY_DBA_ONCALL")
        assert SECRET not in repr(target)
        assert SECRET not in str(target)
        assert "dba-oncall" in repr(target)

    def test_mask(self) -> None:
        """A masked key shows its last four characters only."""
        assert mask(SECRET) == "****EY42"
        assert mask("") == "(none)"

    @pytest.mark.parametrize(("secret", "masked"), [
        ("abcde", "****"), ("x" * 15, "****"), ("0123456789abcdef", "****cdef"),
    ])
    def test_mask_shows_nothing_of_a_short_secret(self, secret: str, masked: str) -> None:
        """Below 16 characters, a masked secret shows none of them."""
        assert mask(secret) == masked

    def test_settings_repr(self, tmp_path: Path) -> None:
        """The settings' repr (also hashed into the digest) holds no routing key."""
        env = {env_var("command-center"): SECRET, env_var("app-oncall"): FILE_SECRET}
        config = load_config(write(tmp_path), env)
        assert SECRET not in repr(config.settings)
        assert FILE_SECRET not in repr(config.settings)

    def test_config_error_with_keys_loaded(self, tmp_path: Path) -> None:
        """An error raised while keys are loaded does not print them."""
        path = write(tmp_path, SETTINGS.replace(
            "app-oncall: {}", "app-oncall: {routing_key_file: app.key}") + "colour: red\n")
        (tmp_path / "app.key").write_text(FILE_SECRET, encoding="utf-8")
        with pytest.raises(ConfigError) as caught:
            load_config(path, {env_var("command-center"): SECRET, "FIREHOUSE_DRY_RUN": "0"})
        text = str(caught.value)
        assert text == f"{path}:10: colour: unknown setting (got 'colour')"
        assert SECRET not in text
        assert FILE_SECRET not in text

    def test_key_pasted_as_the_target(self, tmp_path: Path) -> None:
        """A routing key pasted where the target's mapping belongs is refused, not echoed."""
        path = write(tmp_path, SETTINGS.replace("app-oncall: {}", f"app-oncall: {SECRET}"))
        text = "\n".join(problems_of(path))
        assert SECRET not in text
        assert text == (
            f"{path}:9: targets.app-oncall: must be a mapping with routing_key_env or "
            "routing_key_file"
        )

    def test_key_pasted_as_the_variable_name(self, tmp_path: Path) -> None:
        """A routing key pasted as routing_key_env is refused, not echoed."""
        pasted = "r0ut1ng-key+with/slashes=="
        path = write(tmp_path, SETTINGS.replace(
            "app-oncall: {}", f"app-oncall: {{routing_key_env: '{pasted}'}}"))
        text = "\n".join(problems_of(path))
        assert pasted not in text
        assert text == (
            f"{path}:9: targets.app-oncall.routing_key_env: must be the name of an environment "
            "variable (letters, digits, _), not the routing key itself"
        )


class TestWebhookAuth:
    """The webhook's bearer token and basic-auth password, and how check reports them."""

    @pytest.mark.parametrize("content", ["", "\n", "  \n"])
    def test_empty_token_file(self, tmp_path: Path, content: str) -> None:
        """An empty bearer_token_file is a problem, not authentication silently off."""
        path = write(tmp_path, SETTINGS + "auth:\n  bearer_token_file: token\n")
        (tmp_path / "token").write_text(content, encoding="utf-8")
        assert problems_of(path) == [
            f"{path}:11: auth.bearer_token_file: is empty (got {str(tmp_path / 'token')!r})",
        ]

    def test_empty_token_file_from_environment(self, tmp_path: Path) -> None:
        """An empty $FIREHOUSE_WEBHOOK_TOKEN_FILE is reported against the variable."""
        path = write(tmp_path)
        token = tmp_path / "token"
        token.write_text("", encoding="utf-8")
        assert problems_of(path, {"FIREHOUSE_WEBHOOK_TOKEN_FILE": str(token)}) == [
            f"$FIREHOUSE_WEBHOOK_TOKEN_FILE: auth.bearer_token_file: is empty (got {str(token)!r})",
        ]

    def test_empty_password_file(self, tmp_path: Path) -> None:
        """An empty basic-auth password_file is one problem, at the password_file."""
        path = write(tmp_path, SETTINGS + "auth:\n  basic_auth:\n    username: am\n"
                     "    password_file: password\n")
        (tmp_path / "password").write_text("", encoding="utf-8")
        assert problems_of(path) == [
            f"{path}:13: auth.basic_auth.password_file: is empty "
            f"(got {str(tmp_path / 'password')!r})",
        ]

    def test_token_file_is_trimmed(self, tmp_path: Path) -> None:
        """Whitespace around a token in a file is trimmed, as Alertmanager trims it."""
        path = write(tmp_path, SETTINGS + "auth:\n  bearer_token_file: token\n")
        (tmp_path / "token").write_text(" s3cret-token \n", encoding="utf-8")
        settings = load_config(path, {}).settings
        assert settings.bearer_token == "s3cret-token"
        assert settings.webhook_auth == "bearer"

    @pytest.mark.parametrize(("token", "basic", "mode"), [
        ("", None, "off"),
        ("t0ken", None, "bearer"),
        ("", ("am", "pw"), "basic"),
        ("t0ken", ("am", "pw"), "bearer or basic"),
    ])
    def test_webhook_auth(self, token: str, basic: tuple[str, str] | None, mode: str) -> None:
        """webhook_auth names what a webhook request must carry."""
        assert Settings(bearer_token=token, basic_auth=basic).webhook_auth == mode


class TestProtectMetrics:
    """auth.protect_metrics: /metrics behind the webhook's credentials, or open."""

    def test_open_by_default_and_on_when_asked(self, tmp_path: Path) -> None:
        """Off unless set; `true` turns it on."""
        assert load_config(write(tmp_path), {}).settings.protect_metrics is False
        path = write(tmp_path, SETTINGS + "auth:\n  bearer_token: t0ken\n"
                     "  protect_metrics: true\n")
        assert load_config(path, {}).settings.protect_metrics is True

    def test_not_a_flag_is_refused_with_its_line(self, tmp_path: Path) -> None:
        """A value that is not true or false names the key, its line and the value."""
        path = write(tmp_path, SETTINGS + "auth:\n  protect_metrics: sometimes\n")
        assert problems_of(path) == [
            f"{path}:11: auth.protect_metrics: must be true or false (got 'sometimes')"]


class TestPagerDutyWebhookSecrets:
    """pagerduty.webhook_secret(_file): the v3 webhook subscription's secrets, for rotation."""

    PD_SECRET = "V3W3BH00KS3CR3TV3W3BH00KS3CR3T00"
    NEW_SECRET = "N3WW3BH00KS3CR3TN3WW3BH00KS3CR3T"

    def test_none_by_default(self, tmp_path: Path) -> None:
        """Without the setting, no secret is configured (the route answers 403)."""
        assert load_config(write(tmp_path), {}).settings.pagerduty_webhook_secrets == ()

    def test_one_secret_in_the_file(self, tmp_path: Path) -> None:
        """A single secret is taken as given, trimmed, and kept out of the repr."""
        path = write(tmp_path, SETTINGS + f"pagerduty:\n  webhook_secret: ' {self.PD_SECRET}'\n")
        settings = load_config(path, {}).settings
        assert settings.pagerduty_webhook_secrets == (self.PD_SECRET,)
        assert self.PD_SECRET not in repr(settings)

    def test_a_list_for_rotation(self, tmp_path: Path) -> None:
        """A list gives several secrets, in order, each once."""
        path = write(tmp_path, SETTINGS + "pagerduty:\n  webhook_secret: "
                     f"[{self.PD_SECRET}, {self.NEW_SECRET}, {self.PD_SECRET}]\n")
        assert load_config(path, {}).settings.pagerduty_webhook_secrets == (
            self.PD_SECRET, self.NEW_SECRET)

    def test_environment_replaces_the_file_and_takes_commas(self, tmp_path: Path) -> None:
        """$FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET wins over the file and may hold several
        secrets separated by commas."""
        path = write(tmp_path, SETTINGS + "pagerduty:\n  webhook_secret: from-the-file\n")
        env = {"FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET": f"{self.PD_SECRET}, {self.NEW_SECRET}"}
        assert load_config(path, env).settings.pagerduty_webhook_secrets == (
            self.PD_SECRET, self.NEW_SECRET)

    def test_secret_file_one_per_line_relative_to_the_settings(self, tmp_path: Path) -> None:
        """Each non-blank line of a secret file is a secret; the path is relative to the
        settings file; a secret given inline is accepted too."""
        (tmp_path / "pd.secret").write_text(f"{self.PD_SECRET}\n\n {self.NEW_SECRET} \r\n",
                                            encoding="utf-8")
        path = write(tmp_path, SETTINGS + "pagerduty:\n  webhook_secret_file: pd.secret\n"
                     "  webhook_secret: inline-one\n")
        assert load_config(path, {}).settings.pagerduty_webhook_secrets == (
            "inline-one", self.PD_SECRET, self.NEW_SECRET)

    def test_secret_files_from_environment(self, tmp_path: Path) -> None:
        """$FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET_FILE takes ':'-separated paths."""
        old, new = tmp_path / "old", tmp_path / "new"
        old.write_text(self.PD_SECRET, encoding="utf-8")
        new.write_text(self.NEW_SECRET, encoding="utf-8")
        env = {"FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET_FILE": f"{old}:{new}"}
        assert load_config(write(tmp_path), env).settings.pagerduty_webhook_secrets == (
            self.PD_SECRET, self.NEW_SECRET)

    def test_empty_secret_file(self, tmp_path: Path) -> None:
        """An empty secret file is a problem, not a secret that matches nothing."""
        (tmp_path / "pd.secret").write_text("\n", encoding="utf-8")
        path = write(tmp_path, SETTINGS + "pagerduty:\n  webhook_secret_file: pd.secret\n")
        assert problems_of(path) == [
            f"{path}:11: pagerduty.webhook_secret_file: is empty "
            f"(got {str(tmp_path / 'pd.secret')!r})",
        ]

    def test_missing_secret_file_from_environment(self, tmp_path: Path) -> None:
        """An unreadable secret file is reported against the variable that named it."""
        missing = tmp_path / "nope"
        lines = problems_of(write(tmp_path),
                            {"FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET_FILE": str(missing)})
        assert lines == [
            "$FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET_FILE: pagerduty.webhook_secret_file: cannot "
            f"read: No such file or directory (got {str(missing)!r})",
        ]

    @pytest.mark.parametrize("value", ["''", "[]", f"['{PD_SECRET}', '  ']"])
    def test_empty_secret(self, tmp_path: Path, value: str) -> None:
        """An empty secret, or an empty one in a list, is a problem that shows no secret."""
        path = write(tmp_path, SETTINGS + f"pagerduty:\n  webhook_secret: {value}\n")
        lines = problems_of(path)
        assert lines == [
            f"{path}:11: pagerduty.webhook_secret: must be one or more non-empty secrets",
        ]

    @pytest.mark.parametrize("value", ["12345678", "{key: s3cr3t-in-a-map}", "[s3cr3t, 7]"],
                             ids=["number", "mapping", "list-with-a-number"])
    def test_not_text(self, tmp_path: Path, value: str) -> None:
        """A secret that is not text is a problem that never shows the value."""
        path = write(tmp_path, SETTINGS + f"pagerduty:\n  webhook_secret: {value}\n")
        text = "\n".join(problems_of(path))
        assert text == f"{path}:11: pagerduty.webhook_secret: must be a secret or a list of secrets"
        assert "s3cr3t" not in text
        assert "12345678" not in text

    def test_secret_file_not_a_path(self, tmp_path: Path) -> None:
        """webhook_secret_file must be a path or a list of paths."""
        path = write(tmp_path, SETTINGS + "pagerduty:\n  webhook_secret_file: [a, 3]\n")
        assert problems_of(path) == [
            f"{path}:11: pagerduty.webhook_secret_file: must be a path or a list of paths "
            "(got ['a', 3])",
        ]

    def test_secret_stays_out_of_errors(self, tmp_path: Path) -> None:
        """An error raised while the secret is loaded does not print it."""
        path = write(tmp_path, SETTINGS + f"pagerduty:\n  webhook_secret: {self.PD_SECRET}\n"
                     "  retries: 3\n")
        text = "\n".join(problems_of(path))
        assert text == f"{path}:12: pagerduty.retries: unknown setting (got 'retries')"
        assert self.PD_SECRET not in text


class TestLimits:
    """max_body_bytes: large by default, configurable."""

    def test_default_max_body_bytes(self, tmp_path: Path) -> None:
        """By default, a body of up to 16 MiB is accepted (10,000 alerts are about 3 MB)."""
        assert load_config(write(tmp_path), {}).settings.max_body_bytes == 16 * 1024 * 1024
        assert Settings().max_body_bytes == 16 * 1024 * 1024

    def test_max_body_bytes_is_configurable(self, tmp_path: Path) -> None:
        """max_body_bytes in the settings file replaces the default."""
        path = write(tmp_path, SETTINGS + "max_body_bytes: 65536\n")
        assert load_config(path, {}).settings.max_body_bytes == 65536

    def test_range_is_in_whole_bytes(self, tmp_path: Path) -> None:
        """Out of range, the bounds read as the whole numbers they are."""
        path = write(tmp_path, SETTINGS + "max_body_bytes: 100\n")
        assert problems_of(path) == [
            f"{path}:10: max_body_bytes: must be a number from 1024 to 1073741824 (got 100)"]


class TestRateLimit:
    """pagerduty.rate_limit_per_minute: events a minute per routing key, 0 for no limit."""

    def test_default_is_pagerdutys_limit(self, tmp_path: Path) -> None:
        """Without the setting, 120 events a minute per routing key, PagerDuty's limit."""
        assert load_config(write(tmp_path), {}).settings.pagerduty_rate_limit == 120
        assert Settings().pagerduty_rate_limit == 120

    @pytest.mark.parametrize("limit", [0, 60, 100000])
    def test_configurable(self, tmp_path: Path, limit: int) -> None:
        """The setting replaces the default; 0 turns shaping off."""
        path = write(tmp_path, SETTINGS + f"pagerduty:\n  rate_limit_per_minute: {limit}\n")
        assert load_config(path, {}).settings.pagerduty_rate_limit == limit

    @pytest.mark.parametrize(("value", "shown"), [
        ("-1", "-1"), ("1.5", "1.5"), ("lots", "'lots'"), ("true", "True"), ("100001", "100001"),
    ])
    def test_not_a_whole_number_in_range(self, tmp_path: Path, value: str, shown: str) -> None:
        """A negative, fractional, textual, boolean or too large limit is refused, located."""
        path = write(tmp_path, SETTINGS + f"pagerduty:\n  rate_limit_per_minute: {value}\n")
        assert problems_of(path) == [
            f"{path}:11: pagerduty.rate_limit_per_minute: must be a whole number of events "
            f"from 0 (no limit) to 100000 (got {shown})"]


class TestChangesWindow:
    """changes.window_hours: how recent a change must be to be a rollback candidate."""

    def test_default_is_a_day(self, tmp_path: Path) -> None:
        """Without the setting, changes of the last 24 hours are candidates."""
        assert load_config(write(tmp_path), {}).settings.changes_window_hours == 24.0
        assert Settings().changes_window_hours == 24.0

    def test_configurable(self, tmp_path: Path) -> None:
        """changes.window_hours in the settings file replaces the default."""
        path = write(tmp_path, SETTINGS + "changes:\n  window_hours: 2.5\n")
        assert load_config(path, {}).settings.changes_window_hours == 2.5

    @pytest.mark.parametrize("hours", ["0.05", "'a week'", "true"])
    def test_out_of_range(self, tmp_path: Path, hours: str) -> None:
        """A window outside 0.1 to 720 hours, or no number, is refused with its value."""
        path = write(tmp_path, SETTINGS + f"changes:\n  window_hours: {hours}\n")
        problems = problems_of(path)
        assert len(problems) == 1
        assert problems[0].startswith(f"{path}:11: changes.window_hours: must be a number")

    def test_exact_message(self, tmp_path: Path) -> None:
        """The message gives the range and the value."""
        path = write(tmp_path, SETTINGS + "changes:\n  window_hours: 721\n")
        assert problems_of(path) == [
            f"{path}:11: changes.window_hours: must be a number from 0.1 to 720 (got 721)"]

    def test_unknown_key(self, tmp_path: Path) -> None:
        """A key the changes section does not know is refused with its path."""
        path = write(tmp_path, SETTINGS + "changes:\n  window_hour: 12\n")
        assert problems_of(path) == [
            f"{path}:11: changes.window_hour: unknown setting; did you mean 'window_hours'? "
            "(got 'window_hour')"]

    def test_not_a_mapping(self, tmp_path: Path) -> None:
        """`changes: 12` (the window without its key) is refused."""
        path = write(tmp_path, SETTINGS + "changes: 12\n")
        assert problems_of(path) == [f"{path}:10: changes: must be a mapping (got 12)"]


class TestEmptyMaps:
    """Maps without a single service load, with a warning that every alert is unmapped."""

    def test_empty_map_directory(self, tmp_path: Path) -> None:
        """An empty map directory is a warning naming it."""
        path = write(tmp_path)
        (tmp_path / "maps" / "web.yaml").unlink()
        config = load_config(path, {})
        assert [str(w) for w in config.warnings] == [
            f"{tmp_path / 'maps'}: dependency_maps: warning: no services: every alert will be "
            "treated as unmapped",
        ]
        assert config.warnings[0] == Problem(
            str(tmp_path / "maps"), 0, "dependency_maps",
            "no services: every alert will be treated as unmapped", warning=True)

    def test_map_with_no_services(self, tmp_path: Path) -> None:
        """A map file that defines no service gives the same warning."""
        config = load_config(write(tmp_path, map_text="services: {}\n"), {})
        assert [w.message for w in config.warnings] == [
            "no services: every alert will be treated as unmapped",
        ]

    def test_no_warning_on_top_of_errors(self, tmp_path: Path) -> None:
        """A map whose only service is invalid fails on that, without the warning."""
        path = write(tmp_path, map_text=MAP.replace("tier: 1", "tier: 7"))
        assert problems_of(path) == [
            f"{tmp_path / 'maps' / 'web.yaml'}:3: services.web.tier: must be an integer from 1 "
            "(most critical) to 4 (got 7)",
        ]


class TestSettingsErrors:
    """Bad settings are reported with file, line, key path and value."""

    def test_unknown_setting(self, tmp_path: Path) -> None:
        """A key the settings do not know is refused."""
        path = write(tmp_path, SETTINGS + "pager_duty: {}\n")
        assert problems_of(path) == [
            f"{path}:10: pager_duty: unknown setting; did you mean 'pagerduty'? (got 'pager_duty')"]

    def test_unknown_setting_like_a_known_one(self, tmp_path: Path) -> None:
        """A misspelt setting is refused with the setting it probably means."""
        path = write(tmp_path, SETTINGS.replace("listen:", "lisen:"))
        assert problems_of(path) == [
            f"{path}:1: lisen: unknown setting; did you mean 'listen'? (got 'lisen')"]

    def test_unknown_nested_setting(self, tmp_path: Path) -> None:
        """A key the pagerduty section does not know is refused with its path."""
        path = write(tmp_path, SETTINGS + "pagerduty:\n  url: https://x.example\n  retries: 3\n")
        assert problems_of(path) == [
            f"{path}:12: pagerduty.retries: unknown setting (got 'retries')",
        ]

    @pytest.mark.parametrize("listen", ["9095", "localhost:http", "127.0.0.1:70000"])
    def test_bad_listen(self, tmp_path: Path, listen: str) -> None:
        """A listen address that is not HOST:PORT is refused with the value."""
        path = write(tmp_path, SETTINGS.replace("127.0.0.1:9095", f"'{listen}'"))
        assert problems_of(path) == [f"{path}:1: listen: must be HOST:PORT (got {listen!r})"]

    def test_role_naming_an_undefined_target(self, tmp_path: Path) -> None:
        """A command-center role must name a defined target."""
        path = write(tmp_path, SETTINGS.replace(
            "incident_lead: command-center", "incident_lead: command-centre"))
        assert problems_of(path) == [
            f"{path}:6: roles.incident_lead: names a target that is not defined in targets "
            "(got 'command-centre')",
        ]

    def test_role_naming_a_list(self, tmp_path: Path) -> None:
        """A role given a list instead of one target name is a problem, not a crash."""
        path = write(tmp_path, SETTINGS.replace(
            "incident_lead: command-center", "incident_lead: [command-center]"))
        assert problems_of(path) == [
            f"{path}:6: roles.incident_lead: names a target that is not defined in targets "
            "(got ['command-center'])",
        ]

    def test_unknown_role(self, tmp_path: Path) -> None:
        """Only command-center roles may be set here; leads come from the maps."""
        path = write(tmp_path, SETTINGS.replace(
            "  incident_lead: command-center",
            "  incident_lead: command-center\n  technical_lead: app-oncall"))
        assert problems_of(path) == [
            f"{path}:7: roles.technical_lead: unknown role (the map gives technical and "
            "service leads; here: incident_lead, senior_management, business_line) "
            "(got 'technical_lead')",
        ]

    def test_missing_incident_lead(self, tmp_path: Path) -> None:
        """Without an incident lead, unmapped alerts would have nobody to page."""
        path = write(tmp_path, SETTINGS.replace(
            "roles:\n  incident_lead: command-center\n", ""))
        assert problems_of(path) == [
            f"{path}:1: roles.incident_lead: missing: the command center's target is required, "
            "unmapped alerts page it",
        ]

    def test_map_owner_naming_an_undefined_target(self, tmp_path: Path) -> None:
        """A map owner that is no settings target is reported at the owner's line."""
        path = write(tmp_path, map_text=MAP.replace("app-oncall", "app-on-call"))
        assert problems_of(path) == [
            f"{tmp_path / 'maps' / 'web.yaml'}:6: services.web.owners.technical_lead: names a "
            "target that is not defined in the settings' targets (got 'app-on-call')",
        ]

    def test_rule_paging_an_undefined_target(self, tmp_path: Path) -> None:
        """A rule paging a name that is neither role nor target is reported."""
        path = write(tmp_path, rules=RULES.replace("incident_lead]", "incident-lead]"))
        assert problems_of(path) == [
            f"{tmp_path / 'rules' / 'rules.yaml'}:3: rules[0].page[1]: unknown role or target; "
            "did you mean 'incident_lead'? (got 'incident-lead')",
        ]

    def test_all_problems_at_once_sorted(self, tmp_path: Path) -> None:
        """Problems from settings, maps and rules come in one error, sorted by file and line."""
        path = write(
            tmp_path,
            SETTINGS.replace("127.0.0.1:9095", "nowhere") + "log_level: loud\n",
            map_text=MAP.replace("tier: 1", "tier: 7"),
            rules=RULES.replace("incident_lead]", "incident-lead]"),
        )
        assert problems_of(path) == [
            f"{path}:1: listen: must be HOST:PORT (got 'nowhere')",
            f"{path}:10: log_level: must be debug, info, warning or error (got 'loud')",
            f"{tmp_path / 'maps' / 'web.yaml'}:3: services.web.tier: must be an integer from 1 "
            "(most critical) to 4 (got 7)",
            f"{tmp_path / 'rules' / 'rules.yaml'}:3: rules[0].page[1]: unknown role or target; "
            "did you mean 'incident_lead'? (got 'incident-lead')",
        ]

    def test_missing_settings_file(self, tmp_path: Path) -> None:
        """A settings file that does not exist is a problem, not a traceback."""
        missing = tmp_path / "nope.yml"
        lines = problems_of(missing)
        assert lines[0].startswith(f"{missing}: cannot read file: ")

    def test_empty_pagerduty_section(self, tmp_path: Path) -> None:
        """An empty `pagerduty:` section means the defaults."""
        path = write(tmp_path, SETTINGS + "pagerduty:\n")
        assert load_config(path, {}).settings.pagerduty_url == "https://events.pagerduty.com"


class TestRelativePaths:
    """Paths in a settings file are relative to that file, wherever the daemon runs."""

    def test_paths_resolve_against_the_file(self, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        """state, rules and maps resolve against the settings file's folder, not cwd."""
        etc = tmp_path / "etc"
        etc.mkdir()
        path = write(etc)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        settings = load_config(Path("../etc/firehouse.yml"), {}).settings
        assert settings.state == tmp_path / "etc" / "data" / "firehouse.db"
        assert settings.rules == (tmp_path / "etc" / "rules",)
        assert settings.dependency_maps == (tmp_path / "etc" / "maps",)
        assert path.parent == etc

    def test_absolute_paths_are_kept(self, tmp_path: Path) -> None:
        """An absolute path in the settings file is used as written."""
        path = write(tmp_path, SETTINGS.replace("data/firehouse.db", "/var/lib/fh/state.db"))
        assert load_config(path, {}).settings.state == Path("/var/lib/fh/state.db")


class TestRuleCrossReferences:
    """Rule conditions naming a business service or component that no map has are errors."""

    CHECKOUT_MAP = MAP + "    business_service: online-checkout\n"
    RULES_NAMING = """\
rules:
  - name: checkout
    when: {business_service: online-chekout}
    page: [service_lead]
    continue: true
  - name: databases
    when:
      component: [application, dbms]
    page: [technical_lead, incident_lead]
"""

    def test_unknown_names_are_located(self, tmp_path: Path) -> None:
        """Each unknown name is reported with file, line, key path and value."""
        path = write(tmp_path, map_text=self.CHECKOUT_MAP, rules=self.RULES_NAMING)
        rules = tmp_path / "rules" / "rules.yaml"
        assert problems_of(path) == [
            f"{rules}:3: rules[0].when.business_service: no dependency map has this business "
            "service: the rule would never match; did you mean 'online-checkout'? "
            "(got 'online-chekout')",
            f"{rules}:8: rules[1].when.component[1]: no service of the dependency maps has "
            "this component: the rule would never match (got 'dbms')",
        ]

    def test_names_across_map_files(self, tmp_path: Path) -> None:
        """A name defined in any one of the map files is known."""
        path = write(tmp_path, map_text=self.CHECKOUT_MAP,
                     rules=self.RULES_NAMING.replace("online-chekout", "online-checkout"))
        (tmp_path / "maps" / "db.yaml").write_text(
            MAP.replace("web:", "db:").replace("application", "dbms"), encoding="utf-8")
        config = load_config(path, {})
        assert [r.name for r in config.rules] == ["checkout", "databases"]

    def test_not_checked_on_top_of_map_errors(self, tmp_path: Path) -> None:
        """When a map has errors, its lost names are not reported again against the rules."""
        path = write(tmp_path, map_text=self.CHECKOUT_MAP.replace("tier: 1", "tier: 7"),
                     rules=self.RULES_NAMING.replace("online-chekout", "online-checkout"))
        assert problems_of(path) == [
            f"{tmp_path / 'maps' / 'web.yaml'}:3: services.web.tier: must be an integer from 1 "
            "(most critical) to 4 (got 7)",
        ]

    def test_not_checked_without_services(self, tmp_path: Path) -> None:
        """With no services at all, only the warning that nothing is mapped is given."""
        path = write(tmp_path, map_text="services: {}\n", rules=self.RULES_NAMING)
        config = load_config(path, {})
        assert [w.message for w in config.warnings] == [
            "no services: every alert will be treated as unmapped",
        ]


class TestAlertmanagerSettings:
    """The `alertmanager` section: where to check stale incidents, and when."""

    def test_defaults(self, tmp_path: Path) -> None:
        """Without the section, no URL is set and the windows are 4h15m, 60s, 5m and 10s."""
        settings = load_config(write(tmp_path), {}).settings
        assert settings.alertmanager_urls == ()
        assert settings.stale_after == 4 * 3600 + 15 * 60
        assert settings.stale_check_interval == 60.0
        assert settings.alertmanager_restart_grace == 300.0
        assert settings.alertmanager_timeout == 10.0
        assert settings.alertmanager_bearer_token == ""
        assert settings.alertmanager_basic_auth is None

    def test_one_url_and_durations(self, tmp_path: Path) -> None:
        """A URL loses its trailing slash; durations are Prometheus-style, in seconds."""
        path = write(tmp_path, SETTINGS + "alertmanager:\n  url: http://am.example:9093/\n"
                     "  stale_after: 4h30m\n  check_interval: 30s\n  restart_grace: 10m\n"
                     "  timeout_seconds: 5\n")
        settings = load_config(path, {}).settings
        assert settings.alertmanager_urls == ("http://am.example:9093",)
        assert (settings.stale_after, settings.stale_check_interval) == (16200.0, 30.0)
        assert settings.alertmanager_restart_grace == 600.0
        assert settings.alertmanager_timeout == 5.0

    def test_plain_seconds(self, tmp_path: Path) -> None:
        """A number is taken as seconds, fractions included (short windows for tests)."""
        path = write(tmp_path, SETTINGS + "alertmanager:\n  stale_after: 2\n"
                     "  check_interval: 0.5\n")
        settings = load_config(path, {}).settings
        assert (settings.stale_after, settings.stale_check_interval) == (2.0, 0.5)

    def test_ha_pair(self, tmp_path: Path) -> None:
        """A list of URLs names the members of an HA pair, in order."""
        path = write(tmp_path, SETTINGS + "alertmanager:\n  url: [http://am-a:9093, "
                     "'https://am-b:9093/']\n")
        assert load_config(path, {}).settings.alertmanager_urls == (
            "http://am-a:9093", "https://am-b:9093")

    def test_urls_from_the_environment(self, tmp_path: Path) -> None:
        """FIREHOUSE_ALERTMANAGER_URL wins over the file and takes comma-separated URLs."""
        path = write(tmp_path, SETTINGS + "alertmanager:\n  url: http://file:9093\n")
        env = {"FIREHOUSE_ALERTMANAGER_URL": "http://am-a:9093, http://am-b:9093"}
        assert load_config(path, env).settings.alertmanager_urls == (
            "http://am-a:9093", "http://am-b:9093")

    def test_bad_url_from_the_environment(self, tmp_path: Path) -> None:
        """A bad URL from the environment is reported against the variable."""
        path = write(tmp_path)
        assert problems_of(path, {"FIREHOUSE_ALERTMANAGER_URL": "am:9093"}) == [
            "$FIREHOUSE_ALERTMANAGER_URL: alertmanager.url: must be an http:// or https:// URL "
            "(got 'am:9093')",
        ]

    def test_every_problem_at_once(self, tmp_path: Path) -> None:
        """Unknown keys, bad URLs, durations and numbers are all reported, located."""
        path = write(tmp_path, SETTINGS + "alertmanager:\n  url: [ftp://am:21, http://a:1, "
                     "http://a:1/]\n  stale_after: soon\n  check_interval: 0s\n"
                     "  timeout_seconds: 100\n  retries: 3\n  restart_grace: -1m\n")
        duration = "must be a duration such as 30s, 15m or 4h15m, or a number of seconds"
        assert problems_of(path) == [
            f"{path}:11: alertmanager.url: must be an http:// or https:// URL (got 'ftp://am:21')",
            f"{path}:11: alertmanager.url: names the same Alertmanager twice (got 'http://a:1/')",
            f"{path}:12: alertmanager.stale_after: {duration}, from 1s to 4w (got 'soon')",
            f"{path}:13: alertmanager.check_interval: {duration}, from 0.1s to 1d (got '0s')",
            f"{path}:14: alertmanager.timeout_seconds: must be a number from 0.1 to 60 (got 100)",
            f"{path}:15: alertmanager.retries: unknown setting (got 'retries')",
            f"{path}:16: alertmanager.restart_grace: {duration}, from 0s to 1d (got '-1m')",
        ]

    def test_url_with_credentials_is_refused_unquoted(self, tmp_path: Path) -> None:
        """A URL carrying a password is refused without printing it."""
        path = write(tmp_path, SETTINGS + "alertmanager:\n  url: http://admin:hunter2@am:9093\n")
        lines = problems_of(path)
        assert lines == [
            f"{path}:11: alertmanager.url: must not carry credentials: use "
            "alertmanager.basic_auth",
        ]

    def test_not_a_mapping(self, tmp_path: Path) -> None:
        """The section must be a mapping."""
        path = write(tmp_path, SETTINGS + "alertmanager: http://am:9093\n")
        assert problems_of(path) == [
            f"{path}:10: alertmanager: must be a mapping (got 'http://am:9093')",
        ]

    def test_bearer_token_file(self, tmp_path: Path) -> None:
        """The token file is read relative to the settings, trimmed, and kept out of repr."""
        (tmp_path / "am.token").write_text("am-s3cret-token\n", encoding="utf-8")
        path = write(tmp_path, SETTINGS + "alertmanager:\n  url: http://am:9093\n"
                     "  bearer_token_file: am.token\n")
        settings = load_config(path, {}).settings
        assert settings.alertmanager_bearer_token == "am-s3cret-token"
        assert "am-s3cret-token" not in repr(settings)

    def test_token_file_from_the_environment(self, tmp_path: Path) -> None:
        """FIREHOUSE_ALERTMANAGER_TOKEN_FILE names the token file."""
        token = tmp_path / "token"
        token.write_text("from-env-token", encoding="utf-8")
        env = {"FIREHOUSE_ALERTMANAGER_TOKEN_FILE": str(token)}
        assert load_config(write(tmp_path), env).settings.alertmanager_bearer_token == (
            "from-env-token")

    def test_basic_auth(self, tmp_path: Path) -> None:
        """basic_auth takes a username and a password file, as the webhook's does."""
        (tmp_path / "am.pw").write_text("pa55word\n", encoding="utf-8")
        path = write(tmp_path, SETTINGS + "alertmanager:\n  url: http://am:9093\n"
                     "  basic_auth: {username: firehouse, password_file: am.pw}\n")
        settings = load_config(path, {}).settings
        assert settings.alertmanager_basic_auth == ("firehouse", "pa55word")
        assert "pa55word" not in repr(settings)

    def test_bearer_and_basic_together(self, tmp_path: Path) -> None:
        """A bearer token and basic auth together are refused, as Alertmanager does."""
        path = write(tmp_path, SETTINGS + "alertmanager:\n  bearer_token: t0ken\n"
                     "  basic_auth: {username: firehouse, password: pa55word}\n")
        assert problems_of(path) == [
            f"{path}:12: alertmanager.basic_auth: only one of bearer_token(_file) and "
            "basic_auth may be set",
        ]

    def test_digest_follows_the_urls(self, tmp_path: Path) -> None:
        """Another Alertmanager URL is another configuration digest."""
        path = write(tmp_path)
        first = load_config(path, {"FIREHOUSE_ALERTMANAGER_URL": "http://a:9093"}).digest
        assert load_config(path, {"FIREHOUSE_ALERTMANAGER_URL": "http://b:9093"}).digest != first


class TestDatabase:
    """`database`: PostgreSQL shared by replicas instead of the SQLite file."""

    URL = "postgresql://firehouse:hunter2-secret@db.internal:5432/firehouse"

    def test_default_is_the_sqlite_file(self, tmp_path: Path) -> None:
        settings = load_config(write(tmp_path), {}).settings
        assert settings.database_url == ""
        assert settings.database_lease == 30.0

    def test_url_and_lease_from_the_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, SETTINGS + f"database:\n  url: {self.URL}\n  lease_seconds: 12\n")
        settings = load_config(path, {}).settings
        assert (settings.database_url, settings.database_lease) == (self.URL, 12.0)
        assert "hunter2" not in repr(settings)

    def test_url_from_the_environment_wins(self, tmp_path: Path) -> None:
        path = write(tmp_path, SETTINGS + "database:\n  url: postgresql://other/db\n")
        settings = load_config(path, {"FIREHOUSE_DATABASE_URL": self.URL}).settings
        assert settings.database_url == self.URL

    def test_url_from_a_file_is_trimmed(self, tmp_path: Path) -> None:
        (tmp_path / "db-url").write_text(self.URL + "\n", encoding="utf-8")
        path = write(tmp_path, SETTINGS + "database:\n  url_file: db-url\n")
        assert load_config(path, {}).settings.database_url == self.URL

    def test_not_postgresql_is_refused_without_showing_it(self, tmp_path: Path) -> None:
        path = write(tmp_path, SETTINGS + "database:\n  url: mysql://root:hunter2@db/x\n")
        lines = problems_of(path)
        assert any("database.url" in line and "postgresql://" in line for line in lines)
        assert not any("hunter2" in line for line in lines)

    def test_unknown_key_and_bad_lease_are_named(self, tmp_path: Path) -> None:
        path = write(tmp_path, SETTINGS + "database:\n  urll: x\n  lease_seconds: 1\n")
        text = "\n".join(problems_of(path))
        assert "database.urll" in text
        assert "did you mean 'url'" in text
        assert "database.lease_seconds" in text
        assert "from 5 to 3600" in text

    @pytest.mark.parametrize("port", ["99999", "notaport"])
    def test_a_port_that_is_not_one_is_refused_without_showing_the_url(
        self, tmp_path: Path, port: str
    ) -> None:
        path = write(tmp_path, SETTINGS + f"database:\n  url: postgresql://u:hunter2@db:{port}/x\n")
        lines = problems_of(path)
        assert any("database.url" in line and "port" in line for line in lines), lines
        assert not any("hunter2" in line for line in lines)

    def test_a_lease_no_longer_than_the_pagerduty_timeout_is_refused(self, tmp_path: Path) -> None:
        """An event still being sent when its claim runs out would be sent again by another
        replica: the lease must outlast a request to PagerDuty."""
        shared = SETTINGS + f"database:\n  url: {self.URL}\n  lease_seconds: 20\n"
        refused = write(tmp_path, shared + "pagerduty:\n  timeout_seconds: 20\n")
        text = "\n".join(problems_of(refused))
        assert "database.lease_seconds" in text
        assert "pagerduty.timeout_seconds (20)" in text
        (tmp_path / "ok").mkdir()
        accepted = write(tmp_path / "ok", shared + "pagerduty:\n  timeout_seconds: 19\n")
        assert load_config(accepted, {}).settings.database_lease == 20.0

    def test_a_short_lease_is_no_problem_on_sqlite(self, tmp_path: Path) -> None:
        """Without database.url there are no leases (one process owns the outbox): the
        shortest lease passes, as it does in `check` and in a reload, which load the same
        way."""
        path = write(tmp_path, SETTINGS + "database:\n  lease_seconds: 5\n")
        assert load_config(path, {}).settings.database_lease == 5.0
        text = "\n".join(problems_of(path, {"FIREHOUSE_DATABASE_URL": self.URL}))
        assert ("database.lease_seconds: must be longer than pagerduty.timeout_seconds (10) "
                "with database.url set: an event still being sent when its lease runs out is "
                "sent again by another replica (got 5)") in text


class TestTabs:
    """A tab indenting YAML is named, in every file the loader reads."""

    MESSAGE = "invalid YAML: a tab at column 1: YAML indents with spaces"

    def test_in_the_settings(self, tmp_path: Path) -> None:
        path = write(tmp_path, SETTINGS.replace("  incident_lead", "\tincident_lead"))
        assert f"{path}:6: {self.MESSAGE}" in problems_of(path)

    def test_in_a_rules_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, rules=RULES.replace("    page", "\tpage"))
        assert problems_of(path) == [f"{tmp_path / 'rules' / 'rules.yaml'}:3: {self.MESSAGE}"]

    def test_in_a_map(self, tmp_path: Path) -> None:
        path = write(tmp_path, map_text=MAP.replace("    tier", "\ttier"))
        assert problems_of(path) == [f"{tmp_path / 'maps' / 'web.yaml'}:3: {self.MESSAGE}"]

    def test_after_spaces(self, tmp_path: Path) -> None:
        """A tab after the spaces of an indent: at its own column."""
        path = write(tmp_path, map_text=MAP.replace("    tier", "  \ttier"))
        assert problems_of(path) == [
            f"{tmp_path / 'maps' / 'web.yaml'}:3: invalid YAML: a tab at column 3: YAML "
            "indents with spaces"]

    def test_other_syntax_errors_are_as_the_parser_says(self, tmp_path: Path) -> None:
        path = write(tmp_path, map_text=MAP + "  bogus: [\n")
        assert problems_of(path) == [
            f"{tmp_path / 'maps' / 'web.yaml'}:8: invalid YAML: did not find expected node "
            "content"]


class TestStoreSettings:
    """load_store_settings: the settings alone, for a command that only moves the state."""

    def test_dry_run_false_needs_no_routing_keys(self, tmp_path: Path) -> None:
        """Nothing is paged by moving a state: no target needs its key, and the mode read
        stays what the settings say."""
        path = write(tmp_path, SETTINGS + "dry_run: false\n")
        assert any("has no routing key" in line for line in problems_of(path))
        settings = load_store_settings(path, {})
        assert settings.dry_run is False

    def test_other_settings_are_still_checked(self, tmp_path: Path) -> None:
        path = write(tmp_path, SETTINGS + "dry_run: false\nlisen: 1\n")
        with pytest.raises(ConfigError) as caught:
            load_store_settings(path, {})
        assert str(caught.value) == (f"{path}:11: lisen: unknown setting; did you mean "
                                     "'listen'? (got 'lisen')")

    def test_maps_and_rules_are_not_read(self, tmp_path: Path) -> None:
        path = write(tmp_path, SETTINGS.replace("[maps]", "[gone]").replace("[rules]", "[gone]"))
        assert load_store_settings(path, {}).dependency_maps == (tmp_path / "gone",)


class TestRestartOnly:
    """What a reload says of settings read only at start, and what stays in force."""

    FIELDS = ("state", "database_url", "database_lease", "listen_host", "listen_port",
              "max_body_bytes", "pagerduty_url", "pagerduty_timeout")

    def test_each_setting_by_its_key_and_value_as_written(self) -> None:
        running = Settings(state=Path("/data/firehouse.db"), listen_port=19200,
                           pagerduty_timeout=10.0)
        new = Settings(state=Path("/data/other.db"), listen_host="::1", listen_port=19201,
                       pagerduty_timeout=7.5, database_lease=60.0)
        assert running.changed_in(new, self.FIELDS) == [
            ("state", "/data/firehouse.db", "/data/other.db"),
            ("listen", "127.0.0.1:19200", "[::1]:19201"),
            ("pagerduty.timeout_seconds", "10", "7.5"),
        ]

    def test_a_database_url_is_shown_without_its_password(self) -> None:
        new = Settings(database_url=TestDatabase.URL, database_lease=60.0)
        assert Settings().changed_in(new, self.FIELDS) == [
            ("database.url", "the SQLite file state",
             "postgresql://firehouse@db.internal:5432/firehouse"),
            ("database.lease_seconds", "30", "60"),
        ]

    def test_the_running_values_stay_in_force(self, tmp_path: Path) -> None:
        """The configuration swapped in keeps what the process started with; the rest is
        the new file's."""
        running = load_config(write(tmp_path), {})
        (tmp_path / "new").mkdir()
        new = load_config(write(tmp_path / "new", SETTINGS.replace("9095", "9096")
                                .replace("data/firehouse.db", "data/other.db")
                                + "resolved_retention_hours: 2\n"), {})
        kept = new.keeping(running.settings, self.FIELDS)
        assert (kept.settings.listen_port, kept.settings.state) == (9095, tmp_path / "data" /
                                                                    "firehouse.db")
        assert kept.settings.resolved_retention_hours == 2.0
        assert running.settings.changed_in(kept.settings, self.FIELDS) == []


class TestDryRunStateWarning:
    def test_advice_fits_the_store(self) -> None:
        """A fresh file for SQLite; a fresh database for PostgreSQL; at most `limit` ids."""
        sqlite = dry_run_state_warning(["a", "b", "c"], Settings(), 2)
        shared = dry_run_state_warning(["a"], Settings(database_url=TestDatabase.URL), 2)
        assert sqlite.startswith("the state holds open incidents decided in dry-run (a, b, …)")
        assert sqlite.endswith("to start clean, stop and point state (or FIREHOUSE_STATE) at "
                               "a fresh file")
        assert shared.startswith("the state holds open incidents decided in dry-run (a): ")
        assert shared.endswith("to start clean, stop every replica and point database.url (or "
                               "FIREHOUSE_DATABASE_URL) at a fresh database (an empty "
                               "database, or a schema of its own with ?search_path=)")
        assert "hunter2" not in shared
