"""Round trips shared by the requests of one process that need the same kind at the same moment."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from flask import current_app


@dataclass
class Ask:
    """One caller's part of a shared round trip: what it asked for, and what came back."""

    key: Hashable
    value: Any = None
    done: bool = False
    result: Any = None
    error: Exception | None = None
    alone: bool = False  # the round trip could not serve this caller: it must make its own


class SharedRoundTrips:
    """One round trip in flight at a time; every caller that asks meanwhile goes into the next one together, which
    `run_together(asks)` makes (setting each ask's result, error or `alone`). A round trip starts only after all of
    its callers asked, so it sees every commit that came before their asking (read-your-writes holds)."""

    def __init__(self, run_together: Callable[[list[Ask]], None]) -> None:
        self._run_together = run_together
        self._turn = threading.Lock()  # held by the round trip in flight
        self._guard = threading.Lock()  # guards _asked
        self._asked: dict[Hashable, Ask] = {}

    def ask(self, key: Hashable, value: Any = None, share_key: bool = True) -> Ask | None:
        """This caller's ask, done. A key already waiting is shared with its caller (share_key), or refused: None."""
        with self._guard:
            ask = self._asked.get(key)
            if ask is None:
                ask = self._asked[key] = Ask(key, value)
            elif not share_key:
                return None
        with self._turn:
            if not ask.done:
                with self._guard:
                    asked, self._asked = list(self._asked.values()), {}
                try:
                    self._run_together(asked)
                except BaseException:  # interrupted (a timeout, a killed greenlet): the unanswered make their own
                    for each in asked:
                        if each.result is None and each.error is None:
                            each.alone = True
                    raise
                finally:
                    for each in asked:
                        each.done = True
        return ask

    @property
    def waiting(self) -> int:
        """How many asks wait for the next round trip."""
        return len(self._asked)


def shared_round_trips(name: str, run_together: Callable[[list[Ask]], None]) -> SharedRoundTrips:
    """The current app's SharedRoundTrips of this name in this process (a forked worker makes its own)."""
    extensions = current_app.extensions
    key = f"multibackend.round_trips.{name}"
    entry = extensions.get(key)
    if entry is None or entry[0] != os.getpid():
        entry = extensions[key] = (os.getpid(), SharedRoundTrips(run_together))
    return entry[1]
