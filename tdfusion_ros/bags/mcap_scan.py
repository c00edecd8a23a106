"""The MCAP recovery scan: the messages of a file whose summary and footer are missing.

Why: rosbags opens an MCAP file through its summary and footer, which a crash or a full disk
leaves unwritten. This scan walks the records in file order instead and yields what it can
decode; ``ScanError`` says where and why it stopped. ``reader`` falls back to it when rosbags
cannot open a file, and reports the damage.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

MCAP_MAGIC = b"\x89MCAP0\r\n"


class ScanError(Exception):
    def __init__(self, offset: int | None, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.file: Path | None = None


def _string(buf: bytes | memoryview, pos: int) -> tuple[str, int]:
    (size,) = struct.unpack_from("<I", buf, pos)
    end = pos + 4 + size
    if end > len(buf):
        raise ValueError("string runs past its record")
    return bytes(buf[pos + 4:end]).decode("utf-8", "replace"), end


def _partial_decompress(compression: str, data: bytes) -> bytes:
    """As much of a cut-off chunk as can be decompressed."""
    if compression == "":
        return data
    try:
        if compression == "zstd":
            try:
                from compression import zstd  # type: ignore[import-not-found]
            except ImportError:
                from backports import zstd  # type: ignore[import-not-found,no-redef]
            return zstd.ZstdDecompressor().decompress(data)
        if compression == "lz4":
            import lz4.frame

            return lz4.frame.LZ4FrameDecompressor().decompress(data)
    except Exception:  # partial frames may fail outright: nothing to recover then
        return b""
    return b""


def _full_decompress(compression: str, data: bytes, size: int) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        out = zstd.decompress(data)
    elif compression == "lz4":
        import lz4.frame

        out = lz4.frame.decompress(data)
    else:
        raise ValueError(f"unsupported chunk compression {compression!r}")
    if len(out) != size:
        raise ValueError(f"chunk decompresses to {len(out)} bytes, expected {size}")
    return out


class McapScan:
    """Read an MCAP file record by record from the start, without its summary or footer.

    Yields ``(channel_id, log_time, data)``; ``channels`` maps ids to (topic, msgtype) as the
    channel records are met. Ends normally at the data-end record, else raises ScanError.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.schemas: dict[int, str] = {}
        self.channels: dict[int, tuple[str, str]] = {}

    def _inner(self, buf: bytes | memoryview, base: int,
               out: list[tuple[int, int, bytes]]) -> bool:
        """Records of a chunk into ``out``; False when the last one is incomplete."""
        pos = 0
        while pos < len(buf):
            if pos + 9 > len(buf):
                return False
            op, length = struct.unpack_from("<BQ", buf, pos)
            body_start, body_end = pos + 9, pos + 9 + length
            if body_end > len(buf):
                return False
            self._record(op, buf[body_start:body_end], base, out)
            pos = body_end
        return True

    def _record(self, op: int, body: bytes | memoryview, offset: int,
                out: list[tuple[int, int, bytes]]) -> None:
        try:
            if op == 0x03:
                (sid,) = struct.unpack_from("<H", body, 0)
                name, _ = _string(body, 2)
                self.schemas[sid] = name
            elif op == 0x04:
                cid, sid = struct.unpack_from("<HH", body, 0)
                topic, _ = _string(body, 4)
                self.channels[cid] = (topic, self.schemas.get(sid, ""))
            elif op == 0x05:
                cid, _seq, log_time, _pub = struct.unpack_from("<HIQQ", body, 0)
                out.append((cid, log_time, bytes(body[22:])))
        except (struct.error, ValueError) as exc:
            raise ScanError(offset, f"malformed record 0x{op:02x}: {exc}") from None

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            if f.read(8) != MCAP_MAGIC:
                raise ScanError(0, "not an MCAP file (bad magic)")
            pos = 8
            while True:
                head = f.read(9)
                if not head:
                    raise ScanError(pos, "the file ends without MCAP data-end and footer "
                                          "records (cut short)")
                if len(head) < 9:
                    raise ScanError(pos, "the file ends inside a record header")
                op, length = struct.unpack("<BQ", head)
                if op in (0x0F, 0x02):  # data end / footer: everything was there
                    return
                available = size - pos - 9
                out: list[tuple[int, int, bytes]] = []
                error: ScanError | None = None
                if op == 0x06:
                    error = self._chunk(f.read(min(length, available)), length, pos, out)
                elif op in (0x03, 0x04, 0x05):
                    if length > available:
                        raise ScanError(pos, f"record 0x{op:02x} of {length} bytes is cut off "
                                              f"after {available}")
                    self._record(op, f.read(length), pos, out)
                else:
                    if length > available:
                        raise ScanError(pos, f"record 0x{op:02x} is cut off")
                    f.seek(length, 1)
                yield from sorted(out, key=lambda m: m[1])  # what came before the damage
                if error is not None:
                    raise error
                pos += 9 + length

    def _chunk(self, body: bytes, length: int, offset: int,
               out: list[tuple[int, int, bytes]]) -> ScanError | None:
        """Parse a chunk's records into ``out``; return the damage instead of raising it."""
        cut = len(body) < length
        try:
            _start, _end, raw_size, crc = struct.unpack_from("<QQQI", body, 0)
            compression, pos = _string(body, 28)
            (records_len,) = struct.unpack_from("<Q", body, pos)
        except (struct.error, ValueError):
            return ScanError(offset, "a chunk header is cut off" if cut
                              else "a chunk header is malformed")
        records = body[pos + 8:pos + 8 + records_len]
        if cut or len(records) < records_len:
            data = _partial_decompress(compression, records)
        else:
            try:
                data = _full_decompress(compression, records, raw_size)
            except Exception as exc:
                return ScanError(offset, f"chunk does not decompress: {exc}")
            if crc and zlib.crc32(data) != crc:
                return ScanError(offset, "chunk checksum mismatch (corrupt data)")
        try:
            complete = self._inner(memoryview(data), offset, out)
        except ScanError as exc:
            return exc
        if cut:
            return ScanError(offset, f"chunk of {length} bytes is cut off after {len(body)}; "
                                      "the messages complete before the cut were recovered")
        if not complete:
            return ScanError(offset, "a record inside a chunk runs past the chunk")
        return None
