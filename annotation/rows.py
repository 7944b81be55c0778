"""Model rows through hand-written SQL, for the few statements on the annotation hot path.

The ORM compiles every query anew: on this project's 2-core benchmark machine that cost about
1 ms of Python per statement, more than PostgreSQL needed to run it. The statements of a hand-out
and a submit are fixed, so they are written once as SQL here; rows still come back as model
instances, converted by the same field converters the ORM uses (JSON, booleans and datetimes on
SQLite), so callers cannot tell the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, connection, connections, models
from django.db.models import signals
from django.db.models.base import ModelState
from django.utils import timezone

M = TypeVar("M", bound=models.Model)


class Rows(Generic[M]):
    """Column list and row conversion for one model under one table alias."""

    def __init__(self, model: type[M], alias: str) -> None:
        self.model = model
        self.fields = list(model._meta.concrete_fields)
        self.attnames = [f.attname for f in self.fields]
        self.columns = ", ".join(f'{alias}."{f.column}"' for f in self.fields)
        self.width = len(self.fields)
        self._alias = alias
        self._converters: dict[str, list[tuple[int, list[Any], Any]]] = {}

    def _converters_for(self, conn: Any) -> list[tuple[int, list[Any], Any]]:
        vendor = conn.vendor
        if vendor not in self._converters:
            found = []
            for k, field in enumerate(self.fields):
                col = field.get_col(self._alias)
                # Field.get_db_converters is Django's, missing from django-stubs' Field.
                convs = conn.ops.get_db_converters(col) + field.get_db_converters(conn)  # type: ignore[attr-defined]
                if convs:
                    found.append((k, convs, col))
            self._converters[vendor] = found
        return self._converters[vendor]

    def load(self, row: Sequence[Any], start: int = 0) -> M:
        """The model instance from `row[start:start + width]`."""
        conn = connections[DEFAULT_DB_ALIAS]
        values = list(row[start : start + self.width])
        for k, convs, col in self._converters_for(conn):
            value = values[k]
            for conv in convs:
                value = conv(value, col, conn)
            values[k] = value
        if signals.pre_init.receivers or signals.post_init.receivers:
            return self.model.from_db(conn.alias, self.attnames, values)
        # What `from_db` makes, without `Model.__init__`'s per-field setattr through descriptors
        # (a third of loading a row): a fresh instance has no cached relations for a foreign key's
        # setter to clear, and with no init signal connected nothing else runs there.
        obj = self.model.__new__(self.model)
        obj.__dict__.update(zip(self.attnames, values, strict=True))
        state = obj._state = ModelState()
        state.adding = False
        state.db = conn.alias
        return obj


def cursor() -> Any:
    """A Django cursor for the hand-written statements. On PostgreSQL with a `prepare_threshold`
    in the settings (`DB_PREPARED_STATEMENTS`), its parameters are bound by the server, so psycopg
    prepares a statement once it has run that many times on the connection and PostgreSQL stops
    parsing and planning it. The ORM's own cursors keep client-side binding: server-side binding
    caps a statement at 65,535 parameters, which an `__in` over a large project's items exceeds."""
    if connection.vendor != "postgresql" or connection.settings_dict["OPTIONS"].get("prepare_threshold") is None:
        return connection.cursor()
    # psycopg 3's server-binding cursor, which django-stubs' module does not list.
    from django.db.backends.postgresql.base import ServerBindingCursor  # type: ignore[attr-defined]

    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    default = raw.cursor_factory
    raw.cursor_factory = ServerBindingCursor  # for this one cursor: Django builds it from the factory
    try:
        return connection.cursor()
    finally:
        raw.cursor_factory = default


def fetch_one(sql: str, params: Sequence[Any] | dict[str, Any]) -> tuple[Any, ...] | None:
    """The first row of a hand-written statement, or None.

    On PostgreSQL with prepared statements, through the backend's kept cursor
    (`config.postgresql`): Django's cursor costs Python to make and wrap for each statement.
    Where queries are logged (DEBUG, the test suite's
    query counters), Django's own cursor, which does the logging."""
    conn = connections[DEFAULT_DB_ALIAS]
    if (
        conn.settings_dict["OPTIONS"].get("prepare_threshold") is not None
        and hasattr(conn, "kept_cursor")
        and not conn.queries_logged
    ):
        kept = conn.kept_cursor()
        with conn.wrap_database_errors:
            kept.execute(sql, params)
            return kept.fetchone()
    with cursor() as c:
        c.execute(sql, params)
        return c.fetchone()


_VALUE, _NOW, _DEFAULT = range(3)
_INSERT_PLANS: dict[tuple[Any, ...], tuple[str, str, list[tuple[str, Any, int]], dict[str, Any]]] = {}


def insert_parts(
    model: type[models.Model], values: dict[str, Any], exprs: dict[str, str] | None = None
) -> tuple[str, str, dict[str, Any]]:
    """The pieces of an INSERT of one `model` row: its column list, its value list and the named
    parameters (`%(f_<attname>)s`) those values use. Fields in `values` are prepared as the ORM
    prepares them, fields in `exprs` are SQL expressions written by the caller, and every other
    field takes the model's default.

    The column and value lists, and the prepared values of constant defaults, are worked out once
    for each model, connection vendor and set of given fields, not on every call; values and
    callable defaults are prepared on each call."""
    exprs = exprs or {}
    conn = connections[DEFAULT_DB_ALIAS]
    key = (model, conn.vendor, tuple(values), tuple(exprs.items()))
    plan = _INSERT_PLANS.get(key)
    if plan is None:
        cols, marks, steps, constants = [], [], [], {}
        for f in model._meta.concrete_fields:
            if f.primary_key:
                continue
            cols.append(f'"{f.column}"')
            if f.attname in exprs:
                marks.append(exprs[f.attname])
                continue
            name = f"f_{f.attname}"
            marks.append(f"%({name})s")
            if f.attname in values:
                steps.append((name, f, _VALUE))
            elif getattr(f, "auto_now_add", False) or getattr(f, "auto_now", False):
                steps.append((name, f, _NOW))
            elif f.has_default() and callable(f.default):
                steps.append((name, f, _DEFAULT))
            else:  # a constant default, else "" or None as the model would
                constants[name] = f.get_db_prep_save(f.get_default(), conn)
        plan = _INSERT_PLANS[key] = (", ".join(cols), ", ".join(marks), steps, constants)
    cols_sql, marks_sql, steps, constants = plan
    params = dict(constants)
    for name, f, kind in steps:
        if kind == _VALUE:
            value = values[f.attname]
        elif kind == _NOW:
            value = timezone.now()
        else:
            value = f.get_default()
        params[name] = f.get_db_prep_save(value, conn)
    return cols_sql, marks_sql, params


def insert(model: type[models.Model], values: dict[str, Any]) -> int:
    """INSERT one row with the fields given (by attname, prepared as the ORM prepares them) and the
    model's defaults for the rest; returns the new id."""
    cols, marks, params = insert_parts(model, values)
    opts = model._meta
    # Names from the model's metadata, values as parameters.
    sql = f'INSERT INTO "{opts.db_table}" ({cols}) VALUES ({marks}) RETURNING "{opts.pk.column}"'  # noqa: S608
    row = fetch_one(sql, params)
    assert row is not None  # INSERT ... RETURNING returns the row it inserted
    return row[0]


_BY_PK: dict[type[models.Model], tuple[Rows[Any], str]] = {}


def get_by_pk(model: type[M], pk: Any) -> M | None:
    """The row with this primary key (any value the field accepts, e.g. a session's string), or None."""
    try:
        pk = model._meta.pk.to_python(pk)
    except ValidationError:
        return None
    if model not in _BY_PK:
        loader = Rows(model, "t")
        sql = f'SELECT {loader.columns} FROM "{model._meta.db_table}" t WHERE t."{model._meta.pk.column}" = %s'  # noqa: S608
        _BY_PK[model] = (loader, sql)
    loader, sql = _BY_PK[model]
    row = fetch_one(sql, [pk])
    return loader.load(row) if row is not None else None
