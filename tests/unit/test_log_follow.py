"""Following a server's log: only what was appended is read and scanned, lines are counted once."""
from pathlib import PurePosixPath

from harness.servers.server import Server


class GrowingLog:
    """A host whose one log file grows by the chunks given; records how much each read returned."""

    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.text = ""
        self.reads = []

    def grow(self):
        self.text += self.chunks.pop(0)

    def read_from(self, path, offset):
        data = self.text[offset:]
        self.reads.append(len(data))
        return data, offset + len(data)


class OneHostNode:
    name = "local"

    def __init__(self, host):
        self.host = host

    def on_host(self, path):
        return path


def server_on(host) -> Server:
    return Server("router", OneHostNode(host), [], "case", PurePosixPath("/log"), [])


def test_a_line_split_across_reads_is_counted_once():
    host = GrowingLog(["Activated 1 wor", "ker(s)\nActivated 1 worker(s)", "\n", "noise\n"])
    server, pattern = server_on(host), r"Activated 1 worker\(s\)"
    seen = []
    for _ in range(4):
        host.grow()
        seen.append(server.follow_log([pattern])[pattern])
    assert seen == [0, 2, 2, 2]  # the unfinished second line counts, and only once


def test_only_new_text_is_read():
    chunk = "x" * 1000 + "\n"
    host = GrowingLog([chunk] * 50)
    server = server_on(host)
    for _ in range(50):
        host.grow()
        server.follow_log(["ready"])
    assert host.reads == [len(chunk)] * 50  # not the whole log again on every poll


def test_invalid_utf8_in_a_log_does_not_stop_the_count():
    host = GrowingLog(["\ufffd\ufffd garbage \n", "The server is fired up and ready to roll!\n"])
    server = server_on(host)
    host.grow()
    host.grow()
    assert server.follow_log(["ready to roll"]) == {"ready to roll": 1}
