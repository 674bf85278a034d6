//! The contours, filled back with an even-odd scanline rasteriser that also takes the pixels
//! the contours pass through (what `cv2.fillPoly` does), give the mask back exactly.

use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Even-odd scanline fill of all `contours` at once on a `rows × columns` grid, plus every
/// pixel centre a contour edge passes through.
fn rasterise(contours: &[Contour], rows: usize, columns: usize) -> Vec<bool> {
    let mut out = vec![false; rows * columns];
    let edges: Vec<([f64; 2], [f64; 2])> = contours
        .iter()
        .flat_map(|c| {
            let n = c.points.len();
            (0..n).map(move |k| (c.points[k], c.points[(k + 1) % n]))
        })
        .collect();
    // Interior: on each row's centre line, the crossings of the non-horizontal edges (each
    // edge half-open in y, so a vertex on the line counts once), filled between odd and even
    // crossings.
    let mut xs = Vec::new();
    for r in 0..rows {
        let y = r as f64;
        xs.clear();
        for &(a, b) in &edges {
            let (lo, hi) = if a[1] < b[1] { (a, b) } else { (b, a) };
            if lo[1] <= y && y < hi[1] {
                xs.push(lo[0] + (y - lo[1]) * (hi[0] - lo[0]) / (hi[1] - lo[1]));
            }
        }
        xs.sort_by(f64::total_cmp);
        assert!(xs.len() % 2 == 0, "odd crossing count on row {r}");
        for pair in xs.chunks_exact(2) {
            let c0 = pair[0].ceil().max(0.0) as usize;
            let c1 = pair[1].floor().min(columns as f64 - 1.0);
            if c1 < 0.0 {
                continue;
            }
            for c in c0..=c1 as usize {
                out[r * columns + c] = true;
            }
        }
    }
    // Boundary: the pixel centres on the edges (edges between integer points only; thin
    // polygons have none on theirs).
    for &(a, b) in &edges {
        if a.iter().chain(b.iter()).any(|v| v.fract() != 0.0) {
            continue;
        }
        let (dx, dy) = ((b[0] - a[0]) as i64, (b[1] - a[1]) as i64);
        let n = gcd(dx.abs(), dy.abs()).max(1);
        for s in 0..=n {
            let c = a[0] as i64 + dx / n * s;
            let r = a[1] as i64 + dy / n * s;
            assert!(
                (0..columns as i64).contains(&c) && (0..rows as i64).contains(&r),
                "vertex off the grid"
            );
            out[r as usize * columns + c as usize] = true;
        }
    }
    out
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn show(mask: &[bool], columns: usize) -> String {
    mask.chunks(columns)
        .map(|r| {
            r.iter()
                .map(|&m| if m { '#' } else { '.' })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_round_trip(mask: &[bool], rows: usize, columns: usize, what: &str) -> Vec<Contour> {
    let contours = mask_contours(mask, rows, columns);
    let back = rasterise(&contours, rows, columns);
    assert!(
        back == mask,
        "{what}: rasterised contours differ from the mask\nmask:\n{}\nback:\n{}\ncontours: {contours:?}",
        show(mask, columns),
        show(&back, columns)
    );
    contours
}

fn parse(rows: &[&str]) -> (Vec<bool>, usize, usize) {
    let columns = rows[0].len();
    let mask = rows
        .iter()
        .flat_map(|r| r.chars().map(|ch| ch == '#'))
        .collect();
    (mask, rows.len(), columns)
}

fn kinds(c: &[Contour]) -> [usize; 3] {
    let count = |k| c.iter().filter(|c| c.kind == k).count();
    [
        count(ContourKind::Outer),
        count(ContourKind::Hole),
        count(ContourKind::Thin),
    ]
}

#[test]
fn square_keeps_only_its_corners() {
    let (m, r, c) = parse(&["......", ".####.", ".####.", ".####.", "......"]);
    let cs = assert_round_trip(&m, r, c, "square");
    assert_eq!(cs.len(), 1);
    let mut pts = cs[0].points.clone();
    pts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(pts, vec![[1.0, 1.0], [1.0, 3.0], [4.0, 1.0], [4.0, 3.0]]);
}

#[test]
fn ring_island_in_hole_and_hole_in_that() {
    let (m, r, c) = parse(&[
        "###########",
        "#.........#",
        "#.#######.#",
        "#.#.....#.#",
        "#.#.###.#.#",
        "#.#.#.#.#.#",
        "#.#.###.#.#",
        "#.#.....#.#",
        "#.#######.#",
        "#.........#",
        "###########",
    ]);
    let cs = assert_round_trip(&m, r, c, "nested rings");
    assert_eq!(kinds(&cs), [3, 3, 0], "{cs:?}");
}

#[test]
fn diagonal_touch_is_one_island_and_diagonal_gap_keeps_the_hole() {
    let (m, r, c) = parse(&["##..", "##..", "..##", "..##"]);
    let cs = assert_round_trip(&m, r, c, "diagonal touch");
    assert_eq!(kinds(&cs), [1, 0, 0]);
    // The background in the middle touches the outside only diagonally: a hole.
    let (m, r, c) = parse(&[".###.", "#...#", "#...#", ".###.", "....."]);
    let cs = assert_round_trip(&m, r, c, "diagonal gap");
    assert_eq!(kinds(&cs), [1, 1, 0]);
    let (m, r, c) = parse(&["###", "#.#", "##."]);
    let cs = assert_round_trip(&m, r, c, "one-pixel hole at a diagonal gap");
    assert_eq!(kinds(&cs), [1, 1, 0]);
}

#[test]
fn degenerate_islands_become_thin_polygons() {
    let (m, r, c) = parse(&["#....", ".....", "..#..", "....."]);
    let cs = assert_round_trip(&m, r, c, "single pixels");
    assert_eq!(kinds(&cs), [0, 0, 2]);
    let (m, r, c) = parse(&[".....", "####.", ".....", "...#.", "..#..", ".#..."]);
    let cs = assert_round_trip(&m, r, c, "straight lines");
    assert_eq!(kinds(&cs), [0, 0, 2], "one rectangle per straight line");
    // (An L-bend is not degenerate: the corner pixels' centres make a triangle.)
    let (m, r, c) = parse(&[".......", ".###...", "....#..", ".....#.", ".....#."]);
    let cs = assert_round_trip(&m, r, c, "bent line");
    assert_eq!(kinds(&cs), [0, 0, 4], "one rectangle per horizontal run");
    for t in &cs {
        for p in &t.points {
            let off = (p[0] - p[0].round()).abs().max((p[1] - p[1].round()).abs());
            assert!(off < 0.5, "vertex {p:?} rounds to a pixel centre");
        }
    }
    // A spur on a block stays in the block's contour.
    let (m, r, c) = parse(&["......", ".##...", ".#####", ".##...", "......"]);
    let cs = assert_round_trip(&m, r, c, "spur");
    assert_eq!(kinds(&cs), [1, 0, 0]);
}

#[test]
fn shapes_touching_every_edge() {
    let (m, r, c) = parse(&["#####", "#.#.#", "#####", "##..#", "#####"]);
    let cs = assert_round_trip(&m, r, c, "full frame with holes");
    assert_eq!(kinds(&cs), [1, 3, 0]);
    let all = vec![true; 12];
    assert_round_trip(&all, 3, 4, "all foreground");
    assert!(mask_contours(&[false; 12], 3, 4).is_empty());
    assert_round_trip(&[true], 1, 1, "one-pixel slice");
}

/// Random masks of several textures: noise (many islands, holes, diagonal touches), blobs
/// with holes and islands in the holes, thin structures, all reaching the edges.
fn random_mask(rng: &mut ChaCha8Rng, rows: usize, columns: usize) -> Vec<bool> {
    let mut m = vec![false; rows * columns];
    match rng.random_range(0..4) {
        0 => {
            let p = rng.random_range(0.2..0.8);
            m.iter_mut().for_each(|v| *v = rng.random_bool(p));
        }
        1 => {
            // Rings and discs, XORed: holes, islands in holes, rings in rings.
            for _ in 0..rng.random_range(1..8) {
                let cy = rng.random_range(0.0..rows as f64);
                let cx = rng.random_range(0.0..columns as f64);
                let r0 = rng.random_range(0.0..8.0);
                let r1 = r0 + rng.random_range(0.5..6.0);
                for y in 0..rows {
                    for x in 0..columns {
                        let d = ((y as f64 - cy).powi(2) + (x as f64 - cx).powi(2)).sqrt();
                        if d >= r0 && d < r1 {
                            m[y * columns + x] ^= true;
                        }
                    }
                }
            }
        }
        2 => {
            // Random walks: one-pixel lines, bent, crossing, branching.
            for _ in 0..rng.random_range(1..6) {
                let (mut y, mut x) = (rng.random_range(0..rows), rng.random_range(0..columns));
                for _ in 0..rng.random_range(1..40) {
                    m[y * columns + x] = true;
                    let step = |v: usize, n: usize, rng: &mut ChaCha8Rng| {
                        (v as i64 + rng.random_range(-1..=1i64)).clamp(0, n as i64 - 1) as usize
                    };
                    y = step(y, rows, rng);
                    x = step(x, columns, rng);
                }
            }
        }
        _ => {
            // Blocky noise: a coarse grid of cells, then per-pixel flips.
            let cell = rng.random_range(2..5);
            let cells: Vec<bool> = (0..rows.div_ceil(cell) * columns.div_ceil(cell))
                .map(|_| rng.random_bool(0.5))
                .collect();
            let cw = columns.div_ceil(cell);
            for y in 0..rows {
                for x in 0..columns {
                    m[y * columns + x] = cells[(y / cell) * cw + x / cell] ^ rng.random_bool(0.05);
                }
            }
        }
    }
    m
}

#[test]
fn random_masks_round_trip_exactly() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_c0de);
    let mut holes = 0;
    let mut thin = 0;
    for case in 0..600 {
        let rows = rng.random_range(1..40);
        let columns = rng.random_range(1..40);
        let mask = random_mask(&mut rng, rows, columns);
        let cs = assert_round_trip(&mask, rows, columns, &format!("random case {case}"));
        let [_, h, t] = kinds(&cs);
        holes += h;
        thin += t;
    }
    // The cases exercised what they are meant to.
    assert!(holes > 500 && thin > 500, "holes {holes}, thin {thin}");
}

#[test]
fn labels_of_one_slice_are_traced_separately() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for _ in 0..50 {
        let (rows, columns) = (rng.random_range(1..30), rng.random_range(1..30));
        let slice: Vec<u16> = (0..rows * columns)
            .map(|_| rng.random_range(0..5))
            .collect();
        let labels = [3, 1, 4, 9];
        let per_label = slice_contours(&slice, rows, columns, &labels);
        assert_eq!(per_label.len(), labels.len());
        for (n, &l) in labels.iter().enumerate() {
            let mask: Vec<bool> = slice.iter().map(|&v| v == l).collect();
            assert_eq!(rasterise(&per_label[n], rows, columns), mask, "label {l}");
        }
        assert!(per_label[3].is_empty(), "absent label 9 has no contours");
    }
}

#[test]
fn volume_slices_follow_the_third_axis() {
    use ndarray::{Array3, ShapeBuilder};
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (columns, rows, slices) = (13, 9, 37); // more slices than one block
    let c_order = Array3::from_shape_fn((columns, rows, slices), |_| rng.random_range(0..3u16));
    let f_order = {
        let mut f = Array3::zeros((columns, rows, slices).f());
        f.assign(&c_order);
        f
    };
    for vol in [c_order.view(), f_order.view()] {
        let all = volume_contours(vol, &[1, 2]);
        assert_eq!(all.len(), slices);
        for (k, per_label) in all.iter().enumerate() {
            for (n, l) in [1u16, 2].iter().enumerate() {
                let mask: Vec<bool> = (0..rows * columns)
                    .map(|p| vol[[p % columns, p / columns, k]] == *l)
                    .collect();
                assert_eq!(rasterise(&per_label[n], rows, columns), mask, "slice {k}");
            }
        }
    }
}
