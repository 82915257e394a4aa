"""DKIM signing across processes, driven by the sender's event loop: no threads in the sender.

The RSA signature costs about 0.27 ms of CPU a message, as much as building and sending it,
so the send loop hands each batch to worker processes and keeps driving its connections
while they sign.  What crosses to a worker is each recipient's own parts of the message
(``dkim_canon.Layout``: the To, Message-ID and List-Unsubscribe lines and the few body
values, about 1 KB), never the message itself; the issue's layout (its fixed 40-70 KB) goes to
each worker once.  Only the signature headers (about 700 bytes a message) come back.

Each worker is a process of its own (``spawn``, so it inherits no database connections,
sockets or threads from the sender; like any spawned process it imports the main module
again: our entry points, ``newsletter`` and the benches, guard theirs with ``if __name__ ==
"__main__"``) with a socket pair to the sender.  Requests and answers are length-prefixed
pickles; the sender writes a request with one ``send`` and reads answers from the event
loop's selector (``add_reader``), so signing needs no helper thread, and the event loop never
waits for the GIL behind one (a ``ProcessPoolExecutor`` needs two, and on a busy machine their
GIL hand-offs slowed the whole send).  A worker answers its requests in order; a batch goes to
the worker with the fewest messages waiting.

Each worker builds its own ``DkimSigner`` from the PEM keys once (sent through its socket,
never written anywhere).  If a worker dies, every request waiting on it answers None and the
caller signs in its own process from then on.  Workers ignore SIGINT: a Ctrl-C reaches the
whole process group, and stopping is the sender's decision (at a batch boundary).
"""
from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import select
import signal
import socket
import struct
from collections import deque

_LENGTH = struct.Struct("!I")


# -- the worker's side ----------------------------------------------------------------------------

def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _serve(sock: socket.socket, keys) -> None:
    """A worker: sign what the sender asks until its socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sender's to handle
    from pipeline.mail.dkim import DkimSigner

    signer = DkimSigner.from_keys(keys)
    with sock:
        while True:
            head = _read_exactly(sock, _LENGTH.size)
            body = _read_exactly(sock, _LENGTH.unpack(head)[0]) if head else None
            if body is None:
                return  # the sender closed the socket (or went away): nothing more to do
            kind, stamp, key, layout, work = pickle.loads(body)
            if kind == "parts":
                if layout is not None:  # the first request for this layout carries it; the others name it
                    signer.learn(layout)
                answer = signer.headers_for(key, work, stamp)
            else:
                answer = [signer.header_or_error(m, stamp) for m in work]
            out = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
            sock.sendall(_LENGTH.pack(len(out)) + out)


# -- the sender's side ------------------------------------------------------------------------------

class _Worker:
    def __init__(self, context, keys):
        self.sock, theirs = socket.socketpair()
        self.process = context.Process(target=_serve, args=(theirs, keys), daemon=True, name="dkim-signer")
        self.process.start()
        theirs.close()
        self.sock.setblocking(False)
        self.waiting: deque[tuple[asyncio.Future, int]] = deque()  # answers to come, in order, with their sizes
        self.load = 0  # messages waiting
        self.known: set[str] = set()  # layouts this worker has
        self.buffer = bytearray()
        self.sent = 0  # bytes of requests written to the worker
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dead = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.loop is not loop:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.sock)
            self.loop = loop
            loop.add_reader(self.sock, self._readable)

    def send(self, request: bytes) -> None:
        data = memoryview(_LENGTH.pack(len(request)) + request)
        self.sent += len(data)
        while data:  # requests are small (about 1 KB a message); a full buffer waits for the worker
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                select.select([], [self.sock], [], 1.0)
                if not self.process.is_alive():
                    raise ConnectionError("the DKIM worker died") from None
                continue
            data = data[sent:]

    def _readable(self) -> None:
        try:
            chunk = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.fail()
            return
        self.buffer += chunk
        while len(self.buffer) >= _LENGTH.size:
            n = _LENGTH.unpack_from(self.buffer)[0]
            if len(self.buffer) < _LENGTH.size + n:
                break
            answer = pickle.loads(self.buffer[_LENGTH.size:_LENGTH.size + n])
            del self.buffer[:_LENGTH.size + n]
            future, size = self.waiting.popleft()
            self.load -= size
            if not future.done():
                future.set_result(answer)

    def fail(self) -> None:
        """The worker is gone: everyone waiting on it learns it (None), and it takes no more work."""
        self.dead = True
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(self.sock)
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_result(None)
        self.load = 0

    def close(self) -> None:
        if self.loop is not None and not self.loop.is_closed() and not self.dead:
            self.loop.remove_reader(self.sock)
        self.sock.close()  # the worker reads end-of-file and exits
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


class SigningPool:
    def __init__(self, keys, processes: int):
        context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(context, keys) for _ in range(max(1, processes))]

    def processes(self) -> list:
        return [w.process for w in self._workers]

    def bytes_sent(self) -> int:
        """Bytes of requests written to the workers so far."""
        return sum(w.sent for w in self._workers)

    async def _ask(self, kind: str, stamp: int, layout, work: list) -> list | None:
        loop = asyncio.get_running_loop()
        alive = [w for w in self._workers if not w.dead]
        if not alive:
            return None
        worker = min(alive, key=lambda w: w.load)
        worker.attach(loop)
        key = layout.key if layout is not None else None
        if key in worker.known:
            layout = None  # this worker has it: its key is enough
        elif key is not None:
            worker.known.add(key)
        future = loop.create_future()
        try:
            worker.send(pickle.dumps((kind, stamp, key, layout, work), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:  # BrokenPipe, ConnectionError: the worker died
            worker.fail()
            return None
        worker.waiting.append((future, len(work)))
        worker.load += len(work)
        return await future

    async def signatures(self, messages: list[bytes], stamp: int) -> list[bytes | str] | None:
        """The signature headers of whole messages (or why one cannot be signed); None if the pool broke."""
        return await self._ask("whole", stamp, None, messages)

    async def headers_for(self, layout, items: list, stamp: int) -> list[bytes | str] | None:
        """The signature headers of (head, values) pairs of ``layout`` (``DkimSigner.headers_for``);
        None if the pool broke."""
        return await self._ask("parts", stamp, layout, items)

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []
