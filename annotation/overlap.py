"""How many human judgments an item wants: the one rule, in Python, in the ORM and in SQL.

An item wants `project.overlap + item.extra_overlap` human judgments (a curator who sends an item
back for another look raises `extra_overlap`). From that one number:

- an item is **full** when `human_count >= wanted`: a non-gold open item is then done;
- an item has a **free slot** when `human_count + leased_count < wanted`: a hand-out may lease it.

The queue checks the rule in Python (a submit under its row locks), filters with it in the ORM
(the portable hand-out, overlap changes, progress totals) and writes it into the raw statements
of the PostgreSQL hand-out and submit. Each spelling below is built from `wanted` and its two
comparisons, and `tests/test_overlap_rule.py` holds the three to the same answers on the database.
"""

from __future__ import annotations

from typing import Protocol

from django.db.models import ExpressionWrapper, F, IntegerField, Q, Value


class Counted(Protocol):
    """What the rule reads of an item."""

    extra_overlap: int
    human_count: int
    leased_count: int


# Python: a check on an item in hand.


def wanted(overlap: int, item: Counted) -> int:
    """The human judgments the item wants."""
    return overlap + item.extra_overlap


def is_full(overlap: int, item: Counted, *, human_count: int | None = None) -> bool:
    """Whether the item has every human judgment it wants (with `human_count`: would have)."""
    return (item.human_count if human_count is None else human_count) >= wanted(overlap, item)


def has_free_slot(overlap: int, item: Counted) -> bool:
    """Whether a hand-out may lease the item: its judgments and live leases leave room."""
    return item.human_count + item.leased_count < wanted(overlap, item)


def extra_for_one_more(overlap: int, item: Counted) -> int:
    """The `extra_overlap` that makes a full item want exactly one more human judgment."""
    return item.human_count + 1 - overlap


# ORM: expressions and filters over `Item` rows.


def wanted_expr(overlap: int) -> ExpressionWrapper:
    return ExpressionWrapper(Value(overlap) + F("extra_overlap"), output_field=IntegerField())


def full_q(overlap: int) -> Q:
    return Q(human_count__gte=wanted_expr(overlap))


def free_slot_q(overlap: int) -> Q:
    return Q(human_count__lt=wanted_expr(overlap) - F("leased_count"))


# SQL: fragments for the raw statements, over the item table under `alias`, with the project's
# overlap as the named parameter `%(overlap)s`.


def wanted_sql(alias: str) -> str:
    return f"(%(overlap)s + {alias}.extra_overlap)"


def full_sql(alias: str, *, human_count: str | None = None) -> str:
    """`alias` is full (with `human_count`, an SQL expression: would be full at that count)."""
    return f"{human_count or f'{alias}.human_count'} >= {wanted_sql(alias)}"


def free_slot_sql(alias: str) -> str:
    return f"{alias}.human_count + {alias}.leased_count < {wanted_sql(alias)}"
