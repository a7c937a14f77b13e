"""`smsbus triggers ...` and `smsbus messages reprocess`: what an operator sees, bad input
refused before it is saved with one clear line, and `test` committing nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from smsbus.cli import main
from tests.peers.processes import BIN_DIR

Conn = psycopg.Connection[dict[str, Any]]

REPLY = "def handle(message, api):\n    api.send(message.from_address, 'hello back')\n    api.log('replying')\n"
INSERT_INCOMING = """
INSERT INTO messages (direction, status, from_address, body)
VALUES ('in', 'RECEIVED', '+31611111111', 'hi') RETURNING id
"""


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Runs `smsbus ARGS...` in this process; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("SMSBUS_DATABASE_URL", database_url)

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out, err = capsys.readouterr()
        return int(exited.value.code or 0), out, err

    return run


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    (tmp_path / "reply.py").write_text(REPLY)
    (tmp_path / "syntax.py").write_text("def handle(message, api)\n    pass\n")
    (tmp_path / "no_handle.py").write_text("def answer(message, api):\n    pass\n")
    (tmp_path / "two.sql").write_text("SELECT 1; DELETE FROM messages")
    (tmp_path / "tag.sql").write_text("UPDATE messages SET properties = '{\"tag\": true}' WHERE id = $1")
    (tmp_path / "script.txt").write_text(REPLY)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["reply.py", "--condition", "nope = 1"], 1,
         'smsbus: error: condition: PostgreSQL refused it: column "nope" does not exist'),
        (["reply.py", "--condition", "body"], 1,
         "smsbus: error: condition: PostgreSQL refused it: argument of IS TRUE must be type boolean, not type text"),
        (["syntax.py"], 1, "smsbus: error: script: expected ':' (line 1)"),
        (["no_handle.py"], 1, "smsbus: error: script: defines no handle(message, api) function"),
        (["two.sql"], 1,
         "smsbus: error: script: PostgreSQL refused it: cannot insert multiple commands into a prepared statement"),
        (["script.txt"], 1, "smsbus: error: --language: give python or sql"),
        (["reply.py", "--timeout", "0"], 2, "expected a number of seconds above 0, got '0'"),
        (["missing.py"], 2, "cannot read"),
    ],
)
def test_a_trigger_that_could_never_run_is_refused_when_saved(
    cli: Any, scripts: Path, conn: Conn, args: list[str], code: int, says: str
) -> None:
    script, *rest = args
    exit_code, _, err = cli("triggers", "add", "t", "--script", str(scripts / script), *rest)
    assert exit_code == code
    assert says in err
    assert "Traceback" not in err
    assert conn.execute("SELECT count(*) AS n FROM triggers").fetchone() == {"n": 0}


def test_add_list_edit_move_disable_remove(cli: Any, scripts: Path) -> None:
    assert cli("triggers", "add", "reply", "--script", str(scripts / "reply.py"),
               "--condition", "direction = 'in'")[1] == 'added trigger "reply" (id 1) at position 1\n'
    assert cli("triggers", "add", "tag", "--script", str(scripts / "tag.sql"), "--timeout", "2")[0] == 0
    assert cli("triggers", "add", "tag", "--script", str(scripts / "tag.sql"))[2] == (
        "smsbus: error: name: a trigger named 'tag' exists already\n"
    )
    assert cli("triggers", "list")[1] == (
        "  1. reply [python, 5 s]  WHERE direction = 'in'\n"
        "  2. tag [sql, 2 s]  WHERE true\n"
    )
    assert cli("triggers", "edit", "reply", "--condition", "nope")[0] == 1
    assert cli("triggers", "edit", "reply", "--condition", "body = 'x'", "--timeout", "1.5")[1] == (
        "  1. reply [python, 1.5 s]  WHERE body = 'x'\n"
    )
    assert cli("triggers", "move", "tag", "--to", "1")[1] == (
        "  1. tag [sql, 2 s]  WHERE true\n"
        "  2. reply [python, 1.5 s]  WHERE body = 'x'\n"
    )
    assert cli("triggers", "disable", "1")[1] == "  2. reply [python, 1.5 s]  (disabled)  WHERE body = 'x'\n"
    code, shown, _ = cli("triggers", "show", "reply")
    assert code == 0 and "enabled     False" in shown and shown.endswith("script:\n" + REPLY)
    assert cli("triggers", "enable", "reply")[1] == "  2. reply [python, 1.5 s]  WHERE body = 'x'\n"
    assert cli("triggers", "disable", "reply")[0] == 0
    assert cli("triggers", "remove", "tag")[1] == 'removed trigger "tag"\n'
    assert cli("triggers", "list")[1] == "  1. reply [python, 1.5 s]  (disabled)  WHERE body = 'x'\n"
    assert cli("triggers", "show", "tag")[2] == "smsbus: error: no trigger tag\n"


def smsbus(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"SMSBUS_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(BIN_DIR / "smsbus"), *args], env=env, capture_output=True, text=True, timeout=60)


def test_test_shows_what_the_trigger_would_do_and_commits_nothing(
    cli: Any, scripts: Path, conn: Conn, database_url: str
) -> None:
    cli("triggers", "add", "reply", "--script", str(scripts / "reply.py"), "--condition", "direction = 'out'")
    message = conn.execute(INSERT_INCOMING).fetchone()
    assert message is not None

    result = smsbus(database_url, "triggers", "test", "reply", "--message", str(message["id"]))

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"trigger reply (python) on message {message['id']}\n"
        "condition: does not hold (the service would not run it)\n"
        "would send to_address='+31611111111' body='hello back' direction='out'\n"
        "would log level='info' text='replying'\n"
        "trigger_status would be: PROCESSED\n"
        "nothing was committed\n"
    )
    cli("triggers", "add", "tag", "--script", str(scripts / "tag.sql"))
    result = smsbus(database_url, "triggers", "test", "tag", "--message", str(message["id"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"trigger tag (sql) on message {message['id']}\n"
        "condition: holds\n"
        "sql: 1 row(s) touched\n"
        "would change properties: {} -> {'tag': True}\n"
        "trigger_status would be: PROCESSED\n"
        "nothing was committed\n"
    )
    assert conn.execute("SELECT count(*) AS n FROM messages").fetchone() == {"n": 1}
    assert conn.execute("SELECT trigger_status, properties FROM messages").fetchone() == {
        "trigger_status": "N/A", "properties": {}
    }
    missing = smsbus(database_url, "triggers", "test", "tag", "--message", "424242")
    assert (missing.returncode, missing.stderr) == (1, "smsbus: error: no message with id 424242\n")


def test_reprocess_moves_finished_messages_and_names_the_others(cli: Any, conn: Conn) -> None:
    finished = conn.execute(INSERT_INCOMING).fetchone()
    waiting = conn.execute(INSERT_INCOMING).fetchone()
    assert finished is not None and waiting is not None
    conn.execute("UPDATE messages SET trigger_status = 'FAILED', trigger_error = 'x' WHERE id = %s",
                 (finished["id"],))

    code, out, err = cli("messages", "reprocess", str(finished["id"]), str(waiting["id"]))

    assert code == 1
    assert out == f"reprocessing {finished['id']}\n"
    assert err == (
        f"smsbus: error: message {waiting['id']} has trigger_status N/A;"
        " only FAILED, NOMATCH, NOTRIGGERS, PROCESSED can be reprocessed\n"
        "smsbus: error: 1 of 2 messages not reprocessed\n"
    )
    assert conn.execute("SELECT trigger_status, trigger_error FROM messages WHERE id = %s",
                        (finished["id"],)).fetchone() == {"trigger_status": "N/A", "trigger_error": None}
    assert cli("messages", "reprocess", "abc")[0] == 2
