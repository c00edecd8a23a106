"""Stream camera images out of a rosbag2 bag (folder, .mcap or .db3) for the offline replay.

    python -m tdfusion_ros.bags.reader BAG [--topic T ...]   # topics, counts, a full read-through

Why: the replay reads bags recorded on a robot, which can be long (constant memory), cut short
by a crash or a full disk (keep what is there and say where it ends), or simply not what the
user thinks (wrong topic names or types: say what the bag does hold). ``rosbags`` does the
reading; this module adds the checks, the messages a user can act on, the decoding to numpy and
a recovery scan for MCAP files whose summary and footer are missing.

Use::

    with BagReader(path, [thermal_topic, rgb_topic]) as bag:
        for msg in bag.messages():           # receive (bag timestamp) order
            use(msg.topic, msg.receive_ns, msg.stamp_ns, msg.image)
        if bag.damage is not None:           # the bag ends early: what was read is still good
            report(bag.damage.describe())

Errors are :class:`BagReadError` subclasses raised when the bag is opened: :class:`BagOpenError`
(no such bag, unreadable metadata), :class:`StoragePluginError` (a storage this reader has no
plugin for), :class:`EmptyBagError`, :class:`MissingTopicError` (lists the bag's topics) and
:class:`UnsupportedTypeError`. Damage found while reading does not discard what was read: by
default the iteration ends, ``damage`` says where (message number, receive time, byte offset
when known) and a :class:`BagDamageWarning` is issued; with ``strict=True`` a
:class:`BagDamagedError` is raised after the intact prefix has been yielded. A single message
that does not decode (bad CDR or image data) is skipped and listed in ``skipped``.

Order: a healthy bag is read in receive order (rosbags merges MCAP chunks by log time and sorts
sqlite3 rows). A recovery scan reads MCAP records in file order, sorting each chunk by log time,
which is receive order for bags written as messages arrive (rosbag2, the bag builder).
"""

from __future__ import annotations

import argparse
import struct
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from tdfusion_ros.bags.mcap_scan import McapScan, ScanError
from tdfusion_ros.ros.ros_image import (
    DECODE_FAILED,
    ImageConversionError,
    classify_conversion_error,
    compressed_to_array,
    image_to_array,
    image_to_bgr8,
    image_to_mono,
)

__all__ = [
    "BagDamage",
    "BagDamageWarning",
    "BagDamagedError",
    "BagOpenError",
    "BagReadError",
    "BagReader",
    "EmptyBagError",
    "ImageMessage",
    "MissingTopicError",
    "SkippedMessage",
    "StoragePluginError",
    "TopicInfo",
    "UnsupportedTypeError",
    "decode_image",
    "format_topics",
    "list_topics",
    "main",
    "read_images",
]

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
MODES = ("auto", "bgr8", "mono", "passthrough")
STORAGES = {"mcap": ".mcap", "sqlite3": ".db3"}
MAX_SKIPPED_KEPT = 100

_SEC = 1_000_000_000


# --------------------------------------------------------------------------- errors
class BagReadError(Exception):
    """A bag that cannot be read as asked; the message says why and what to do."""


class BagOpenError(BagReadError):
    """No such bag, or its metadata / storage file cannot be read."""


class StoragePluginError(BagOpenError):
    """The bag needs a storage plugin this reader does not have (only mcap and sqlite3)."""


class EmptyBagError(BagReadError):
    """The bag, or a topic asked for, holds no messages."""


class MissingTopicError(BagReadError):
    """A topic asked for is not in the bag; ``available`` lists what is."""

    def __init__(self, message: str, available: list[TopicInfo]) -> None:
        super().__init__(message)
        self.available = available


class UnsupportedTypeError(BagReadError):
    """A topic asked for does not carry sensor_msgs Image or CompressedImage."""


class BagDamageWarning(UserWarning):
    """The bag ended early or is corrupt; the messages before the damage were delivered."""


class BagDamagedError(BagReadError):
    """Raised in strict mode after the intact prefix; ``damage`` says where."""

    def __init__(self, damage: BagDamage) -> None:
        super().__init__(damage.describe())
        self.damage = damage


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int | None  # None: unknown (a damaged bag without metadata before the scan)

    def describe(self) -> str:
        count = "?" if self.count is None else str(self.count)
        return f"{self.name} [{self.msgtype}] {count} msgs"


@dataclass(frozen=True)
class ImageMessage:
    """One image in receive order. ``image`` may be a read-only view; copy to modify it."""

    topic: str
    receive_ns: int
    stamp_ns: int
    image: np.ndarray | None  # None when read with decode=False
    msgtype: str
    frame_id: str
    encoding: str  # Image encoding, or CompressedImage format
    index: int  # 0-based position among the messages read from this bag
    raw: bytes | memoryview | None = None  # CDR bytes when read with decode=False


@dataclass(frozen=True)
class SkippedMessage:
    index: int
    topic: str
    receive_ns: int
    reason: str
    cause: str = DECODE_FAILED  # the node's drop-counter name (ros_image), e.g. unknown_encoding


@dataclass(frozen=True)
class BagDamage:
    """Where reading stopped: after ``messages_read`` messages (of the topics read)."""

    path: Path
    messages_read: int
    last_receive_ns: int | None
    start_ns: int | None  # first receive time in the bag, to give a relative time
    reason: str
    file: Path | None = None
    byte_offset: int | None = None
    expected_messages: int | None = None  # of the topics read, from the bag's metadata

    def describe(self) -> str:
        where = f"after {self.messages_read} message(s)"
        if self.expected_messages is not None:
            where += f" of {self.expected_messages} expected"
        if self.last_receive_ns is not None:
            where += f", last good receive time {self.last_receive_ns} ns"
            if self.start_ns is not None:
                where += f" (+{(self.last_receive_ns - self.start_ns) / _SEC:.3f} s)"
        if self.byte_offset is not None:
            where += f", at byte {self.byte_offset} of {self.file or self.path}"
        elif self.file is not None:
            where += f", in {self.file}"
        return f"bag {self.path} is damaged; reading stopped {where}: {self.reason}"


# --------------------------------------------------------------------------- decoding
_TYPESTORE: Any = None


def _typestore() -> Any:
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore

        _TYPESTORE = get_typestore(Stores.ROS2_KILTED)
    return _TYPESTORE


def _cdr_header(raw: bytes | memoryview) -> tuple[int, str]:
    """Header stamp and frame id from the first bytes of CDR (no need to decode the pixels)."""
    if len(raw) < 16 or raw[0] != 0 or raw[1] not in (0, 1):
        raise ImageConversionError("not CDR data (bad encapsulation header)")
    order = "<" if raw[1] == 1 else ">"
    sec, nanosec, size = struct.unpack_from(order + "iII", raw, 4)
    if size == 0 or 16 + size > len(raw) or nanosec >= _SEC:
        raise ImageConversionError("corrupt header in CDR data")
    frame_id = bytes(raw[16:16 + size - 1]).decode("utf-8", "replace")
    return sec * _SEC + nanosec, frame_id


def decode_image(msgtype: str, raw: bytes | memoryview, mode: str = "auto") -> np.ndarray:
    """CDR bytes of an Image / CompressedImage -> pixels.

    ``auto``: grey encodings stay 2-D at their depth (8 or 16 bit), anything else becomes BGR
    uint8; ``bgr8``: always BGR uint8; ``mono``: always 2-D (depth kept); ``passthrough``:
    the stored pixels (compressed: as decoded). Raises ImageConversionError.
    """
    if msgtype not in IMAGE_TYPES:
        raise ImageConversionError(f"{msgtype} is not an image type")
    try:
        msg = _typestore().deserialize_cdr(raw, msgtype)
    except Exception as exc:  # rosbags raises assorted errors on bad bytes
        raise ImageConversionError(f"CDR does not decode as {msgtype}: {exc}") from None
    if mode == "bgr8":
        return image_to_bgr8(msg)
    if mode == "mono":
        return image_to_mono(msg)
    if mode == "passthrough":
        return compressed_to_array(msg) if msgtype == COMPRESSED_TYPE else image_to_array(msg)
    if msgtype == COMPRESSED_TYPE:
        decoded = compressed_to_array(msg)  # decode once: grey stays grey, colour -> BGR
        if decoded.ndim == 2:
            return decoded
        if decoded.dtype == np.uint16:
            decoded = cv2.convertScaleAbs(decoded, alpha=255.0 / 65535.0)
        return np.ascontiguousarray(decoded[:, :, :3])
    if msg.encoding in ("mono8", "8UC1", "mono16", "16UC1"):
        return image_to_mono(msg)
    return image_to_bgr8(msg)


# --------------------------------------------------------------------------- opening
@dataclass
class _Part:
    """One storage unit to read: a rosbags-readable path, or an MCAP file to scan."""

    path: Path
    scan: bool
    files: tuple[Path, ...] = ()  # the storage files of a folder, to say where damage is


@dataclass
class _State:
    topics: dict[str, TopicInfo] = field(default_factory=dict)
    start_ns: int | None = None
    parts: list[_Part] = field(default_factory=list)
    note: str | None = None  # why the recovery scan is used
    expected: dict[str, int] | None = None  # counts from metadata.yaml when scanning


def _metadata(folder: Path) -> dict[str, Any] | None:
    meta_file = folder / "metadata.yaml"
    if not meta_file.is_file():
        return None
    try:
        doc = yaml.safe_load(meta_file.read_text())
        return dict(doc["rosbag2_bagfile_information"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise BagOpenError(f"{meta_file}: unreadable bag metadata ({exc}); if the storage file "
                           "is intact, move metadata.yaml away and open the folder again") from None


def _meta_topics(meta: Mapping[str, Any]) -> dict[str, TopicInfo]:
    topics = {}
    try:
        for entry in meta.get("topics_with_message_count") or []:
            tm = entry["topic_metadata"]
            topics[tm["name"]] = TopicInfo(tm["name"], tm["type"], int(entry["message_count"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise BagOpenError(f"unreadable topic list in metadata.yaml: {exc}") from None
    return topics


def _open_bag(path: Path) -> _State:
    """Check the path and metadata, then open with rosbags or fall back to the MCAP scan."""
    if not path.exists():
        raise BagOpenError(f"{path}: no such bag (give a rosbag2 folder, .mcap or .db3)")
    if not path.is_dir():
        if path.suffix not in STORAGES.values():
            raise StoragePluginError(
                f"{path}: unknown storage format {path.suffix or '(no suffix)'!r}; this reader "
                "opens rosbag2 folders, .mcap and .db3 files (ROS 1 .bag: convert it first)")
        return _open_files([path], note=None)
    meta = _metadata(path)
    if meta is None:
        files = sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
        if not files:
            raise BagOpenError(f"{path}: no metadata.yaml and no .mcap/.db3 file; "
                               "not a rosbag2 folder")
        return _open_files(files, note="metadata.yaml is missing")
    storage = str(meta.get("storage_identifier", ""))
    if storage not in STORAGES:
        raise StoragePluginError(
            f"{path}: storage plugin {storage!r} is not available to this reader "
            f"(it has {', '.join(STORAGES)}); convert the bag with ros2 bag convert")
    files = [path / Path(str(p)).name for p in meta.get("relative_file_paths") or []]
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise BagOpenError(f"{path}: storage file(s) listed in metadata.yaml are missing: "
                           f"{', '.join(missing)}")
    try:
        state = _open_rosbags([path])
        state.parts[0].files = tuple(files)
        return state
    except BagOpenError as exc:
        compressed = str(meta.get("compression_mode") or "").lower() not in ("", "none")
        if storage != "mcap" or compressed:
            raise
        state = _open_scan(files, note=str(exc))
    meta_topics = _meta_topics(meta)
    for name, info in meta_topics.items():  # topics whose channels lie beyond the cut
        state.topics.setdefault(name, TopicInfo(name, info.msgtype, 0))
    state.expected = {n: t.count or 0 for n, t in meta_topics.items()}
    return state


def _open_files(files: list[Path], note: str | None) -> _State:
    try:
        state = _open_rosbags(files)
        state.note = note
        return state
    except BagOpenError as exc:
        if any(p.suffix != ".mcap" for p in files):
            raise
        return _open_scan(files, note=str(exc) if note is None else f"{note}; {exc}")


def _open_rosbags(paths: list[Path]) -> _State:
    from rosbags.rosbag2 import Reader

    state = _State()
    for p in paths:
        try:
            with Reader(p) as reader:
                for name, info in reader.topics.items():
                    old = state.topics.get(name)
                    count = info.msgcount + ((old.count or 0) if old else 0)
                    state.topics[name] = TopicInfo(name, info.msgtype or "?", count)
                if reader.message_count:
                    start = reader.start_time
                    state.start_ns = start if state.start_ns is None else min(start,
                                                                               state.start_ns)
        except Exception as exc:  # rosbags, apsw and struct errors all mean "cannot open"
            hint = ""
            if "malformed" in str(exc) or "not a database" in str(exc):
                hint = ("; the sqlite3 file is damaged and only MCAP bags can be recovered here "
                        "(try: sqlite3 FILE .recover)")
            raise BagOpenError(f"{p}: cannot open: {exc}{hint}") from None
        state.parts.append(_Part(p, scan=False))
    return state


def _open_scan(files: list[Path], note: str) -> _State:
    """Topics and recoverable counts of MCAP files that need the recovery scan (one pass)."""
    state = _State(note=note)
    for p in files:
        scan = McapScan(p)
        counts: dict[int, int] = {}
        try:
            for cid, log_time, _ in scan:
                counts[cid] = counts.get(cid, 0) + 1
                if state.start_ns is None or log_time < state.start_ns:
                    state.start_ns = log_time
        except ScanError as cut:
            if cut.offset == 0:
                raise BagOpenError(f"{p}: cannot open ({note}) and {cut.reason}") from None
        except OSError as exc:
            raise BagOpenError(f"{p}: cannot read: {exc}") from None
        for cid, (topic, msgtype) in scan.channels.items():
            old = state.topics.get(topic)
            total = counts.get(cid, 0) + ((old.count or 0) if old else 0)
            state.topics[topic] = TopicInfo(topic, msgtype, total)
        state.parts.append(_Part(p, scan=True))
    return state


# --------------------------------------------------------------------------- the reader
class BagReader:
    """Open a bag, check the topics asked for, and stream their images (see module doc).

    ``topics`` None reads every image topic. ``modes`` maps a topic to a decode mode of
    :func:`decode_image` (default ``auto``; the replay passes ``mono`` for thermal and
    ``bgr8`` for RGB).
    """

    def __init__(self, path: str | Path, topics: Sequence[str] | None = None, *,
                 modes: Mapping[str, str] | None = None, strict: bool = False) -> None:
        self.path = Path(path)
        self.strict = strict
        self.damage: BagDamage | None = None
        self.skipped: list[SkippedMessage] = []
        self.skipped_count = 0
        self.skipped_by_cause: dict[str, dict[str, int]] = {}  # topic -> cause -> count
        self.messages_read = 0
        self._state = _open_bag(self.path)
        self.selected = self._select(topics)
        self.modes = {t: (modes or {}).get(t, "auto") for t in self.selected}
        for topic, mode in self.modes.items():
            if mode not in MODES:
                raise ValueError(f"decode mode {mode!r} for {topic} is not one of {MODES}")

    @property
    def topics(self) -> list[TopicInfo]:
        """All topics of the bag with types and message counts, sorted by name."""
        return [self._state.topics[k] for k in sorted(self._state.topics)]

    @property
    def recovery_note(self) -> str | None:
        """Set when the bag is read by the MCAP recovery scan, saying why."""
        return self._state.note

    @property
    def start_ns(self) -> int | None:
        """Receive time of the bag's first message."""
        return self._state.start_ns

    def _select(self, topics: Sequence[str] | None) -> list[str]:
        available = self.topics
        total = sum(t.count or 0 for t in available)
        if total == 0:
            if self._state.note:
                raise EmptyBagError(f"bag {self.path} is damaged and no message could be "
                                    f"recovered ({self._state.note})")
            raise EmptyBagError(f"bag {self.path} holds no messages; topics:\n"
                                f"{format_topics(available)}")
        if topics is None:
            chosen = [t.name for t in available if t.msgtype in IMAGE_TYPES]
            if not chosen:
                raise MissingTopicError(
                    f"bag {self.path} has no image topics ({', '.join(IMAGE_TYPES)}); "
                    f"it holds:\n{format_topics(available)}", available)
            return chosen
        by_name = self._state.topics
        missing = [t for t in topics if t not in by_name]
        if missing:
            raise MissingTopicError(
                f"topic(s) {', '.join(missing)} not in bag {self.path}; it holds:\n"
                f"{format_topics(available)}", available)
        for t in topics:
            if by_name[t].msgtype not in IMAGE_TYPES:
                images = ", ".join(x.name for x in available if x.msgtype in IMAGE_TYPES)
                raise UnsupportedTypeError(
                    f"topic {t} carries {by_name[t].msgtype}, not an image "
                    f"({' or '.join(IMAGE_TYPES)}); image topics in the bag: {images or 'none'}")
        empty = [t for t in topics if by_name[t].count == 0]
        if empty and not self._state.note:
            raise EmptyBagError(f"topic(s) {', '.join(empty)} hold no messages in bag "
                                f"{self.path}; it holds:\n{format_topics(available)}")
        return list(dict.fromkeys(topics))

    # -- reading
    def _raw(self) -> Iterator[tuple[str, str, int, bytes | memoryview]]:
        """(topic, msgtype, receive_ns, cdr) of the selected topics; raises ScanError."""
        wanted = set(self.selected)
        for part in self._state.parts:
            if part.scan:
                scan = McapScan(part.path)
                try:
                    for cid, log_time, data in scan:
                        topic, msgtype = scan.channels.get(cid, ("", ""))
                        if topic in wanted:
                            yield topic, msgtype, log_time, data
                except ScanError as cut:
                    cut.file = part.path
                    raise
                continue
            from rosbags.rosbag2 import Reader

            try:
                with Reader(part.path) as reader:
                    conns = [c for c in reader.connections if c.topic in wanted]
                    if not conns:
                        continue
                    for conn, timestamp, data in reader.messages(connections=conns):
                        yield conn.topic, conn.msgtype, timestamp, data
            except Exception as exc:  # rosbags, apsw, struct, zstd: corrupt storage data
                error = ScanError(None, f"corrupt storage data ({type(exc).__name__}: {exc})")
                error.file = part.files[0] if len(part.files) == 1 else part.path
                raise error from exc

    def messages(self, decode: bool = True) -> Iterator[ImageMessage]:
        """Stream the selected topics' images in receive order (constant memory).

        ``decode=False`` skips pixel decoding (``raw`` holds the CDR bytes, for decoding in a
        worker with :func:`decode_image`); stamps and frame ids are still read.
        """
        self.damage, self.skipped, self.skipped_count, self.messages_read = None, [], 0, 0
        self.skipped_by_cause = {}
        last_receive: int | None = None
        source = self._raw()
        index = 0
        while True:
            try:
                topic, msgtype, receive_ns, raw = next(source)
            except StopIteration:
                break
            except Exception as exc:  # damage: keep what was read, say where it stopped
                self._damaged(exc, last_receive)
                return
            index += 1
            try:
                stamp_ns, frame_id = _cdr_header(raw)
                image = decode_image(msgtype, raw, self.modes[topic]) if decode else None
            except ImageConversionError as exc:
                self._skip(index - 1, topic, receive_ns, str(exc), _skip_cause(msgtype, raw))
                continue
            last_receive = receive_ns
            self.messages_read += 1
            yield ImageMessage(topic, receive_ns, stamp_ns, image, msgtype, frame_id,
                               _encoding(msgtype, raw), index - 1, None if decode else raw)

    def __iter__(self) -> Iterator[ImageMessage]:
        return self.messages()

    def _skip(self, index: int, topic: str, receive_ns: int, reason: str, cause: str) -> None:
        self.skipped_count += 1
        causes = self.skipped_by_cause.setdefault(topic, {})
        causes[cause] = causes.get(cause, 0) + 1
        if len(self.skipped) < MAX_SKIPPED_KEPT:
            self.skipped.append(SkippedMessage(index, topic, receive_ns, reason, cause))

    def _damaged(self, exc: Exception, last_receive: int | None) -> None:
        expected = None
        if self._state.expected is not None:
            expected = sum(self._state.expected.get(t, 0) for t in self.selected)
        elif not self._state.note:
            expected = sum(self._state.topics[t].count or 0 for t in self.selected)
        if isinstance(exc, ScanError):
            reason, offset, file = exc.reason, exc.offset, exc.file
        else:
            reason, offset, file = f"{type(exc).__name__}: {exc}", None, None
        self.damage = BagDamage(self.path, self.messages_read, last_receive,
                                self._state.start_ns, reason, file, offset, expected)
        if self.strict:
            raise BagDamagedError(self.damage) from None
        warnings.warn(self.damage.describe(), BagDamageWarning, stacklevel=2)

    def close(self) -> None:
        """Nothing stays open between reads; kept for the context-manager protocol."""

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _skip_cause(msgtype: str, raw: bytes | memoryview) -> str:
    """The node's drop cause for an undecodable message: what the node would have counted had
    the message reached it over DDS (unknown_encoding, truncated_data, ...). Bytes that are
    not a message at all are decode_failed."""
    try:
        msg = _typestore().deserialize_cdr(raw, msgtype)
    except Exception:  # noqa: BLE001 - rosbags raises assorted errors on bad bytes
        return DECODE_FAILED
    try:
        return classify_conversion_error(msg)
    except Exception:  # noqa: BLE001 - fields of the wrong type: not a usable message
        return DECODE_FAILED


def _encoding(msgtype: str, raw: bytes | memoryview) -> str:
    """The encoding (Image) or format (CompressedImage) string, read from the CDR directly."""
    try:
        order = "<" if raw[1] == 1 else ">"
        (id_size,) = struct.unpack_from(order + "I", raw, 12)
        pos = (8 + 4 + id_size + 3) // 4 * 4  # payload offset after frame_id, 4-aligned
        if msgtype == IMAGE_TYPE:
            pos += 8  # height, width
        (size,) = struct.unpack_from(order + "I", raw, 4 + pos)
        start = 4 + pos + 4
        return bytes(raw[start:start + max(size - 1, 0)]).decode("ascii", "replace")
    except (struct.error, IndexError):
        return ""


# --------------------------------------------------------------------------- helpers
def format_topics(topics: Sequence[TopicInfo]) -> str:
    """One line per topic: name, type, count (for error messages and the replay's help)."""
    if not topics:
        return "  (no topics)"
    width = max(len(t.name) for t in topics)
    return "\n".join(f"  {t.name:<{width}}  {t.msgtype}  "
                     f"{'?' if t.count is None else t.count} msgs" for t in topics)


def list_topics(path: str | Path) -> list[TopicInfo]:
    """The topics of a bag with types and counts (empty bags too), for a user to pick from."""
    state = _open_bag(Path(path))
    return [state.topics[k] for k in sorted(state.topics)]


def read_images(path: str | Path, topics: Sequence[str] | None = None, *,
                modes: Mapping[str, str] | None = None,
                strict: bool = False) -> Iterator[ImageMessage]:
    """Shortcut: ``BagReader(path, topics, ...).messages()``."""
    return BagReader(path, topics, modes=modes, strict=strict).messages()


def main(argv: Sequence[str] | None = None) -> int:
    """List a bag's topics and read the image topics through; exit 1 on errors or damage."""
    parser = argparse.ArgumentParser(prog="python -m tdfusion_ros.bags.reader",
                                     description="Topics of a bag and a full read-through.")
    parser.add_argument("bag", type=Path)
    parser.add_argument("--topic", action="append", help="image topic to read (repeatable)")
    args = parser.parse_args(argv)
    try:
        reader = BagReader(args.bag, args.topic)
    except BagReadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.bag}:")
    print(format_topics(reader.topics))
    if reader.recovery_note:
        print(f"note: read by scanning ({reader.recovery_note})")
    counts: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BagDamageWarning)
        for msg in reader.messages():
            counts[msg.topic] = counts.get(msg.topic, 0) + 1
    for topic, n in counts.items():
        print(f"read {n} images from {topic}")
    if reader.skipped_count:
        print(f"skipped {reader.skipped_count} undecodable message(s), first: "
              f"{reader.skipped[0].reason}")
    if reader.damage is not None:
        print(f"error: {reader.damage.describe()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
