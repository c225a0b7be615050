"""`soma-gateway` (the console script) and `python -m soma_cli`: parse, then run a command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway_runtime.settings import CliSettings
from soma_cli import automations, records
from soma_cli.client import ApiError, Fatal, RequeueClient
from soma_cli.commands import (
    DISCARD,
    FAILED,
    REPLAY,
    USAGE,
    Console,
    bulk,
    list_dead_letters,
    show_dead_letter,
)
from soma_cli.filters import STATUSES, Filters, parse_time

EPILOG = """examples:
  soma-gateway dlq list --since 10m --error-type DependencyUnavailable
  soma-gateway dlq show 4711
  soma-gateway dlq replay --all --since 10m --stage persistence --dry-run
  soma-gateway dlq replay --all --since 10m --stage persistence --yes
  soma-gateway dlq discard 4711 4712
  soma-gateway automation add nightly-digest --tenant acme --out digest.json
  soma-gateway record check record.json
"""


def _time(text: str) -> str:
    try:
        parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text  # parsed again when used, so `10m` means ten minutes before the call


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _connection_flags() -> argparse.ArgumentParser:
    # Accepted before or after the command: `soma-gateway --url X dlq list` or `... list --url X`.
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "--url", default=argparse.SUPPRESS, help="the gateway (default: $SOMA_GATEWAY_URL)"
    )
    flags.add_argument(
        "--key",
        default=argparse.SUPPRESS,
        help="API key (default: $SOMA_API_KEY, else $SOMA_HOME/admin-key)",
    )
    return flags


def _filter_flags(parser: argparse.ArgumentParser, *, status: bool) -> None:
    group = parser.add_argument_group("filters")
    group.add_argument("--stage", help="policy, context, llm, tools, persistence, ...")
    group.add_argument("--error-type", help="the error's class name, e.g. DependencyUnavailable")
    group.add_argument("--tenant")
    group.add_argument("--session", dest="session_id", metavar="SESSION_ID")
    if status:
        group.add_argument(
            "--status", choices=(*STATUSES, "all"), default="pending", help="default: pending"
        )
    group.add_argument("--since", type=_time, help="last failed after: 10m, 2h, 1d or ISO-8601")
    group.add_argument("--until", type=_time, help="last failed before: same forms")


def build_parser() -> argparse.ArgumentParser:
    connection = _connection_flags()
    parser = argparse.ArgumentParser(
        prog="soma-gateway",
        description="Soma Gateway tools: dead letters, automations, and a check of a Kafka record.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[connection],
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    dlq = groups.add_parser("dlq", help="dead letters: list, show, replay, discard")
    commands = dlq.add_subparsers(dest="command", required=True, metavar="ACTION")

    listing = commands.add_parser("list", parents=[connection], help="dead letters that match")
    _filter_flags(listing, status=True)
    listing.add_argument("--limit", type=_positive, default=50, help="at most (default 50)")
    listing.add_argument("--json", action="store_true", help="a JSON array, for jq")

    show = commands.add_parser("show", parents=[connection], help="one dead letter, whole")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")

    for name, text in (("replay", "publish again"), ("discard", "give up on")):
        sub = commands.add_parser(
            name,
            parents=[connection],
            help=f"{text} dead letters: by ID, or --all pending ones that match the filters",
        )
        sub.add_argument("ids", nargs="*", metavar="ID")
        sub.add_argument("--all", action="store_true", help="every pending one matching")
        _filter_flags(sub, status=False)
        sub.add_argument("--dry-run", action="store_true", help="show what would be done")
        sub.add_argument("--yes", action="store_true", help="do not ask before a bulk change")

    automation = groups.add_parser(
        "automation", help="Kafka credentials for automations: add, list, revoke"
    )
    automations.add_commands(automation)
    record = groups.add_parser(
        "record", help="check a Kafka record against the event contract before publishing it"
    )
    records.add_commands(record)
    return parser


def _filters(args: argparse.Namespace, status: str | None) -> Filters:
    return Filters(
        stage=args.stage,
        error_type=args.error_type,
        tenant=args.tenant,
        session_id=args.session_id,
        status=status,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
    )


def _bulk_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    filtered = any(
        getattr(args, f) for f in ("stage", "error_type", "tenant", "session_id", "since", "until")
    )
    if args.all and args.ids:
        parser.error("give IDs or --all, not both")
    if not args.all and not args.ids:
        parser.error(f"{args.command} what? give IDs, or --all with filters")
    if filtered and not args.all:
        parser.error("filters select dead letters only with --all")


def _api_key(args: argparse.Namespace, settings: CliSettings) -> str | None:
    if getattr(args, "key", None):
        return str(args.key)
    if settings.soma_api_key is not None:
        return settings.soma_api_key.get_secret_value()
    path = settings.soma_home / "admin-key"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None  # no key: fine with auth off; a 401 says where one comes from


def run(args: argparse.Namespace, client: RequeueClient, console: Console) -> int:
    if args.command == "list":
        status = None if args.status == "all" else args.status
        return list_dead_letters(client, _filters(args, status), args.limit, args.json, console)
    if args.command == "show":
        return show_dead_letter(client, args.id, args.json, console)
    return bulk(
        client,
        REPLAY if args.command == "replay" else DISCARD,
        console,
        ids=list(args.ids),
        filters=_filters(args, "pending") if args.all else None,
        dry_run=args.dry_run,
        yes=args.yes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command in ("replay", "discard"):
            _bulk_usage(parser, args)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return USAGE if exc.code not in (0, None) else 0
    console = Console(sys.stdout, sys.stderr, sys.stdin)
    if args.group == "automation":  # the broker's side, not the REST API
        return automations.main(args, console)
    if args.group == "record":  # offline: the schemas alone
        return records.main(args, sys.stdout, sys.stderr)
    settings = CliSettings()
    try:
        with RequeueClient(
            getattr(args, "url", None) or settings.soma_gateway_url, _api_key(args, settings)
        ) as client:
            return run(args, client, console)
    except Fatal as exc:
        console.note(f"error: {exc}")
        return FAILED
    except ApiError as exc:
        console.note(f"error: {exc}")
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
