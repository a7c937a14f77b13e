"""Kannel's and Jasmin's send URLs, called with curl exactly as applications written for those
gateways call them: accepted with their answers, refused with their answers."""

from __future__ import annotations

import subprocess
from typing import Any

import psycopg

from tests.peers.api import Api


def curl(*arguments: str) -> tuple[int, str]:
    """(HTTP status, body) of one curl call."""
    done = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *arguments],
                          capture_output=True, text=True, check=True, timeout=10)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def test_kannel_sendsms_in_its_url_forms(api: Api, conn: psycopg.Connection[Any]) -> None:
    name, secret = api.keys["send"].split(".", 1)
    accepted = curl("-G", f"{api.url}/cgi-bin/sendsms", "--data-urlencode", f"username={name}",
                    "--data-urlencode", f"password={secret}", "--data-urlencode", "to=+31612345678",
                    "--data-urlencode", "text=Hello from Kannel", "--data-urlencode", "from=Shop",
                    "--data-urlencode", "dlr-mask=3",
                    "--data-urlencode", "dlr-url=http://127.0.0.1:9/dlr?id=7&status=%d&answer=%A")
    posted = curl(f"{api.url}/cgi-bin/sendsms", "--data-urlencode", f"username={name}",
                  "--data-urlencode", f"password={secret}", "--data-urlencode", "to=+31612345679",
                  "--data-urlencode", "text=posted", "--data-urlencode", "coding=2")
    wrong = curl("-G", f"{api.url}/cgi-bin/sendsms", "--data-urlencode", f"username={name}",
                 "--data-urlencode", "password=wrong", "--data-urlencode", "to=+31612345678",
                 "--data-urlencode", "text=x")
    reader = curl("-G", f"{api.url}/cgi-bin/sendsms", "--data-urlencode", f"username={api.keys['read'].split('.')[0]}",
                  "--data-urlencode", f"password={api.keys['read'].split('.', 1)[1]}",
                  "--data-urlencode", "to=+31612345678", "--data-urlencode", "text=x")
    assert accepted == (202, "0: Accepted for delivery")
    assert posted == (202, "0: Accepted for delivery")
    assert wrong == (403, "Authorization failed for sendsms")
    assert reader == (403, "Authorization failed for sendsms")
    rows = conn.execute("SELECT to_address, from_address, body, status_callback, properties FROM messages "
                        "ORDER BY id").fetchall()
    assert [r["body"] for r in rows] == ["Hello from Kannel", "posted"]
    assert rows[0]["status_callback"] == "http://127.0.0.1:9/dlr?id=7&status=%d&answer=%A"
    assert rows[0]["properties"] == {"callback_style": "kannel", "dlr_mask": 3}
    assert rows[1]["properties"] == {"coding": "ucs2"}


def test_jasmin_send_in_its_url_forms(api: Api, conn: psycopg.Connection[Any]) -> None:
    name, secret = api.keys["send"].split(".", 1)
    accepted = curl("-G", f"{api.url}/send", "--data-urlencode", f"username={name}",
                    "--data-urlencode", f"password={secret}", "--data-urlencode", "to=+31612345678",
                    "--data-urlencode", "content=Hello from Jasmin", "--data-urlencode", "dlr=yes",
                    "--data-urlencode", "dlr-url=http://127.0.0.1:9/jasmin", "--data-urlencode", "dlr-level=3")
    wrong = curl(f"{api.url}/send", "--data-urlencode", f"username={name}", "--data-urlencode", "password=nope",
                 "--data-urlencode", "to=+31612345678", "--data-urlencode", "content=x")
    missing = curl("-G", f"{api.url}/send", "--data-urlencode", f"username={name}",
                   "--data-urlencode", f"password={secret}", "--data-urlencode", "content=x")
    row = conn.execute("SELECT id, body, status_callback, properties FROM messages").fetchone()
    assert row is not None
    assert accepted == (200, f'Success "{row["id"]}"')
    assert wrong == (403, f'Error "Authentication failure for username:{name}"')
    assert missing == (400, 'Error "Mandatory argument [to] is not found."')
    assert row["properties"] == {"callback_style": "jasmin", "dlr_level": 3, "dlr_method": "POST"}
    assert row["status_callback"] == "http://127.0.0.1:9/jasmin"
