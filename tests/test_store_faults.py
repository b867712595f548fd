"""The object store going away under a stage: a few seconds' outage is retried with backoff; a lasting
one fails the publish with a clear error and publishes nothing. The real S3 server (moto) sits behind
a TCP relay that the test takes down and brings back: an outage a real endpoint cannot stage on demand."""
import socket
import threading

import pytest

from components.artifacts import store


class Relay:
    """127.0.0.1:port -> the S3 server; `down()` refuses and cuts connections until `up()`."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.alive, self.conns = target, threading.Event(), []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.alive.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _pipe(self, a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self):
        while True:
            client, _ = self.sock.accept()
            if not self.alive.is_set():
                client.close()  # endpoint down: the connection is dropped at once
                continue
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def down(self):
        self.alive.clear()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()

    def up(self):
        self.alive.set()


@pytest.fixture
def relayed(s3, monkeypatch, tmp_path):
    import fsspec
    from urllib.parse import urlparse

    u = urlparse(s3.endpoint)
    relay = Relay((u.hostname, u.port))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{relay.port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries off: the store's backoff is under test
    fsspec.filesystem("s3").clear_instance_cache()  # s3fs caches clients with the old endpoint
    folder = tmp_path / "artifact"
    folder.mkdir()
    for i in range(6):
        (folder / f"part-{i}.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB each
    yield relay, folder
    relay.up()
    fsspec.filesystem("s3").clear_instance_cache()


def test_a_short_outage_is_retried(relayed, s3):
    relay, folder = relayed
    uri = s3.uri("faults/short")
    relay.down()
    threading.Timer(2.0, relay.up).start()  # back after 2 s, while publish is retrying
    manifest = store.publish_folder(folder, uri, {"kind": "test"})
    assert store.read_manifest(uri)["sha256"] == manifest["sha256"]
    assert sorted(manifest["files"]) == [f"part-{i}.bin" for i in range(6)]


def test_a_lasting_outage_fails_clearly_and_publishes_nothing(relayed, s3):
    relay, folder = relayed
    uri = s3.uri("faults/long")
    relay.down()
    with pytest.raises(OSError, match="unreachable after 4 attempts"):
        store.publish_folder(folder, uri, {"kind": "test"})
    relay.up()
    assert not store.is_published(uri)
