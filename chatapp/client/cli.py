"""The ``chatapp-cli`` entry point: arguments, configuration, and the ``send`` command.

Exit status: 0 success; 1 the server refused, a reply failed or the server is unreachable;
2 usage errors (including a missing API key); 130 stopped with Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from chatapp.client.api import DEFAULT_TIMEOUT_S, DEFAULT_URL, ApiClient, ApiError
from chatapp.client.output import footer, format_error

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def add_connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--url/--key/--timeout, accepted before or after the command. The copies on the
    subcommands default to SUPPRESS so they do not overwrite a value given before the command."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value
    parser.add_argument("--url", default=default(None),
                        help=f"server URL (default: $CHATAPP_URL or {DEFAULT_URL})")
    parser.add_argument("--key", default=default(None),
                        help="API key (default: $CHATAPP_API_KEY; prefer the variable: arguments show in ps)")
    parser.add_argument("--timeout", type=float, default=default(DEFAULT_TIMEOUT_S),
                        help=f"seconds to wait for each network request (default {DEFAULT_TIMEOUT_S:g})")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(prog="chatapp-cli", description="Terminal client for a chatapp server.")
    add_connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    send = commands.add_parser("send", help="ask one question and print the streamed reply")
    add_connection_options(send, suppress=True)
    send.add_argument("question", help="the message to send ('-' reads it from standard input)")
    send.add_argument("--persona", help="persona for a new conversation")
    send.add_argument("--conversation", metavar="ID", help="continue this conversation")
    send.add_argument("--json", action="store_true", help="print one JSON object at the end instead of the text")

    chat = commands.add_parser("chat", help="interactive streaming chat (/help inside for commands)")
    add_connection_options(chat, suppress=True)
    chat.add_argument("--persona", help="persona for new conversations")
    chat.add_argument("--conversation", metavar="ID", help="open this conversation first")

    batch = commands.add_parser("batch", help="answer a file of questions, one per line, with a cost summary")
    add_connection_options(batch, suppress=True)
    batch.add_argument("file", help="questions, one per non-empty line ('-' = standard input)")
    batch.add_argument("--persona", help="persona for every question")
    batch.add_argument("--json", action="store_true", help="print the batch as one JSON object")
    return parser


def run_send(api: ApiClient, args: argparse.Namespace) -> int:
    """The ``send`` command: stream one reply to stdout, a footer or the error to stderr."""
    from chatapp.client.stream import stream_reply
    from chatapp.client.wsconn import Socket

    question = sys.stdin.read().strip() if args.question == "-" else args.question
    if not question.strip():
        raise ApiError("empty_content", "The question is empty.")
    frame: dict[str, Any] = {"conversation_id": args.conversation, "content": question}
    if args.persona:
        if args.conversation:
            sys.stderr.write("note: --persona applies to new conversations only; ignored\n")
        else:
            frame["persona"] = args.persona

    def on_text(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    sock = Socket(api)
    try:
        reply = stream_reply(sock, frame, None if args.json else on_text)
    finally:
        sock.close()
    if args.json:
        print(json.dumps(reply.as_json(), ensure_ascii=False))
    elif reply.content and not reply.content.endswith("\n"):
        print()
    if reply.state == "failed":
        error = reply.error or {"code": "failed", "message": "The reply failed."}
        sys.stderr.write(format_error(ApiError(error["code"], error["message"])) + "\n")
        return EXIT_FAILED
    if reply.stopped:
        sys.stderr.write("[stopped]\n")
        return EXIT_INTERRUPTED
    if not args.json:
        sys.stderr.write(footer(reply.cost_usd, reply.cached, reply.usage) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the command, map errors to a message and an exit status."""
    args = build_parser().parse_args(argv)
    key = args.key or os.environ.get("CHATAPP_API_KEY", "")
    if not key.strip():
        sys.stderr.write("error: no API key: set CHATAPP_API_KEY (or pass --key). Create one with "
                         "`flask --app wsgi users create NAME`, or use the key `python -m chatapp` prints.\n")
        return EXIT_USAGE
    url = args.url or os.environ.get("CHATAPP_URL") or DEFAULT_URL
    if "://" not in url:
        url = "http://" + url
    api = ApiClient(url, key.strip(), timeout=args.timeout)
    try:
        if args.command == "send":
            return run_send(api, args)
        if args.command == "batch":
            from chatapp.client.batch import run_batch
            return run_batch(api, args.file, args.persona, args.json)
        from chatapp.client.interactive import run_chat
        return run_chat(api, args.persona, args.conversation)
    except ApiError as exc:
        sys.stderr.write(format_error(exc) + "\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`| head`): no traceback, and none from the flush at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
