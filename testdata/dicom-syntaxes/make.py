#!/usr/bin/env python3
"""Make the compressed DICOM test series in this folder (run once; the results are committed).

dicom-rs cannot encode JPEG Lossless, JPEG-LS or JPEG 2000, so GDCM (PyPI `python-gdcm`)
transcodes a small phantom series written by our own writer. Usage, from the crate root:

    cargo build
    rm -rf testdata/dicom-syntaxes/*/
    target/debug/sdseg-volume phantom --out testdata/dicom-syntaxes/explicit-le \
        --size 32x24x6 --seed 9 --noise 20
    /work/venv/bin/pip install python-gdcm pydicom numpy
    /work/venv/bin/python testdata/dicom-syntaxes/make.py

Folders (each a 32x24x6 series, 6 files; jpeg-extended-12bit has 2 files):
  explicit-le/            reference: uint16, BitsStored 12, intercept -1024 (our writer)
  jpeg-lossless-sv1/      1.2.840.10008.1.2.4.70   from explicit-le
  jpegls-lossless/        1.2.840.10008.1.2.4.80   from explicit-le (GDCM/CharLS; our own decoder reads it)
  j2k-lossless/           1.2.840.10008.1.2.4.90   from explicit-le
  j2k-lossy/              1.2.840.10008.1.2.4.91   from explicit-le (lossy, ~ few HU error)
  jpeg-extended-12bit/    1.2.840.10008.1.2.4.51   from explicit-le by DCMTK `dcmcjpeg +ee` (12-bit,
                          IJG libjpeg; stored values shifted by 1023, intercept -2047: same HU)
  jpeg-extended-12bit-dcmdjpeg/  the same decoded by DCMTK `dcmdjpeg`: the exact reference
  (GDCM writes 12-bit JPEG Extended with sample precision 16 in SOF1, which T.81 forbids and
  only GDCM reads; hence DCMTK: `apt-get install dcmtk`, then the loop in main())
  rle/                    1.2.840.10008.1.2.5      from explicit-le (pydicom's own RLE encoder)
  signed/                 int16, BitsStored 16, intercept 0, slope 1 (pydicom from explicit-le)
  signed-j2k-lossless/    1.2.840.10008.1.2.4.90   from signed
  signed-jpeg-lossless-sv1/ 1.2.840.10008.1.2.4.70 from signed
"""
import os
import subprocess
import sys

import gdcm
import numpy as np
import pydicom

HERE = os.path.dirname(os.path.abspath(__file__))


def files(d):
    return sorted(
        os.path.join(d, f) for f in os.listdir(d) if f.endswith(".dcm")
    )


def transcode(src_dir, dst_dir, ts, lossy=False, limit=None):
    os.makedirs(dst_dir, exist_ok=True)
    for f in files(src_dir)[:limit]:
        r = gdcm.ImageReader()
        r.SetFileName(f)
        if not r.Read():
            sys.exit(f"gdcm cannot read {f}")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(ts))
        if lossy:
            codec = gdcm.JPEG2000Codec()
            codec.SetRate(0, 5.0)  # compression ratio 5:1
            codec.SetReversible(False)
            change.SetUserCodec(codec)
        change.SetInput(r.GetImage())
        if not change.Change():
            sys.exit(f"gdcm cannot transcode {f} to {ts}")
        w = gdcm.ImageWriter()
        w.SetFileName(os.path.join(dst_dir, os.path.basename(f)))
        w.SetFile(r.GetFile())
        w.SetImage(change.GetOutput())
        if not w.Write():
            sys.exit(f"gdcm cannot write {f}")


def make_signed(src_dir, dst_dir):
    os.makedirs(dst_dir, exist_ok=True)
    for f in files(src_dir):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
            ds.RescaleIntercept
        )
        ds.PixelRepresentation = 1
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.PixelData = np.round(hu).astype("<i2").tobytes()
        ds.save_as(os.path.join(dst_dir, os.path.basename(f)), enforce_file_format=True)


def main():
    ref = os.path.join(HERE, "explicit-le")
    if not os.path.isdir(ref):
        sys.exit(f"{ref} missing: run the phantom command first (see the docstring)")
    T = gdcm.TransferSyntax
    transcode(ref, os.path.join(HERE, "jpeg-lossless-sv1"), T.JPEGLosslessProcess14_1)
    transcode(ref, os.path.join(HERE, "jpegls-lossless"), T.JPEGLSLossless)
    transcode(ref, os.path.join(HERE, "j2k-lossless"), T.JPEG2000Lossless)
    transcode(ref, os.path.join(HERE, "j2k-lossy"), T.JPEG2000, lossy=True)
    ext = os.path.join(HERE, "jpeg-extended-12bit")
    ref_ijg = ext + "-dcmdjpeg"
    os.makedirs(ext, exist_ok=True)
    os.makedirs(ref_ijg, exist_ok=True)
    for f in files(ref):
        name = os.path.basename(f)
        subprocess.run(["dcmcjpeg", "+ee", f, os.path.join(ext, name)], check=True)
        subprocess.run(
            ["dcmdjpeg", os.path.join(ext, name), os.path.join(ref_ijg, name)], check=True
        )
    rle = os.path.join(HERE, "rle")
    os.makedirs(rle, exist_ok=True)
    for f in files(ref):
        ds = pydicom.dcmread(f)
        ds.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
        ds.save_as(os.path.join(rle, os.path.basename(f)), enforce_file_format=True)
    signed = os.path.join(HERE, "signed")
    make_signed(ref, signed)
    transcode(signed, os.path.join(HERE, "signed-j2k-lossless"), T.JPEG2000Lossless)
    transcode(signed, os.path.join(HERE, "signed-jpeg-lossless-sv1"), T.JPEGLosslessProcess14_1)
    for d in sorted(os.listdir(HERE)):
        p = os.path.join(HERE, d)
        if os.path.isdir(p):
            a = pydicom.dcmread(files(p)[0])
            print(f"{d}: {len(files(p))} files, {a.file_meta.TransferSyntaxUID.name}, "
                  f"PixelRepresentation {a.PixelRepresentation}, BitsStored {a.BitsStored}")

if __name__ == "__main__":
    main()
