"""Connections to the queue database, and PostgreSQL's refusals in words.

Worker connections get the session settings measured to keep claims fast under a backlog
(see STYLE.md): custom plans always, index-friendly costs, no idle transactions left open,
and a statement_timeout so that one runaway query ends instead of holding its locks and its
connection for ever (the archiver, which moves large batches, asks for a longer one).
"""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from smsbus.errors import InvalidMessage

# a transaction left open this long is ended by PostgreSQL; whatever runs while one is open
# (a SQL trigger, a rule) must be stopped well before
IDLE_IN_TRANSACTION_TIMEOUT_S = 60

WORKER_SESSION_OPTIONS = (
    "-c plan_cache_mode=force_custom_plan"
    " -c random_page_cost=1.1"
    f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_S * 1000}"
)
# what an ordinary query of a service or of the CLI may take at most
DEFAULT_STATEMENT_TIMEOUT_S = 30.0


def session_options(statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S) -> str:
    """libpq `options` for a service's session (pools too); statement_timeout_s 0: no limit."""
    return f"{WORKER_SESSION_OPTIONS} -c statement_timeout={round(statement_timeout_s * 1000)}"


def connect(
    url: str,
    *,
    application: str = "smsbus",
    autocommit: bool = False,
    timeout_s: int = 5,
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
) -> psycopg.Connection[dict[str, object]]:
    """A session of the queue database; statement_timeout_s 0 means no limit."""
    return psycopg.connect(
        url,
        autocommit=autocommit,
        row_factory=dict_row,
        application_name=application,
        options=session_options(statement_timeout_s),
        connect_timeout=timeout_s,
    )


def translate_refusal(error: psycopg.errors.IntegrityError) -> InvalidMessage:
    """PostgreSQL's own message (it names the constraint), with the constraint kept apart."""
    diag = error.diag
    return InvalidMessage(diag.constraint_name, diag.message_primary or str(error))
