"""One JSON log schema for the operator and the agent (voile.logs)."""

from __future__ import annotations

import json
import logging

import pytest

from voile import logs


def test_json_lines_carry_the_shared_keys(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("info", "json")
    logging.getLogger("voile.test").info("hello %s", "world")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("voile.test").exception("failed")
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert [x["message"] for x in lines] == ["hello world", "failed"]
    assert {x["level"] for x in lines} == {"info", "error"}
    assert all(x["logger"] == "voile.test" and x["time"].endswith("Z") for x in lines)
    assert "ValueError: boom" in lines[1]["exc"] and "exc" not in lines[0]


def test_chatty_libraries_are_held_at_info(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("debug", "text", quiet=("chatty",))
    logging.getLogger("chatty").debug("noise")
    logging.getLogger("voile.test").debug("signal")
    err = capsys.readouterr().err
    assert "signal" in err and "noise" not in err
