"""Be the target of a live migration: write its main channel and each multifd channel to a file.

One process, one thread: a selector over the listening socket and every accepted connection.
Each connection is told apart by its first bytes (the ``QEVM`` magic opens the main channel,
the multifd magic opens a multifd channel whose 64-byte initial packet names the channel id)
and then written to its file as its bytes arrive; nothing of a channel is held in memory.
The target never answers: a precopy source (plain or multifd, any multifd compression)
sends without waiting for the destination.

QEMU: migration/migration.c (migration_ioc_process_incoming), migration/multifd.c (MultiFDInit_t)
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from migstream.errors import MigstreamError, TruncatedError, UsageError
from migstream.wire import constants as c

STREAM_NAME = "stream.mig"
CHANNEL_PREFIX = "multifd-"
CHANNEL_SUFFIX = ".bin"
DEFAULT_TIMEOUT = 600.0
DEFAULT_MAX_CONNECTIONS = 64
RECV_CHUNK = 4 << 20
#: The JSON VM description that may follow the EOF record (longer ones are not looked for).
MAX_TAIL_DESCRIPTION = 64 << 20
_TAIL_WINDOW = 1 << 20

#: MultiFDInit_t: magic, version, the source's uuid, the channel id, reserved bytes.
_MULTIFD_INIT = struct.Struct(">II16sB")
_MAGIC_SIZE = 4


class ReceiveError(MigstreamError):
    """The migration could not be received (listening, a stray connection, a time-out)."""


@dataclass(frozen=True)
class Address:
    """Where to listen: ``tcp:HOST:PORT`` or ``unix:PATH``."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_address(text: str) -> Address:
    """``tcp:HOST:PORT`` (IPv6 hosts in brackets; port 0 picks a free one) or ``unix:PATH``."""
    kind, sep, rest = text.partition(":")
    if sep and kind == "unix" and rest:
        if "\0" in rest:
            raise UsageError(f"bad address {text!r}: NUL in the socket path")
        return Address("unix", path=rest)
    if sep and kind == "tcp":
        host, sep2, port_text = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if sep2 and host and port_text.isdigit() and int(port_text) <= 0xFFFF:
            return Address("tcp", host=host, port=int(port_text))
    raise UsageError(f"bad address {text!r}: expected tcp:HOST:PORT or unix:PATH")


@dataclass
class ReceiveResult:
    """The files one migration was written to, and whether its main stream reached its end."""

    stream: Path
    channels: list[Path]
    stream_bytes: int
    channel_bytes: list[int]
    complete: bool
    seconds: float


@dataclass
class _Conn:
    sock: socket.socket
    peer: str
    head: bytearray = field(default_factory=bytearray)
    kind: str = ""  # "", "main" or "multifd"
    channel_id: int = -1
    out: IO[bytes] | None = None
    path: Path | None = None
    size: int = 0
    closed: bool = False


def channel_path(directory: Path, number: int) -> Path:
    return directory / f"{CHANNEL_PREFIX}{number}{CHANNEL_SUFFIX}"


def existing_outputs(directory: Path) -> list[Path]:
    """The files of an earlier capture in ``directory`` (``stream.mig``, ``multifd-N.bin``)."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _is_output_name(p.name)]
    return sorted(found)


def _is_output_name(name: str) -> bool:
    if name == STREAM_NAME:
        return True
    middle = name[len(CHANNEL_PREFIX) : -len(CHANNEL_SUFFIX)]
    return name.startswith(CHANNEL_PREFIX) and name.endswith(CHANNEL_SUFFIX) and middle.isdigit()


def stream_complete(path: Path) -> bool:
    """Whether the captured main stream ends as a finished migration does.

    That is the EOF record followed by the VM description record (``0x00 0x06 be32(len)
    JSON``), or, for a source that sends no description, the EOF record as the last byte.
    """
    size = path.stat().st_size
    if size < _MAGIC_SIZE + 1:
        return False
    marker = bytes([c.RecordType.EOF, c.RecordType.VMDESCRIPTION])
    with open(path, "rb") as f:
        f.seek(size - 1)
        last = f.read(1)
        if last == b"\x00":
            return True
        if last != b"}":
            return False
        # Look backwards, a window at a time, for the record whose length ends at the end.
        end, lowest = size, max(0, size - MAX_TAIL_DESCRIPTION - 6)
        while end > lowest:
            start = max(lowest, end - _TAIL_WINDOW)
            f.seek(start)
            window = f.read(min(size, end + 5) - start)
            at = window.rfind(marker)
            while at >= 0:
                if (
                    at + 6 <= len(window)
                    and start + at + 6 + int.from_bytes(window[at + 2 : at + 6], "big") == size
                ):
                    f.seek(start + at + 6)
                    return f.read(1) == b"{"
                at = window.rfind(marker, 0, at)
            end = start
    return False


class Receiver:
    """Listen on ``address``; :meth:`run` receives one migration into ``directory``.

    ``timeout``: seconds without any byte or connection before giving up.  ``force``: replace
    an earlier capture in ``directory`` (its ``stream.mig`` and every ``multifd-N.bin``).
    """

    def __init__(
        self,
        address: Address,
        directory: str | os.PathLike[str],
        *,
        force: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if timeout <= 0:
            raise UsageError(f"--timeout must be positive, got {timeout}")
        self.address = address
        self.directory = Path(directory)
        self.timeout = timeout
        self.max_connections = max_connections
        old = existing_outputs(self.directory)
        if old and not force:
            raise UsageError(f"{old[0]} exists (use --force to replace the capture in {self.directory})")
        if self.directory.exists() and not self.directory.is_dir():
            raise UsageError(f"{self.directory} exists and is not a directory")
        self._server = self._listen(address)
        self._conns: list[_Conn] = []
        self._unix_inode: int | None = None
        try:
            if address.kind == "tcp":
                host, port = self._server.getsockname()[:2]
                self.address = Address("tcp", host=host, port=port)
            else:
                self._unix_inode = os.stat(address.path).st_ino
            for path in old:
                path.unlink()
            self.directory.mkdir(parents=True, exist_ok=True)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _listen(address: Address) -> socket.socket:
        try:
            if address.kind == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            else:
                family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if address.kind == "tcp":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # accepted connections inherit it (and TCP its window scale)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_CHUNK)
                sock.bind(address.path if address.kind == "unix" else (address.host, address.port))
                sock.listen(DEFAULT_MAX_CONNECTIONS)
            except BaseException:
                sock.close()
                raise
        except socket.gaierror as exc:
            raise UsageError(f"cannot listen on {address}: {exc.strerror}") from None
        except OSError as exc:
            raise UsageError(f"cannot listen on {address}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        return sock

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> ReceiveResult:
        """Receive until the source has closed every channel; raises :class:`ReceiveError`."""
        start = time.monotonic()
        sel = selectors.DefaultSelector()
        buf = bytearray(RECV_CHUNK)
        view = memoryview(buf)
        try:
            sel.register(self._server, selectors.EVENT_READ, None)
            last = time.monotonic()
            while True:
                # A channel still waiting in the listen queue is part of the migration too.
                if self._finished() and not self._accept(sel):
                    break
                events = sel.select(timeout=min(1.0, self.timeout))
                if not events:
                    if time.monotonic() - last > self.timeout:
                        raise self._timed_out()
                    continue
                last = time.monotonic()
                for key, _ in events:
                    if key.data is None:
                        self._accept(sel)
                    else:
                        conn: _Conn = key.data
                        self._read(sel, conn, view)
            return self._result(time.monotonic() - start)
        finally:
            sel.close()
            self.close()

    def _finished(self) -> bool:
        # A connection that sent nothing (a port probe) is not part of the migration.
        live = [cn for cn in self._conns if cn.kind or cn.head]
        return self._main() is not None and all(cn.closed for cn in live)

    def _main(self) -> _Conn | None:
        return next((cn for cn in self._conns if cn.kind == "main"), None)

    def _accept(self, sel: selectors.BaseSelector, limit: int = DEFAULT_MAX_CONNECTIONS + 1) -> int:
        """Accept what waits in the listen queue (at most ``limit``); returns how many."""
        accepted = 0
        while accepted < limit:
            try:
                sock, peer = self._server.accept()
            except (BlockingIOError, InterruptedError):
                break
            if len(self._conns) >= self.max_connections:
                sock.close()
                raise ReceiveError(f"more than {self.max_connections} connections to {self.address}")
            sock.setblocking(False)
            conn = _Conn(sock, _peer_name(peer, self.address))
            self._conns.append(conn)
            sel.register(sock, selectors.EVENT_READ, conn)
            accepted += 1
        return accepted

    def _read(self, sel: selectors.BaseSelector, conn: _Conn, view: memoryview) -> None:
        try:
            n = conn.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise ReceiveError(f"reading the connection from {conn.peer}: {exc.strerror or exc}") from None
        if n == 0:
            self._closed(sel, conn)
            return
        data = view[:n]
        if conn.out is None:
            take = min(n, c.MULTIFD_INITIAL_PACKET_SIZE - len(conn.head))
            conn.head += data[:take]
            data = data[take:]
            if not self._identify(conn):
                return
        assert conn.out is not None
        conn.out.write(data)
        conn.size += len(data)

    def _identify(self, conn: _Conn) -> bool:
        """Tell what an unknown connection is from its head; once known, open its file.

        Returns False while the head is too short to tell.
        """
        head = bytes(conn.head)
        if len(head) < _MAGIC_SIZE:
            return False
        magic = int.from_bytes(head[:_MAGIC_SIZE], "big")
        if magic == c.QEMU_VM_FILE_MAGIC:
            if self._main() is not None:
                raise ReceiveError(f"a second migration stream from {conn.peer} (only one is received)")
            conn.kind = "main"
            conn.path = self.directory / STREAM_NAME
        elif magic == c.MULTIFD_MAGIC:
            if len(head) < c.MULTIFD_INITIAL_PACKET_SIZE:
                return False
            _, version, _uuid, channel_id = _MULTIFD_INIT.unpack_from(head)
            if version != c.MULTIFD_VERSION:
                raise ReceiveError(
                    f"the multifd channel from {conn.peer} has version {version}, "
                    f"expected {c.MULTIFD_VERSION}"
                )
            if any(cn.channel_id == channel_id for cn in self._conns):
                raise ReceiveError(f"two multifd channels with id {channel_id}")
            conn.kind = "multifd"
            conn.channel_id = channel_id
            conn.path = channel_path(self.directory, channel_id + 1)
        else:
            raise ReceiveError(
                f"the connection from {conn.peer} is neither a migration stream nor a multifd "
                f"channel (first bytes {head[:8].hex(' ')})"
            )
        conn.out = _create(conn.path)
        conn.out.write(head)
        conn.size = len(head)
        conn.head.clear()
        return True

    def _closed(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()
        conn.closed = True
        if conn.out is not None:
            conn.out.close()
        elif conn.head:
            raise ReceiveError(
                f"the connection from {conn.peer} closed after {len(conn.head)} bytes, before "
                f"it showed a migration stream or a multifd channel ({bytes(conn.head[:8]).hex(' ')})"
            )
        # else: opened and closed without a byte (a port probe), not a channel

    def _timed_out(self) -> ReceiveError:
        if not any(cn.kind for cn in self._conns):
            return ReceiveError(f"no migration arrived on {self.address} in {self.timeout:g} s")
        return ReceiveError(
            f"the source sent nothing for {self.timeout:g} s; the capture so far is in {self.directory}"
        )

    def _result(self, seconds: float) -> ReceiveResult:
        main = self._main()
        assert main is not None and main.path is not None
        channels = sorted((cn for cn in self._conns if cn.kind == "multifd"), key=lambda cn: cn.channel_id)
        paths: list[Path] = []
        for number, cn in enumerate(channels, 1):
            assert cn.path is not None
            want = channel_path(self.directory, number)
            if cn.path != want:  # ids with gaps: number the files 1, 2, ... in id order
                cn.path.rename(want)
                cn.path = want
            paths.append(want)
        complete = stream_complete(main.path)
        result = ReceiveResult(main.path, paths, main.size, [cn.size for cn in channels], complete, seconds)
        if not complete:
            raise TruncatedError(
                f"the source closed the migration before the end of its stream; the capture so far "
                f"is in {self.directory}",
                offset=main.size,
                section=STREAM_NAME,
            )
        return result

    def close(self) -> None:
        """Close every socket and file (idempotent); remove the unix socket this listened on."""
        for cn in self._conns:
            with contextlib.suppress(OSError):
                cn.sock.close()
            if cn.out is not None:
                cn.out.close()
        with contextlib.suppress(OSError):
            self._server.close()
        if self._unix_inode is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.address.path)
                if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._unix_inode:
                    os.unlink(self.address.path)
            self._unix_inode = None


def _create(path: Path) -> IO[bytes]:
    """A new file (never an existing one, never through a link)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise UsageError(f"{path} exists (use --force to replace the capture)") from None
    return os.fdopen(fd, "wb", buffering=0)


def _peer_name(peer: object, address: Address) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    return str(address)


def receive(
    address: str,
    directory: str | os.PathLike[str],
    *,
    force: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    listening: Callable[[Address], None] | None = None,
) -> ReceiveResult:
    """Listen on ``address`` (``tcp:HOST:PORT`` / ``unix:PATH``) and receive one migration."""
    receiver = Receiver(parse_address(address), directory, force=force, timeout=timeout)
    try:
        if listening is not None:
            listening(receiver.address)
        return receiver.run()
    finally:
        receiver.close()


__all__ = ["Address", "ReceiveError", "ReceiveResult", "Receiver", "parse_address", "receive"]
