"""``python -m chatapp``: the whole app in one process (web, worker, Redis, RunPod emulator)."""
from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chatapp", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
    args = parser.parse_args(argv)
    from chatapp.embedded import serve

    serve(args.host, args.port)


if __name__ == "__main__":
    main()
