"""Recording the round trips a test's code makes to Redis, by patching redis-py's two ways out."""
from __future__ import annotations

import threading

import pytest
import redis


class RoundTrips:
    """Every round trip a thread makes to Redis, as the (command, key) pairs it carried."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, thread: int | None) -> None:
        self.trips: list[list[tuple[str, str]]] = []
        self.thread = thread
        pipeline_execute, execute_command = redis.client.Pipeline.execute, redis.Redis.execute_command
        trips = self

        def recorded_pipeline(pipe: redis.client.Pipeline, *args, **kwargs):
            trips._add([(str(c[0][0]).upper(), str(c[0][1]) if len(c[0]) > 1 else "") for c in pipe.command_stack])
            return pipeline_execute(pipe, *args, **kwargs)

        def recorded_command(client: redis.Redis, *args, **kwargs):
            trips._add([(str(args[0]).upper(), str(args[1]) if len(args) > 1 else "")])
            return execute_command(client, *args, **kwargs)

        monkeypatch.setattr(redis.client.Pipeline, "execute", recorded_pipeline)
        monkeypatch.setattr(redis.Redis, "execute_command", recorded_command)

    def _add(self, commands: list[tuple[str, str]]) -> None:
        if self.thread is None or threading.get_ident() == self.thread:
            self.trips.append(commands)

    def take(self) -> list[list[tuple[str, str]]]:
        trips, self.trips = self.trips, []
        return trips
