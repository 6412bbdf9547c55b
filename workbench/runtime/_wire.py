"""Split a model file's protobuf bytes into its structure and its weight payloads.

Why: parsing a spec copies every weight into protobuf's memory, and decoding copies it again
into numpy, while weights are nearly all of a model file (ResNet-18: 45 MB of 45 MB) and the
file already stores them as numpy wants them: packed little-endian float32 (``floatValue``),
float16 bytes, raw quantized bytes. So the loader cuts each WeightParams payload out of the
bytes, parses the few kilobytes that remain (the structure), and reads weights as views of the
file's bytes.

Each cut payload leaves a marker in its WeightParams: an unknown varint field numbered
``MARKER`` (the highest field number protobuf allows) holding the payload's index. Protobuf
keeps unknown fields, so the parsed structure still says which payload belongs where.

The split is conservative. Any encoding it does not expect (a group, a field running past its
message, a tag or length longer than protobuf accepts, a singular message field given twice,
unpacked floats, a marker already in the file) gives None, and the caller parses the whole file as before, which raises protobuf's own error
for a corrupt one.
"""
import ctypes
import functools

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.unknown_fields import UnknownFieldSet

MARKER = (1 << 29) - 1
CUT_FIELDS = {1: "floatValue", 2: "float16Value", 30: "rawValue", 31: "int8RawValue"}
_WEIGHT_PARAMS = "CoreML.Specification.WeightParams"
MAX_DEPTH = 100               # protobuf's own recursion limit: deeper files are its error to name


class _Unexpected(Exception):
    """The bytes are not what the split handles: parse the whole file instead."""


@functools.lru_cache(maxsize=None)
def _tables(root):
    """{message name: {field number: (child message name, repeated)}} for the message fields that
    lead to a WeightParams, from the generated descriptors (so a newer proto is followed too)."""
    graph, pending = {}, [root]                       # every message type reachable from the root
    while pending:
        d = pending.pop()
        if d.full_name not in graph:
            graph[d.full_name] = [(f.number, f.message_type, _repeated(f)) for f in d.fields
                                  if f.type == FieldDescriptor.TYPE_MESSAGE]
            pending += [child for _, child, _ in graph[d.full_name]]
    leads, grew = {_WEIGHT_PARAMS}, True              # a fixpoint: the graph has cycles (pipelines,
    while grew:                                       # loop bodies), so no answer is final early
        grew = False
        for name, fields in graph.items():
            if name not in leads and any(child.full_name in leads for _, child, _ in fields):
                leads.add(name)
                grew = True
    return {name: {number: (child.full_name, repeated) for number, child, repeated in fields
                   if child.full_name in leads}
            for name, fields in graph.items() if name in leads}


def _repeated(field):
    if hasattr(field, "is_repeated"):                  # protobuf >= 5.28; ``label`` is gone in 7
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def varint_bytes(value):
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_MARKER_TAG = varint_bytes(MARKER << 3)
_NO_CHILDREN = {}


def split_weights(data, descriptor):
    """``(structure bytes, [(field number, offset, length), ...])`` or None (parse it whole).

    ``data`` is a numpy uint8 buffer; ``descriptor`` the root message's (Model). None also when
    the file has no payload to cut.
    """
    tables = _tables(descriptor)
    payloads = []
    try:
        cut = _walk(memoryview(data), 0, len(data), descriptor.full_name, tables, payloads, 0)
    except (_Unexpected, IndexError):
        return None
    if cut is None or not payloads:
        return None
    return b"".join(cut[0]), payloads


def _long_varint(data, pos, end, first):
    """(value, next position) of a tag or length of more than one byte, ``first`` its first byte
    (read already: one-byte ones, most, are decoded inline). Protobuf refuses tags and lengths of
    more than 5 bytes, so the split does too."""
    value = first & 0x7F
    for shift in (7, 14, 21, 28):
        if pos >= end:
            raise _Unexpected
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise _Unexpected


def _walk(data, start, end, name, tables, payloads, depth):
    """(pieces, their total size) of the message data[start:end] with payloads cut, or None
    where nothing was cut. One-byte tags and lengths, most of them, are decoded inline, and a
    WeightParams is cut in the same loop: the walk is a load's largest Python cost after planning,
    and calls per field made it 1.4x slower. ``data`` is a memoryview: its slices copy nothing."""
    weight_params = name == _WEIGHT_PARAMS
    if depth > MAX_DEPTH and not weight_params:       # a WeightParams holds no message to descend into
        raise _Unexpected
    children = _NO_CHILDREN if weight_params else tables[name]
    pieces, size, run, pos, seen, cuts = [], 0, start, start, None, []
    while pos < end:
        tag_start = pos
        tag = data[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = _long_varint(data, pos, end, tag)
            if tag > 0xFFFFFFFF:                      # past 32 bits
                raise _Unexpected
        if tag < 8:                                   # field number 0
            raise _Unexpected
        wire = tag & 7
        if weight_params:
            if tag >> 3 == MARKER:
                raise _Unexpected
            if wire != 2 and tag >> 3 in CUT_FIELDS:  # unpacked: protobuf merges it (see below)
                cuts.append((tag >> 3, wire, tag_start, pos, 0))
        if wire == 2:
            if pos >= end:
                raise _Unexpected
            length = data[pos]
            pos += 1
            if length >= 0x80:
                length, pos = _long_varint(data, pos, end, length)
                if length >= 1 << 31:
                    raise _Unexpected
            if pos + length > end:
                raise _Unexpected
            if weight_params and tag >> 3 in CUT_FIELDS:    # (number, wire, tag start, value start, length)
                cuts.append((tag >> 3, wire, tag_start, pos, length))
            child = children.get(tag >> 3)
            if child is not None:
                child_name, repeated = child
                if not repeated:                      # protobuf merges repeats: leave that to protobuf
                    seen = seen or set()
                    if tag >> 3 in seen:
                        raise _Unexpected
                    seen.add(tag >> 3)
                inner = _walk(data, pos, pos + length, child_name, tables, payloads, depth + 1)
                if inner is not None:                 # the tag re-encoded: an overlong one comes out short
                    head = varint_bytes(tag) + varint_bytes(inner[1])
                    pieces += [data[run:tag_start], head]
                    pieces += inner[0]
                    size += tag_start - run + len(head) + inner[1]
                    run = pos + length
            pos += length
        elif wire == 0:
            if pos < end and data[pos] < 0x80:
                pos += 1
                continue
            for pos in range(pos, min(end, pos + 10)):
                if data[pos] < 0x80:
                    break
            else:
                raise _Unexpected
            pos += 1
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:                                         # groups (3, 4) and invalid wire types
            raise _Unexpected
        if pos > end:                                 # past the message
            raise _Unexpected
    if weight_params:
        return _cut_weight_params(data, start, end, cuts, payloads)
    if run == start:
        return None
    pieces.append(data[run:end])
    return pieces, size + end - run


def _cut_weight_params(data, start, end, cuts, payloads):
    """(pieces, size) of a WeightParams with its payload fields (``cuts``, as the walk found
    them) replaced by markers, or None where protobuf must merge them."""
    numbers = [c[0] for c in cuts]
    if not cuts or len(set(numbers)) != len(numbers) or any(c[1] != 2 for c in cuts):
        return None                                   # unpacked floats, repeats: protobuf merges them
    if any(c[0] == 1 and c[4] % 4 for c in cuts):
        raise _Unexpected                             # not whole floats: protobuf names the error
    pieces, size, run = [], 0, start
    for number, _, tag_start, offset, length in cuts:
        marker = _MARKER_TAG + varint_bytes(len(payloads))
        pieces += [data[run:tag_start], marker]
        size += tag_start - run + len(marker)
        payloads.append((number, offset, length))
        run = offset + length
    pieces.append(data[run:end])
    return pieces, size + end - run


class Payloads:
    """The weights cut from one file, in ``data`` (the file's bytes, a numpy uint8 buffer this
    object owns): floatValue as float32 views of it, the byte fields as memoryviews.

    numpy's BLAS calls copy an unaligned operand at every prediction, and a float payload starts
    on a 4-byte boundary only by chance. So each unaligned one is moved 1-3 bytes down, over its
    own field header (already parsed into the structure), and the overwritten bytes are kept to
    give back the original file (``original``). No weight is copied anywhere else: fresh memory
    is what a load pays for most (first touch costs more than the copy), and this way a load
    touches the file's size once, where a whole parse touches it twice.
    """

    def __init__(self, data, table):
        self.data, self.table = data, table
        self.moved = {}                     # payload index -> (new offset, the bytes the move overwrote)
        self.copies = {}                    # payload index -> aligned copy (no room to move it)
        self._align_floats()
        data.flags.writeable = False

    def _align_floats(self):
        base, end_of_previous = self.data.ctypes.data, 0
        for i in sorted(range(len(self.table)), key=lambda i: self.table[i][1]):
            number, offset, length = self.table[i]
            shift = (base + offset) % 4 if number == 1 else 0
            if shift and offset - shift >= end_of_previous:
                to = offset - shift
                self.moved[i] = to, self.data[to:offset].tobytes()
                ctypes.memmove(base + to, base + offset, length)
                end_of_previous = to + length
            else:
                if shift:
                    self.copies[i] = np.frombuffer(self.data[offset:offset + length].tobytes(), "<f4")
                end_of_previous = offset + length

    def original(self):
        """The file's bytes as they were read (for the whole spec, parsed only when asked for)."""
        whole = self.data.copy()
        for i, (to, overwritten) in self.moved.items():
            _, offset, length = self.table[i]
            whole[offset:offset + length] = self.data[to:to + length]
            whole[to:offset] = np.frombuffer(overwritten, np.uint8)
        return whole

    def find(self, weight_params):
        """{field name: value} of the payloads cut from this WeightParams (empty: none was)."""
        found = {}
        for field in UnknownFieldSet(weight_params):
            if field.field_number == MARKER:
                index = field.data
                number, offset, length = self.table[index]
                name = CUT_FIELDS[number]
                if name != "floatValue":
                    found[name] = memoryview(self.data[offset:offset + length])
                elif index in self.copies:
                    found[name] = self.copies[index]
                else:
                    offset = self.moved[index][0] if index in self.moved else offset
                    found[name] = np.frombuffer(self.data, "<f4", length // 4, offset)
        return found
