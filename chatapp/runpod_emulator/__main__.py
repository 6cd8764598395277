"""``python -m chatapp.runpod_emulator``: serve the RunPod queue API emulator until interrupted."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from typing import Any, Sequence

from chatapp.runpod_emulator.config import GPU_PRICES_PER_S, EmulatorConfig, RateLimits
from chatapp.runpod_emulator.faults import FAULTS, FaultError, parse_fault
from chatapp.runpod_emulator.server import EmulatorServer

log = logging.getLogger("chatapp.runpod_emulator")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (every knob of EmulatorConfig that matters when serving)."""
    d = EmulatorConfig()
    p = argparse.ArgumentParser(prog="python -m chatapp.runpod_emulator",
                                description="Emulate RunPod's Serverless queue API locally.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8010)
    p.add_argument("--api-key", help="accepted key (default: $RUNPOD_API_KEY; none: any key)")
    p.add_argument("--cold-start", type=float, default=d.cold_start_s, metavar="S")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, metavar="S")
    p.add_argument("--max-workers", type=int, default=d.max_workers)
    p.add_argument("--ttft", type=float, default=d.ttft_s, metavar="S")
    p.add_argument("--tokens-per-s", type=float, default=d.tokens_per_s)
    p.add_argument("--output-format", choices=("classic", "openai"), default=d.output_format)
    price = p.add_mutually_exclusive_group()
    price.add_argument("--price-per-s", type=float, default=d.price_per_s, metavar="USD")
    price.add_argument("--gpu", choices=sorted(GPU_PRICES_PER_S), help="price from the GPU class")
    p.add_argument("--no-stream-wait", action="store_true",
                   help="ignore ?wait= on /stream, like an endpoint that does not honour it")
    p.add_argument("--no-rate-limits", action="store_true")
    p.add_argument("--retention", type=float, default=d.retention_s, metavar="S")
    p.add_argument("--sync-retention", type=float, default=d.sync_retention_s, metavar="S")
    p.add_argument("--max-tokens", type=int, default=d.default_max_tokens,
                   help="reply length when the request gives no max_tokens")
    p.add_argument("--fault", action="append", default=[], metavar="NAME[:k=v,...]",
                   help=f"endpoint-wide fault, repeatable; one of: {', '.join(FAULTS)}")
    p.add_argument("--endpoints", metavar="JSON_FILE",
                   help='per-endpoint overrides, e.g. {"slow": {"cold_start_s": 3}}')
    p.add_argument("--strict-endpoints", action="store_true",
                   help="serve only endpoint ids named in --endpoints (others: 404)")
    p.add_argument("--no-access-log", action="store_true",
                   help="do not log one line per request")
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """EmulatorConfig from parsed arguments."""
    for spec in args.fault:
        try:
            parse_fault(spec)
        except FaultError as exc:
            raise SystemExit(f"--fault {spec}: {exc}") from None
    endpoints: dict[str, Any] = {}
    if args.endpoints:
        with open(args.endpoints, encoding="utf-8") as fh:
            endpoints = json.load(fh)
    return EmulatorConfig(
        cold_start_s=args.cold_start, idle_timeout_s=args.idle_timeout,
        max_workers=args.max_workers, ttft_s=args.ttft, tokens_per_s=args.tokens_per_s,
        output_format=args.output_format,
        price_per_s=GPU_PRICES_PER_S[args.gpu] if args.gpu else args.price_per_s,
        honor_stream_wait=not args.no_stream_wait,
        rate_limits=RateLimits(enabled=not args.no_rate_limits),
        retention_s=args.retention, sync_retention_s=args.sync_retention,
        default_max_tokens=args.max_tokens, faults=list(args.fault),
        endpoints=endpoints, strict_endpoints=args.strict_endpoints,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the emulator in the foreground until SIGINT or SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.no_access_log:
        logging.getLogger("chatapp.runpod_emulator.access").setLevel(logging.DEBUG)
    config = config_from_args(args)
    api_key = args.api_key or os.environ.get("RUNPOD_API_KEY") or None
    server = EmulatorServer(config, host=args.host, port=args.port, api_key=api_key)
    server.start()
    if api_key is None:
        log.warning("no --api-key and no RUNPOD_API_KEY: accepting ANY key")
    else:
        log.info("requiring the configured API key (Authorization: Bearer <key>)")
    log.info("workers: cold start %.2fs, idle %.2fs, max %d; %s tokens/s, ttft %.2fs; "
             "format %s; $%s per worker-second; demo model (not a language model)",
             config.cold_start_s, config.idle_timeout_s, config.max_workers,
             config.tokens_per_s, config.ttft_s, config.output_format, config.price_per_s)
    if config.faults:
        log.info("endpoint-wide faults armed: %s", ", ".join(config.faults))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    server.stop()


if __name__ == "__main__":
    main()
