#!/usr/bin/env python3
"""Make the test vectors of src/io/dicom/codec/jpeg_dct.rs (run once; the results are committed).

Usage, from the crate root (Python 3.11, PyPI imagecodecs with libjpeg-turbo 3 for 12-bit, and
DCMTK for `dcmcjpeg`/`dcmdjpeg`, which run IJG libjpeg 6b as GDCM does):

    apt-get install dcmtk
    .venv/bin/pip install numpy imagecodecs pylibjpeg pylibjpeg-libjpeg pydicom
    .venv/bin/python testdata/codecs/jpeg-dct/make.py

Each vector NAME is NAME.jpg, a codestream, and its reference decode by libjpeg-turbo
(imagecodecs.jpeg8_decode, default "islow" IDCT, no colour conversion), stored as NAME.u16:
raw little-endian uint16, pixel-interleaved. The 512x512 one (for timing) is too large for
that and has the FNV-1a 64 hash of those bytes instead. manifest.txt lists, for each vector:

    name width height components precision reference

where reference is NAME.u16 or fnv1a64:HEX; `#` starts a comment.

libjpeg-turbo encodes the images. The stream structures it cannot write are made by the
small lossless transcoder below, which decodes the Huffman-coded coefficients of a
libjpeg-turbo stream and codes the same coefficients again with optimal Huffman tables:
restart intervals (with fill bytes before some RST markers), one scan per component in any
order, equal sampling factors above 1 on every component (bigger MCUs), 16-bit DQT with
8-bit samples, Huffman tables in slots 2 and 3 and redefined between scans, SOF1 with 8-bit
samples, APPn/COM segments between scans. A transcoded stream must decode (libjpeg-turbo)
to exactly the samples of its source. dcmtk-ct12-32x24 comes from an IJG libjpeg 6b encoder
(DCMTK's dcmcjpeg), as 12-bit JPEG in DICOM archives usually does.

Every vector is also decoded by Thomas Richter's libjpeg (pylibjpeg-libjpeg), an independent
decoder with its own IDCT, and the greyscale ones, wrapped in DICOM, by DCMTK's dcmdjpeg; the
largest differences from libjpeg-turbo are printed and recorded in manifest.txt (Richter's is
not 0: only the islow IDCT is bit-exact with libjpeg).

gdcm-precision16.jpg is no vector: it is the codestream of
testdata/dicom-syntaxes/jpeg-extended-12bit/IM0001.dcm, which GDCM wrote with sample precision
16, outside T.81; the decoder must refuse it.
"""

import os
import subprocess
import sys
import tempfile

import imagecodecs
import numpy as np
import pydicom
from libjpeg import decode as richter_decode

HERE = os.path.dirname(os.path.abspath(__file__))
CRATE = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SYNTAXES = os.path.join(CRATE, "testdata", "dicom-syntaxes")
SERIES_SLICE = os.path.join(SYNTAXES, "explicit-le", "IM0001.dcm")
GDCM_DICOM = os.path.join(SYNTAXES, "jpeg-extended-12bit", "IM0001.dcm")


# ---------------------------------------------------------------------------------------------
# Images


def ct_slice(w, h, seed):
    """A CT-like 12-bit slice: air, a body with fat, soft tissue, lungs, bone and a metal dot,
    a 0-valued outside of the field of view, smooth shading and noise; values span 0..4095."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (x + 0.5) / w * 2 - 1
    y = (y + 0.5) / h * 2 - 1
    img = np.full((h, w), 24.0)  # air, -1000 HU with intercept -1024
    ell = lambda cx, cy, rx, ry: ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
    img[ell(0, 0.05, 0.86, 0.66)] = 930  # fat
    img[ell(0, 0.05, 0.8, 0.6)] = 1060 + 40 * x[ell(0, 0.05, 0.8, 0.6)]  # soft tissue, shaded
    for cx in (-0.38, 0.38):  # lungs with texture
        m = ell(cx, -0.02, 0.26, 0.38)
        img[m] = 180 + 60 * np.sin(9 * x[m]) * np.cos(7 * y[m])
    ring = ell(0, 0.45, 0.16, 0.13) & ~ell(0, 0.45, 0.1, 0.07)  # vertebra: cortical ring
    img[ring] = 2700
    img[ell(0, 0.45, 0.1, 0.07)] = 1450  # cancellous bone
    img[ell(0.45, 0.35, 0.06, 0.05)] = 3300  # dense bone
    img += rng.normal(0, 18, size=img.shape)
    img[ell(-0.2, 0.3, 0.035, 0.035)] = 4095  # metal, saturated
    img[~ell(0, 0, 1.05, 1.05)] = 0  # outside the reconstruction circle
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


def gray8(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 128 + 90 * np.sin(x / 5.0) * np.cos(y / 7.0) + rng.normal(0, 12, size=(h, w))
    img[h // 3 : h // 2, w // 4 : w // 2] = 250  # sharp edges
    img[: h // 6, -w // 5 :] = 0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def colour(w, h, channels, seed, maxval=255):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        p = 0.5 + 0.4 * np.sin(x / (4.0 + c) + c) * np.cos(y / (5.0 + 2 * c))
        p = p * maxval + rng.normal(0, maxval / 40, size=(h, w))
        p[(x // 8 + y // 8 + c) % 5 == 0] = maxval * (c % 2)  # edges
        planes.append(p)
    return np.clip(np.rint(np.stack(planes, axis=-1)), 0, maxval).astype(
        np.uint8 if maxval == 255 else np.uint16
    )


# ---------------------------------------------------------------------------------------------
# Lossless transcoder


def segments(data):
    """Yields (marker, body, offset after the segment) up to and including SOS; the scan data
    after SOS is the caller's."""
    assert data[:2] == b"\xff\xd8"
    pos = 2
    while pos < len(data):
        assert data[pos] == 0xFF, f"no marker at {pos}"
        while data[pos + 1] == 0xFF:
            pos += 1
        code = data[pos + 1]
        if code == 0xD9:
            yield code, b"", pos + 2
            return
        n = int.from_bytes(data[pos + 2 : pos + 4], "big")
        yield code, data[pos + 4 : pos + 2 + n], pos + 2 + n
        pos += 2 + n
        if code == 0xDA:
            pos = skip_scan(data, pos)


def skip_scan(data, pos):
    while not (data[pos] == 0xFF and data[pos + 1] not in (0x00, 0xFF)):
        pos += 1
    return pos


def huff_codes(bits, vals):
    """{(length, code): symbol} of a DHT table (T.81 Annex C)."""
    codes, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[(length, code)] = vals[k]
            code += 1
            k += 1
        code <<= 1
    return codes


class Parsed:
    """A libjpeg-turbo stream (sequential, Huffman, one scan, sampling 1x1) as coefficients."""

    def __init__(self, data):
        self.app = []  # APPn segments, kept (Adobe APP14 says "no colour transform")
        self.qt = {}
        huff = {}
        for code, body, end in segments(data):
            if 0xE0 <= code <= 0xEF:
                self.app.append((code, body))
            elif code == 0xDB:
                while body:
                    pq, tq = body[0] >> 4, body[0] & 15
                    n = 128 if pq else 64
                    raw = body[1 : 1 + n]
                    self.qt[tq] = [
                        int.from_bytes(raw[2 * i : 2 * i + 2], "big") if pq else raw[i]
                        for i in range(64)
                    ]
                    body = body[1 + n :]
            elif code == 0xC4:
                while body:
                    bits = list(body[1:17])
                    vals = list(body[17 : 17 + sum(bits)])
                    huff[(body[0] >> 4, body[0] & 15)] = huff_codes(bits, vals)
                    body = body[17 + sum(bits) :]
            elif code in (0xC0, 0xC1):
                self.precision = body[0]
                self.height = int.from_bytes(body[1:3], "big")
                self.width = int.from_bytes(body[3:5], "big")
                self.comps = [
                    (body[6 + 3 * i], body[7 + 3 * i], body[8 + 3 * i]) for i in range(body[5])
                ]
                assert all(hv == 0x11 for _, hv, _ in self.comps)
            elif code == 0xDA:
                ns = body[0]
                tables = [(huff[(0, b >> 4)], huff[(1, b & 15)]) for b in body[2 : 2 + 2 * ns : 2]]
                assert ns == len(self.comps)
                self.decode_scan(data, end, tables)
            elif code == 0xDD:
                assert int.from_bytes(body, "big") == 0

    def decode_scan(self, data, pos, tables):
        stop = skip_scan(data, pos)
        raw = data[pos:stop].replace(b"\xff\x00", b"\xff")
        bits = "".join(f"{b:08b}" for b in raw)
        at = 0

        def symbol(codes):
            nonlocal at
            for length in range(1, 17):
                s = codes.get((length, int(bits[at : at + length], 2)))
                if s is not None:
                    at += length
                    return s
            raise ValueError("bad code")

        def value(size):
            nonlocal at
            v = int(bits[at : at + size], 2)
            at += size
            return v if v >= 1 << (size - 1) else v - (1 << size) + 1

        bw, bh = -(-self.width // 8), -(-self.height // 8)
        self.blocks = [np.zeros((bh, bw, 64), np.int64) for _ in self.comps]  # zig-zag order
        pred = [0] * len(self.comps)
        for by in range(bh):
            for bx in range(bw):
                for c, (dc, ac) in enumerate(tables):
                    s = symbol(dc)
                    pred[c] += value(s) if s else 0
                    blk = self.blocks[c][by, bx]
                    blk[0] = pred[c]
                    k = 1
                    while k < 64:
                        rs = symbol(ac)
                        r, s = rs >> 4, rs & 15
                        if s == 0:
                            if r != 15:
                                break
                            k += 16
                            continue
                        k += r
                        blk[k] = value(s)
                        k += 1


def optimal_table(freq):
    """Huffman code lengths limited to 16 bits, one code point reserved (T.81 K.2)."""
    freq = dict(freq)
    freq[256] = 1  # reserved: no symbol gets the all-ones code
    size = {s: 0 for s in freq}
    nodes = [(f, s, [s]) for s, f in freq.items()]
    while len(nodes) > 1:
        nodes.sort(key=lambda n: (n[0], -n[1]))
        (f1, s1, m1), (f2, s2, m2) = nodes[0], nodes[1]
        for s in m1 + m2:
            size[s] += 1
        nodes = nodes[2:] + [(f1 + f2, max(s1, s2), m1 + m2)]
    bits = [0] * 33
    for s, n in size.items():
        bits[max(n, 1)] += 1
    for i in range(32, 16, -1):  # K.3: move codes longer than 16 bits up the tree
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
    i = 16
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1  # drop the reserved code point (it has the longest code)
    order = sorted((s for s in size if s != 256), key=lambda s: (size[s], s))
    return bits[1:17], order


class BitWriter:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, length, code):
        self.acc = (self.acc << length) | code
        self.n += length
        while self.n >= 8:
            self.n -= 8
            byte = (self.acc >> self.n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)  # byte stuffing
        self.acc &= (1 << self.n) - 1

    def flush(self):
        if self.n:
            self.put(8 - self.n, (1 << (8 - self.n)) - 1)  # pad with 1-bits (F.1.2.3)


def category(v):
    return abs(v).bit_length()


def segment(code, body):
    return bytes([0xFF, code]) + (len(body) + 2).to_bytes(2, "big") + bytes(body)


def transcode(
    src,
    *,
    sof=0xC1,
    sampling=(1, 1),
    scans=None,
    restart=None,
    tables=None,
    dqt16=False,
    fill_rst=False,
    comments=False,
):
    """Codes the coefficients of `src` (a Parsed) again.

    scans: component index lists, one per scan (default: one interleaved scan);
    restart: restart interval per scan (MCUs, 0 = none); tables: (DC, AC) slot per component;
    dqt16: 16-bit quantisation table entries; fill_rst: 0xFF fill bytes before odd RST markers
    and before EOI; comments: COM and APP15 segments between the scans."""
    nc = len(src.comps)
    scans = scans or [list(range(nc))]
    restart = restart or [0] * len(scans)
    tables = tables or [(0, 0)] * nc
    h, v = sampling
    out = bytearray(b"\xff\xd8")
    for code, body in src.app:
        out += segment(code, body)
    dqt = bytearray()
    for tq, q in sorted(src.qt.items()):
        dqt.append((0x10 if dqt16 else 0) | tq)
        for x in q:
            dqt += x.to_bytes(2, "big") if dqt16 else bytes([x])
    out += segment(0xDB, dqt)
    sof_body = (
        bytearray([src.precision]) + src.height.to_bytes(2, "big") + src.width.to_bytes(2, "big")
    )
    sof_body.append(nc)
    for cid, _, tq in src.comps:
        sof_body += bytes([cid, (h << 4) | v, tq])
    out += segment(sof, sof_body)
    bw, bh = -(-src.width // 8), -(-src.height // 8)
    for si, comps in enumerate(scans):
        # The MCUs of this scan as lists of (component, block or None for padding).
        if len(comps) == 1:
            mcus = [
                [(comps[0], src.blocks[comps[0]][by, bx])] for by in range(bh) for bx in range(bw)
            ]
        else:
            mx, my = -(-src.width // (8 * h)), -(-src.height // (8 * v))
            mcus = []
            for y in range(my):
                for x in range(mx):
                    mcu = []
                    for c in comps:
                        for dy in range(v):
                            for dx in range(h):
                                by, bx = y * v + dy, x * h + dx
                                inside = by < bh and bx < bw
                                mcu.append((c, src.blocks[c][by, bx] if inside else None))
                    mcus.append(mcu)
        # Symbols first (for the optimal tables), then the bits.
        ri = restart[si]
        events = []
        pred = {c: 0 for c in comps}
        for i, mcu in enumerate(mcus):
            if ri and i and i % ri == 0:
                events.append(("rst", (i // ri - 1) % 8))
                pred = {c: 0 for c in comps}
            for c, blk in mcu:
                blk = np.zeros(64, np.int64) if blk is None else blk
                dc, ac = tables[c]
                diff = int(blk[0]) - pred[c]
                pred[c] = int(blk[0])
                s = category(diff)
                events.append(("dc", dc, s, s, diff + ((1 << s) - 1 if diff < 0 else 0)))
                last = max([k for k in range(1, 64) if blk[k]], default=0)
                run = 0
                for k in range(1, last + 1):
                    val = int(blk[k])
                    if val == 0:
                        run += 1
                        continue
                    while run >= 16:
                        events.append(("ac", ac, 0xF0, 0, 0))
                        run -= 16
                    s = category(val)
                    events.append(
                        ("ac", ac, (run << 4) | s, s, val + ((1 << s) - 1 if val < 0 else 0))
                    )
                    run = 0
                if last < 63:
                    events.append(("ac", ac, 0x00, 0, 0))
        freq = {}
        for e in events:
            if e[0] != "rst":
                freq.setdefault((e[0], e[1]), {}).setdefault(e[2], 0)
                freq[(e[0], e[1])][e[2]] += 1
        dht = bytearray()
        codes = {}
        for (kind, slot), f in sorted(freq.items()):
            bits, vals = optimal_table(f)
            dht.append((0 if kind == "dc" else 0x10) | slot)
            dht += bytes(bits) + bytes(vals)
            codes[(kind, slot)] = {s: (ln, c) for (ln, c), s in huff_codes(bits, vals).items()}
        if comments and si > 0:
            out += segment(0xFE, b"between scans")
            out += segment(0xEF, b"APP15")
        out += segment(0xDD, ri.to_bytes(2, "big"))
        out += segment(0xC4, dht)
        sos = bytearray([len(comps)])
        for c in comps:
            sos += bytes([src.comps[c][0], (tables[c][0] << 4) | tables[c][1]])
        sos += bytes([0, 63, 0])
        out += segment(0xDA, sos)
        w = BitWriter()
        for e in events:
            if e[0] == "rst":
                w.flush()
                if fill_rst and e[1] % 2:
                    w.out += b"\xff\xff"
                w.out += bytes([0xFF, 0xD0 + e[1]])
                continue
            ln, c = codes[(e[0], e[1])][e[2]]
            w.put(ln, c)
            if e[3]:
                w.put(e[3], e[4])
        w.flush()
        out += w.out
    if fill_rst:
        out += b"\xff\xff"
    out += b"\xff\xd9"
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Vectors


def turbo_decode(jpg, components):
    if components == 1:
        return imagecodecs.jpeg8_decode(jpg)
    space = {3: "RGB", 4: "CMYK"}[components]
    return imagecodecs.jpeg8_decode(jpg, colorspace=space, outcolorspace=space)


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def dcmtk_decode(jpg, ref):
    """DCMTK's (IJG libjpeg 6b) decode of a greyscale codestream wrapped in DICOM."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.51"
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = ref.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    prec = 12 if ref.dtype == np.uint16 else 8
    ds.BitsAllocated = 16 if prec == 12 else 8
    ds.BitsStored = prec
    ds.HighBit = prec - 1
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([jpg])
    ds["PixelData"].VR = "OB"
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "a.dcm"), os.path.join(tmp, "b.dcm")
        ds.save_as(a, enforce_file_format=True)
        subprocess.run(["dcmdjpeg", a, b], check=True)
        return pydicom.dcmread(b).pixel_array


def main():
    for f in os.listdir(HERE):
        if f.endswith((".jpg", ".u16")) or f == "manifest.txt":
            os.remove(os.path.join(HERE, f))
    vectors = []  # (name, jpg, components, precision, store_u16)

    def add(name, jpg, components, precision, store=True):
        vectors.append((name, jpg, components, precision, store))

    def check_transcode(jpg, src_jpg, components):
        a, b = turbo_decode(jpg, components), turbo_decode(src_jpg, components)
        assert np.array_equal(a, b), "transcoded stream decodes differently"
        return jpg

    ct128 = ct_slice(128, 128, 1)
    add("ct12-q75-128x128", imagecodecs.jpeg8_encode(ct128, level=75, bitspersample=12), 1, 12)
    add("ct12-q95-128x128", imagecodecs.jpeg8_encode(ct128, level=95, bitspersample=12), 1, 12)
    ct512 = ct_slice(512, 512, 2)
    add(
        "ct12-q75-512x512",
        imagecodecs.jpeg8_encode(ct512, level=75, bitspersample=12),
        1,
        12,
        False,
    )
    add(
        "ct12-q90-17x5",
        imagecodecs.jpeg8_encode(ct_slice(17, 5, 3), level=90, bitspersample=12),
        1,
        12,
    )

    g = gray8(64, 48, 4)
    base = imagecodecs.jpeg8_encode(g, level=85)
    assert base[base.index(b"\xff\xc0") + 4] == 8, "expected SOF0"
    add("gray8-baseline-64x48", base, 1, 8)
    add("gray8-q90-17x5", imagecodecs.jpeg8_encode(gray8(17, 5, 5), level=90), 1, 8)
    # SOF1 with 8-bit samples, 16-bit DQT entries, tables in slots 3 (DC) and 2 (AC), a
    # single component declared 2x2 (a one-component scan ignores it), COM/APP15, fill bytes.
    add(
        "gray8-extended-dqt16-64x48",
        check_transcode(
            transcode(
                Parsed(base), sof=0xC1, sampling=(2, 2), tables=[(3, 2)], dqt16=True, fill_rst=True
            ),
            base,
            1,
        ),
        1,
        8,
    )

    # 12-bit with a restart interval of 4 blocks (9 blocks per row, 45 in all: the intervals
    # cross rows and the last has 1 block) and fill bytes before odd RST markers.
    ct = imagecodecs.jpeg8_encode(ct_slice(72, 40, 6), level=90, bitspersample=12)
    add(
        "ct12-restart4-72x40",
        check_transcode(transcode(Parsed(ct), restart=[4], fill_rst=True), ct, 1),
        1,
        12,
    )

    rgb = imagecodecs.jpeg8_encode(
        colour(48, 32, 3, 7), level=90, colorspace="RGB", outcolorspace="RGB"
    )
    add("rgb8-444-48x32", rgb, 3, 8)
    # One scan per component in the order 2, 0, 1, each with its own restart interval (5, none,
    # 3) and its own Huffman tables redefined in the same slots; COM/APP15 between the scans.
    add(
        "rgb8-scans-restart-48x32",
        check_transcode(
            transcode(
                Parsed(rgb),
                scans=[[2], [0], [1]],
                restart=[5, 0, 3],
                tables=[(0, 1), (1, 0), (0, 0)],
                comments=True,
            ),
            rgb,
            3,
        ),
        3,
        8,
    )
    # Equal sampling factors above 1 on every component give bigger interleaved MCUs (at most
    # 10 blocks, so not 2x2 with 3 components): 3x1 here, 24x8 MCUs of 3 blocks per component,
    # with padding blocks on the right (40 is 5 blocks, 2 MCUs); restart every 2 MCUs.
    rgb2 = imagecodecs.jpeg8_encode(
        colour(40, 24, 3, 8), level=90, colorspace="RGB", outcolorspace="RGB"
    )
    add(
        "rgb8-h3v1-restart2-40x24",
        check_transcode(
            transcode(Parsed(rgb2), sampling=(3, 1), restart=[2], tables=[(0, 0), (1, 1), (1, 1)]),
            rgb2,
            3,
        ),
        3,
        8,
    )
    rgb12 = imagecodecs.jpeg8_encode(
        colour(24, 16, 3, 9, maxval=4095),
        level=90,
        bitspersample=12,
        colorspace="RGB",
        outcolorspace="RGB",
    )
    add(
        "rgb12-restart3-24x16",
        check_transcode(
            transcode(Parsed(rgb12), restart=[3], tables=[(0, 0), (2, 3), (3, 2)]), rgb12, 3
        ),
        3,
        12,
    )
    # Four components sampled 1x2: 8x16 MCUs, a padding block row at the bottom (20 is 3 blocks).
    cmyk = imagecodecs.jpeg8_encode(
        colour(24, 20, 4, 10), level=90, colorspace="CMYK", outcolorspace="CMYK"
    )
    add("cmyk8-24x20", cmyk, 4, 8)
    add(
        "cmyk8-h1v2-restart1-24x20",
        check_transcode(
            transcode(Parsed(cmyk), sampling=(1, 2), restart=[1], fill_rst=True), cmyk, 4
        ),
        4,
        8,
    )

    # A 12-bit codestream by IJG libjpeg 6b, as found in DICOM archives: DCMTK's
    # `dcmcjpeg --encode-extended` of a slice of the DICOM test series (it applies the
    # rescale intercept, so the stored values move up by 1024).
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ee.dcm")
        subprocess.run(["dcmcjpeg", "--encode-extended", SERIES_SLICE, out], check=True)
        ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51"
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    frame = frame[: frame.rindex(b"\xff\xd9") + 2]  # fragments are padded to even lengths
    add(f"dcmtk-ct12-{ds.Columns}x{ds.Rows}", frame, 1, 12)

    # Not a vector: the "JPEG Extended" codestream GDCM wrote into testdata/dicom-syntaxes has
    # sample precision 16, outside T.81 (and refused by libjpeg-turbo, Richter's libjpeg and
    # DCMTK); the decoder must refuse it too.
    ds = pydicom.dcmread(GDCM_DICOM)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    with open(os.path.join(HERE, "gdcm-precision16.jpg"), "wb") as f:
        f.write(frame[: frame.rindex(b"\xff\xd9") + 2])

    manifest = [
        "# JPEG DCT test vectors: made by make.py (see there); reference = libjpeg-turbo "
        + imagecodecs.jpeg8_version(),
        "# name width height components precision reference",
    ]
    total = 0
    for name, jpg, components, precision, store in vectors:
        ref = turbo_decode(jpg, components)
        height, width = ref.shape[:2]
        raw = ref.astype("<u2").tobytes()
        richter = np.asarray(richter_decode(jpg)).reshape(ref.shape)
        diff = int(np.abs(richter.astype(np.int64) - ref.astype(np.int64)).max())
        note = f"# {name}: {len(jpg)} bytes, max |libjpeg-turbo - Richter libjpeg| = {diff}"
        if components == 1:
            dcmtk = dcmtk_decode(jpg, ref)
            d = int(np.abs(dcmtk.astype(np.int64) - ref.astype(np.int64)).max())
            note += f", max |libjpeg-turbo - DCMTK| = {d}"
        print(note[2:])
        with open(os.path.join(HERE, name + ".jpg"), "wb") as f:
            f.write(jpg)
        total += len(jpg)
        if store:
            with open(os.path.join(HERE, name + ".u16"), "wb") as f:
                f.write(raw)
            total += len(raw)
            reference = name + ".u16"
        else:
            reference = f"fnv1a64:{fnv1a64(raw):016x}"
        manifest.append(note)
        manifest.append(f"{name} {width} {height} {components} {precision} {reference}")
    with open(os.path.join(HERE, "manifest.txt"), "w") as f:
        f.write("\n".join(manifest) + "\n")
    print(f"{len(vectors)} vectors, {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
