"""The Manager's messages browser with a full table (issue 11): time of the first page and of
a filtered page, as the api serves them, p50/p99 over repeated requests.

The requests go over loopback with keep-alive from one client, one at a time, so each figure
is the server's time plus a loopback round trip (an upper bound on server time).

    .venv/bin/python bench/web.py --messages 100000 --requests 200
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

from common import percentile, print_table, service_environment, start_service, throwaway_database
from smsbus import access
from tests.peers.processes import free_port

PASSWORD = "bench password 1"
# a realistic mix: most delivered, some failed, incoming replies, two channels, a campaign
FILL = """
INSERT INTO messages (direction, status, channel, to_address, from_address, body, campaign_id, created_at)
SELECT CASE WHEN i %% 10 = 0 THEN 'in' ELSE 'out' END,
       CASE WHEN i %% 10 = 0 THEN 'RECEIVED' WHEN i %% 37 = 0 THEN 'FAILED' ELSE 'DELIVERED' END,
       CASE WHEN i %% 3 = 0 THEN 'kpn' ELSE 'vodafone' END,
       '+3161' || lpad((i %% 100000)::text, 7, '0'), '+3197010000000',
       'Your parcel ' || i || ' arrives tomorrow between 10:00 and 12:00',
       CASE WHEN i %% 5 = 0 THEN 7 END,
       now() - make_interval(secs => %(count)s - i)
FROM generate_series(1, %(count)s) AS i
"""
PAGES = {
    "first page": "/manager/messages",
    "filtered: FAILED out via kpn": "/manager/messages?status=FAILED&direction=out&channel=kpn",
    "filtered: text + campaign": "/manager/messages?text=parcel+4242&campaign=7",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with throwaway_database() as url, tempfile.TemporaryDirectory() as tmp:
        with psycopg.connect(url) as conn:
            # rows are inserted as they are, without the trigger's status moves
            conn.execute("ALTER TABLE messages DISABLE TRIGGER USER")
            conn.execute(FILL, {"count": args.messages})
            conn.execute("ALTER TABLE messages ENABLE TRIGGER USER")
            access.add_user(conn, "bench", "operator", PASSWORD)
            conn.commit()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE messages")
        env = service_environment(url, Path(tmp) / "var")
        port = free_port()
        env["SMSBUS_API_PORT"] = str(port)
        api = start_service(["smsbus-api"], env, Path(tmp) / "api.log")
        try:
            api.wait_for_port(port, timeout_s=30)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                client.post("/v1/session", json={"name": "bench", "password": PASSWORD}).raise_for_status()
                rows = []
                for label, path in PAGES.items():
                    for _ in range(5):  # warm up: plans, pool connections, templates
                        client.get(path).raise_for_status()
                    seconds = []
                    for _ in range(args.requests):
                        started = time.perf_counter()
                        response = client.get(path)
                        seconds.append(time.perf_counter() - started)
                        response.raise_for_status()
                    rows.append([label, percentile(seconds, 0.5) * 1000, percentile(seconds, 0.99) * 1000])
        finally:
            api.stop()
    print_table(f"messages browser, {args.messages:,} messages, {args.requests} requests each",
                ["page", "p50 ms", "p99 ms"], rows)


if __name__ == "__main__":
    main()
