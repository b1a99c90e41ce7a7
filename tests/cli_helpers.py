"""Running the command line in tests, and what every refusal must look like."""

from typer.testing import CliRunner

from nccli.cli import app


def invoke(*args):
    """Invoke the CLI in this process; stdout and stderr stay separate."""
    return CliRunner().invoke(app, [str(arg) for arg in args])


def assert_user_error(result, *fragments: str) -> str:
    """Exit code 2, one line on stderr naming ``fragments``, no traceback; the line."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
