"""``chatapp-cli chat``: an interactive, streaming chat with slash commands."""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

from chatapp.client.api import ApiClient, ApiError
from chatapp.client.output import (
    conversation_lines,
    footer,
    format_error,
    message_lines,
    one_line,
    persona_lines,
    usage_lines,
)
from chatapp.client.stream import Reply, stream_reply
from chatapp.client.wsconn import Socket

try:  # line editing and in-session history for input(); absent on some platforms
    import readline
except ImportError:  # pragma: no cover
    readline = None  # type: ignore[assignment]

PROMPT = "you> "
EXPORT_FORMATS = ("json", "md", "csv")
#: two Ctrl-C at the prompt within this many seconds quit
DOUBLE_INTERRUPT_S = 1.0
HELP = """\
Type a message and press Enter; the reply streams in. Ctrl-C stops a reply; Ctrl-D or /quit leaves.
  /new                      start a new conversation (with the chosen persona)
  /history                  your recent conversations, with ids and titles
  /open <id>                switch to a conversation and show its last messages
  /persona [<name>]         choose the persona for the next new conversation; alone: list them
  /usage                    your usage and costs
  /export <json|md|csv> [file]  export this conversation (to the screen without a file)
  /help                     this text
  /quit                     leave (also Ctrl-D, or Ctrl-C twice)
Start a message with // to send a line that begins with /."""


def err(line: str) -> None:
    """A line on stderr (errors and footers stay out of the reply text on stdout)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def write(text: str) -> None:
    """Reply text as it streams."""
    sys.stdout.write(text)
    sys.stdout.flush()


class ChatSession:
    """One interactive session: the current conversation, the persona for new ones, one socket."""

    def __init__(self, api: ApiClient, persona: str | None = None, conversation_id: str | None = None) -> None:
        self.api = api
        self.persona = persona
        self.conversation_id = conversation_id
        self.sock = Socket(api)
        self.commands: dict[str, Callable[[str], bool | None]] = {
            "new": self.cmd_new, "history": self.cmd_history, "open": self.cmd_open,
            "persona": self.cmd_persona, "usage": self.cmd_usage, "export": self.cmd_export,
            "help": self.cmd_help, "quit": self.cmd_quit, "exit": self.cmd_quit,
        }

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        """Read lines until /quit, EOF or a double Ctrl-C; returns the exit status."""
        personas = self.api.personas()  # fails fast on a bad key or an unreachable server
        if self.persona:
            self.api.persona(self.persona)
        persona = self.persona or personas.get("default") or "-"
        err(f"chatapp-cli: {self.api.base_url}, persona {persona}. /help lists commands; Ctrl-D quits.")
        if self.conversation_id:
            self.cmd_open(self.conversation_id)
        last_interrupt = 0.0
        try:
            while True:
                try:
                    line = input(PROMPT)
                except EOFError:
                    write("\n")
                    return 0
                except KeyboardInterrupt:
                    # readline has already dropped the half-typed line
                    if time.monotonic() - last_interrupt < DOUBLE_INTERRUPT_S:
                        write("\n")
                        return 0
                    last_interrupt = time.monotonic()
                    write("\n")
                    err("(Ctrl-C again to quit, or /quit)")
                    continue
                try:
                    if self.handle(line.strip()):
                        return 0
                except ApiError as exc:
                    err(format_error(exc))
                except KeyboardInterrupt:  # during a REST call: abandon it, keep the session
                    err("\n[interrupted]")
        finally:
            self.sock.close()

    def handle(self, line: str) -> bool:
        """One input line; True means quit."""
        if not line:
            return False
        if line.startswith("/") and not line.startswith("//"):
            name, _, rest = line[1:].partition(" ")
            command = self.commands.get(name.lower())
            if command is None:
                err(f"Unknown command /{name}; /help lists them.")
                return False
            return bool(command(rest.strip()))
        self.say(line[1:] if line.startswith("//") else line)
        return False

    def say(self, text: str) -> Reply:
        """Send a message and stream its reply."""
        frame: dict[str, Any] = {"conversation_id": self.conversation_id, "content": text}
        if self.conversation_id is None and self.persona:
            frame["persona"] = self.persona
        reply = stream_reply(self.sock, frame, on_text=write)
        self.conversation_id = reply.conversation_id or self.conversation_id
        if reply.content and not reply.content.endswith("\n"):
            write("\n")
        if reply.state == "failed" and reply.error:
            err(format_error(ApiError(reply.error["code"], reply.error["message"])))
        elif reply.stopped:
            write("[stopped]\n")
        else:
            err(footer(reply.cost_usd, reply.cached, reply.usage))
        return reply

    # -- commands --------------------------------------------------------------------------------
    def cmd_new(self, arg: str) -> None:
        """/new: the next message starts a new conversation."""
        self.conversation_id = None
        err(f"New conversation (persona {self.persona or 'default'}); it starts with your next message.")

    def cmd_history(self, arg: str) -> None:
        """/history: recent conversations, the current one marked."""
        for line in conversation_lines(self.api.conversations(20), self.conversation_id):
            print(line)

    def cmd_open(self, arg: str) -> None:
        """/open <id>: switch conversation and show its last messages."""
        if not arg:
            err("Usage: /open <conversation id> (see /history)")
            return
        conv = self.api.conversation(arg)
        self.conversation_id = conv["id"]
        err(f"Conversation {conv['id']}: {one_line(conv.get('title') or '', 60) or '(untitled)'} "
            f"(persona {conv.get('persona') or '-'}, {conv.get('message_count', 0)} messages)")
        for line in message_lines(self.api.messages(conv["id"], 6)):
            print(line)

    def cmd_persona(self, arg: str) -> None:
        """/persona [<name>]: list personas, or choose one for new conversations."""
        if not arg:
            for line in persona_lines(self.api.personas(), self.persona):
                print(line)
            return
        self.api.persona(arg)  # persona_not_found for a typo, before it is used
        self.persona = arg
        later = "; /new starts one" if self.conversation_id else ""
        err(f"Persona {arg} for the next new conversation{later}.")

    def cmd_usage(self, arg: str) -> None:
        """/usage: the caller's usage report."""
        for line in usage_lines(self.api.usage()):
            print(line)

    def cmd_export(self, arg: str) -> None:
        """/export <json|md|csv> [file]: the current conversation, to a file or the screen."""
        fmt, _, path = arg.partition(" ")
        fmt, path = fmt.lower(), path.strip()
        if fmt not in EXPORT_FORMATS:
            err("Usage: /export <json|md|csv> [file]")
            return
        if not self.conversation_id:
            err("No conversation yet: send a message or /open one first.")
            return
        data = self.api.export(self.conversation_id, fmt)
        if not path:
            write(data.decode("utf-8", errors="replace").rstrip("\n") + "\n")
            return
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as exc:
            err(f"error: cannot write {path}: {exc.strerror or exc}")
            return
        err(f"Saved {len(data)} bytes to {path}.")

    def cmd_help(self, arg: str) -> None:
        """/help: the commands."""
        print(HELP)

    def cmd_quit(self, arg: str) -> bool:
        """/quit: leave."""
        return True


def run_chat(api: ApiClient, persona: str | None = None, conversation_id: str | None = None) -> int:
    """The ``chat`` command."""
    return ChatSession(api, persona, conversation_id).run()
