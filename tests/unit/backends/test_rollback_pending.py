"""``rollback_pending`` (the mark of a ROLLBACK sent at return, its reply read at the next
checkout) must not be fooled by a stand-in connection: SQLAlchemy's own suite connects a Mock,
whose every attribute is truthy, and such a connection was "settled" and discarded at each
checkout (conformance: DialectEventTest...no_cargs_cparams_leak_nullpool, 6 connects for 3)."""

from __future__ import annotations

from types import ModuleType
from unittest.mock import Mock

import pytest

from poolguard.backends import mysql, postgres


@pytest.mark.parametrize("backend", [postgres, mysql], ids=["postgres", "mysql"])
def test_a_mock_connection_has_no_pending_rollback(backend: ModuleType) -> None:
    assert backend.rollback_pending(Mock()) is False


@pytest.mark.parametrize("backend", [postgres, mysql], ids=["postgres", "mysql"])
def test_the_mark_set_by_send_rollback_is_read(backend: ModuleType) -> None:
    conn = Mock()
    setattr(conn, backend._ROLLBACK_SENT, True)
    assert backend.rollback_pending(conn) is True
    setattr(conn, backend._ROLLBACK_SENT, False)
    assert backend.rollback_pending(conn) is False
