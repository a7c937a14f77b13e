"""The callback formats (signed JSON, Kannel, Jasmin) and URL redaction: pure decisions,
tested without a database or a network."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from smsbus.errors import ConfigError
from smsbus.redact import redact_text, redact_url
from smsbus_webhooks.delivery import parse_networks, send
from smsbus_webhooks.formats import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Callback,
    Request,
    Unsendable,
    build_request,
    expand_kannel_escapes,
)
from smsbus_webhooks.webhooks import WebhooksSettings, check_settings

CHANGED_AT = datetime(2026, 12, 5, 23, 59, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 6, 0, 0, 0, tzinfo=UTC)


def callback(status: str = "DELIVERED", url: str = "https://example.com/cb", **properties: Any) -> Callback:
    message = {
        "to_address": "+31612345678", "from_address": "Shop", "channel": "kpn",
        "body": "Your code is 1234 and more text",
        "provider_id": "a1f", "parts": 1, "client_ref": "order-7", "error": None,
        "sent_at": "2026-12-05T23:58:00+00:00", "report_at": "2026-12-05T23:59:01+00:00",
        "properties": properties,
    }
    return Callback(
        id=17, message_id=42, status=status, previous_status="SENT", changed_at=CHANGED_AT, url=url,
        message=message, api_key_id=3, secret="s3cret", key_found=True,
    )


def test_json_callback_is_signed_over_timestamp_and_body_and_verifies() -> None:
    request = build_request(callback(), NOW)
    assert request is not None and request.method == "POST"
    timestamp = request.headers[TIMESTAMP_HEADER]
    assert timestamp == str(int(NOW.timestamp()))
    # what a receiver does: the same HMAC, compared in constant time
    expected = hmac.new(b"s3cret", timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers[SIGNATURE_HEADER], f"sha256={expected}")
    payload = json.loads(request.body)
    assert payload["status"] == "DELIVERED" and payload["message_id"] == 42 and payload["event_id"] == 17
    assert payload["previous_status"] == "SENT" and payload["client_ref"] == "order-7"
    assert payload["changed_at"] == "2026-12-05T23:59:01Z"
    # the text never leaves in a callback
    assert "Your code" not in request.body.decode()


def test_json_callback_of_a_deleted_key_is_refused_not_sent_unsigned() -> None:
    gone = Callback(**{**callback().__dict__, "secret": None, "key_found": False})
    with pytest.raises(Unsendable, match="API key 3 no longer exists"):
        build_request(gone, NOW)


def test_json_callback_without_a_key_goes_unsigned() -> None:
    keyless = Callback(**{**callback().__dict__, "api_key_id": None, "secret": None, "key_found": False})
    request = build_request(keyless, NOW)
    assert request is not None and SIGNATURE_HEADER not in request.headers


def test_unknown_style_is_unsendable_naming_the_property() -> None:
    with pytest.raises(Unsendable, match="callback_style 'twilio'"):
        build_request(callback(callback_style="twilio"), NOW)


def test_kannel_escapes_are_expanded_url_encoded_and_unknown_ones_kept() -> None:
    url = "http://app.example/dlr?type=%d&to=%p&from=%P&id=%I&smsc=%i&ts=%T&reply=%A&keep=%Z&pct=%%"
    request = build_request(callback(url=url, callback_style="kannel", dlr_mask=31), NOW)
    assert request is not None and request.method == "GET" and request.body == b""
    query = parse_qs(urlsplit(request.url).query)
    assert query["type"] == ["1"] and query["to"] == ["+31612345678"] and query["from"] == ["Shop"]
    assert query["id"] == ["42"] and query["smsc"] == ["kpn"] and query["ts"] == [str(int(CHANGED_AT.timestamp()))]
    assert query["reply"][0].startswith("id:a1f sub:001 dlvrd:001") and "stat:DELIVRD" in query["reply"][0]
    assert "keep=%Z" in request.url and request.url.endswith("pct=%")


@pytest.mark.parametrize(
    ("status", "mask", "dlr_type"),
    [("DELIVERED", 1, "1"), ("NOTDELIVERED", 2, "2"), ("SENT", 8, "8"), ("FAILED", 16, "16"), ("BLOCKED", 16, "16")],
)
def test_kannel_reports_each_dlr_type_its_mask_asks_for(status: str, mask: int, dlr_type: str) -> None:
    request = build_request(callback(status, url="http://a/?d=%d", callback_style="kannel", dlr_mask=mask), NOW)
    assert request is not None and request.url == f"http://a/?d={dlr_type}"
    # every other bit: not asked for, not sent
    others = callback(status, url="http://a/?d=%d", callback_style="kannel", dlr_mask=31 ^ mask)
    assert build_request(others, NOW) is None


def test_kannel_without_a_mask_or_for_a_status_it_has_no_type_for_reports_nothing() -> None:
    assert build_request(callback("DELIVERED", callback_style="kannel"), NOW) is None
    assert build_request(callback("SENDING", callback_style="kannel", dlr_mask=31), NOW) is None
    assert build_request(callback("NOREPORT", callback_style="kannel", dlr_mask=31), NOW) is None


def test_kannel_smsc_reply_says_ack_on_submit_and_nack_with_the_error_on_reject() -> None:
    failed = callback("FAILED", url="http://a/?r=%A", callback_style="kannel", dlr_mask="31")
    failed = Callback(**{**failed.__dict__, "message": {**failed.message, "error": "0x0000000B ESME_RINVDSTADR"}})
    request = build_request(failed, NOW)
    assert request is not None and parse_qs(urlsplit(request.url).query)["r"] == ["NACK/0x0000000B ESME_RINVDSTADR"]
    sent = build_request(callback("SENT", url="http://a/?r=%A", callback_style="kannel", dlr_mask=8), NOW)
    assert sent is not None and sent.url == "http://a/?r=ACK%2F"


def test_jasmin_level_1_reports_the_submit_and_level_2_the_receipt_with_its_fields() -> None:
    submit = build_request(callback("SENT", callback_style="jasmin", dlr_level=3), NOW)
    assert submit is not None and submit.method == "POST" and submit.expected_reply == b"ACK/Jasmin"
    assert parse_qs(submit.body.decode()) == {"id": ["42"], "message_status": ["ESME_ROK"], "level": ["1"]}
    receipt = build_request(callback("DELIVERED", callback_style="jasmin", dlr_level=3), NOW)
    assert receipt is not None
    fields = {k: v[0] for k, v in parse_qs(receipt.body.decode()).items()}
    assert fields["message_status"] == "DELIVRD" and fields["level"] == "3" and fields["id_smsc"] == "a1f"
    assert fields["sub"] == "001" and fields["dlvrd"] == "001" and fields["err"] == "000"
    assert fields["subdate"] == "2612052358" and fields["donedate"] == "2612052359"
    assert fields["text"] == "Your code is 1234 an"
    # level 1 asks for no receipt; level 2 for no submit report
    assert build_request(callback("DELIVERED", callback_style="jasmin", dlr_level=1), NOW) is None
    assert build_request(callback("SENT", callback_style="jasmin", dlr_level=2), NOW) is None


def test_jasmin_get_puts_the_fields_in_the_query_and_a_failed_submit_names_its_esme_code() -> None:
    failed = callback("FAILED", url="http://a/dlr?x=1", callback_style="jasmin", dlr_level=1, dlr_method="GET")
    failed = Callback(**{**failed.__dict__, "message": {**failed.message, "error": "0x0000000B ESME_RINVDSTADR: bad"}})
    request = build_request(failed, NOW)
    assert request is not None and request.method == "GET" and request.body == b""
    assert parse_qs(urlsplit(request.url).query) == {
        "x": ["1"], "id": ["42"], "message_status": ["ESME_RINVDSTADR"], "level": ["1"]
    }


def test_kannel_coding_escape_gives_the_number_kannel_was_sent() -> None:
    request = build_request(callback(url="http://a/?c=%c", callback_style="kannel", dlr_mask=1, coding="ucs2"), NOW)
    assert request is not None and request.url == "http://a/?c=2"


def test_expanding_escapes_leaves_a_url_without_any_untouched() -> None:
    assert expand_kannel_escapes("http://a/b?c=d", {"d": "1"}) == "http://a/b?c=d"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pa55@hooks.example:8443/cb?token=abc", "https://***@hooks.example:8443/cb?***"),
        ("http://hooks.example/cb", "http://hooks.example/cb"),
        ("http://u@[::1]:80/x", "http://***@[::1]:80/x"),
        ("http://h:99999999/x", "<unparsable URL of 19 characters>"),
    ],
)
def test_redacted_urls_keep_host_and_path_and_mask_credentials_and_query(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redacted_text_masks_the_url_and_its_secrets_wherever_quoted() -> None:
    url = "https://user:pa55@hooks.example/cb?token=abc"
    text = redact_text(f"failed for {url}; password pa55, query token=abc", url)
    assert "pa55" not in text and "token=abc" not in text and "user" not in text
    assert "hooks.example/cb" in text


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/x", "not an http or https URL"),
        ("http:///nohost", "names no host"),
        ("http://example.com:notaport/", "cannot be parsed"),
        ("http://example.com/a b", "spaces, control or non-ASCII"),
        ("http://exämple.com/", "spaces, control or non-ASCII"),
    ],
)
def test_a_url_nothing_can_reach_fails_permanently_in_words_without_the_url(url: str, words: str) -> None:
    outcome = send(Request("POST", url), timeout_s=1)
    assert not outcome.delivered and outcome.permanent
    assert outcome.error is not None and words in outcome.error and url not in outcome.error


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/",
                                 "http://0.0.0.0:9/"])
def test_a_denied_network_is_never_connected_to_and_given_up(url: str) -> None:
    denied = parse_networks("webhooks.denied_networks", WebhooksSettings().denied_networks)
    outcome = send(Request("GET", url), timeout_s=1, denied=denied)
    assert not outcome.delivered and outcome.permanent
    assert outcome.error == "the host has only addresses that [webhooks] denied_networks refuses"


def test_settings_refuse_a_bad_network_and_a_lease_no_longer_than_the_timeout() -> None:
    with pytest.raises(ConfigError, match=r"webhooks\.denied_networks: not a network"):
        check_settings(WebhooksSettings(denied_networks=("10.0.0.0/33",)))
    with pytest.raises(ConfigError, match=r"webhooks\.lease_s: must be longer than twice request_timeout_s \(20\)"):
        check_settings(WebhooksSettings(lease_s=15, request_timeout_s=10))
