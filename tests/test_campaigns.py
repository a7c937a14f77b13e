"""Campaigns without processes: templates, number normalisation, loading with its report,
state moves, allowed hours, and the `smsbus campaigns` CLI against a real database."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import phonenumbers
import psycopg
import pytest

from smsbus import campaigns
from smsbus.campaigns import InvalidCampaign, NewCampaign
from smsbus.db import connect
from tests.peers.cli import Result

Conn = psycopg.Connection[dict[str, Any]]


def test_template_fields_and_render_keep_literal_braces() -> None:
    template = "Hello {name}, code {code} {{literal}} to {address}"
    assert campaigns.template_fields(template) == ["name", "code", "address"]
    assert campaigns.render(template, "+31612345678", {"name": "Ann", "code": "12"}) == (
        "Hello Ann, code 12 {literal} to +31612345678"
    )
    # a field's value is text, never a format directive
    assert campaigns.render("Hi {name}", "+3161", {"name": "{code} {0.__class__}"}) == "Hi {code} {0.__class__}"


@pytest.mark.parametrize("template", ["Hello {name", "Hello name}", "Hello {}", "{a}{b}"])
def test_a_template_with_a_stray_brace_or_no_text_is_refused_naming_the_template(template: str) -> None:
    with pytest.raises(InvalidCampaign) as refused:
        campaigns.check_new_campaign(NewCampaign(name="x", template=template))
    assert refused.value.field == "template"


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+31612345678", None, "+31612345678"),
        (" 06 12345678 ", "NL", "+31612345678"),
        ("+1 650 253 0000", None, "+16502530000"),
        ("+390612345678", None, "+390612345678"),  # Italian numbers keep their leading zero
        ("0612345678", None, None),  # national form without a region
        ("+3161234", None, None),  # too short for a Dutch mobile
        ("+999123456789", None, None),  # no such country code
        ("not a number", "NL", None),
        ("", "NL", None),
    ],
)
def test_addresses_normalise_to_e164_or_none(raw: str, region: str | None, expected: str | None) -> None:
    assert campaigns.normalise_address(raw, region) == expected


def test_the_e164_fast_path_agrees_with_phonenumbers() -> None:
    samples = [f"+{cc}{rest}" for cc in (1, 31, 44, 49, 33, 7, 86, 91, 358, 972) for rest in
               ("612345678", "2025550123", "7911123456", "15123456789", "123", "3012345678")]
    for text in samples:
        try:
            parsed = phonenumbers.parse(text)
            slow = (phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
                    if phonenumbers.is_valid_number(parsed) else None)
        except phonenumbers.NumberParseException:
            slow = None
        assert campaigns.normalise_address(text, None) == slow, text


def make_campaign(conn: Conn, name: str = "winter", template: str = "Hello {name}, code {code}", **fields: Any) -> int:
    with connect_for(conn) as own:
        campaign = campaigns.create_campaign(own, NewCampaign(name=name, template=template, **fields))
    return campaign.id


def connect_for(conn: Conn) -> psycopg.Connection[Any]:
    return connect(conn.info.dsn)


def test_a_csv_load_counts_invalid_duplicate_and_opted_out_rows(conn: Conn, tmp_path: Path) -> None:
    make_campaign(conn, default_region="NL")
    conn.execute("INSERT INTO blocked_addresses (address) VALUES ('+31612345003')")
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "name;phone;code\n"
        "Ann;+31612345001;11\n"
        "Bob;06 1234 5002;22\n"
        "Bob again;+31612345002;23\n"  # the same number as Bob: duplicate
        "Cy;+31612345003;33\n"  # opted out
        "Dee;12;44\n"  # invalid
        "Eve;+31612345005\n"  # a column short: invalid
        "Émile;+31612345006;66\n"
    )
    with connect_for(conn) as own, csv_file.open(encoding="utf-8", newline="") as file:
        report = campaigns.load_csv(own, "winter", file)
        own.commit()
    assert report == campaigns.LoadReport(rows=7, loaded=3, invalid=2, duplicate=1, opted_out=1)
    recipients = conn.execute("SELECT address, fields FROM campaign_recipients ORDER BY id").fetchall()
    assert recipients == [
        {"address": "+31612345001", "fields": {"name": "Ann", "code": "11"}},
        {"address": "+31612345002", "fields": {"name": "Bob", "code": "22"}},
        {"address": "+31612345006", "fields": {"name": "Émile", "code": "66"}},
    ]
    rejected = conn.execute("SELECT line, address, reason FROM campaign_rejected_rows ORDER BY line").fetchall()
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (3, "duplicate"), (4, "opted_out"), (5, "invalid"), (6, "invalid")
    ]
    with connect_for(conn) as own:
        # a second load of the same numbers: all duplicates of the first
        again = campaigns.load_addresses(own, "winter", ["+31612345001", "+31612345006"])
        own.commit()
        assert again.duplicate == 2 and again.loaded == 0
        assert campaigns.preview(own, "winter", 2) == [
            ("+31612345001", "Hello Ann, code 11"), ("+31612345002", "Hello Bob, code 22")
        ]
        estimate = campaigns.estimate(own, "winter")
    assert estimate == campaigns.Estimate(messages=3, parts=3, by_encoding={"gsm7": 3})


def test_a_failed_load_leaves_nothing_written(conn: Conn) -> None:
    make_campaign(conn)
    with connect_for(conn) as own, pytest.raises(InvalidCampaign) as refused:
        campaigns.load_rows(own, "winter", ["name", "phone"], [["Ann", "+31612345001"]], address_column="mobile")
    assert refused.value.field == "address_column"
    counts = conn.execute("SELECT (SELECT count(*) FROM campaign_recipients) AS r,"
                          " (SELECT count(*) FROM campaign_rejected_rows) AS j").fetchone()
    assert counts == {"r": 0, "j": 0}


def test_parts_are_counted_by_the_channels_encoding_code(conn: Conn) -> None:
    make_campaign(conn, name="long", template="{greeting} " + "x" * 150)
    with connect_for(conn) as own:
        campaigns.load_rows(own, "long", ["to", "greeting"], [["+31612345001", "Hi"], ["+31612345002", "Hé 😀"]])
        estimate = campaigns.estimate(own, "long")
    # 153 GSM characters: 2 parts; with an emoji UCS-2 and 156 UTF-16 units: 2 parts of 67
    assert estimate == campaigns.Estimate(messages=2, parts=4, by_encoding={"gsm7": 1, "ucs2": 1})


def test_state_moves_are_guarded_and_cancel_cancels_pending_recipients(conn: Conn) -> None:
    make_campaign(conn, template="Hi {address}")
    with connect_for(conn) as own:
        campaigns.load_addresses(own, "winter", ["+31612345001", "+31612345002"])
        with pytest.raises(campaigns.ForbiddenCampaignMove):
            campaigns.resume_campaign(own, "winter")
        assert campaigns.start_campaign(own, "winter").state == "RUNNING"
        assert campaigns.pause_campaign(own, "winter").state == "PAUSED"
        assert campaigns.cancel_campaign(own, "winter").state == "CANCELLED"
        own.commit()
        with pytest.raises(campaigns.ForbiddenCampaignMove):
            campaigns.start_campaign(own, "winter")
    states = conn.execute("SELECT DISTINCT state FROM campaign_recipients").fetchall()
    assert states == [{"state": "CANCELLED"}]


def test_a_template_field_the_recipients_lack_is_refused_at_start(conn: Conn) -> None:
    make_campaign(conn, template="Hello {nickname}")
    with connect_for(conn) as own:
        campaigns.load_rows(own, "winter", ["phone", "name"], [["+31612345001", "Ann"]])
        with pytest.raises(InvalidCampaign, match="no field nickname"):
            campaigns.start_campaign(own, "winter")


def test_the_allowed_hours_window_opens_and_wraps_midnight(conn: Conn) -> None:
    row = conn.execute(
        """
        SELECT campaign_window_open('09:00', '18:00', 'Europe/Amsterdam', '2026-12-05 08:30+00') AS inside,
               campaign_window_open('09:00', '18:00', 'Europe/Amsterdam', '2026-12-05 07:30+00') AS before,
               campaign_window_open('22:00', '06:00', 'UTC', '2026-12-05 23:30+00') AS wrapped_late,
               campaign_window_open('22:00', '06:00', 'UTC', '2026-12-05 05:30+00') AS wrapped_early,
               campaign_window_open('22:00', '06:00', 'UTC', '2026-12-05 12:00+00') AS wrapped_closed,
               campaign_window_opens('09:00', '18:00', 'Europe/Amsterdam', '2026-12-05 18:30+00') AS next_open
        """
    ).fetchone()
    assert row is not None
    assert (row["inside"], row["before"]) == (True, False)
    assert (row["wrapped_late"], row["wrapped_early"], row["wrapped_closed"]) == (True, True, False)
    assert row["next_open"].isoformat() == "2026-12-06T08:00:00+00:00"


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("time_zone", {"time_zone": "Mars/Olympus"}),
        ("default_region", {"default_region": "XX"}),
        ("allowed_hours", {"allowed_hours": "9 to 5"}),
        ("rate_per_s", {"rate_per_s": 0}),
        ("sender", {"sender": "not a valid sender id"}),
    ],
)
def test_bad_campaign_fields_are_refused_naming_the_field(conn: Conn, field: str, values: dict[str, Any]) -> None:
    with pytest.raises(InvalidCampaign) as refused:
        make_campaign(conn, **values)
    assert refused.value.field == field
    assert conn.execute("SELECT count(*) AS n FROM campaigns").fetchone() == {"n": 0}


def test_the_cli_creates_loads_previews_and_starts(
    conn: Conn, smsbus: Callable[..., Result], tmp_path: Path
) -> None:
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("phone,name\n+31612345001,Ann\n+31612345002,Bob\nbad,Cy\n")
    created = smsbus("campaigns", "create", "spring", "--template", "Hi {name}", "--rate", "5",
                     "--allowed-hours", "08:00-20:00", "--time-zone", "Europe/Amsterdam")
    assert created.returncode == 0, created.stderr
    loaded = smsbus("campaigns", "load", "spring", "--csv", str(csv_file))
    assert loaded.returncode == 0, loaded.stderr
    assert "2 recipients added; rejected 1 invalid, 0 duplicate, 0 opted out" in loaded.stdout
    preview = smsbus("campaigns", "preview", "spring")
    assert "Hi Ann" in preview.stdout and "to send: 2 messages, 2 SMS parts (2 gsm7)" in preview.stdout
    assert "line       3  invalid    bad" in preview.stdout
    assert smsbus("campaigns", "start", "spring").returncode == 0
    shown = smsbus("campaigns", "show", "spring", "--json")
    state = json.loads(shown.stdout)
    assert state["campaign"]["state"] == "RUNNING" and state["recipients"] == {"PENDING": 2}
    listed = smsbus("campaigns", "list")
    assert "spring" in listed.stdout and "RUNNING" in listed.stdout and "08:00-20:00 Europe/Amsterdam" in listed.stdout
    refused = smsbus("campaigns", "resume", "spring")
    assert refused.returncode == 1 and "RUNNING: it cannot become RUNNING" in refused.stderr
    missing = smsbus("campaigns", "load", "spring", "--csv", str(tmp_path / "nope.csv"))
    assert missing.returncode == 1 and "--csv: cannot read" in missing.stderr


def test_the_python_api_creates_loads_and_starts_a_campaign_in_one_call(conn: Conn) -> None:
    import smsbus

    with connect_for(conn) as own:
        started = smsbus.campaign(
            "script", template="Hi {name}", rate_per_s=2, conn=own, start=True,
            recipients=[{"address": "+31612345001", "name": "Ann"}, {"address": "bad", "name": "Bob"}],
        )
        own.commit()
        assert started.state == "RUNNING" and started.rate_per_s == 2
        with pytest.raises(campaigns.CampaignNotFound):
            smsbus.campaign("unknown", conn=own)
    assert conn.execute("SELECT address, fields FROM campaign_recipients").fetchall() == [
        {"address": "+31612345001", "fields": {"name": "Ann"}}
    ]
    assert conn.execute("SELECT reason FROM campaign_rejected_rows").fetchall() == [{"reason": "invalid"}]


def test_show_follow_draws_progress_until_the_campaign_ends(conn: Conn, smsbus: Callable[..., Result]) -> None:
    make_campaign(conn, template="Hi {address}")
    assert smsbus("campaigns", "load", "winter", "--to", "+31612345001", "+31612345002").returncode == 0
    assert smsbus("campaigns", "cancel", "winter").returncode == 0
    followed = smsbus("campaigns", "show", "winter", "--follow")
    assert followed.returncode == 0
    assert followed.stdout.startswith("CANCELLED") and "0/2 messaged" in followed.stdout
