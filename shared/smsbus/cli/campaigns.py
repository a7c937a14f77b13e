"""`smsbus campaigns create|load|preview|start|pause|resume|cancel|show|list`: stored bulk
sends (SPEC §12). The campaigns service feeds what is RUNNING; every verb here is a call of
smsbus.campaigns, the same code the API and the pages use.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import msgspec

from smsbus import campaigns
from smsbus.campaigns import Campaign, LoadReport, NewCampaign, Progress
from smsbus.cli.messages import positive_int
from smsbus.cli.rules import connection
from smsbus.cli.send import aware_datetime
from smsbus.errors import SmsbusError

BAR_WIDTH = 30


def register(commands: Any) -> None:
    parser = commands.add_parser("campaigns", help="bulk sends: recipients, a template, a rate, allowed hours")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    create = verbs.add_parser("create", help="a DRAFT campaign (load recipients next)")
    create.add_argument("name")
    create.add_argument("--template", required=True, help='e.g. "Hello {name}, your code is {code}"')
    create.add_argument("--sender", help="from address: E.164 number or alphanumeric id")
    create.add_argument("--channel", help="send through this channel (default: the router picks)")
    create.add_argument("--rate", type=positive_float, default=10.0, help="messages per second (default 10)")
    create.add_argument("--start-at", type=aware_datetime, help="start then, ISO 8601 with zone")
    create.add_argument("--allowed-hours", help="e.g. 09:00-18:00 (local to --time-zone; may wrap midnight)")
    create.add_argument("--time-zone", default="UTC", help="IANA zone of the allowed hours (default UTC)")
    create.add_argument("--region", help="country of numbers written without +country code, e.g. NL")
    create.set_defaults(handler=run_create)

    load = verbs.add_parser("load", help="add recipients: a CSV file (header row = fields), a query or numbers")
    load.add_argument("campaign", help="name or id")
    source = load.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="CSV file, - for stdin")
    source.add_argument("--query", help="a SELECT; its columns are the fields")
    source.add_argument("--to", nargs="+", metavar="NUMBER", help="numbers")
    load.add_argument(
        "--address-column", help="the column with the numbers (default: address, phone... or the first)")
    load.set_defaults(handler=run_load)

    preview = verbs.add_parser("preview", help="the first texts, the cost in messages and SMS parts, the rejected rows")
    preview.add_argument("campaign", help="name or id")
    preview.add_argument("--rows", type=positive_int, default=5)
    preview.set_defaults(handler=run_preview)

    start = verbs.add_parser("start", help="RUNNING now, or SCHEDULED with --at")
    start.add_argument("campaign", help="name or id")
    start.add_argument("--at", type=aware_datetime, help="ISO 8601 with zone")
    start.set_defaults(handler=run_start)

    for verb, move in (("pause", campaigns.pause_campaign), ("resume", campaigns.resume_campaign),
                       ("cancel", campaigns.cancel_campaign)):
        note = " (its unsent recipients end CANCELLED)" if verb == "cancel" else ""
        switch = verbs.add_parser(verb, help=f"{verb} a campaign{note}")
        switch.add_argument("campaign", help="name or id")
        switch.set_defaults(handler=run_move, move=move)

    show = verbs.add_parser("show", help="settings and progress")
    show.add_argument("campaign", help="name or id")
    show.add_argument("--follow", action="store_true", help="a live progress bar until it ends (Ctrl-C to leave)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_show)

    listing = verbs.add_parser("list", help="every campaign and its state")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=run_list)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def describe(campaign: Campaign) -> str:
    hours = f", {campaign.allowed_hours} {campaign.time_zone}" if campaign.allowed_hours else ""
    via = campaign.channel or "router"
    return f"{campaign.id:>5}  {campaign.name:20}  {campaign.state:9}  {campaign.rate_per_s:g}/s via {via}{hours}"


def run_create(args: argparse.Namespace) -> int:
    new = NewCampaign(
        name=args.name, template=args.template, sender=args.sender, channel=args.channel,
        rate_per_s=args.rate, start_at=args.start_at, allowed_hours=args.allowed_hours,
        time_zone=args.time_zone, default_region=args.region,
    )
    with connection() as conn:
        campaign = campaigns.create_campaign(conn, new)
    print(f'created campaign "{campaign.name}" (id {campaign.id}), DRAFT')
    return 0


class LoadBar:
    """Rows read, as a bar over the file's size where it is known."""

    def __init__(self, total_bytes: int | None, file: Any) -> None:
        self.total_bytes = total_bytes
        self.file = file
        self.started = time.monotonic()
        self.shown = sys.stderr.isatty()

    def __call__(self, rows: int) -> None:
        if not self.shown:
            return
        rate = rows / max(time.monotonic() - self.started, 1e-6)
        done = self.file.buffer.tell() / self.total_bytes if self.total_bytes else None
        redraw(f"{bar(done)} {rows:,} rows  {rate:,.0f} rows/s", sys.__stderr__)

    def finish(self) -> None:
        if self.shown:
            print(file=sys.stderr)


def redraw(line: str, terminal: TextIO | None) -> None:
    """Over the line drawn before: a carriage return, written past the CLI's escaping of
    control characters (smsbus.cli.output), which is for text from outside, not this line."""
    if terminal is not None:
        terminal.write("\r" + line)
        terminal.flush()


def bar(fraction: float | None) -> str:
    if fraction is None:
        return "loading"
    filled = round(min(1.0, fraction) * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}"


def print_report(report: LoadReport) -> None:
    print(f"read {report.rows} rows: {report.loaded} recipients added; rejected {report.invalid} invalid,"
          f" {report.duplicate} duplicate, {report.opted_out} opted out")


def run_load(args: argparse.Namespace) -> int:
    with connection() as conn:
        if args.to is not None:
            report = campaigns.load_addresses(conn, args.campaign, args.to)
        elif args.query is not None:
            report = campaigns.load_query(conn, args.campaign, args.query, address_column=args.address_column)
        else:
            report = load_csv_file(conn, args.campaign, args.csv, args.address_column)
    print_report(report)
    return 0


def load_csv_file(conn: Any, campaign: str, path: Path, address_column: str | None) -> LoadReport:
    if str(path) == "-":
        return campaigns.load_csv(conn, campaign, sys.stdin, address_column=address_column)
    try:
        file = path.open(encoding="utf-8-sig", newline="")
    except OSError as e:
        raise SmsbusError(f"--csv: cannot read {path}: {e.strerror}") from None
    with file:
        progress = LoadBar(os.fstat(file.fileno()).st_size, file)
        try:
            return campaigns.load_csv(conn, campaign, file, address_column=address_column, on_progress=progress)
        except UnicodeDecodeError as e:
            raise SmsbusError(f"--csv: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        finally:
            progress.finish()


def run_preview(args: argparse.Namespace) -> int:
    with connection() as conn:
        campaign = campaigns.find_campaign(conn, args.campaign)
        campaigns.check_template_fields(campaign)
        texts = campaigns.preview(conn, campaign.id, args.rows)
        estimate = campaigns.estimate(conn, campaign.id)
        state = campaigns.progress(conn, campaign.id)
        rejected = campaigns.rejected_rows(conn, campaign.id, args.rows)
    print(f"template: {campaign.template}")
    for address, text in texts:
        encoding, parts = campaigns.count_parts(text)
        print(f"  {address:16}  [{parts} part{'s' if parts > 1 else ''}, {encoding}]  {text}")
    encodings = ", ".join(f"{n} {name}" for name, n in sorted(estimate.by_encoding.items()))
    print(f"to send: {estimate.messages} messages, {estimate.parts} SMS parts ({encodings or 'none'})")
    print("rejected: " + rejection_counts(state))
    for row in rejected:
        print(f"  line {row['line']:>7}  {row['reason']:9}  {row['address']}")
    return 0


def rejection_counts(state: Progress) -> str:
    counts = ((state.rejected.get(reason, 0), reason.replace("_", " ")) for reason in campaigns.REJECTION_REASONS)
    return ", ".join(f"{n} {reason}" for n, reason in counts)


def run_start(args: argparse.Namespace) -> int:
    with connection() as conn:
        campaign = campaigns.start_campaign(conn, args.campaign, args.at)
    print(describe(campaign))
    return 0


def run_move(args: argparse.Namespace) -> int:
    with connection() as conn:
        campaign = args.move(conn, args.campaign)
    print(describe(campaign))
    return 0


def summary(state: Progress) -> list[str]:
    campaign = state.campaign
    recipients = ", ".join(f"{n} {name}" for name, n in sorted(state.recipients.items())) or "none"
    messages = ", ".join(f"{n} {name}" for name, n in sorted(state.messages.items())) or "none"
    eta = f", about {state.eta_s:,.0f} s to go" if state.eta_s is not None else ""
    return [
        describe(campaign),
        f"template:   {campaign.template}",
        f"recipients: {recipients}{eta}",
        f"messages:   {messages}",
        f"rejected:   {rejection_counts(state)}",
    ]


def run_show(args: argparse.Namespace) -> int:
    with connection() as conn:
        state = campaigns.progress(conn, args.campaign)
        if args.json:
            print(msgspec.json.encode(state).decode())
            return 0
        if not args.follow:
            print("\n".join(summary(state)))
            return 0
        follow(conn, args.campaign)
    return 0


def follow(conn: Any, key: str) -> None:
    """Redraws a bar of recipients messaged once a second, with the measured rate, until the
    campaign ends."""
    last: tuple[float, int] | None = None
    while True:
        state = campaigns.progress(conn, key)
        conn.commit()
        total = sum(state.recipients.values())
        done = state.recipients.get("MESSAGED", 0)
        now = time.monotonic()
        rate = (done - last[1]) / (now - last[0]) if last is not None else 0.0
        last = (now, done)
        delivered = state.messages.get("DELIVERED", 0)
        line = (f"{state.campaign.state:9} {bar(done / total if total else 1.0)} {done:,}/{total:,} messaged"
                f"  {delivered:,} delivered  {rate:,.0f}/s")
        if sys.stdout.isatty():
            redraw(line, sys.__stdout__)
        else:
            print(line, flush=True)
        if state.campaign.state in (campaigns.FINISHED, campaigns.CANCELLED):
            if sys.stdout.isatty():
                print()
            return
        time.sleep(1.0)


def run_list(args: argparse.Namespace) -> int:
    with connection() as conn:
        found = campaigns.list_campaigns(conn)
    for campaign in found:
        print(msgspec.json.encode(campaign).decode() if args.json else describe(campaign))
    return 0
