"""An agents-mode round as a pure object: start values out, area rows in, solved or timed out."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from derbus.messages import FeederState
from voltage_coordinator.sweep import Rows, stack


class Outcome(Enum):
    """What one area message did to a round."""

    IGNORED = "ignored"
    """Not for this round, or not an area's rows (intermediate sweep values)."""
    WAITING = "waiting"
    """Taken; other areas have not answered yet."""
    SOLVED = "solved"
    """Every area answered: `Round.rows()` is the whole feeder's."""


@dataclass
class Round:
    """One distributed decision in flight: which state, which areas answered, since when.

    Attributes:
        round_id: the id in every exchange message of the round.
        state: the feeder state the agents solve for (they look it up by its timestamp).
        started_s: monotonic start time (the caller's clock).
        group_ids: the groups the areas' rows are over.
        area_ids: the areas that must answer.
        answers: the rows received, by area.
    """

    round_id: str
    state: FeederState
    started_s: float
    group_ids: list[str]
    area_ids: frozenset[str]
    answers: dict[str, Rows] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        state: FeederState,
        now_s: float,
        group_ids: Iterable[str],
        area_ids: Iterable[str],
        round_id: str | None = None,
    ) -> Round:
        """A new round on a state."""
        rid = round_id or uuid.uuid4().hex[:12]
        return cls(rid, state, now_s, list(group_ids), frozenset(area_ids))

    def start_values(self, rule: int) -> dict[str, float]:
        """The round start's values: the state's timestamp and step, the fairness rule code."""
        return {
            "state_ts_s": self.state.ts.timestamp(),
            "state_step": float(self.state.step),
            "rule": float(rule),
        }

    def offer(
        self, area_id: str, round_id: str, values: Mapping[str, float], final: bool
    ) -> Outcome:
        """Take an area's message (raises SolverError when its rows are malformed)."""
        if round_id != self.round_id or not final or area_id not in self.area_ids:
            return Outcome.IGNORED
        self.answers[area_id] = Rows.from_values(values, self.group_ids)
        return Outcome.SOLVED if set(self.answers) >= self.area_ids else Outcome.WAITING

    def rows(self) -> Rows:
        """Every area's rows, stacked (in area id order)."""
        return stack([self.answers[a] for a in sorted(self.answers)], len(self.group_ids))

    def timed_out(self, now_s: float, timeout_s: float) -> bool:
        """The round has been in flight for `timeout_s` or longer."""
        return now_s - self.started_s >= timeout_s

    def missing(self) -> list[str]:
        """The areas that have not answered."""
        return sorted(self.area_ids - set(self.answers))
