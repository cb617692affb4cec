"""The `switchyard` command: serve, check, route, keys, usage, experiments, replay, ledger."""

from __future__ import annotations

import argparse
import logging
import math
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from proxy import __version__
from proxy.config import ConfigError, stored_key_hash
from proxy.errors import ProxyError
from proxy.redis_guard import redacted_url
from proxy.routing import RouteRequest, Step, decide
from proxy.snapshot import Route, Snapshot, Team, hash_key, snapshot_from_file
from proxy.telemetry.logs import setup_logging
from proxy.telemetry.metrics import multiprocess_dir

DEFAULT_CONFIG = "proxy.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # before anything can log (the config and price list loads): every line in one format.
    # The level is exported so the server's worker processes use it too.
    default_level = "info" if args.command == "serve" else "warning"
    level = getattr(args, "log_level", None) or os.environ.get("SWITCHYARD_LOG_LEVEL") or default_level
    os.environ["SWITCHYARD_LOG_LEVEL"] = level
    setup_logging(level=level)
    if args.command not in (None, "serve"):
        # print-and-exit commands: a closed pipe (`| head`) ends them quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchyard", description="An OpenAI-compatible LLM gateway.")
    parser.add_argument("--version", action="version", version=f"switchyard {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", default=None, help="policy file (default: proxy.yaml, or $SWITCHYARD_CONFIG)")
    serve.add_argument("--host", default=None, help="default: server.host from the config")
    serve.add_argument("--port", type=int, default=None, help="default: server.port from the config")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                       help="default: $SWITCHYARD_LOG_LEVEL, else info")
    serve.set_defaults(run=_with_config(_serve))

    check = sub.add_parser("check", help="validate a config and print its route table")
    check.add_argument("config", nargs="?", default=None)
    check.set_defaults(run=_with_config(_check))

    route = sub.add_parser("route", help="dry run: which target the policy picks, and why")
    route.add_argument("--config", default=None)
    route.add_argument("--model", default=None, help="the model name a client would send")
    route.add_argument("--team", default=None, help="team name (default: the only team, if there is one)")
    route.add_argument("--user", default=None)
    route.add_argument("--stream", action="store_true")
    route.add_argument("--at", default=None, help="evaluate at this ISO time instead of now")
    route.add_argument("--rand", type=float, default=None, help="fix the split draw (0..1)")
    route.add_argument("--prompt", default=None, help="a user message: show its complexity (features, score, level)")
    route.add_argument("--prompt-id", default=None, help="a registered prompt the request names (prompts:)")
    route.add_argument("--prompt-version", default=None, help="the version it names (default: the active one)")
    route.set_defaults(run=_with_config(_route))

    usage = sub.add_parser("usage", help="spend, tokens and savings from the ledger, as a table")
    usage.add_argument("--config", default=None)
    usage.add_argument("--team", default=None)
    usage.add_argument("--since", default=None, help="ISO date/time or epoch seconds (default: start of the month)")
    usage.add_argument("--until", default=None, help="default: now")
    usage.add_argument("--group-by", default="team", choices=["team", "model", "route", "provider", "user", "day"])
    usage.set_defaults(run=_with_config(_usage))

    experiments = sub.add_parser("experiments", help="A/B experiments")
    experiments_sub = experiments.add_subparsers(dest="experiments_command", required=True)
    listing = experiments_sub.add_parser("list", help="the experiments in the config, their variants and objective")
    listing.add_argument("--config", default=None)
    listing.set_defaults(run=_with_config(_experiments_list))
    report = experiments_sub.add_parser("report", help="per-variant statistics and the verdict, from the ledger")
    report.add_argument("name")
    report.add_argument("--config", default=None)
    report.add_argument("--json", action="store_true", help="the same report as GET /admin/experiments/NAME")
    report.set_defaults(run=_with_config(_experiments_report))

    prompts = sub.add_parser("prompts", help="the prompt registry: versions and their numbers")
    prompts_sub = prompts.add_subparsers(dest="prompts_command", required=True)
    listing = prompts_sub.add_parser("list", help="the registered prompts, their versions, status and variables")
    listing.add_argument("--config", default=None)
    listing.set_defaults(run=_with_config(_prompts_list))
    report = prompts_sub.add_parser("report", help="per-version statistics and the verdict, from the ledger")
    report.add_argument("id")
    report.add_argument("--config", default=None)
    report.add_argument("--json", action="store_true", help="the same report as GET /admin/prompts/ID")
    report.set_defaults(run=_with_config(_prompts_report))

    replay = sub.add_parser("replay", help="recorded traffic through a candidate policy: moves, cost, budgets")
    replay.add_argument("candidate", help="the candidate policy file (validated as `check` does)")
    replay.add_argument("--config", default=None, help="the current policy, whose ledger is read")
    replay.add_argument("--since", default=None, help="ISO date/time or epoch seconds (default: 7 days ago)")
    replay.add_argument("--until", default=None, help="default: now")
    replay.add_argument("--team", default=None, help="only this team's requests")
    replay.add_argument("--top", type=int, default=10, help="how many moves to list (default 10)")
    replay.add_argument("--json", action="store_true", help="the same report as POST /admin/replay")
    replay.set_defaults(run=_with_config(_replay))

    ledger = sub.add_parser("ledger", help="the spend ledger")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    migrate = ledger_sub.add_parser("migrate", help="copy a SQLite ledger into PostgreSQL (idempotent)")
    migrate.add_argument("--to", required=True, help="postgresql://user@host:5432/db")
    source = migrate.add_mutually_exclusive_group()
    source.add_argument("--config", default=None, help="take the SQLite file from this config's ledger.path")
    source.add_argument("--from", dest="source", default=None, help="the SQLite ledger file")
    migrate.add_argument("--batch-size", type=int, default=5000)
    migrate.set_defaults(run=_ledger_migrate)

    keys = sub.add_parser("keys", help="manage team keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="print a fresh key and the line to put in proxy.yaml")
    new.add_argument("--team", required=True)
    new.add_argument("--config", default=None)
    new.set_defaults(run=_with_config(_keys_new))
    key_list = keys_sub.add_parser("list", help="teams and their key fingerprints (never the keys)")
    key_list.add_argument("--config", default=None)
    key_list.set_defaults(run=_with_config(_keys_list))
    return parser


def _config_path(given: str | None) -> str:
    return given or os.environ.get("SWITCHYARD_CONFIG") or DEFAULT_CONFIG


def _serve(args: argparse.Namespace, path: str, snapshot: Snapshot) -> int:
    import uvicorn

    from proxy.server import GuardedHttpToolsProtocol

    os.environ["SWITCHYARD_CONFIG"] = path  # the app factory reads it in every worker
    os.environ["SWITCHYARD_MANAGE_LOGGING"] = "1"  # a served process: workers set their logging up
    server = snapshot.config.server
    host, port = args.host or server.host, args.port or server.port
    log = logging.getLogger("switchyard")
    log.info(startup_line(snapshot, path, host, port, args.workers))
    for warning in snapshot.warnings:
        log.warning("config: %s", warning)
    # the workers load the same file: they need not repeat what was just said
    os.environ["SWITCHYARD_STARTUP_DIGEST"] = snapshot.digest
    if args.workers > 1:
        for warning in split_state(snapshot):
            log.warning("%d workers: %s", args.workers, warning)
    if args.workers > 1 and not multiprocess_dir():
        # prometheus-client's multiprocess mode: workers write to files /metrics merges
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="switchyard-metrics-")
    uvicorn.run(
        "proxy.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        loop="uvloop",
        # uvicorn's httptools protocol, with bounded request heads (a protocol by its methods,
        # compiled: not a subclass of asyncio.Protocol, which uvicorn's type names)
        http=GuardedHttpToolsProtocol,  # type: ignore[arg-type]
        timeout_keep_alive=math.ceil(server.keepalive_timeout_s),  # uvicorn takes whole seconds
        access_log=False,  # ours is richer: telemetry/access_log.py
        # nothing reads the client's address: rewriting it from X-Forwarded-For would cost
        # every request a middleware call (about 5 µs) for nobody
        proxy_headers=False,
        ws_max_size=64 * 1024,  # /admin/live takes one small message (the key); uvicorn's default is 16 MiB
        log_config=None,
        log_level=os.environ["SWITCHYARD_LOG_LEVEL"],
        timeout_graceful_shutdown=30,
    )
    return 0


def split_state(snapshot: Snapshot) -> list[str]:
    """What several processes serving this config would each keep for themselves, where
    users expect one shared state (said loudly at the start of `serve --workers N`)."""
    config = snapshot.config
    out = []
    if any(t.budget or t.limits for t in config.teams.values()) and config.accounting.backend == "memory":
        out.append("accounting.backend: memory: each worker enforces budgets and rate limits on its own share of "
                   "traffic; use backend: redis to enforce them once")
    store = config.responses.store
    if store == "memory" or (store == "auto" and config.cache.backend != "redis"):
        out.append("stored responses in memory: a previous_response_id answered by one worker is unknown to the "
                   "others (400); use responses.store: redis (or cache.backend: redis)")
    if config.cache.backend == "memory":
        out.append("cache.backend: memory: each worker caches apart, so hits are rarer; use backend: redis to share")
    return out


def startup_line(snapshot: Snapshot, path: str, host: str, port: int, workers: int) -> str:
    """Everything an operator checks first, in one line: what runs, where, on what."""
    from proxy.accounting.service import ledger_description

    config = snapshot.config
    shown_host = f"[{host}]" if ":" in host else host
    parts = [f"switchyard {__version__} serving http://{shown_host}:{port} from {os.path.abspath(path)}"
             + (f" with {workers} workers" if workers > 1 else "")]
    providers = [f"{name} ({spec.type})" for name, spec in snapshot.providers.items()]
    parts.append("providers: " + (", ".join(providers) or "none"))
    if snapshot.disabled_providers:
        parts.append("disabled: " + "; ".join(f"{n}: {why}" for n, why in snapshot.disabled_providers.items()))
    parts.append(f"cache: {config.cache.backend}"
                 + (f" at {redacted_url(config.cache.url)} ({_redis_state(config.cache.url)})"
                    if config.cache.backend == "redis" else ""))
    parts.append(f"accounting: {config.accounting.backend}"
                 + (f" at {redacted_url(config.accounting.url)} ({_redis_state(config.accounting.url)})"
                    if config.accounting.backend == "redis" else ""))
    parts.append(f"ledger: {ledger_description(snapshot)}")
    parts.append("admin API: on" if snapshot.admin_key_hashes
                 else "admin API: off (no server.admin_keys; set SWITCHYARD_ADMIN_KEY)")
    return "; ".join(parts)


def _redis_state(url: str) -> str:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not answering"; say which
        return f"not answering: {type(exc).__name__}; serving without it until it does"
    return "answering"


Command = Callable[[argparse.Namespace, str, Snapshot], int]


def _with_config(command: Command) -> Callable[[argparse.Namespace], int]:
    """A command that works on the compiled config: it gets the path and the snapshot,
    or never runs when the file is invalid (the problems are printed, exit status 1)."""

    def run(args: argparse.Namespace) -> int:
        path = _config_path(args.config)
        snapshot = _load_or_explain(path)
        return 1 if snapshot is None else command(args, path, snapshot)

    return run


def _load_or_explain(path: str) -> Snapshot | None:
    """The compiled config, or None after printing why it is invalid."""
    try:
        return snapshot_from_file(path)
    except ConfigError as exc:
        _print_problems(path, exc)
        return None


def _print_problems(path: str, exc: ConfigError) -> None:
    print(f"{path}: invalid", file=sys.stderr)
    for where, reason in exc.problems:
        print(f"  {where or '<file>'}: {reason}", file=sys.stderr)


def _check(args: argparse.Namespace, path: str, snapshot: Snapshot) -> int:
    print(f"{path}: ok")
    for warning in snapshot.warnings:
        print(f"  warning: {warning}")
    print("\nproviders:")
    for name, spec in snapshot.providers.items():
        print(f"  {name:<16} {spec.type:<8} {spec.base_url or ''}")
    for name, reason in snapshot.disabled_providers.items():
        print(f"  {name:<16} disabled: {reason}")
    print("\nteams:")
    for name, team in snapshot.teams.items():
        cfg = snapshot.config.teams[name]
        models = ", ".join(cfg.models) if cfg.models is not None else "all"
        print(f"  {name:<16} keys={len(cfg.keys)} default={team.default_model or '-'} models={models}")
    if snapshot.prompts:
        print("\nprompts:")
        for prompt in snapshot.prompts.values():
            versions = ", ".join(f"{v.version} {v.status}" for v in prompt.versions.values())
            print(f"  {prompt.id:<16} active={prompt.active} versions: {versions}")
    print("\nroutes (first match wins):")
    rows = [("#", "name", "match", "action")]
    for route in snapshot.routes:
        rows.append((str(route.index), route.name, _describe_match(snapshot, route.index), _describe_action(route)))
    _table(rows)
    return 0


def _describe_match(snapshot: Snapshot, index: int) -> str:
    m = snapshot.config.routes[index].match
    parts = [f"{k}={v}" for k, v in m.model_dump(exclude_none=True, mode="json").items()]
    return " ".join(parts) or "(any)"


def _describe_action(route: Route) -> str:
    if route.to is not None:
        action = f"to {route.to}"
    else:
        action = "split " + ", ".join(f"{t}:{w:g}" for t, w in route.split or ())
    if route.fallbacks:
        action += " fallbacks " + ", ".join(route.fallbacks)
    return action


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _route(args: argparse.Namespace, path: str, snapshot: Snapshot) -> int:
    team = _pick_team(snapshot, args.team)
    if team is None:
        known = ", ".join(snapshot.teams) or "none"
        print(f"name a team with --team (known: {known})", file=sys.stderr)
        return 2
    now = datetime.fromisoformat(args.at.replace("Z", "+00:00")) if args.at else datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    rand = args.rand if args.rand is not None else secrets.randbelow(10**6) / 10**6
    level = _explain_prompt(snapshot, args.prompt) if args.prompt is not None else None
    model, pinned = args.model, None
    if args.prompt_id is not None:
        prompt = snapshot.prompts.get(args.prompt_id)
        version = None if prompt is None else prompt.versions.get(args.prompt_version or prompt.active)
        if prompt is None or version is None:
            print(f"no prompt {args.prompt_id!r}" + (f" version {args.prompt_version!r}" if prompt else "")
                  + f" in {path}", file=sys.stderr)
            return 2
        model = version.model or model  # a version's model replaces the request's, as the gateway does
        pinned = version.ref if args.prompt_version is not None else None
    request = RouteRequest(model, team, args.user, args.stream, now, rand, complexity=level,
                           prompt=args.prompt_id, prompt_pinned=pinned)
    trace: list[Step] = []
    print(f"model={model or '(team default: ' + str(team.default_model) + ')'} team={team.name} "
          f"user={args.user or '-'} stream={str(args.stream).lower()} at={now.isoformat()}"
          + (f" complexity={level}" if level else ""))
    try:
        decision = decide(snapshot, request, trace)
    except ProxyError as exc:
        _print_trace(trace)
        print(f"\n=> {exc.status} {exc.code or exc.type}: {exc.message}")
        return 1
    _print_trace(trace)
    print(f"\n=> route {decision.route}: {decision.target}"
          + (f" (experiment {decision.experiment}, variant {decision.variant})" if decision.experiment else "")
          + (f", prompt {decision.prompt}" if decision.prompt else ""))
    if decision.fallbacks:
        print(f"   then: {', '.join(map(str, decision.fallbacks))}")
    return 0


def _print_trace(trace: list[Step]) -> None:
    for step in trace:
        print(f"  {step.route:<20} {step.outcome:<8} {step.reason}")


def _pick_team(snapshot: Snapshot, name: str | None) -> Team | None:
    if name is not None:
        return snapshot.teams.get(name)
    if len(snapshot.teams) == 1:
        return next(iter(snapshot.teams.values()))
    return None


def _keys_new(args: argparse.Namespace, path: str, snapshot: Snapshot) -> int:
    if args.team not in snapshot.teams:
        known = ", ".join(snapshot.teams) or "none"
        print(f"no team {args.team!r} in {path} (teams: {known}); add the team first", file=sys.stderr)
        return 2
    key = "sk-sy-" + secrets.token_urlsafe(32)
    print(f"key for team {args.team} (shown once, give it to the team):")
    print(f"  {key}")
    print(f"\nappend this item to teams.{args.team}.keys in {path} (the team's other keys keep working):")
    print(f'  "sha256:{hash_key(key)}"')
    print("\nthe server applies the edit live; `switchyard keys list` shows the fingerprint")
    return 0


def _keys_list(args: argparse.Namespace, path: str, snapshot: Snapshot) -> int:
    from proxy.config import key_sources

    rows = [("team", "key", "fingerprint", "from")]
    for source in key_sources(path):
        rows.append((source.team, f"[{source.index}]", _fingerprint(source.stored) if source.stored else "-",
                     source.origin))
    _table(rows)
    return 0


def _fingerprint(stored: str) -> str:
    """What identifies a key without revealing it: the start of its SHA-256."""
    return f"sha256:{stored_key_hash(stored)[:12]}"


def _experiments_list(args: argparse.Namespace, path: str, snapshot: Snapshot) -> int:
    rows = [("experiment", "route", "variants (weight)", "sticky", "objective", "min samples", "promote")]
    for route in snapshot.routes:
        e = route.experiment
        if e is None:
            continue
        variants = ", ".join(f"{name}={_variant_text(target, e.prompts.get(name))} ({weight:g})"
                             for name, target, weight in e.variants)
        rows.append((e.name, route.name, variants, e.sticky, e.objective, str(e.min_samples),
                     "yes" if e.promote else "no"))
    if len(rows) == 1:
        print(f"no experiments in {path}")
        return 0
    _table(rows)
    return 0


def _variant_text(target: str | None, prompt: str | None) -> str:
    """A variant's target and prompt version; no target: the later routes pick it."""
    parts = [target or "(later routes)"] + ([f"prompt {prompt}"] if prompt else [])
    return " + ".join(parts)


def _usage(args: argparse.Namespace, path: str, snapshot: Snapshot) -> int:
    import asyncio
    from zoneinfo import ZoneInfo

    from proxy.accounting import reports
    from proxy.accounting.service import ledger_description, ledger_path, ledger_store

    store = ledger_store(snapshot)
    if store is None:
        print("the ledger is off (ledger.path: off): nothing to report", file=sys.stderr)
        return 1
    ledger = ledger_path(snapshot)
    if snapshot.config.ledger.url is None and ledger is not None and not os.path.exists(ledger):
        print(f"no ledger at {ledger}: the server has not recorded a request there yet "
              f"(is ledger.path in {path} the one the server uses?)", file=sys.stderr)
        return 1
    zone = ZoneInfo(snapshot.config.accounting.timezone)
    periods = periods_now(zone)
    try:
        since = reports.parse_time(args.since, periods.month_start, zone)
        until = reports.parse_time(args.until, periods.now + 1, zone)
    except ValueError as exc:
        print(f"--since/--until: {exc}", file=sys.stderr)
        return 2
    teams = [args.team] if args.team else sorted(snapshot.config.teams)
    budgets = [(t, snapshot.config.teams[t].budget) for t in teams if t in snapshot.config.teams]
    try:
        rows, lines = asyncio.run(_usage_tables(store, args, since, until, zone, budgets))
    except store.errors as exc:
        print(f"cannot read the ledger at {ledger_description(snapshot)}: {_redacted_error(exc, snapshot)}",
              file=sys.stderr)
        return 1
    print(f"ledger {ledger_description(snapshot)}, {reports.iso(since)} .. {reports.iso(until)}"
          + (f", team {args.team}" if args.team else ""))
    header = (args.group_by, "requests", "errors", "cache hits", "tokens in", "tokens out", "cost $",
              "cache saved $", "lost to invalidations $", "routing saved $")
    _table([header] + [
        (str(r["key"]), str(r["requests"]), str(r["errors"]), str(r["cache_hits"]), str(r["input_tokens"]),
         str(r["output_tokens"]), f"{r['cost_usd']:.6f}", f"{r['cache_savings_usd']:.6f}",
         f"{r.get('savings_lost_usd') or 0:.6f}", f"{r['routing_savings_usd']:.6f}")
        for r in rows
    ])
    if len(lines) > 1:
        print()
        _table(lines)
    return 0


def periods_now(zone: Any) -> Any:
    from proxy.accounting.spend import periods_at

    return periods_at(datetime.now(UTC).timestamp(), zone)


async def _usage_tables(store: Any, args: argparse.Namespace, since: float, until: float, zone: Any,
                        budgets: list[tuple[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, ...]]]:
    """The usage rows and the budget lines, on one event loop (a PostgreSQL pool lives in one)."""
    from proxy.accounting import reports
    from proxy.accounting.ledger import LedgerReader

    reader = LedgerReader(store)
    periods = periods_now(zone)
    try:
        rows = await reports.usage(reader, since=since, until=until, team=args.team, group_by=args.group_by,
                                   zone=zone)
        lines: list[tuple[str, ...]] = [("team", "today $", "daily budget $", "month $", "monthly budget $",
                                         "month-end projection $")]
        if any(b is not None for _, b in budgets):
            today = await reader.spend_by_team_since(periods.day_start)
            month = await reader.spend_by_team_since(periods.month_start)
            observed = await reports.observed_since(reader, periods.month_start, periods.now)
            for team, budget in budgets:
                if budget is None:
                    continue
                daily = await reports.daily_spend(reader, team, observed, periods.now + 1)
                p = reports.projection(month.get(team, 0.0), daily, periods, budget.monthly_usd, observed)
                span = f" ({p['low_usd']:.4f}..{p['high_usd']:.4f}, 95%)" if p["confidence"] else ""
                lines.append((team, f"{today.get(team, 0.0):.6f}", _money(budget.daily_usd),
                              f"{month.get(team, 0.0):.6f}", _money(budget.monthly_usd),
                              f"{p['month_end_usd']:.4f}{span}"))
        return rows, lines
    finally:
        await reader.close()


def _redacted_error(exc: BaseException, snapshot: Snapshot) -> str:
    """An error message fit to print: the ledger URL's password never shows."""
    from proxy.telemetry.logs import redact

    url = snapshot.config.ledger.url
    password = urlsplit(url).password if url else None
    return redact(str(exc), password)


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _experiments_report(args: argparse.Namespace, path: str, snapshot: Snapshot) -> int:
    import json

    from proxy.experiments import experiments_of, report

    experiment = experiments_of(snapshot).get(args.name)
    if experiment is None:
        known = ", ".join(sorted(experiments_of(snapshot))) or "none"
        print(f"no experiment {args.name!r} in {path} (experiments: {known})", file=sys.stderr)
        return 1
    result = _from_ledger(snapshot, lambda reader: report(reader, experiment))
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"experiment {experiment.name}: objective {experiment.objective}, sticky {experiment.sticky}, "
          f"alpha {experiment.alpha:g}, min_samples {experiment.min_samples}")
    rows = [("variant", "requests", "cost $ (95% CI)", "latency ms (95% CI)", "ttft ms", "error rate",
             "feedback (n)", "min samples")]
    for v in result["variants"]:
        rows.append((v["variant"], str(v["requests"]), _ci(v["cost_usd"], 6), _ci(v["latency_ms"], 1),
                     _ci(v["ttft_ms"], 1), _rate(v["error_rate"]),
                     f"{_ci(v['feedback'], 2)} ({v['feedback']['n']})", "yes" if v["min_samples_reached"] else "no"))
    _table(rows)
    print()
    tests = [("vs " + str(result["control"]), "cost p (d)", "latency p (d)", "errors p (diff)", "feedback p (r)")]
    for c in result["comparisons"]:
        tests.append((str(c["variant"]), _p(c["cost"]), _p(c["latency"]), _p(c["errors"]), _p(c["feedback"])))
    _table(tests)
    verdict = result["verdict"]
    print()
    print(f"=> {verdict['winner'] + ' wins' if verdict['winner'] else 'no winner yet'}: {verdict['reason']}")
    return 0


def _from_ledger(snapshot: Snapshot, read: Callable[[Any], Awaitable[dict[str, Any]]]) -> dict[str, Any] | None:
    """`read(reader)` over the configured ledger (a reader of None when there is none); None,
    with the reason on stderr, when the ledger cannot be read."""
    import asyncio

    from proxy.accounting.ledger import LedgerReader
    from proxy.accounting.service import ledger_description, ledger_store

    store = ledger_store(snapshot)

    async def run() -> dict[str, Any]:
        reader = LedgerReader(store) if store is not None else None
        try:
            return await read(reader)
        finally:
            if reader is not None:
                await reader.close()

    errors: tuple[type[BaseException], ...] = store.errors if store is not None else ()
    try:
        return asyncio.run(run())
    except errors as exc:
        print(f"cannot read the ledger at {ledger_description(snapshot)}: {_redacted_error(exc, snapshot)}",
              file=sys.stderr)
        return None


def _prompts_list(args: argparse.Namespace, path: str, snapshot: Snapshot) -> int:
    from proxy.prompts import describe_prompt

    rows = [("prompt", "active", "versions (status, model)", "variables")]
    for prompt in snapshot.prompts.values():
        described = describe_prompt(prompt)
        versions = ", ".join(f"{v['version']} ({v['status']}{', ' + v['model'] if v['model'] else ''})"
                             for v in described["versions"])
        rows.append((prompt.id, prompt.active, versions, ", ".join(described["variables"]) or "-"))
    if len(rows) == 1:
        print(f"no prompts in {path}")
        return 0
    _table(rows)
    return 0


def _prompts_report(args: argparse.Namespace, path: str, snapshot: Snapshot) -> int:
    import json

    from proxy.experiments import prompt_report

    prompt = snapshot.prompts.get(args.id)
    if prompt is None:
        known = ", ".join(sorted(snapshot.prompts)) or "none"
        print(f"no prompt {args.id!r} in {path} (prompts: {known})", file=sys.stderr)
        return 1
    result = _from_ledger(snapshot, lambda reader: prompt_report(reader, prompt))
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"prompt {prompt.id}: active {prompt.active}, objective {result['objective']}, "
          f"alpha {result['alpha']:g}, min_samples {result['min_samples']}")
    rows = [("version", "status", "requests", "cost $ (95% CI)", "latency ms (95% CI)", "ttft ms", "error rate",
             "feedback (n)", "compared")]
    for v in result["versions"]:
        rows.append((v["version"], v["status"], str(v["requests"]), _ci(v["cost_usd"], 6), _ci(v["latency_ms"], 1),
                     _ci(v["ttft_ms"], 1), _rate(v["error_rate"]), f"{_ci(v['feedback'], 2)} ({v['feedback']['n']})",
                     "yes" if v["compared"] else "no"))
    _table(rows)
    if result["comparisons"]:
        print()
        tests = [("vs " + str(result["control"]), "cost p (d)", "latency p (d)", "errors p (diff)", "feedback p (r)")]
        for c in result["comparisons"]:
            tests.append((str(c["version"]), _p(c["cost"]), _p(c["latency"]), _p(c["errors"]), _p(c["feedback"])))
        _table(tests)
    verdict = result["verdict"]
    print()
    print(f"=> {verdict['winner'] + ' wins' if verdict['winner'] else verdict['status']}: {verdict['reason']}")
    return 0


def _ci(stat: dict[str, Any], digits: int) -> str:
    if stat.get("mean") is None:
        return "-"
    if stat.get("ci_low") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ({stat['ci_low']:.{digits}f}..{stat['ci_high']:.{digits}f})"


def _rate(stat: dict[str, Any]) -> str:
    return "-" if stat.get("rate") is None else f"{stat['rate']:.3f}"


def _p(test: dict[str, Any]) -> str:
    if test.get("p_value") is None:
        return "-"
    effect = test.get("effect_size")
    return f"{test['p_value']:.3g} ({effect:.3g})" if effect is not None else f"{test['p_value']:.3g}"


def _replay(args: argparse.Namespace, path: str, snapshot: Snapshot) -> int:
    import asyncio
    import json
    from zoneinfo import ZoneInfo

    from proxy.accounting import reports
    from proxy.accounting.ledger import LedgerReader
    from proxy.accounting.service import ledger_description, ledger_store
    from proxy.replay import replay_ledger

    candidate = _load_or_explain(args.candidate)
    if candidate is None:
        return 1
    store = ledger_store(snapshot)
    if store is None:
        print("the ledger is off (ledger.path: off): nothing to replay", file=sys.stderr)
        return 1
    zone = ZoneInfo(snapshot.config.accounting.timezone)
    now = datetime.now(UTC).timestamp()
    try:
        since = reports.parse_time(args.since, now - 7 * 86400, zone)
        until = reports.parse_time(args.until, now + 1, zone)
    except ValueError as exc:
        print(f"--since/--until: {exc}", file=sys.stderr)
        return 2

    async def run() -> dict[str, Any]:
        reader = LedgerReader(store)
        try:
            return await replay_ledger(reader, snapshot, candidate, since=since, until=until, team=args.team,
                                       top=args.top)
        finally:
            await reader.close()

    try:
        result = asyncio.run(run())
    except store.errors as exc:
        print(f"cannot read the ledger at {ledger_description(snapshot)}: {_redacted_error(exc, snapshot)}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_replay(result, path, args.candidate)
    return 0


def _print_replay(result: dict[str, Any], path: str, candidate: str) -> None:
    window = result["window"]
    print(f"replay of {result['requests']} requests, {window['since']} .. {window['until']}"
          + (f", team {window['team']}" if window["team"] else "") + f": {path} -> {candidate}")
    for note in result["notes"]:
        print(f"  note: {note}")
    for title, key in (("route", "routes"), ("target", "targets")):
        print()
        _table([(title, "before", "after")]
               + [(name, str(c["before"]), str(c["after"])) for name, c in result[key].items()])
    print(f"\nmoves ({result['moved']} requests moved):")
    _table([("from", "to", "requests")] + [(m["from"], m["to"], str(m["requests"])) for m in result["moves"]])
    for side in ("before", "after"):
        if result["refused"][side]:
            print(f"\nrefused {side}: " + ", ".join(f"{k} {v}" for k, v in result["refused"][side].items()))
    cost = result["cost"]
    unknown = cost["unknown"]
    print(f"\ncost: before ${cost['before_usd']:.6f} (recorded), after ${cost['after_usd']:.6f} "
          f"(candidate prices); unknown: {unknown['requests']} requests")
    if unknown["without_tokens"]:
        print(f"  {unknown['without_tokens']} without recorded tokens")
    for target, n in unknown["unpriced_targets"].items():
        print(f"  {n} to {target}: no price")
    print()
    _table([("target", "requests after", "observed", "latency ms", "error rate")]
           + [(name, str(e["requests"]), str(e["observed"]), str(e["latency_ms"]), str(e["error_rate"]))
              for name, e in result["expected"].items()])
    if result["budgets"]:
        print()
        rows = [("team", "daily $", "max day $", "daily spent at", "monthly $", "max month $", "monthly spent at")]
        for team, b in result["budgets"].items():
            rows.append((team, _money(b["daily_usd"]), f"{max((d['spend_usd'] for d in b['days']), default=0):.6f}",
                         b["daily_exhausted_at"] or "-", _money(b["monthly_usd"]),
                         f"{max((m['spend_usd'] for m in b['months']), default=0):.6f}",
                         b["monthly_exhausted_at"] or "-"))
        _table(rows)


def _ledger_migrate(args: argparse.Namespace) -> int:
    """`switchyard ledger migrate --to URL`: every row of a SQLite ledger into PostgreSQL."""
    import asyncio

    from proxy.accounting.ledger_pg import PostgresStore, copy_sqlite
    from proxy.accounting.service import ledger_path

    if not args.to.startswith(("postgresql://", "postgres://")):
        print("--to: must be a postgresql:// URL", file=sys.stderr)
        return 2
    source = args.source
    if source is None:
        config_path = _config_path(args.config)
        snapshot = _load_or_explain(config_path)
        if snapshot is None:
            return 1
        source = ledger_path(snapshot)
        if source is None:
            print(f"{config_path}: ledger.path is off: there is no SQLite ledger to copy (use --from)",
                  file=sys.stderr)
            return 1
    if not os.path.isfile(source):
        print(f"no SQLite ledger at {source}", file=sys.stderr)
        return 1
    store = PostgresStore(args.to)
    print(f"copying {source} into {store.name}")

    async def run() -> dict[str, tuple[int, int]]:
        try:
            return await copy_sqlite(source, store, batch_size=args.batch_size)
        finally:
            await store.close()

    try:
        counts = asyncio.run(run())
    except store.errors as exc:
        password = urlsplit(args.to).password
        from proxy.telemetry.logs import redact

        print(f"migration to {store.name} failed: {redact(str(exc), password)}; "
              "what was copied stays, and running the command again continues", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # a schema newer than this Switchyard
        print(f"migration to {store.name} refused: {exc}", file=sys.stderr)
        return 1
    for table, (copied, skipped) in counts.items():
        print(f"  {table:<9} {copied} copied, {skipped} already there")
    print("done: point ledger.url at it (and remove ledger.path) to use it")
    return 0


def _explain_prompt(snapshot: Snapshot, prompt: str) -> str:
    """Print the classifier's features, contributions and score; return the level."""
    from proxy.complexity import DEFAULT, classify

    settings = snapshot.complexity or DEFAULT
    verdict = classify(prompt, settings)
    rows = [("feature", "value", "weight", "contribution")]
    for name, value in verdict.features.items():
        weight = settings.weights.get(name, 0.0)
        rows.append((name, f"{value:.3f}", f"{weight:g}", f"{verdict.contributions.get(name, 0.0):+.3f}"))
    print(f"prompt complexity: {verdict.level} (score {verdict.score:.3f}; medium from {settings.medium:g}, "
          f"complex from {settings.complex:g})")
    _table(rows)
    print()
    return verdict.level
