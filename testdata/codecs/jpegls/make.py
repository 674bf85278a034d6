#!/usr/bin/env python3
"""Make the JPEG-LS test vectors in this folder (run once; the results are committed).

Each vector is NAME.jls, a JPEG-LS codestream (SOI ... EOI), and its reference decode:
NAME.u16, raw little-endian uint16 samples, pixel-interleaved (the layout of codec::Frame), or,
for the 512x512 slice that would not fit the folder's size budget, the FNV-1a 64 hash of those
bytes. manifest.tsv lists every vector: name, width, height, components, precision, and the
reference ("u16" or "fnv1a64:<hex>"). The dicom-IM000N.u16 files are the reference decodes of
the codestreams in ../../dicom-syntaxes/jpegls-lossless/IM000N.dcm (written by GDCM).

Usage, from the crate root:

    .venv/bin/pip install numpy imagecodecs pyjpegls pylibjpeg pylibjpeg-libjpeg pydicom
    .venv/bin/python testdata/codecs/jpegls/make.py

Encoders: CharLS, through pyjpegls (which can set the precision and the interleave mode) and
imagecodecs (which adds a SPIFF header and an explicit LSE segment). CharLS cannot write
restart markers or custom coding parameters, so the vectors named restart_* and lse_* come from
the small JPEG-LS encoder below (one component, T.87 Annex A followed step by step).

Every reference decode is libjpeg's (pylibjpeg-libjpeg) and must agree sample for sample
with CharLS's, an independent decoder, and for the vectors of our encoder with the encoder's
own reconstruction; a lossless vector must also equal its source image, a near-lossless one
stay within NEAR of it. Two quirks of these decoders shape the checks (see `save`): libjpeg
mis-decodes an LSE segment with a field of 0 ("the default"), CharLS a MAXVAL that is not
2^n - 1, so lse_maxval_near2_restart is checked without CharLS. The images are synthetic and
seeded: a rerun writes the same files.
"""
import os

import imagecodecs
import jpeg_ls
import libjpeg
import numpy as np
import pydicom
from pydicom.encaps import generate_frames

HERE = os.path.dirname(os.path.abspath(__file__))
DICOM = os.path.join(HERE, "..", "..", "dicom-syntaxes", "jpegls-lossless")


def ct_slice(height, width, seed, noise=4.0, metal=True):
    """A CT-like slice, stored as HU + 1024: air outside the body (one constant value, so run
    mode dominates there), soft tissue with smooth shading and noise, lungs, a bone ring with
    sharp edges, a constant couch, and a metal insert near the top of the 16-bit range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = height / 2, width / 2
    r = lambda ry, rx, oy=0.0, ox=0.0: ((y - cy - oy) / ry) ** 2 + ((x - cx - ox) / rx) ** 2
    hu = np.full((height, width), -1024.0)
    body = r(0.36 * height, 0.44 * width) <= 1
    hu[body] = 40 + 25 * np.sin(x[body] / (0.1 * width)) * np.cos(y[body] / (0.13 * height))
    hu[body & (r(0.36 * height, 0.44 * width) > 0.85)] = -100  # fat
    for ox in (-0.17, 0.17):
        lung = r(0.2 * height, 0.12 * width, 0, ox * width) <= 1
        hu[lung] = -850 + 30 * (y[lung] - cy) / height
    bone = (r(0.3 * height, 0.38 * width) <= 1) & (r(0.28 * height, 0.36 * width) > 1)
    hu[bone] = 1200
    hu += np.where(body, rng.normal(0, noise, hu.shape), 0)
    hu[np.abs(y - 0.88 * height) < max(1, 0.02 * height)] = -400  # couch, constant
    img = np.clip(np.round(hu + 1024), 0, 65535)
    if metal:
        img[r(0.03 * height, 0.03 * width, -0.2 * height, 0.05 * width) <= 1] = 60000
    return img.astype(np.uint16)


J = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,
     4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12, 13, 14, 15]


def default_thresholds(maxval, near):
    """C.2.4.1.1.1."""
    clamp = lambda i, j: j if i > maxval or i < j else i
    if maxval >= 128:
        f = (min(maxval, 4095) + 128) // 256
        t1 = clamp(f * (3 - 2) + 2 + 3 * near, near + 1)
        t2 = clamp(f * (7 - 3) + 3 + 5 * near, t1)
        return t1, t2, clamp(f * (21 - 4) + 4 + 7 * near, t2)
    f = 256 // (maxval + 1)
    t1 = clamp(max(2, 3 // f + 3 * near), near + 1)
    t2 = clamp(max(3, 7 // f + 5 * near), t1)
    return t1, t2, clamp(max(4, 21 // f + 7 * near), t2)


class BitWriter:
    """MSB first, with a 0 bit stuffed after each 0xFF byte (A.1)."""

    def __init__(self):
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, value, count):
        for i in range(count - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == (7 if self.out and self.out[-1] == 0xFF else 8):
                self.out.append(self.acc)
                self.acc, self.n = 0, 0

    def finish(self):
        while self.n:  # pad the last byte with zeros
            self.put(0, 1)
        if self.out and self.out[-1] == 0xFF:
            self.out.append(0)  # a marker must not follow 0xFF directly
        return bytes(self.out)


def encode_ls(img, precision, near=0, maxval=0, t1=0, t2=0, t3=0, reset=0, restart=0,
              explicit=False):
    """Encode one component (ILV 0) with the given presets (0 = default), written to an LSE
    type 1 segment unless all are 0, and an optional restart interval in lines. Returns the
    codestream, the same with every preset written out (`explicit`) and the image a decoder
    must reconstruct."""
    h, w = img.shape
    MAXVAL = maxval or (1 << precision) - 1
    d1, d2, d3 = default_thresholds(MAXVAL, near)
    T1, T2, T3, RESET = t1 or d1, t2 or d2, t3 or d3, reset or 64
    RANGE = (MAXVAL + 2 * near) // (2 * near + 1) + 1
    qbpp = (RANGE - 1).bit_length()
    bpp = max(2, MAXVAL.bit_length())
    LIMIT = 2 * (bpp + max(8, bpp))
    step = 2 * near + 1

    def quantize_gradient(d):
        for q, bound in ((-4, -T3), (-3, -T2), (-2, -T1)):
            if d <= bound:
                return q
        if d < -near:
            return -1
        if d <= near:
            return 0
        return 1 if d < T1 else 2 if d < T2 else 3 if d < T3 else 4

    def quantize_error(e):  # A.4.4
        return (e + near) // step if e > 0 else -((near - e) // step)

    def mod_range(e):
        if e < 0:
            e += RANGE
        return e - RANGE if e >= (RANGE + 1) // 2 else e

    def reconstruct(px, e):
        v = px + e * step
        if v < -near:
            v += RANGE * step
        elif v > MAXVAL + near:
            v -= RANGE * step
        return min(max(v, 0), MAXVAL)

    def golomb(bits, m, k, limit):
        if (m >> k) < limit - qbpp - 1:
            bits.put(1, (m >> k) + 1)
            bits.put(m & ((1 << k) - 1), k)
        else:
            bits.put(1, limit - qbpp)
            bits.put(m - 1, qbpp)

    out = np.zeros((h, w), np.int64)
    data = bytearray()
    for start in range(0, h, restart or h):
        if start:
            data += bytes([0xFF, 0xD0 + (start // restart - 1) % 8])
        a0 = max(2, (RANGE + 32) // 64)
        A, B, C, N = [a0] * 367, [0] * 365, [0] * 365, [1] * 367
        Nn = [0, 0]
        RUNindex = 0
        bits = BitWriter()
        prev = [0] * (w + 2)
        for yy in range(start, min(h, start + (restart or h))):
            cur = [0] * (w + 2)
            prev[w + 1] = prev[w]
            cur[0] = prev[1]
            x = 1
            while x <= w:
                ra, rb, rc, rd = cur[x - 1], prev[x], prev[x - 1], prev[x + 1]
                q1, q2, q3 = (quantize_gradient(d) for d in (rd - rb, rb - rc, rc - ra))
                if q1 or q2 or q3:  # regular mode, A.3 to A.6
                    q = (q1 * 9 + q2) * 9 + q3
                    sign = -1 if q < 0 else 1
                    q = abs(q)
                    lo, hi = min(ra, rb), max(ra, rb)
                    px = lo if rc >= hi else hi if rc <= lo else ra + rb - rc
                    px = min(max(px + sign * C[q], 0), MAXVAL)
                    e = mod_range(quantize_error(sign * (int(img[yy, x - 1]) - px)))
                    cur[x] = reconstruct(px, sign * e)
                    k = 0
                    while (N[q] << k) < A[q]:
                        k += 1
                    if near == 0 and k == 0 and 2 * B[q] <= -N[q]:
                        m = 2 * e + 1 if e >= 0 else -2 * (e + 1)
                    else:
                        m = 2 * e if e >= 0 else -2 * e - 1
                    golomb(bits, m, k, LIMIT)
                    B[q] += e * step
                    A[q] += abs(e)
                    if N[q] == RESET:
                        A[q] >>= 1
                        B[q] >>= 1
                        N[q] >>= 1
                    N[q] += 1
                    if B[q] <= -N[q]:
                        B[q] += N[q]
                        C[q] = max(C[q] - 1, -128)
                        B[q] = max(B[q], -N[q] + 1)
                    elif B[q] > 0:
                        B[q] -= N[q]
                        C[q] = min(C[q] + 1, 127)
                        B[q] = min(B[q], 0)
                    x += 1
                    continue
                # run mode, A.7
                count = 0
                while x <= w and abs(int(img[yy, x - 1]) - ra) <= near:
                    cur[x] = ra
                    count += 1
                    x += 1
                while count >= (1 << J[RUNindex]):
                    bits.put(1, 1)
                    count -= 1 << J[RUNindex]
                    RUNindex = min(RUNindex + 1, 31)
                if x > w:
                    if count:
                        bits.put(1, 1)
                    continue
                bits.put(0, 1)
                bits.put(count, J[RUNindex])
                rb = prev[x]
                ritype = 1 if abs(ra - rb) <= near else 0
                px = ra if ritype else rb
                sign = -1 if ritype == 0 and ra > rb else 1
                e = mod_range(quantize_error(sign * (int(img[yy, x - 1]) - px)))
                cur[x] = reconstruct(px, sign * e)
                q = 365 + ritype
                temp = A[q] + (N[q] >> 1) * ritype
                k = 0
                while (N[q] << k) < temp:
                    k += 1
                nn = Nn[ritype]
                mp = (k == 0 and e > 0 and 2 * nn < N[q]) or (e < 0 and (2 * nn >= N[q] or k != 0))
                em = 2 * abs(e) - ritype - int(mp)
                golomb(bits, em, k, LIMIT - J[RUNindex] - 1)
                if e < 0:
                    Nn[ritype] += 1
                A[q] += (em + 1 - ritype) >> 1
                if N[q] == RESET:
                    A[q] >>= 1
                    N[q] >>= 1
                    Nn[ritype] >>= 1
                N[q] += 1
                RUNindex = max(RUNindex - 1, 0)
                x += 1
            out[yy] = cur[1 : w + 1]
            prev = cur
        data += bits.finish()

    be = lambda v: v.to_bytes(2, "big")
    head = b"\xff\xd8"
    head += b"\xff\xf7" + be(11) + bytes([precision]) + be(h) + be(w) + b"\x01\x01\x11\x00"
    lse = lambda *v: b"\xff\xf8" + be(13) + b"\x01" + b"".join(map(be, v))
    tail = b"\xff\xdd" + be(4) + be(restart) if restart else b""
    tail += b"\xff\xda" + be(8) + b"\x01\x01\x00" + bytes([near, 0, 0]) + data + b"\xff\xd9"
    presets = lse(maxval, t1, t2, t3, reset) if maxval or t1 or t2 or t3 or reset else b""
    resolved = lse(MAXVAL, T1, T2, T3, RESET)
    return head + presets + tail, head + resolved + tail, out.astype(np.uint16)


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


manifest = []


def save(name, jls, precision, source, near=0, expect=None, store="u16", twin=None,
         use_charls=True):
    """Decode `jls` with CharLS and libjpeg, check them against each other and against the
    source image, and write NAME.jls and the reference. libjpeg misreads a preset of 0 in an
    LSE segment (C.2.4.1.1: "use the default"), so it decodes `twin` instead if given: the
    same stream with those presets written out. CharLS 2.4 fails on a MAXVAL that is not
    2^n - 1 ("general structural problem"), hence `use_charls`."""
    jls = bytes(jls)
    decodes = [libjpeg.decode(twin or jls)]
    if use_charls:
        decodes.append(imagecodecs.jpegls_decode(jls))
    if expect is not None:
        decodes.append(expect)
    reference = decodes[0]
    for other in decodes[1:]:
        assert reference.shape == other.shape == source.shape, (name, other.shape)
        assert np.array_equal(reference, other), f"{name}: the decoders disagree"
    diff = np.abs(reference.astype(np.int64) - source.astype(np.int64)).max()
    assert diff <= near, f"{name}: error {diff} > NEAR {near}"
    height, width = source.shape[:2]
    components = source.shape[2] if source.ndim == 3 else 1
    reference = reference.astype("<u2").tobytes()
    with open(os.path.join(HERE, name + ".jls"), "wb") as f:
        f.write(jls)
    if store == "u16":
        with open(os.path.join(HERE, name + ".u16"), "wb") as f:
            f.write(reference)
    else:
        store = f"fnv1a64:{fnv1a64(reference):016x}"
    manifest.append(f"{name}\t{width}\t{height}\t{components}\t{precision}\t{store}")


def charls(arr, precision, near=0, ilv=None):
    """pyjpegls: pixel-interleaved (rows, cols[, comps]) input, except ILV 0 (planes)."""
    comps = arr.shape[2] if arr.ndim == 3 else 1
    src = arr.transpose(2, 0, 1) if ilv == 0 else arr
    src = np.ascontiguousarray(src, dtype=np.uint8 if precision <= 8 else "<u2")
    return jpeg_ls.encode_buffer(src.tobytes(), arr.shape[0], arr.shape[1], comps, precision,
                                 lossy_error=near, interleave_mode=ilv)


def main():
    for f in os.listdir(HERE):
        if f.endswith((".jls", ".u16")) or f == "manifest.tsv":
            os.remove(os.path.join(HERE, f))

    ct = ct_slice(80, 96, seed=1)
    gray8 = np.clip(ct // 8, 0, 255).astype(np.uint8)
    save("gray8_ct", charls(gray8, 8), 8, gray8)
    gray12 = np.minimum(ct, 4095)
    save("gray12_ct", charls(gray12, 12), 12, gray12)
    # imagecodecs writes P = 16 with a SPIFF APP8 header and an explicit LSE segment.
    slice512 = ct_slice(512, 512, seed=2)
    save("gray16_ct512", imagecodecs.jpegls_encode(slice512), 16, slice512, store="fnv")
    noise = np.random.default_rng(3).integers(0, 65536, (30, 40)).astype(np.uint16)
    noise[10:20, 5:30] = 65535  # a run next to full-range noise
    save("gray16_noise", charls(noise, 16), 16, noise)
    odd = ct_slice(5, 17, seed=4, metal=False) % 1024
    save("gray10_17x5", charls(odd, 10), 10, odd)
    tiny = np.random.default_rng(5).integers(0, 4, (11, 23)).astype(np.uint8)
    tiny[3:8, 4:20] = 2
    save("gray2", charls(tiny, 2), 2, tiny)

    near_src = np.minimum(ct_slice(48, 64, seed=6), 4095)
    save("near1_gray12", charls(near_src, 12, near=1), 12, near_src, near=1)
    near8 = np.clip(near_src // 16, 0, 255).astype(np.uint8)
    save("near3_gray8", charls(near8, 8, near=3), 8, near8, near=3)

    rng = np.random.default_rng(7)
    base = ct_slice(24, 40, seed=7, metal=False) // 8
    rgb = np.stack([base, base // 2 + 20, 255 - base], axis=2)
    rgb = np.clip(rgb + rng.integers(-3, 4, rgb.shape), 0, 255).astype(np.uint8)
    rgb[2:6, :] = (200, 100, 50)  # a flat band: runs over whole pixels
    for ilv in (0, 1, 2):
        save(f"rgb8_ilv{ilv}", charls(rgb, 8, ilv=ilv), 8, rgb)
    save("rgb8_ilv2_near2", charls(rgb, 8, near=2, ilv=2), 8, rgb, near=2)
    save("rgb8_ilv1_near2", charls(rgb, 8, near=2, ilv=1), 8, rgb, near=2)
    rgba = np.concatenate([rgb, rgb[:, :, :1] // 2], axis=2)
    save("rgba8_ilv2", charls(rgba, 8, ilv=2), 8, rgba)

    img = np.minimum(ct_slice(40, 61, seed=8), 4095)
    jls, _, out = encode_ls(img, 12, restart=3)  # 13 restarts: RST0..RST7 and around again
    save("restart_gray12", jls, 12, img, expect=out)
    img8 = np.clip(ct_slice(33, 57, seed=9) // 8, 0, 255).astype(np.uint8)
    jls, _, out = encode_ls(img8, 8, maxval=255, t1=5, t2=12, t3=40, reset=24)
    save("lse_gray8", jls, 8, img8, expect=out)
    img3000 = np.minimum(ct_slice(36, 50, seed=10), 3000)
    # T1..T3 = 0: the defaults for MAXVAL 3000 and NEAR 2.
    jls, twin, out = encode_ls(img3000, 12, near=2, maxval=3000, reset=100, restart=8)
    save("lse_maxval_near2_restart", jls, 12, img3000, near=2, expect=out, twin=twin,
         use_charls=False)

    for i in range(1, 7):
        ds = pydicom.dcmread(os.path.join(DICOM, f"IM000{i}.dcm"))
        (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
        decoded = libjpeg.decode(frame)
        assert np.array_equal(decoded, imagecodecs.jpegls_decode(frame))
        assert np.array_equal(decoded, ds.pixel_array)
        with open(os.path.join(HERE, f"dicom-IM000{i}.u16"), "wb") as f:
            f.write(decoded.astype("<u2").tobytes())

    with open(os.path.join(HERE, "manifest.tsv"), "w") as f:
        f.write("# name\twidth\theight\tcomponents\tprecision\treference\n")
        f.write("\n".join(manifest) + "\n")
    total = sum(os.path.getsize(os.path.join(HERE, f)) for f in os.listdir(HERE))
    print(f"{len(manifest)} vectors, folder {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
