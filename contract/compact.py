"""The compact form of the per-user values (feat:, profile:, rec:): zstd with a trained dictionary.

A user's JSON state is mostly the same keys and item ids again and again, which a dictionary
trained on such values takes out: on the simulator's users a 2.5 KB state packs to about 400 B,
a 25-item list with reasons from 1.2 KB to about 230 B (README, "Memory per user", has the
figures; `python -m devstack.dictionaries` trains the dictionaries and prints its own). Per user
that is what decides how many users one Redis holds.

A packed value is `z:<feature_ts>:` and one zstd frame. The guard scripts (guarded_set.lua) read
the feature timestamp from that prefix, so they never decompress; the frame names its dictionary
by id, so a reader picks the one it was written with. Values in JSON (from before, or written by
hand in tests and benchmarks) are read as they are: `text` passes anything starting with `{`.

Dictionaries are data, versioned by id and never changed: a new one gets a new id, and the old
ones stay for the values still written with them. The job writes the dictionaries it uses into
Redis (DICTIONARY_PREFIX + id, SET NX) before its first write, so the lookup service (Go) reads
them from there and needs no files of its own; Python reads contract/dicts/.
"""

from __future__ import annotations

import re
import threading
from functools import cache
from pathlib import Path

import zstandard

DICT_DIR = Path(__file__).resolve().parent / "dicts"
PREFIX = b"z:"
DICTIONARY_PREFIX = "codec:dict:"  # + dictionary id: the dictionary's bytes, for readers without the files
KINDS = ("feat", "profile", "rec")
LEVEL = 3  # level 9 saved 6% more at 5x the CPU of the job's Python workers (measured on the simulator's states)
_NAME = re.compile(r"^(feat|profile|rec)-(\d+)\.zdict$")


class UnreadableValue(ValueError):
    """A stored value this install cannot read (a dictionary it lacks, a damaged frame)."""


def dictionary_key(dict_id: int) -> str:
    return f"{DICTIONARY_PREFIX}{dict_id}"


@cache
def dictionaries() -> dict[int, tuple[str, bytes]]:
    """Every dictionary shipped: id -> (kind, bytes). The id is the one inside the dictionary (and
    so inside every frame written with it); the file name says the kind and the same id."""
    out = {}
    for path in sorted(DICT_DIR.glob("*.zdict")):
        m = _NAME.match(path.name)
        if not m:
            continue
        data = path.read_bytes()
        d = zstandard.ZstdCompressionDict(data)
        if d.dict_id() != int(m.group(2)):
            raise UnreadableValue(f"{path} holds dictionary {d.dict_id()}, its name says {m.group(2)}: "
                                  "dictionaries are named <kind>-<id>.zdict by `python -m devstack.dictionaries`")
        out[d.dict_id()] = (m.group(1), data)
    return out


def current(kind: str) -> int:
    """The dictionary new values of this kind are written with: the kind's highest id."""
    ids = [i for i, (k, _) in dictionaries().items() if k == kind]
    if not ids:
        raise UnreadableValue(f"no {kind} dictionary in {DICT_DIR}: reinstall streamrank, or train one with "
                              "`python -m devstack.dictionaries`")
    return max(ids)


# compressors and decompressors are not safe to share between threads (the serving engines
# decode in a thread pool)
_local = threading.local()


def _compressor(kind: str) -> zstandard.ZstdCompressor:
    cs = _local.__dict__.setdefault("compressors", {})
    if kind not in cs:
        data = dictionaries()[current(kind)][1]
        cs[kind] = zstandard.ZstdCompressor(level=LEVEL, dict_data=zstandard.ZstdCompressionDict(data),
                                            write_content_size=True, write_checksum=False, write_dict_id=True)
    return cs[kind]


def _decompressor(dict_id: int) -> zstandard.ZstdDecompressor:
    ds = _local.__dict__.setdefault("decompressors", {})
    if dict_id not in ds:
        known = dictionaries()
        if dict_id not in known:
            raise UnreadableValue(f"the value was written with zstd dictionary {dict_id}, which this install lacks "
                                  f"(it has {sorted(known)}): upgrade streamrank to the job's version")
        ds[dict_id] = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(known[dict_id][1]))
    return ds[dict_id]


def pack(kind: str, feature_ts: int, text: str | bytes) -> bytes:
    """The stored form of one JSON value of `kind` (feat, profile or rec)."""
    data = text.encode() if isinstance(text, str) else text
    return b"%s%d:%s" % (PREFIX, feature_ts, _compressor(kind).compress(data))


def text(raw: bytes | str) -> bytes | str:
    """A stored value's JSON text, whichever form it was stored in."""
    if isinstance(raw, str) or not raw.startswith(PREFIX):
        return raw
    colon = raw.find(b":", len(PREFIX))
    frame = raw[colon + 1:]
    try:
        dict_id = zstandard.get_frame_parameters(frame).dict_id
        return _decompressor(dict_id).decompress(frame)
    except zstandard.ZstdError as e:
        raise UnreadableValue(f"a packed value that is no zstd frame ({e}); was it written by streamrank?") from e


def feature_ts(raw: bytes) -> int | None:
    """The guard timestamp of a packed value (None for a JSON one)."""
    if not raw.startswith(PREFIX):
        return None
    return int(raw[len(PREFIX):raw.find(b":", len(PREFIX))])
