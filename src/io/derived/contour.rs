//! Contours of label masks, slice by slice, for RTSTRUCT (pure geometry on the pixel grid;
//! [`super::rtstruct`] places them in patient space).
//!
//! # What is traced
//! For each slice and label, the binary mask `slice == label` is traced with the border
//! following of Suzuki & Abe (1985, "Topological structural analysis of digitized binary
//! images by border following"): foreground is 8-connected, background 4-connected, and every
//! border between a foreground island and a background component is followed once:
//! - every island gets its **outer** contour ([`ContourKind::Outer`]);
//! - every hole (a 4-connected background component that does not reach the slice edge) gets
//!   its own **hole** contour ([`ContourKind::Hole`]), and islands inside holes get their own
//!   outer contours, and so on to any depth.
//!
//! All of them are written as separate contours of the ROI on that slice, with no ordering or
//! orientation promise; the region is what the **even-odd (XOR) rule** makes of them: a point
//! is inside when it lies inside an odd number of the slice's contours. Treatment-planning
//! systems read several CLOSED_PLANAR contours of one ROI on one plane this way (an inner
//! contour cuts a hole), and so do rt-utils (`cv2.fillPoly` of all a slice's contours at once)
//! and TotalSegmentator's RTSTRUCT export, which writes `cv2.findContours` output the same way.
//! No "keyhole" cuts join holes to their outer contour.
//!
//! # Where the contour runs: through the centres of the boundary pixels
//! Vertices are the centres of the island's boundary pixels (column, row; pixel centres at
//! integer coordinates), the convention of `cv2.findContours` and so of the tools built on it
//! (rt-utils, TotalSegmentator). A rasteriser that fills the even-odd interior *and* the
//! pixels the contour passes through (as `cv2.fillPoly` does) gives back the mask exactly;
//! the tests here check that on random masks, and the integration tests check it through
//! rt-utils.
//!
//! The cost of that convention is an area bias for consumers that only take pixels whose
//! centre lies strictly inside the polygon, or that compute a volume from the polygon area:
//! the polygon through the boundary centres encloses about half a pixel less than the mask
//! all round (by Pick's theorem, polygon area = pixels − boundary pixels / 2 − 1 for a simple
//! island), and one-pixel-wide spurs and bridges enclose no area at all. Edge-following
//! ("crack") contours along the pixel edges have no such bias for centre-inside rasterisers
//! but grow the mask by one pixel all round in boundary-including ones (fillPoly, rt-utils),
//! whose vertices they would also put on half-pixel positions that rounding moves. We chose
//! centres because the tools that read these files back into masks (rt-utils, OpenCV-based
//! viewers and pipelines) reproduce the label volume exactly with them, which is what the
//! round-trip tests measure, and because it is the convention of the RTSTRUCTs produced by
//! the tools users compare us with.
//!
//! # Points kept
//! Only the vertices where the boundary changes direction (like `CHAIN_APPROX_SIMPLE`): the
//! boundary between two kept vertices is a straight horizontal, vertical or 45° run through
//! pixel centres, so nothing is lost.
//!
//! # Degenerate islands: single pixels and one-pixel-wide lines
//! An island with no interior (a single pixel, a straight or bent one-pixel-wide line, a
//! one-pixel-wide tree) traces to a polygon of zero area (one point, or a path walked there and
//! back). Such a polygon is not a valid CLOSED_PLANAR contour for most readers (a one-point
//! "polygon" crashes rt-utils; an area-based reader sees nothing), so these islands are written
//! as thin polygons instead ([`ContourKind::Thin`]): a rectangle of half-width
//! [`THIN_HALF_WIDTH`] pixel around the straight run of pixel centres (a square around a
//! single pixel), or for bent or branched lines one such rectangle per horizontal run of its
//! pixels (disjoint, so the even-odd rule keeps them all). The pixel centres lie strictly
//! inside, so centre-inside rasterisers include them; every vertex is within 0.36 pixel of a
//! centre, so readers that round vertices to the pixel grid (rt-utils) get the pixels back.
//! One-pixel-wide parts of larger islands (spurs, bridges) stay in the traced contour: exact
//! for boundary-including rasterisers, zero area for centre-inside ones (the bias above).
//!
//! # Cost
//! Linear in the slice size: one pass finds each label's bounding box, the border following
//! runs on that box only and visits each border pixel a bounded number of times.
//! [`volume_contours`] runs slices in parallel (rayon), reading the volume in memory order
//! (C or Fortran).

use ndarray::{s, ArrayView3, Axis};
use rayon::prelude::*;

/// Half-width (pixels) of the thin polygons written for islands without interior.
pub const THIN_HALF_WIDTH: f64 = 0.25;

/// One closed planar contour on a slice's pixel grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Contour {
    /// Vertices `[column, row]` in pixels (pixel centres at integer coordinates), in order,
    /// the first not repeated at the end.
    pub points: Vec<[f64; 2]>,
    pub kind: ContourKind,
}

/// What a contour bounds (the even-odd rule does not need it; it says how it was made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContourKind {
    /// The outer border of an 8-connected island, through its boundary pixels' centres.
    Outer,
    /// The border of a hole (a 4-connected background component inside an island), through the
    /// centres of the island's pixels around it.
    Hole,
    /// A thin polygon around the pixels of an island without interior (see the module docs).
    Thin,
}

/// The contours of a binary mask (`rows × columns`, row-major, `true` = inside).
///
/// # Panics
/// When `mask` does not hold `rows × columns` values.
pub fn mask_contours(mask: &[bool], rows: usize, columns: usize) -> Vec<Contour> {
    assert_eq!(mask.len(), rows * columns, "mask size");
    let slice: Vec<u16> = mask.iter().map(|&m| u16::from(m)).collect();
    slice_contours(&slice, rows, columns, &[1])
        .pop()
        .unwrap_or_default()
}

/// The contours of each of `labels` on one slice of label values (`rows × columns`,
/// row-major): entry `n` holds those of `labels[n]` (empty where the label is absent).
///
/// # Panics
/// When `slice` does not hold `rows × columns` values.
pub fn slice_contours(
    slice: &[u16],
    rows: usize,
    columns: usize,
    labels: &[u16],
) -> Vec<Vec<Contour>> {
    assert_eq!(slice.len(), rows * columns, "slice size");
    let lookup = LabelLookup::new(labels);
    let boxes = lookup.bounding_boxes(slice, columns);
    let mut grid = Vec::new();
    boxes
        .iter()
        .enumerate()
        .map(|(n, b)| match b {
            Some(b) => trace_label(slice, columns, labels[n], b, &mut grid),
            None => Vec::new(),
        })
        .collect()
}

/// The contours of every slice of a label volume indexed `[column, row, slice]`:
/// `result[k][n]` holds those of `labels[n]` on slice `k`. Slices run in parallel.
pub fn volume_contours(volume: ArrayView3<u16>, labels: &[u16]) -> Vec<Vec<Vec<Contour>>> {
    let (columns, rows, slices) = volume.dim();
    let stride = |axis: usize| volume.strides()[axis].unsigned_abs();
    if stride(2) > stride(0).min(stride(1)) {
        // k is not the fastest axis (e.g. Fortran order, as NIfTI stores): each slice is
        // (nearly) contiguous, read on its own in row-major (j, i) order.
        return (0..slices)
            .into_par_iter()
            .map(|k| {
                let plane: Vec<u16> = volume.index_axis(Axis(2), k).t().iter().copied().collect();
                slice_contours(&plane, rows, columns, labels)
            })
            .collect();
    }
    // k is the fastest axis (C order): slices in blocks of consecutive k, a block gathered in
    // one pass in memory order, instead of one pass per slice that reads every k-th value.
    const BLOCK: usize = 16;
    let blocks: Vec<usize> = (0..slices).step_by(BLOCK).collect();
    let per_block: Vec<Vec<Vec<Vec<Contour>>>> = blocks
        .into_par_iter()
        .map(|k0| {
            let k1 = (k0 + BLOCK).min(slices);
            let mut planes = vec![vec![0u16; rows * columns]; k1 - k0];
            let slab = volume.slice(s![.., .., k0..k1]);
            for ((i, j, dk), &v) in slab.indexed_iter() {
                planes[dk][j * columns + i] = v;
            }
            planes
                .par_iter()
                .map(|plane| slice_contours(plane, rows, columns, labels))
                .collect()
        })
        .collect();
    per_block.into_iter().flatten().collect()
}

/// Label value → its index in the requested list.
struct LabelLookup {
    /// `index + 1` per label value, 0 where not requested.
    table: Vec<u32>,
    count: usize,
}

impl LabelLookup {
    fn new(labels: &[u16]) -> LabelLookup {
        let max = labels.iter().copied().max().map_or(0, usize::from);
        let mut table = vec![0u32; max + 1];
        for (n, &l) in labels.iter().enumerate().rev() {
            table[usize::from(l)] = n as u32 + 1;
        }
        LabelLookup {
            table,
            count: labels.len(),
        }
    }

    /// Bounding box of each requested label on the slice (`None` where absent).
    fn bounding_boxes(&self, slice: &[u16], columns: usize) -> Vec<Option<BoundingBox>> {
        let mut boxes: Vec<Option<BoundingBox>> = vec![None; self.count];
        for (y, row) in slice.chunks_exact(columns).enumerate() {
            for (x, &v) in row.iter().enumerate() {
                let Some(&slot) = self.table.get(usize::from(v)) else {
                    continue;
                };
                if slot == 0 {
                    continue;
                }
                let b = &mut boxes[slot as usize - 1];
                match b {
                    Some(b) => {
                        b.x0 = b.x0.min(x);
                        b.x1 = b.x1.max(x);
                        b.y1 = y; // rows come in order
                    }
                    None => {
                        *b = Some(BoundingBox {
                            x0: x,
                            x1: x,
                            y0: y,
                            y1: y,
                        })
                    }
                }
            }
        }
        boxes
    }
}

/// Inclusive pixel bounds of a label on a slice.
#[derive(Clone, Copy, Debug)]
struct BoundingBox {
    x0: usize,
    x1: usize,
    y0: usize,
    y1: usize,
}

/// The 8 neighbours, counterclockwise as seen on screen (rows run down): E, NE, N, NW, W, SW,
/// S, SE. Clockwise is decreasing index.
const DX: [isize; 8] = [1, 1, 0, -1, -1, -1, 0, 1];
const DY: [isize; 8] = [0, -1, -1, -1, 0, 1, 1, 1];
const EAST: usize = 0;
const WEST: usize = 4;

/// Traces `label` inside `b` of `slice`; `grid` is scratch space.
fn trace_label(
    slice: &[u16],
    columns: usize,
    label: u16,
    b: &BoundingBox,
    grid: &mut Vec<i32>,
) -> Vec<Contour> {
    // The box with a one-pixel frame of background, so that no neighbour lookup leaves it.
    let w = b.x1 - b.x0 + 3;
    let h = b.y1 - b.y0 + 3;
    grid.clear();
    grid.resize(w * h, 0);
    for y in b.y0..=b.y1 {
        let src = &slice[y * columns + b.x0..=y * columns + b.x1];
        let dst = &mut grid[(y - b.y0 + 1) * w + 1..][..src.len()];
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = i32::from(v == label);
        }
    }
    let mut contours = Vec::new();
    for_each_border(grid, w, h, |chain, kind| {
        let to_slice = |p: usize| {
            [
                (p % w + b.x0) as i64 - 1, // column
                (p / w + b.y0) as i64 - 1, // row
            ]
        };
        let chain: Vec<[i64; 2]> = chain.iter().map(|&p| to_slice(p)).collect();
        contours.extend(polygons(&chain, kind));
    });
    contours
}

/// Suzuki & Abe's border following on `f` (`w × h`, row-major, 1 = foreground, 0 =
/// background, a frame of 0 all round): calls `found` with every border's pixel chain (grid
/// indices, consecutive entries 8-adjacent, closed: the last is adjacent to the first) and
/// whether it is an outer or a hole border. `f` is overwritten with border marks.
fn for_each_border(
    f: &mut [i32],
    w: usize,
    h: usize,
    mut found: impl FnMut(&[usize], ContourKind),
) {
    let off: [isize; 8] = std::array::from_fn(|d| DY[d] * w as isize + DX[d]);
    let at = |p: usize, d: usize| p.wrapping_add_signed(off[d]);
    let mut nbd: i32 = 1;
    let mut chain: Vec<usize> = Vec::new();
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let start = y * w + x;
            let v = f[start];
            if v == 0 {
                continue;
            }
            // A border starts here: an outer border when the pixel to the left is background
            // (and this pixel not yet on a followed border), a hole border when the pixel to
            // the right is background and no followed border has passed it on that side.
            let (from, kind) = if v == 1 && f[start - 1] == 0 {
                (WEST, ContourKind::Outer)
            } else if v >= 1 && f[start + 1] == 0 {
                (EAST, ContourKind::Hole)
            } else {
                continue;
            };
            nbd += 1;
            chain.clear();
            chain.push(start);
            // The first foreground neighbour clockwise from the background pixel we came from.
            let Some(d1) = (0..8)
                .map(|s| (from + 8 - s) % 8)
                .find(|&d| f[at(start, d)] != 0)
            else {
                f[start] = -nbd; // a single pixel
                found(&chain, kind);
                continue;
            };
            let first_step = at(start, d1);
            let mut cur = start;
            // Direction from `cur` to the border pixel before it.
            let mut back = d1;
            loop {
                // Counterclockwise from the pixel after `back`: the next border pixel.
                let mut east_background_seen = false;
                let mut d = back;
                let next = loop {
                    d = (d + 1) % 8;
                    let q = at(cur, d);
                    if f[q] != 0 {
                        break q;
                    }
                    if d == EAST {
                        east_background_seen = true;
                    }
                };
                // Mark `cur`: negative when the background to its right belongs to this
                // border (no hole border may start there), else positive unless already marked.
                if east_background_seen {
                    f[cur] = -nbd;
                } else if f[cur] == 1 {
                    f[cur] = nbd;
                }
                if next == start && cur == first_step {
                    break;
                }
                chain.push(next);
                back = (d + 4) % 8;
                cur = next;
            }
            found(&chain, kind);
        }
    }
}

/// The polygons written for one traced border (pixel coordinates `[column, row]`): the
/// direction-change vertices, or thin polygons for an island without interior.
fn polygons(chain: &[[i64; 2]], kind: ContourKind) -> Vec<Contour> {
    let corners = direction_changes(chain);
    if kind == ContourKind::Outer && twice_area(&corners) == 0 {
        return thin_polygons(chain, &corners);
    }
    vec![Contour {
        points: corners.iter().map(|p| [p[0] as f64, p[1] as f64]).collect(),
        kind,
    }]
}

/// The points of a closed chain where the step direction changes (all of a one-point chain).
fn direction_changes(chain: &[[i64; 2]]) -> Vec<[i64; 2]> {
    let n = chain.len();
    if n < 2 {
        return chain.to_vec();
    }
    let step = |a: [i64; 2], b: [i64; 2]| [b[0] - a[0], b[1] - a[1]];
    (0..n)
        .filter(|&k| {
            let prev = chain[(k + n - 1) % n];
            let next = chain[(k + 1) % n];
            step(prev, chain[k]) != step(chain[k], next)
        })
        .map(|k| chain[k])
        .collect()
}

/// Twice the signed area of a closed polygon (shoelace).
fn twice_area(p: &[[i64; 2]]) -> i64 {
    let n = p.len();
    (0..n)
        .map(|k| {
            let (a, b) = (p[k], p[(k + 1) % n]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum()
}

/// Thin polygons covering the pixels of an island without interior: one around the straight
/// run when the island is one (a single pixel included), else one per horizontal run.
fn thin_polygons(chain: &[[i64; 2]], corners: &[[i64; 2]]) -> Vec<Contour> {
    if corners.len() <= 2 {
        let a = corners[0];
        let b = corners[corners.len() - 1];
        return vec![thin_rectangle(a, b)];
    }
    let mut pixels: Vec<[i64; 2]> = chain.iter().map(|p| [p[1], p[0]]).collect(); // (row, col)
    pixels.sort_unstable();
    pixels.dedup();
    let mut out = Vec::new();
    let mut k = 0;
    while k < pixels.len() {
        let [row, c0] = pixels[k];
        let mut c1 = c0;
        while k + 1 < pixels.len() && pixels[k + 1] == [row, c1 + 1] {
            c1 += 1;
            k += 1;
        }
        out.push(thin_rectangle([c0, row], [c1, row]));
        k += 1;
    }
    out
}

/// A rectangle of half-width [`THIN_HALF_WIDTH`] around the segment `a`–`b` (a square around
/// `a` when they coincide), extending that far past both ends.
fn thin_rectangle(a: [i64; 2], b: [i64; 2]) -> Contour {
    let (ax, ay) = (a[0] as f64, a[1] as f64);
    let (dx, dy) = ((b[0] - a[0]) as f64, (b[1] - a[1]) as f64);
    let len = (dx * dx + dy * dy).sqrt();
    let (tx, ty) = if len > 0.0 {
        (dx / len, dy / len)
    } else {
        (1.0, 0.0)
    };
    let r = THIN_HALF_WIDTH;
    let (nx, ny) = (-ty, tx);
    let (bx, by) = (ax + dx, ay + dy);
    Contour {
        points: vec![
            [ax - r * tx - r * nx, ay - r * ty - r * ny],
            [bx + r * tx - r * nx, by + r * ty - r * ny],
            [bx + r * tx + r * nx, by + r * ty + r * ny],
            [ax - r * tx + r * nx, ay - r * ty + r * ny],
        ],
        kind: ContourKind::Thin,
    }
}

#[cfg(test)]
mod tests;
