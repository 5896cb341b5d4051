"""`chatfed rebuild`'s arguments: an unknown --method is a usage error before anything is touched."""

from __future__ import annotations

from typer.testing import CliRunner

from chatfed_cli.main import app


def test_an_unknown_rebuild_method_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["rebuild", "--site", "s1", "--method", "fold"])
    assert result.exit_code == 2
    assert "Usage" in result.output and "bulk" in result.output and "replay" in result.output
