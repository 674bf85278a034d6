//! Connected components of a label volume in linear time: runs along one axis, joined by a
//! union-find over runs.
//!
//! A *component* is a maximal 26-connected set of voxels with the same non-zero value
//! (scipy's `ndimage.label(mask, structure=np.ones((3, 3, 3)))` on `labels == v`, for every
//! value `v` at once). Two voxels are 26-neighbours when each coordinate differs by at most 1.
//!
//! **How.** The volume is cut into *rows* along its fastest-varying axis (the one with the
//! smallest stride, so reading a row walks memory in order); a row is stored as its *runs*
//! (maximal stretches of one non-zero value: start, end, value). A run touches a run of one of
//! the 8 neighbouring rows when their extents, each widened by one voxel, overlap and the values
//! match; those pairs are merged in a union-find whose links always point to the smaller run
//! index, so the first run of a component is its root and one pass over the runs numbers the
//! components. They are then renumbered in C-order scan of their first voxel (smallest
//! `(i, j, k)`), scipy's numbering, whatever the memory layout. Work and memory are
//! proportional to the voxels read once plus the runs (a few per row for segmentation masks,
//! far fewer than voxels).
//!
//! **Parallel.** Rows are grouped into slabs along the outer row axis; each slab extracts its
//! runs and merges within itself on its own thread, then the pairs of rows that straddle two
//! slabs are merged (a small sequential step: two rows per boundary).

use std::ops::Range;

use ndarray::{ArrayView1, ArrayView3, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::RefineError;

/// A voxel type whose non-zero values form components (`u16` labels, `bool` masks).
pub trait Voxel: Copy + Sync {
    fn value(self) -> u16;
}

impl Voxel for u16 {
    fn value(self) -> u16 {
        self
    }
}

impl Voxel for bool {
    fn value(self) -> u16 {
        u16::from(self)
    }
}

/// One stretch of a row with one non-zero value: positions `start..end` along the row axis.
#[derive(Clone, Copy, Debug)]
struct Run {
    start: u32,
    end: u32,
    value: u16,
}

/// One connected component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// The voxel value shared by the component.
    pub label: u16,
    /// Number of voxels.
    pub voxels: u64,
    /// Bounding box per array axis (`lo..hi`, `hi` exclusive).
    pub bbox: [Range<usize>; 3],
    /// The first voxel in C order (lexicographically smallest `[i, j, k]`).
    pub first: [usize; 3],
}

/// The components of a volume (see the module documentation), numbered 0.. in C-order scan
/// of their first voxel (as `scipy.ndimage.label` numbers them, from 1).
#[derive(Clone, Debug)]
pub struct Components {
    shape: [usize; 3],
    /// The array axes in labelling order: rows are indexed by (`order[0]`, `order[1]`) and run
    /// along `order[2]`.
    order: [usize; 3],
    /// `shape` permuted by `order`.
    dims: [usize; 3],
    runs: Vec<Run>,
    /// Runs of row `a * dims[1] + b` are `runs[row_start[row]..row_start[row + 1]]`.
    row_start: Vec<usize>,
    /// Component of each run.
    run_component: Vec<u32>,
    components: Vec<Component>,
}

/// Rows per slab: enough slabs to keep every thread busy, at least a few rows each.
fn slab_rows(outer: usize) -> usize {
    let slabs = rayon::current_num_threads().max(1) * 4;
    outer.div_ceil(slabs).max(4)
}

/// The axis rows run along: smallest absolute stride among axes longer than 1 (the last axis
/// when none is), then the other two in array order.
fn labelling_order(shape: [usize; 3], strides: &[isize]) -> [usize; 3] {
    let r = (0..3)
        .filter(|&a| shape[a] > 1)
        .min_by_key(|&a| (strides[a].unsigned_abs(), std::cmp::Reverse(a)))
        .unwrap_or(2);
    let mut rest = (0..3).filter(|&a| a != r);
    let first = rest.next().unwrap_or(0);
    let second = rest.next().unwrap_or(1);
    [first, second, r]
}

fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let grand = parent[parent[x as usize] as usize];
        parent[x as usize] = grand;
        x = grand;
    }
    x
}

/// Merge the sets of `a` and `b`; the root with the smaller index stays the root, so every
/// link points to a smaller index.
fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi as usize] = lo;
    }
}

/// Merge every run of `r` with the runs of the neighbouring row `s` it touches (extents
/// overlapping after widening by one voxel, same value). `r` and `s` index `runs`.
fn connect_rows(runs: &[Run], parent: &mut [u32], r: Range<usize>, s: Range<usize>) {
    let mut first = s.start;
    for x in r {
        let rx = runs[x];
        while first < s.end && runs[first].end < rx.start {
            first += 1;
        }
        let mut y = first;
        while y < s.end && runs[y].start <= rx.end {
            if runs[y].value == rx.value {
                union(parent, x as u32, y as u32);
            }
            y += 1;
        }
    }
}

/// Append the runs of one row to `out`.
fn row_runs<T: Voxel>(row: ArrayView1<'_, T>, out: &mut Vec<Run>) {
    let mut push = |start: usize, end: usize, value: u16| {
        out.push(Run {
            start: start as u32,
            end: end as u32,
            value,
        })
    };
    let mut current: Option<(usize, u16)> = None;
    let mut visit = |pos: usize, v: u16| match current {
        Some((_, cv)) if cv == v => {}
        Some((start, cv)) => {
            push(start, pos, cv);
            current = (v != 0).then_some((pos, v));
        }
        None if v != 0 => current = Some((pos, v)),
        None => {}
    };
    match row.as_slice() {
        Some(s) => s.iter().enumerate().for_each(|(p, v)| visit(p, v.value())),
        None => row
            .iter()
            .enumerate()
            .for_each(|(p, v)| visit(p, v.value())),
    }
    if let Some((start, cv)) = current {
        push(start, row.len(), cv);
    }
}

/// One slab's runs, row offsets (relative) and local union-find.
struct Slab {
    runs: Vec<Run>,
    row_start: Vec<usize>,
    parent: Vec<u32>,
}

impl Components {
    /// Label the components of `volume` (26-connectivity, equal non-zero values).
    ///
    /// # Errors
    /// [`RefineError::VolumeTooLarge`] beyond `u32::MAX` voxels (run indices are 32-bit).
    pub fn new<T: Voxel>(volume: ArrayView3<'_, T>) -> Result<Components, RefineError> {
        let (n0, n1, n2) = volume.dim();
        let shape = [n0, n1, n2];
        if volume.len() > u32::MAX as usize {
            return Err(RefineError::VolumeTooLarge { shape });
        }
        let order = labelling_order(shape, volume.strides());
        let dims = order.map(|a| shape[a]);
        if volume.is_empty() {
            return Ok(Components {
                shape,
                order,
                dims,
                runs: Vec::new(),
                row_start: vec![0; dims[0] * dims[1] + 1],
                run_component: Vec::new(),
                components: Vec::new(),
            });
        }
        let view = volume.permuted_axes(order);
        let step = slab_rows(dims[0]);

        let slabs: Vec<Slab> = view
            .axis_chunks_iter(Axis(0), step.max(1))
            .into_par_iter()
            .map(|chunk| {
                let mut runs = Vec::new();
                let mut row_start = Vec::with_capacity(chunk.len_of(Axis(0)) * dims[1] + 1);
                for plane in chunk.outer_iter() {
                    for row in plane.outer_iter() {
                        row_start.push(runs.len());
                        row_runs(row, &mut runs);
                    }
                }
                row_start.push(runs.len());
                let mut parent: Vec<u32> = (0..runs.len() as u32).collect();
                let rows = chunk.len_of(Axis(0));
                let at =
                    |a: usize, b: usize| row_start[a * dims[1] + b]..row_start[a * dims[1] + b + 1];
                for a in 0..rows {
                    for b in 0..dims[1] {
                        let here = at(a, b);
                        if here.is_empty() {
                            continue;
                        }
                        if b + 1 < dims[1] {
                            connect_rows(&runs, &mut parent, here.clone(), at(a, b + 1));
                        }
                        if a + 1 < rows {
                            for nb in b.saturating_sub(1)..(b + 2).min(dims[1]) {
                                connect_rows(&runs, &mut parent, here.clone(), at(a + 1, nb));
                            }
                        }
                    }
                }
                Slab {
                    runs,
                    row_start,
                    parent,
                }
            })
            .collect();

        // Concatenate the slabs (indices shifted), then merge across slab boundaries.
        let total: usize = slabs.iter().map(|s| s.runs.len()).sum();
        let mut runs = Vec::with_capacity(total);
        let mut parent = Vec::with_capacity(total);
        let mut row_start = Vec::with_capacity(dims[0] * dims[1] + 1);
        let mut boundaries = Vec::new();
        for slab in slabs {
            let base = runs.len();
            if !row_start.is_empty() {
                boundaries.push(row_start.len());
            }
            row_start.extend(
                slab.row_start[..slab.row_start.len() - 1]
                    .iter()
                    .map(|&s| s + base),
            );
            parent.extend(slab.parent.iter().map(|&p| p + base as u32));
            runs.extend(slab.runs);
        }
        row_start.push(runs.len());
        // `boundaries` holds the first row of every slab but the first (by row index).
        let at = |row: usize| row_start[row]..row_start[row + 1];
        for &first_row in &boundaries {
            let a = first_row / dims[1];
            if a == 0 {
                continue;
            }
            for b in 0..dims[1] {
                let here = at((a - 1) * dims[1] + b);
                if here.is_empty() {
                    continue;
                }
                for nb in b.saturating_sub(1)..(b + 2).min(dims[1]) {
                    connect_rows(&runs, &mut parent, here.clone(), at(a * dims[1] + nb));
                }
            }
        }

        // Every link points to a smaller index, so in index order each run's parent already
        // holds its component number when the run is reached: number the roots, copy the rest.
        let mut components: Vec<Component> = Vec::new();
        let mut row = 0;
        for i in 0..runs.len() {
            while row_start[row + 1] <= i {
                row += 1;
            }
            let p = parent[i] as usize;
            let c = if p == i {
                components.push(Component {
                    label: runs[i].value,
                    voxels: 0,
                    // Empty until the first run widens it.
                    bbox: std::array::from_fn(|_| Range {
                        start: usize::MAX,
                        end: 0,
                    }),
                    first: [usize::MAX; 3],
                });
                (components.len() - 1) as u32
            } else {
                parent[p]
            };
            parent[i] = c;
            let run = runs[i];
            let comp = &mut components[c as usize];
            comp.voxels += u64::from(run.end - run.start);
            let (a, b) = (row / dims[1], row % dims[1]);
            let mut start = [0; 3];
            start[order[0]] = a;
            start[order[1]] = b;
            start[order[2]] = run.start as usize;
            comp.first = comp.first.min(start);
            for (axis, lo, hi) in [
                (order[0], a, a + 1),
                (order[1], b, b + 1),
                (order[2], run.start as usize, run.end as usize),
            ] {
                let r = &mut comp.bbox[axis];
                r.start = r.start.min(lo);
                r.end = r.end.max(hi);
            }
        }
        // Renumber in C order of the first voxels.
        let mut by_first: Vec<u32> = (0..components.len() as u32).collect();
        by_first.sort_unstable_by_key(|&c| components[c as usize].first);
        let mut rank = vec![0u32; components.len()];
        for (new, &old) in by_first.iter().enumerate() {
            rank[old as usize] = new as u32;
        }
        for c in parent.iter_mut() {
            *c = rank[*c as usize];
        }
        let mut slots: Vec<Option<Component>> = components.into_iter().map(Some).collect();
        let components = by_first
            .iter()
            .map(|&old| slots[old as usize].take().expect("a permutation"))
            .collect();
        Ok(Components {
            shape,
            order,
            dims,
            runs,
            row_start,
            run_component: parent,
            components,
        })
    }

    /// The components, in C-order scan of their first voxel.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    pub fn len(&self) -> usize {
        self.components.len()
    }

    pub fn is_empty(&self) -> bool {
        self.components.is_empty()
    }

    /// The shape of the labelled volume.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The component number + 1 of every voxel (0: background), on the labelled grid.
    pub fn to_array(&self) -> ndarray::Array3<u32> {
        let mut out = ndarray::Array3::<u32>::zeros(self.shape);
        let mut view = out.view_mut().permuted_axes(self.order);
        for a in 0..self.dims[0] {
            for b in 0..self.dims[1] {
                let row = a * self.dims[1] + b;
                for i in self.row_start[row]..self.row_start[row + 1] {
                    let run = self.runs[i];
                    view.slice_mut(ndarray::s![a, b, run.start as usize..run.end as usize])
                        .fill(self.run_component[i] + 1);
                }
            }
        }
        out
    }

    /// For every component, its voxels where `other` holds the component's own label (the
    /// true positives of a prediction's component against a ground truth).
    pub fn overlap_with(&self, other: ArrayView3<'_, u16>) -> Vec<u64> {
        assert_eq!(other.shape(), self.shape, "overlap_with: other grid");
        let view = other.permuted_axes(self.order);
        let mut counts = vec![0u64; self.components.len()];
        for a in 0..self.dims[0] {
            for b in 0..self.dims[1] {
                let row = a * self.dims[1] + b;
                let runs = self.row_start[row]..self.row_start[row + 1];
                if runs.is_empty() {
                    continue;
                }
                let lane = view.slice(ndarray::s![a, b, ..]);
                for i in runs {
                    let run = self.runs[i];
                    let n = lane
                        .slice(ndarray::s![run.start as usize..run.end as usize])
                        .iter()
                        .filter(|&&v| v == run.value)
                        .count();
                    counts[self.run_component[i] as usize] += n as u64;
                }
            }
        }
        counts
    }

    /// Set the voxels of every component `c` with `drop[c]` to 0 in `target`, the block of
    /// the labelled grid that starts at `origin` (the whole volume: `[0; 3]`). Voxels outside
    /// the block are skipped.
    pub fn zero(&self, target: ArrayViewMut3<'_, u16>, origin: [usize; 3], drop: &[bool]) {
        assert_eq!(drop.len(), self.components.len(), "one flag per component");
        if !drop.iter().any(|&d| d) {
            return;
        }
        let o = self.order.map(|a| origin[a]);
        let mut view = target.permuted_axes(self.order);
        let (ta, tb, tr) = view.dim();
        let step = slab_rows(ta);
        view.axis_chunks_iter_mut(Axis(0), step.max(1))
            .into_par_iter()
            .enumerate()
            .for_each(|(n, mut chunk)| {
                for la in 0..chunk.len_of(Axis(0)) {
                    let a = o[0] + n * step + la;
                    for lb in 0..tb {
                        let row = a * self.dims[1] + o[1] + lb;
                        for i in self.row_start[row]..self.row_start[row + 1] {
                            if !drop[self.run_component[i] as usize] {
                                continue;
                            }
                            let run = self.runs[i];
                            let lo = (run.start as usize).max(o[2]);
                            let hi = (run.end as usize).min(o[2] + tr);
                            if lo < hi {
                                chunk
                                    .slice_mut(ndarray::s![la, lb, lo - o[2]..hi - o[2]])
                                    .fill(0);
                            }
                        }
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, ShapeBuilder};
    use rand::{Rng, SeedableRng};

    /// Brute force: flood fill over the 26 neighbours, components numbered in C-order scan of
    /// their first voxel; returns (component + 1 per voxel, labels, sizes).
    fn flood(a: &Array3<u16>) -> (Array3<u32>, Vec<(u16, u64)>) {
        let (n0, n1, n2) = a.dim();
        let mut out = Array3::<u32>::zeros(a.dim());
        let mut comps = Vec::new();
        let mut stack = Vec::new();
        for start in ndarray::indices(a.dim()) {
            let v = a[start];
            if v == 0 || out[start] != 0 {
                continue;
            }
            comps.push((v, 0u64));
            let id = comps.len() as u32;
            out[start] = id;
            stack.push(start);
            while let Some((i, j, k)) = stack.pop() {
                comps.last_mut().unwrap().1 += 1;
                for di in -1i64..=1 {
                    for dj in -1i64..=1 {
                        for dk in -1i64..=1 {
                            let (x, y, z) = (i as i64 + di, j as i64 + dj, k as i64 + dk);
                            if x < 0 || y < 0 || z < 0 {
                                continue;
                            }
                            let p = (x as usize, y as usize, z as usize);
                            if p.0 >= n0 || p.1 >= n1 || p.2 >= n2 || out[p] != 0 || a[p] != v {
                                continue;
                            }
                            out[p] = id;
                            stack.push(p);
                        }
                    }
                }
            }
        }
        (out, comps)
    }

    /// Two labelings are the same partition, numbered alike, with the same sizes.
    fn assert_same_partition(ours: &Components, want: &(Array3<u32>, Vec<(u16, u64)>), what: &str) {
        let got = ours.to_array();
        assert_eq!(got, want.0, "{what}: numbering");
        assert_eq!(ours.len(), want.1.len(), "{what}: component count");
        let mut map = vec![u32::MAX; ours.len() + 1];
        for (g, w) in got.iter().zip(want.0.iter()) {
            assert_eq!(*g == 0, *w == 0, "{what}: background differs");
            if *g == 0 {
                continue;
            }
            let m = &mut map[*g as usize];
            if *m == u32::MAX {
                *m = *w;
            }
            assert_eq!(
                *m, *w,
                "{what}: a component of ours spans two of the flood fill"
            );
        }
        let mut sizes: Vec<(u16, u64)> = ours
            .components()
            .iter()
            .map(|c| (c.label, c.voxels))
            .collect();
        let mut want_sizes = want.1.clone();
        sizes.sort_unstable();
        want_sizes.sort_unstable();
        assert_eq!(sizes, want_sizes, "{what}: labels and sizes");
    }

    #[test]
    fn matches_flood_fill_on_random_volumes_in_any_memory_order() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..40 {
            let shape = (
                rng.random_range(1..14),
                rng.random_range(1..14),
                rng.random_range(1..40),
            );
            let density = rng.random_range(0.05..0.6);
            let values = rng.random_range(1..4u16);
            let c = Array3::from_shape_fn(shape, |_| {
                if rng.random_bool(density) {
                    rng.random_range(1..=values)
                } else {
                    0
                }
            });
            let want = flood(&c);
            assert_same_partition(&Components::new(c.view()).unwrap(), &want, "C order");
            // The same data stored column-major (rows then run along axis 0).
            let mut f = Array3::<u16>::zeros(shape.f());
            f.assign(&c);
            assert_same_partition(&Components::new(f.view()).unwrap(), &want, "F order");
            // A strided, permuted view.
            let p = c.view().permuted_axes([2, 0, 1]);
            let want_p = flood(&p.to_owned());
            assert_same_partition(&Components::new(p).unwrap(), &want_p, "permuted");
            let _ = round;
        }
    }

    #[test]
    fn diagonal_only_contacts_connect_and_values_separate() {
        // Voxels that touch only at a corner (all three coordinates differ by 1).
        let mut a = Array3::<u16>::zeros((4, 4, 4));
        a[[0, 0, 0]] = 1;
        a[[1, 1, 1]] = 1;
        a[[2, 2, 2]] = 1;
        // Edge contact (two coordinates differ).
        a[[3, 0, 3]] = 1;
        a[[2, 1, 3]] = 1;
        // Same place, another value: its own component even though it touches label 1.
        a[[3, 3, 3]] = 2;
        let c = Components::new(a.view()).unwrap();
        let mut got: Vec<(u16, u64)> = c.components().iter().map(|c| (c.label, c.voxels)).collect();
        got.sort_unstable();
        // {000, 111, 222} ; {303, 213} (213 touches 222 at an edge: one component) -> all five.
        assert_eq!(got, vec![(1, 5), (2, 1)]);
        let b = Array3::from_shape_fn((3, 3, 3), |(i, j, k)| {
            u16::from((i, j, k) == (0, 0, 0) || (i, j, k) == (2, 2, 2))
        });
        assert_eq!(
            Components::new(b.view()).unwrap().len(),
            2,
            "a gap of one voxel separates"
        );
    }

    #[test]
    fn slab_boundaries_merge_on_a_tall_volume() {
        // A diagonal line through many slabs along the outer axis.
        let n = 97;
        let zigzag = |i: usize| if i % 8 < 4 { i % 8 } else { 8 - i % 8 };
        let a = Array3::from_shape_fn((n, 5, 3), |(i, j, k)| {
            u16::from(j == zigzag(i) && k == (i / 3) % 2)
        });
        let c = Components::new(a.view()).unwrap();
        assert_same_partition(&c, &flood(&a), "tall");
        let bb = &c.components()[0].bbox;
        assert_eq!(bb[0], 0..n);
    }

    #[test]
    fn bboxes_overlap_counts_and_zeroing() {
        let mut a = Array3::<u16>::zeros((6, 7, 8));
        a.slice_mut(ndarray::s![1..3, 2..5, 0..2]).fill(4);
        a.slice_mut(ndarray::s![4..6, 0..1, 5..8]).fill(4);
        let c = Components::new(a.view()).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.components()[0].bbox, [1..3, 2..5, 0..2]);
        assert_eq!(c.components()[1].bbox, [4..6, 0..1, 5..8]);
        assert_eq!(c.components()[0].voxels, 12);
        let mut gt = Array3::<u16>::zeros((6, 7, 8));
        gt.slice_mut(ndarray::s![1..2, .., ..]).fill(4);
        gt.slice_mut(ndarray::s![4..6, .., ..]).fill(3);
        assert_eq!(c.overlap_with(gt.view()), vec![6, 0]);
        // Zero the second component inside a block that holds only part of it.
        let mut b = a.clone();
        c.zero(
            b.slice_mut(ndarray::s![5..6, .., ..]),
            [5, 0, 0],
            &[false, true],
        );
        assert_eq!(b[[5, 0, 6]], 0);
        assert_eq!(b[[4, 0, 6]], 4, "outside the block: untouched");
        c.zero(b.view_mut(), [0; 3], &[false, true]);
        assert_eq!(b.iter().filter(|&&v| v == 4).count(), 12);
        let empty = Components::new(Array3::<bool>::from_elem((2, 2, 2), false).view()).unwrap();
        assert!(empty.is_empty());
    }
}
