#!/usr/bin/env python3
"""Opens a review page (`run --html`, `review`) in headless Chromium and reports what a user
would see.

    review.py PAGE.html CHECKS.json RESULT.json [--screenshot OUT.png]

(docs/review.png is `--screenshot` of the page of four phantoms: `phantom --format nifti
--size 192x192x{40,44,48,52} --seed {2001..2004}`, then `run data --out out --samples 2
--uncertainty out/uncertainty --html review.html --gt gt`, CHECKS `{"case": "case-1",
"voxels": []}`, a 1400×980 window.)

Driven by tests/it/review.rs (through support::python::run_python), which makes the page and
CHECKS.json and asserts on RESULT.json. The browser is Debian's chromium
(`$SDSEG_CHROMIUM`, default /usr/bin/chromium) driven by Playwright's Python package; no
browser is downloaded. The page is opened from a file:// URL with the network off.

CHECKS.json: {"case": id, "voxels": [{"view": "axial", "ijk": [i, j, k], "name": ...}, ...]}.
For the case, the script sets the label opacity to 1 (a labelled voxel then shows its label's
colour exactly) and turns the ground-truth contour, the uncertainty layer and the crosshair
off; for each voxel it asks the page where the voxel's centre is drawn
(`sdsegReview.voxelToScreen`, which also moves the view to the voxel's slice), takes a
screenshot of the 3×3 pixels around it and reads the centre one. Then it scrolls the axial view with the
mouse wheel and with the keyboard and records the slice and whether the canvas changed.

RESULT.json: console errors and page errors (anything logged at level error, any uncaught
exception), the readout with the mouse over the first voxel, the table (case id and each cell's data-value, by column), the pixels
({name: [r, g, b]}), the slices before and after scrolling, whether the pixels changed, the
time from navigation to the index being drawn, and every case opened without error.
"""

import json
import os
import struct
import sys
import zlib

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def decode_png(data):
    """8-bit RGB or RGBA PNG (what Chromium's screenshots are) as (width, height, rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos = 8
    idat = b""
    width = height = channels = None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and color in (2, 6), (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * channels
    rows = []
    prev = bytearray(stride)
    at = 0
    for _ in range(height):
        ftype = raw[at]
        line = bytearray(raw[at + 1 : at + 1 + stride])
        at += 1 + stride
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, channels, rows


def pixel_at(page, x, y):
    """The screenshot's pixel at page coordinates (x, y) (CSS pixels, device scale 1)."""
    x, y = int(x), int(y)
    png = page.screenshot(full_page=True, clip={"x": x - 1, "y": y - 1, "width": 3, "height": 3})
    width, height, channels, rows = decode_png(png)
    assert (width, height) == (3, 3), (width, height)
    return list(rows[1][channels : channels + 3])


def main():
    args = sys.argv[1:]
    screenshot = None
    if "--screenshot" in args:
        at = args.index("--screenshot")
        screenshot = args[at + 1]
        del args[at : at + 2]
    page_path, checks_path, result_path = args
    with open(checks_path) as f:
        checks = json.load(f)
    chromium = os.environ.get("SDSEG_CHROMIUM", "/usr/bin/chromium")
    result = {"console_errors": [], "page_errors": [], "opened": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1400, "height": 980}, device_scale_factor=1, offline=True
        )
        page = context.new_page()
        page.on(
            "console",
            lambda m: result["console_errors"].append(m.text) if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: result["page_errors"].append(str(e)))
        page.goto("file://" + os.path.abspath(page_path), wait_until="load")
        page.wait_for_function("window.sdsegReview !== undefined")
        result["index_shown_ms"] = page.evaluate("window.sdsegReview.indexShownMs")
        result["row_order"] = page.evaluate("window.sdsegReview.rowOrder()")
        result["table"] = page.evaluate(
            """() => [...document.querySelectorAll('#cases tbody tr')].map((tr) => ({
                case: tr.dataset.case,
                cells: Object.fromEntries([...tr.querySelectorAll('td')].map((td) =>
                    [td.dataset.col, td.dataset.value !== undefined ? Number(td.dataset.value) : td.textContent]))
            }))"""
        )
        # Every case opens (its data decoded and drawn) without an error.
        for row in result["table"]:
            page.evaluate("(id) => window.sdsegReview.openCase(id)", row["case"])
            result["opened"].append(row["case"])

        case = checks["case"]
        page.evaluate("(id) => window.sdsegReview.openCase(id)", case)
        for name, value in [("opacity", 1), ("gt", False), ("uncertainty", False), ("crosshair", False)]:
            page.evaluate("([n, v]) => window.sdsegReview.set(n, v)", [name, value])
        result["pixels"] = {}
        result["positions"] = {}
        for v in checks["voxels"]:
            pos = page.evaluate(
                "([view, ijk]) => window.sdsegReview.voxelToScreen(view, ijk)", [v["view"], v["ijk"]]
            )
            result["pixels"][v["name"]] = pixel_at(page, pos["x"], pos["y"])
            result["positions"][v["name"]] = pos

        # The hover readout over the first voxel (in its view).
        first = checks["voxels"][0] if checks["voxels"] else None
        if first:
            view = page.locator('.view[data-view="%s"] canvas' % first["view"])
            view.scroll_into_view_if_needed()
            pos = page.evaluate(
                "([view, ijk]) => window.sdsegReview.voxelToScreen(view, ijk)",
                [first["view"], first["ijk"]],
            )
            sx, sy = page.evaluate("[window.scrollX, window.scrollY]")
            page.mouse.move(pos["x"] - sx, pos["y"] - sy)
            result["hover_readout"] = page.locator("#readout").text_content()

        # Scrolling: the wheel over the axial view, then the arrow keys.
        canvas = page.locator('.view[data-view="axial"] canvas')
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        clip = {"x": box["x"], "y": box["y"], "width": box["width"], "height": box["height"]}
        before = page.screenshot(clip=clip)
        result["slice_before"] = page.evaluate("window.sdsegReview.state().slice")
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(50)
        result["slice_after_wheel"] = page.evaluate("window.sdsegReview.state().slice")
        after_wheel = page.screenshot(clip=clip)
        page.keyboard.press("ArrowUp")
        page.keyboard.press("ArrowUp")
        result["slice_after_keys"] = page.evaluate("window.sdsegReview.state().slice")
        result["canvas_changed_on_wheel"] = before != after_wheel
        result["readout"] = page.locator("#readout").text_content()

        if screenshot:
            # README's picture: the case with the default view options, the mouse over the
            # axial view, the top of the page.
            for name, value in [("opacity", 0.45), ("gt", True), ("crosshair", True)]:
                page.evaluate("([n, v]) => window.sdsegReview.set(n, v)", [name, value])
            page.evaluate("window.scrollTo(0, 0)")
            box = page.locator('.view[data-view="axial"] canvas').bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.45)
            page.screenshot(path=screenshot)
        browser.close()
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
