"""Minimal writers for the vendor formats emlive reads but cannot write, so tests make real files of them.

* :func:`write_dm` - Gatan DigitalMicrograph DM3 (version 3) and DM4 (version 4) tag files, little-endian data.
  Covered: the file header (version; root length, 4 bytes in DM3, 8 in DM4; byte order = 1), tag groups
  (sorted/open flags, tag count), tag entries (type 20 = group, 21 = data; big-endian label length and label; in
  DM4 an 8-byte entry length before the group or the ``%%%%`` data marker), data tags with their big-endian
  type-info list (a single number: [type]; an array: [20, element type, count]), values little-endian; the
  ``ImageList`` tree with per-image ``ImageData`` (``Calibrations.Dimension.<n>`` {Origin, Scale, Units (uint16
  characters)}, ``Data`` (the pixels, x fastest), ``DataType``, ``Dimensions.<n>``, ``PixelDepth``), an optional
  RGBA thumbnail as the first image (as DigitalMicrograph writes), and the 8/16-byte zero trailer. Not covered:
  strings, structs, ``ImageTags`` content, 4-D data, big-endian files.
* :func:`write_ser` - FEI/Thermo TIA series (.ser), versions 0x0210 (32-bit offsets) and 0x0220 (64-bit). Covered:
  the header (byte order 0x4949, series ID 0x0197, version, data type 0x4122 = 2-D images, tag type 0x4152 = time
  only, element counts, offset-array offset, one series dimension with calibration, description and units), one
  2-D data element per frame (x and y calibrations, data type, array size, pixels stored bottom row first), time
  tags, and the data/tag offset arrays. Not covered: 1-D spectra, 2-D position tags, the companion .emi file.
* :func:`write_velox` - the subset of Thermo Fisher Velox EMD (HDF5) that emlive reads: ``/Data/Image/<id>/Data``
  stored (H, W, T) and ``Metadata`` (uint8 JSON per frame, ``BinaryResult.PixelSize`` in metres).

Berkeley EMD files are written with ncempy's own ``emd.emdWriter`` in the tests.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# DigitalMicrograph image data types (ImageData.DataType) and tag element types for the pixel array.
_DM_IMAGE_TYPE = {
    np.dtype("int16"): 1,
    np.dtype("float32"): 2,
    np.dtype("uint8"): 6,
    np.dtype("int32"): 7,
    np.dtype("int8"): 9,
    np.dtype("uint16"): 10,
    np.dtype("uint32"): 11,
    np.dtype("float64"): 12,
}
_DM_TAG_TYPE = {
    np.dtype("int16"): 2,
    np.dtype("int32"): 3,
    np.dtype("uint16"): 4,
    np.dtype("uint32"): 5,
    np.dtype("float32"): 6,
    np.dtype("float64"): 7,
    np.dtype("uint8"): 10,  # octet
    np.dtype("int8"): 10,
}


class _DM:
    def __init__(self, version: int) -> None:
        if version not in (3, 4):
            raise ValueError("DM version must be 3 or 4")
        self.version = version
        self.count = ">I" if version == 3 else ">Q"

    def _n(self, value: int) -> bytes:
        return struct.pack(self.count, value)

    def group(self, entries: list[bytes]) -> bytes:
        """Group body: sorted and open flags, tag count, entries."""
        return bytes((1, 0)) + self._n(len(entries)) + b"".join(entries)

    def entry(self, label: str, kind: int, body: bytes) -> bytes:
        name = label.encode("latin-1")
        head = bytes((kind,)) + struct.pack(">H", len(name)) + name
        if self.version == 4:
            head += struct.pack(">Q", len(body))
        return head + body

    def group_entry(self, label: str, entries: list[bytes]) -> bytes:
        return self.entry(label, 20, self.group(entries))

    def value(self, label: str, tag_type: int, fmt: str, value: float) -> bytes:
        body = b"%%%%" + self._n(1) + self._n(tag_type) + struct.pack("<" + fmt, value)
        return self.entry(label, 21, body)

    def array(self, label: str, element_type: int, count: int, payload: bytes) -> bytes:
        body = b"%%%%" + self._n(3) + self._n(20) + self._n(element_type) + self._n(count) + payload
        return self.entry(label, 21, body)

    def units(self, text: str) -> bytes:
        chars = np.array([ord(c) for c in text], dtype="<u2")
        return self.array("Units", 4, len(text), chars.tobytes())


def _dm_image(dm: _DM, data: np.ndarray, data_type: int, tag_type: int, scales: list[tuple[float, str]]) -> bytes:
    """One ImageList entry: ``data`` in C order (..., y, x); DM dimensions run x, y, z."""
    dims = list(data.shape[::-1])
    calibrations = [
        dm.group_entry(
            "",
            [dm.value("Origin", 6, "f", 0.0), dm.value("Scale", 6, "f", scale), dm.units(unit)],
        )
        for scale, unit in scales
    ]
    image_data = [
        dm.group_entry("Calibrations", [dm.group_entry("Dimension", calibrations)]),
        dm.array("Data", tag_type, int(data.size), np.ascontiguousarray(data).tobytes()),
        dm.value("DataType", 3, "i", data_type),
        dm.group_entry("Dimensions", [dm.value("", 5, "I", d) for d in dims]),
        dm.value("PixelDepth", 5, "I", data.dtype.itemsize),
    ]
    return dm.group_entry("", [dm.group_entry("ImageData", image_data), dm.group_entry("ImageTags", [])])


def write_dm(
    path: str | Path,
    data: np.ndarray,
    pixel_size_nm: float = 1.0,
    *,
    version: int = 4,
    thumbnail: bool = True,
    unit: str = "nm",
) -> Path:
    """Write a 2-D image or a 3-D (T, H, W) stack as a DM3/DM4 file; the pixel size is stored in ``unit``."""
    dm = _DM(version)
    arr = np.asarray(data)
    dtype = arr.dtype.newbyteorder("=")
    arr = arr.astype(dtype.newbyteorder("<"))
    scale = pixel_size_nm * {"nm": 1.0, "µm": 1e-3, "Å": 10.0}[unit]
    scales = [(scale, unit), (scale, unit)] + ([(1.0, "s")] if arr.ndim == 3 else [])
    images = []
    if thumbnail:
        thumb = np.full((8, 8), 0xFF808080, dtype="<u4")
        images.append(_dm_image(dm, thumb, 23, 5, [(1.0, ""), (1.0, "")]))
    images.append(_dm_image(dm, arr, _DM_IMAGE_TYPE[dtype], _DM_TAG_TYPE[dtype], scales))
    root = dm.group([dm.group_entry("ImageList", images)])
    trailer = bytes(8 if version == 3 else 16)
    if version == 3:
        header = struct.pack(">III", 3, len(root) + len(trailer), 1)
    else:
        header = struct.pack(">IQI", 4, len(root) + len(trailer), 1)
    out = Path(path)
    out.write_bytes(header + root + trailer)
    return out


def write_ser(path: str | Path, frames: np.ndarray, pixel_size_m: float = 1e-9, *, version: int = 0x0220) -> Path:
    """Write a (T, H, W) stack as a TIA series of 2-D elements; rows are stored bottom-up as TIA does."""
    stack = np.asarray(frames)
    if stack.ndim == 2:
        stack = stack[None]
    codes = {"u1": 1, "u2": 2, "u4": 3, "i1": 4, "i2": 5, "i4": 6, "f4": 7, "f8": 8}
    code = codes[stack.dtype.kind + str(stack.dtype.itemsize)]
    off_fmt = "<i" if version == 0x0210 else "<q"
    n, h, w = stack.shape
    desc, units = b"Number", b""
    dimension = (
        struct.pack("<i", n)
        + struct.pack("<dd", 0.0, 1.0)
        + struct.pack("<i", 0)
        + struct.pack("<i", len(desc))
        + desc
        + struct.pack("<i", len(units))
        + units
    )
    head_wo_offset = struct.pack("<hhh", 0x4949, 0x0197, version) + struct.pack("<iiii", 0x4122, 0x4152, n, n)
    head_len = len(head_wo_offset) + struct.calcsize(off_fmt) + 4 + len(dimension)
    body = bytearray()
    data_offsets = []
    for frame in stack:
        data_offsets.append(head_len + len(body))
        element = struct.pack("<ddi", 0.0, pixel_size_m, 0) + struct.pack("<ddi", 0.0, pixel_size_m, 0)
        element += struct.pack("<h", code) + struct.pack("<ii", w, h)
        element += np.ascontiguousarray(frame[::-1]).astype(stack.dtype.newbyteorder("<")).tobytes()
        body += element
    tag_offsets = []
    for t in range(n):
        tag_offsets.append(head_len + len(body))
        body += struct.pack("<ii", 0x4152, 1000 + t)
    offset_array_offset = head_len + len(body)
    for off in data_offsets + tag_offsets:
        body += struct.pack(off_fmt, off)
    header = head_wo_offset + struct.pack(off_fmt, offset_array_offset) + struct.pack("<i", 1) + dimension
    out = Path(path)
    out.write_bytes(header + bytes(body))
    return out


def write_velox(path: str | Path, frames: np.ndarray, pixel_size_m: float = 1e-9) -> Path:
    """Write a (T, H, W) stack the way Velox stores images: ``/Data/Image/<id>/Data`` as (H, W, T)."""
    import h5py

    stack = np.asarray(frames)
    if stack.ndim == 2:
        stack = stack[None]
    meta = {
        "BinaryResult": {
            "PixelSize": {"width": str(pixel_size_m), "height": str(pixel_size_m)},
            "PixelUnitX": "m",
            "PixelUnitY": "m",
            "Detector": "BM-Ceta",
        }
    }
    text = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    metadata = np.zeros((len(text) + 16, stack.shape[0]), dtype=np.uint8)
    metadata[: len(text), :] = text[:, None]
    with h5py.File(path, "w") as f:
        group = f.create_group("Data/Image/0123456789abcdef")
        group.create_dataset("Data", data=np.moveaxis(stack, 0, -1), chunks=(stack.shape[1], stack.shape[2], 1))
        group.create_dataset("Metadata", data=metadata)
        f.create_group("Version")
    return Path(path)
