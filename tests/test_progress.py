"""Progress of long work: a bar on a terminal, plain lines in a log."""

import io

from process_data.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_lines_not_carriage_returns():
    log = io.StringIO()
    with progress(3, "judgment", "win rate", stream=log) as bar:
        for _ in range(3):
            bar.update()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    # the start and the end; refreshes in between come at most once a minute
    assert len(lines) == 2, lines
    assert lines[0].startswith("win rate:   0%") and "0/3" in lines[0]
    assert lines[1].startswith("win rate: 100%") and "3/3" in lines[1]


def test_a_terminal_gets_a_bar():
    term = Terminal()
    with progress(2, "query", stream=term) as bar:
        bar.update(2)
    assert "\r" in term.getvalue() and "2/2" in term.getvalue()


def test_a_resumed_run_starts_from_what_was_done():
    log = io.StringIO()
    with progress(10, "step", initial=4, stream=log):
        pass
    assert "4/10" in log.getvalue().splitlines()[0]
