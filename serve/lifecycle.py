"""The case lifecycle: statuses, their labels, and which action moves a case from where to where.

``new`` → ``confirmed`` | ``dismissed`` (every case is reviewed by a person first) → ``dispatched``
(department + deadline, 责任落实 / 限期整改) → ``resolved`` → ``closed``. ``reopen`` sends a dismissed
case back to review (``new``) and a resolved or closed one back to ``confirmed`` to be dispatched again.
"""

from __future__ import annotations

from dataclasses import dataclass

STATUSES: dict[str, tuple[str, str]] = {  # status -> (中文, English)
    "new": ("待审核", "New"),
    "confirmed": ("已确认", "Confirmed"),
    "dismissed": ("误报驳回", "Dismissed"),
    "dispatched": ("已派遣", "Dispatched"),
    "resolved": ("已处置", "Resolved"),
    "closed": ("已结案", "Closed"),
}
#: Cases a new sighting of the same thing is merged into.
OPEN_STATUSES = ("new", "confirmed", "dispatched")
#: Cases whose department (and deadline) is the one handling it, or that handled it; a case reopened back to
#: ``confirmed`` keeps its last department and deadline only as the previous assignment.
ASSIGNED_STATUSES = ("dispatched", "resolved", "closed")


@dataclass(frozen=True)
class Transition:
    """An action, the statuses it is allowed from, and the status it leads to."""

    action: str
    sources: tuple[str, ...]
    target: str | dict[str, str]

    def target_from(self, status: str) -> str:
        """Status after the action from ``status``."""
        return self.target if isinstance(self.target, str) else self.target[status]


TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        Transition("confirm", ("new",), "confirmed"),
        Transition("dismiss", ("new",), "dismissed"),
        Transition("relabel", ("new", "confirmed"), "confirmed"),
        Transition("dispatch", ("confirmed", "dispatched"), "dispatched"),
        Transition("resolve", ("dispatched",), "resolved"),
        Transition("close", ("resolved",), "closed"),
        Transition(
            "reopen",
            ("dismissed", "resolved", "closed"),
            {"dismissed": "new", "resolved": "confirmed", "closed": "confirmed"},
        ),
    )
}


#: The event each action raises (what a webhook is told).
EVENTS = {
    "confirm": "confirmed",
    "relabel": "confirmed",
    "dismiss": "dismissed",
    "dispatch": "dispatched",
    "resolve": "resolved",
    "close": "closed",
    "reopen": "reopened",
}


class IllegalTransition(Exception):
    """An action a case's status does not allow; the message says why and what is allowed."""

    def __init__(self, case_id: int, status: str, action: str):
        allowed = ", ".join(TRANSITIONS[action].sources)
        possible = [a for a, t in TRANSITIONS.items() if status in t.sources]
        super().__init__(
            f"case {case_id} is {status}: cannot {action} (allowed only from {allowed}); "
            f"possible now: {', '.join(possible) or 'nothing'}"
        )
        self.case_id, self.status, self.action = case_id, status, action


def check(case_id: int, status: str, action: str) -> str:
    """The status after ``action``; raises :class:`IllegalTransition` when not allowed."""
    transition = TRANSITIONS[action]
    if status not in transition.sources:
        raise IllegalTransition(case_id, status, action)
    return transition.target_from(status)


def actions_from(status: str) -> list[str]:
    """Actions allowed from ``status`` (for the review page's buttons)."""
    return [a for a, t in TRANSITIONS.items() if status in t.sources]
