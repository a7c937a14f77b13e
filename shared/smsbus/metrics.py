"""Prometheus, set up once per process: every metric is `smsbus_*` via prometheus_client."""

from __future__ import annotations

import prometheus_client

DATABASE_CONNECTED = prometheus_client.Gauge(
    "smsbus_database_connected", "1 while the service holds a working database connection"
)
DATABASE_ERRORS = prometheus_client.Counter(
    "smsbus_database_errors_total", "Database errors survived by the main loop", ["kind"]
)
WAKEUPS = prometheus_client.Counter(
    "smsbus_loop_wakeups_total", "Times the main loop woke to look for work", ["reason"]
)
STEP_SECONDS = prometheus_client.Histogram(
    "smsbus_loop_step_seconds", "Duration of one step of the main loop"
)

# SPEC §9 "messages by status and channel": each service counts the moves it makes, where it
# records them (router: QUEUED with the channel it passed to, BLOCKED, NOCHANNEL, DAILYLIMIT,
# FAILED when a rule raised on the message; channels: SENT, FAILED, DELIVERED,
# NOTDELIVERED, NOREPORT, RECEIVED, QUEUED for a retry). channel="" when there is none.
MESSAGES = prometheus_client.Counter(
    "smsbus_messages_total", "Messages moved into a status by this service", ["status", "channel"]
)

def count_moves(status: str, channel: str, moved: int) -> None:
    """smsbus_messages_total: `moved` rows one statement moved into `status`, counted where the
    move is recorded, before its commit (a batch that fails and is recorded again counts twice:
    rare, and visible). No rows, no series."""
    if moved:
        MESSAGES.labels(status, channel).inc(moved)


# every channel type's process, one series per channel (the router reads channel_health)
CHANNEL_CONNECTED = prometheus_client.Gauge(
    "smsbus_channel_connected", "1 while the channel can send (SMPP: bound; GSM: answering and registered)", ["channel"]
)


def start_server(host: str, port: int) -> None:
    """Serve /metrics; port 0 leaves it off. prometheus_client serves from its own thread."""
    if port:
        prometheus_client.start_http_server(port, addr=host)
