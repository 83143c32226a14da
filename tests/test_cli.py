"""The demo says why a speedup is low when the machine is busy (issue 13)."""

from __future__ import annotations

import os

from penny import cli


def test_a_speedup_below_one_on_a_busy_machine_says_so(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0 * (os.cpu_count() or 1), 0.0, 0.0))
    text = cli._speedup(1.0, 2.0)
    assert text.startswith("0.50x") and "busy" in text and "load average" in text


def test_no_note_on_an_idle_machine_or_a_real_speedup(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert cli._speedup(1.0, 2.0) == "0.50x"
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 0.0, 0.0))
    assert cli._speedup(3.0, 2.0) == "1.50x"
