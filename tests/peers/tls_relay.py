"""A TLS front for a plain TCP peer, as a provider's SMSC terminates TLS: accepts TLS on
--port with --cert/--key and relays the bytes to 127.0.0.1:--target. Run as its own process
(`python -m tests.peers.tls_relay`); prints "ready" once listening, one line per handshake
failure (what a client with the wrong CA causes)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def relay(target: int, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    try:
        peer_reader, peer_writer = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        client_writer.close()
        return
    print("relaying", flush=True)
    await asyncio.gather(pipe(client_reader, peer_writer), pipe(peer_reader, client_writer))


def report_handshake_failures(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    print(f"handshake failed: {context.get('exception')}", flush=True)


async def serve(arguments: argparse.Namespace) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(arguments.cert, arguments.key)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(report_handshake_failures)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(lambda r, w: relay(arguments.target, r, w), "127.0.0.1", arguments.port,
                                        ssl=context)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
