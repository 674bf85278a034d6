//! `--preview`: a PNG with the axial, coronal and sagittal mid-slices of the input (in the
//! pipeline's HU window) and the labels as a colour overlay, plus a legend; with
//! `--uncertainty`, a second row shows the same slices' uncertainty as a heat map (black → red
//! → yellow, scaled to the largest value shown, printed in the row title).
//!
//! Display convention (radiological, as most viewers): axial with anterior up and the
//! patient's right on the image's left; coronal with superior up and right on the left;
//! sagittal with superior up and anterior on the left. Panels are resampled (nearest) to
//! square millimetres, so anisotropic voxels look right.

use ndarray::{Array2, ArrayView3};
use std::io::Write;
use std::path::Path;

use super::labels_sidecar::LabelInfo;
use crate::geometry::{Affine, AxCodes, Reorientation};

/// One mid-slice in display orientation, before resampling.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: &'static str,
    pub hu: Array2<f32>,
    pub labels: Array2<u16>,
    /// The uncertainty map's slice, when the run has one.
    pub uncertainty: Option<Array2<f32>>,
    /// Millimetres per pixel along rows (vertical) and columns (horizontal).
    pub spacing: [f64; 2],
}

/// The three mid-slices of a case, cut while the input is still in memory.
#[derive(Clone, Debug)]
pub struct PreviewSlices {
    pub panels: Vec<Panel>,
}

/// Cut the three mid-slices from the input `hu`, `labels` and (if any) `uncertainty` (all on
/// the stored grid).
pub fn extract(
    hu: ArrayView3<'_, f32>,
    labels: ArrayView3<'_, u16>,
    uncertainty: Option<ArrayView3<'_, f32>>,
    affine: &Affine,
) -> PreviewSlices {
    let s = hu.shape();
    let r = Reorientation::to_codes(affine, [s[0], s[1], s[2]], AxCodes::RAS);
    let sp = r.apply_affine(affine).spacing();
    let hu = r.view(hu);
    let lab = r.view(labels);
    let unc = uncertainty.map(|u| r.view(u));
    let (nx, ny, nz) = hu.dim();
    let cut =
        |title, rows: usize, cols: usize, spacing, at: &dyn Fn(usize, usize) -> [usize; 3]| Panel {
            title,
            hu: Array2::from_shape_fn((rows, cols), |(i, j)| hu[at(i, j)]),
            labels: Array2::from_shape_fn((rows, cols), |(i, j)| lab[at(i, j)]),
            uncertainty: unc
                .as_ref()
                .map(|u| Array2::from_shape_fn((rows, cols), |(i, j)| u[at(i, j)])),
            spacing,
        };
    let (zm, ym, xm) = (nz / 2, ny / 2, nx / 2);
    PreviewSlices {
        panels: vec![
            cut("AXIAL", ny, nx, [sp[1], sp[0]], &|i, j| {
                [nx - 1 - j, ny - 1 - i, zm]
            }),
            cut("CORONAL", nz, nx, [sp[2], sp[0]], &|i, j| {
                [nx - 1 - j, ym, nz - 1 - i]
            }),
            cut("SAGITTAL", nz, ny, [sp[2], sp[1]], &|i, j| {
                [xm, ny - 1 - j, nz - 1 - i]
            }),
        ],
    }
}

/// Black → red → yellow for `t` in [0, 1].
fn heat(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    if t < 0.5 {
        [510.0 * t, 0.0, 0.0]
    } else {
        [255.0, 510.0 * (t - 0.5), 0.0]
    }
}

/// An RGB8 image.
#[derive(Clone, Debug)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Rgb {
    fn new(width: usize, height: usize) -> Rgb {
        Rgb {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }
    fn put(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.width && y < self.height {
            let o = (y * self.width + x) * 3;
            self.data[o..o + 3].copy_from_slice(&c);
        }
    }
    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, c);
            }
        }
    }
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let o = (y * self.width + x) * 3;
        [self.data[o], self.data[o + 1], self.data[o + 2]]
    }
}

/// Largest panel side in pixels.
const PANEL_PX: f64 = 320.0;
const GAP: usize = 8;
const SCALE: usize = 2; // font pixel size
const LINE: usize = 8 * SCALE + 4;
const OVERLAY_ALPHA: f32 = 0.45;

/// Compose the preview image.
pub fn render(p: &PreviewSlices, window: (f32, f32), legend: &[LabelInfo], title: &str) -> Rgb {
    let extent = p
        .panels
        .iter()
        .flat_map(|q| {
            let (r, c) = q.hu.dim();
            [r as f64 * q.spacing[0], c as f64 * q.spacing[1]]
        })
        .fold(1e-6, f64::max);
    let mm_px = extent / PANEL_PX;
    let sizes: Vec<(usize, usize)> = p
        .panels
        .iter()
        .map(|q| {
            let (r, c) = q.hu.dim();
            let h = ((r as f64 * q.spacing[0] / mm_px).round() as usize).max(1);
            let w = ((c as f64 * q.spacing[1] / mm_px).round() as usize).max(1);
            (h, w)
        })
        .collect();
    let panels_w: usize = sizes.iter().map(|s| s.1).sum::<usize>() + GAP * (sizes.len() + 1);
    let panels_h = sizes.iter().map(|s| s.0).max().unwrap_or(1);
    let shown: Vec<&LabelInfo> = legend.iter().filter(|l| l.id != 0).collect();
    let legend_cols = 2;
    let legend_rows = shown.len().div_ceil(legend_cols);
    let top = GAP + LINE * 2;
    let width = panels_w.max(GAP * 2 + text_width(title));
    let u_max = p
        .panels
        .iter()
        .filter_map(|q| q.uncertainty.as_ref())
        .flat_map(|u| u.iter().copied())
        .fold(None, |m: Option<f32>, v| Some(m.unwrap_or(0.0).max(v)));
    // The uncertainty row: a title line and the panels again.
    let u_top = top + panels_h + GAP;
    let u_height = if u_max.is_some() {
        LINE + panels_h + GAP
    } else {
        0
    };
    let height = top + panels_h + GAP + u_height + legend_rows * LINE + GAP;
    let mut img = Rgb::new(width, height);
    draw_text(&mut img, GAP, GAP, title, [255, 255, 255]);
    let (lo, hi) = window;
    let span = (hi - lo).max(1e-6);
    let mut x0 = GAP;
    for (q, &(h, w)) in p.panels.iter().zip(&sizes) {
        draw_text(&mut img, x0, GAP + LINE, q.title, [200, 200, 200]);
        let (r, c) = q.hu.dim();
        for y in 0..h {
            let i = (((y as f64 + 0.5) * mm_px / q.spacing[0]) as usize).min(r - 1);
            for x in 0..w {
                let j = (((x as f64 + 0.5) * mm_px / q.spacing[1]) as usize).min(c - 1);
                let g = ((q.hu[[i, j]].clamp(lo, hi) - lo) / span * 255.0).round();
                let mut px = [g; 3];
                let l = q.labels[[i, j]];
                if l != 0 {
                    let col = legend
                        .iter()
                        .find(|e| e.id == l)
                        .map(|e| e.color)
                        .unwrap_or_else(|| super::labels_sidecar::default_color(l));
                    for k in 0..3 {
                        px[k] = px[k] * (1.0 - OVERLAY_ALPHA) + col[k] as f32 * OVERLAY_ALPHA;
                    }
                }
                img.put(
                    x0 + x,
                    top + y,
                    px.map(|v| v.round().clamp(0.0, 255.0) as u8),
                );
            }
        }
        if let (Some(u), Some(max)) = (&q.uncertainty, u_max) {
            for y in 0..h {
                let i = (((y as f64 + 0.5) * mm_px / q.spacing[0]) as usize).min(r - 1);
                for x in 0..w {
                    let j = (((x as f64 + 0.5) * mm_px / q.spacing[1]) as usize).min(c - 1);
                    let g = ((q.hu[[i, j]].clamp(lo, hi) - lo) / span * 255.0).round() * 0.35;
                    let hv = heat(u[[i, j]] / max.max(1e-6));
                    let px = [0, 1, 2].map(|k| (g + hv[k]).round().clamp(0.0, 255.0) as u8);
                    img.put(x0 + x, u_top + LINE + y, px);
                }
            }
        }
        x0 += w + GAP;
    }
    if let Some(max) = u_max {
        draw_text(
            &mut img,
            GAP,
            u_top,
            &format!("UNCERTAINTY (BLACK 0 ... YELLOW {max:.3})"),
            [200, 200, 200],
        );
    }
    let col_w = (width - GAP) / legend_cols;
    for (n, l) in shown.iter().enumerate() {
        let x = GAP + (n % legend_cols) * col_w;
        let y = top + panels_h + GAP + u_height + (n / legend_cols) * LINE;
        img.fill(x, y, 7 * SCALE, 7 * SCALE, l.color);
        draw_text(
            &mut img,
            x + 10 * SCALE,
            y,
            &format!("{} {}", l.id, l.name),
            [255, 255, 255],
        );
    }
    img
}

/// Write an RGB image as PNG, atomically.
pub fn write_png(path: &Path, img: &Rgb) -> std::io::Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    crate::io::atomic::write_atomic(path, |f| {
        let mut buf = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut buf, img.width as u32, img.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(std::io::Error::other)?;
            w.write_image_data(&img.data)
                .map_err(std::io::Error::other)?;
        }
        f.write_all(&buf)
    })
}

fn text_width(s: &str) -> usize {
    s.chars().count() * 6 * SCALE
}

/// Draw `s` with the 5×7 font at `SCALE`, top-left at (x, y).
fn draw_text(img: &mut Rgb, x: usize, y: usize, s: &str, color: [u8; 3]) {
    for (n, ch) in s.chars().enumerate() {
        let g = glyph(ch);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    img.fill(
                        x + (n * 6 + col) * SCALE,
                        y + row * SCALE,
                        SCALE,
                        SCALE,
                        color,
                    );
                }
            }
        }
    }
}

/// A 5×7 bitmap glyph: 7 rows, bit 4 = leftmost column. Lowercase prints as uppercase;
/// characters without a glyph print as `?`.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        ' ' => [0; 7],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '\'' => [0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00],
        '&' => [0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::labels_sidecar::label_table;
    use ndarray::Array3;

    #[test]
    fn preview_orientation_overlay_and_png() {
        // 20×10×6 volume, 1×2×5 mm; HU rises along x (R); label 1 where x ≥ 15 (patient right).
        let hu = Array3::from_shape_fn((20, 10, 6), |(i, _, _)| -100.0 + 20.0 * i as f32);
        let labels = Array3::from_shape_fn((20, 10, 6), |(i, _, _)| u16::from(i >= 15));
        let aff = Affine::from_spacing([1.0, 2.0, 5.0]);
        let p = extract(hu.view(), labels.view(), None, &aff);
        let ax = &p.panels[0];
        assert_eq!(ax.hu.dim(), (10, 20));
        // Radiological: column 0 is the patient's right (largest x).
        assert_eq!(ax.labels[[0, 0]], 1);
        assert_eq!(ax.labels[[0, 19]], 0);
        assert_eq!(ax.spacing, [2.0, 1.0]);
        assert_eq!(p.panels[1].hu.dim(), (6, 20));
        assert_eq!(p.panels[2].hu.dim(), (6, 10));
        let legend = label_table(2, &[(1, "tumour".into())]);
        let img = render(&p, (-100.0, 280.0), &legend, "case x");
        // Axial panel: 20 mm × 30 mm extents, largest extent (30 mm) = 320 px.
        let top = GAP + LINE * 2;
        let left = img.pixel(GAP + 1, top + 1);
        assert!(
            left[0] > left[1],
            "overlay red on the patient's right: {left:?}"
        );
        let right_px = img.pixel(GAP + 200, top + 1);
        assert_eq!(right_px[0], right_px[1], "no overlay on the left side");
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("p.png");
        write_png(&path, &img).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!(
            (info.width as usize, info.height as usize),
            (img.width, img.height)
        );
        assert_eq!(&buf[..info.buffer_size()], &img.data[..]);

        // With an uncertainty map: a second row, hot where the map is high (patient left).
        let u = Array3::from_shape_fn((20, 10, 6), |(i, _, _)| if i < 5 { 0.4f32 } else { 0.0 });
        let pu = extract(hu.view(), labels.view(), Some(u.view()), &aff);
        let with = render(&pu, (-100.0, 280.0), &legend, "case x");
        assert!(with.height > img.height);
        let panels_h = img.height - top - GAP - LINE - GAP; // one legend line
        let row = top + panels_h + GAP + LINE + 1;
        let hot = with.pixel(GAP + 205, row);
        let cold = with.pixel(GAP + 1, row);
        assert!(
            hot[0] > 200 && hot[1] > 200,
            "yellow where u is the max: {hot:?}"
        );
        assert!(cold[0] < 100, "dark where u is 0: {cold:?}");
    }
}
