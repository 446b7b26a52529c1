"""What many tests share: running the CLI in-process and checking a user error's one line."""

from prunus.cli import main


def run_cli(capsys, *argv):
    """``prunus ARGV`` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *fragments):
    """A user mistake: exit code 2 and exactly one 'prunus: error:' line holding every fragment, no traceback."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("prunus: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
