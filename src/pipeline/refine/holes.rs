//! Per-slice hole filling of one label (`scipy.ndimage.binary_fill_holes` on each 2D slice of
//! `labels == label`, applied to the background voxels only).
//!
//! In a slice, the voxels that are not `label` and are 4-connected to the slice border are
//! *outside*; every other non-`label` voxel lies in a hole. scipy's default structure for
//! `binary_fill_holes` is the cross (4-connectivity for the background), so a label ring that
//! is closed only through diagonal steps still encloses its inside.

use ndarray::{ArrayViewMut3, Axis};
use rayon::prelude::*;

const OPEN: u8 = 0;
const LABEL: u8 = 1;
const OUTSIDE: u8 = 2;

/// What a fill changed: voxels filled, and how many of them `hit` accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FillCount {
    pub filled: u64,
    pub hits: u64,
}

/// Fill the holes of `label` in every slice of `block` along axis 2: background (0) voxels of
/// a hole become `label`; voxels of other labels inside a hole are kept. The in-plane border
/// of `block` counts as the slice border, so `block` must hold the label's voxels with a margin
/// of one voxel in axes 0 and 1 wherever it does not reach the volume's border (then the holes
/// found in the block are exactly the holes of the whole slice). `hit` is asked about every
/// filled voxel (block coordinates) and the accepted ones are counted.
pub(crate) fn fill_holes(
    mut block: ArrayViewMut3<'_, u16>,
    label: u16,
    hit: &(dyn Fn([usize; 3]) -> bool + Sync),
) -> FillCount {
    let (ni, nj, _) = block.dim();
    if ni == 0 || nj == 0 {
        return FillCount::default();
    }
    block
        .axis_iter_mut(Axis(2))
        .into_par_iter()
        .enumerate()
        .map_init(
            || (Vec::<u8>::new(), Vec::<u32>::new()),
            |(state, queue), (k, mut slice)| {
                state.clear();
                state.resize(ni * nj, OPEN);
                let mut any = false;
                for i in 0..ni {
                    for j in 0..nj {
                        if slice[[i, j]] == label {
                            state[i * nj + j] = LABEL;
                            any = true;
                        }
                    }
                }
                if !any {
                    return FillCount::default();
                }
                queue.clear();
                let mut seed = |idx: usize, state: &mut Vec<u8>| {
                    if state[idx] == OPEN {
                        state[idx] = OUTSIDE;
                        queue.push(idx as u32);
                    }
                };
                for j in 0..nj {
                    seed(j, state);
                    seed((ni - 1) * nj + j, state);
                }
                for i in 0..ni {
                    seed(i * nj, state);
                    seed(i * nj + nj - 1, state);
                }
                while let Some(p) = queue.pop() {
                    let p = p as usize;
                    let (i, j) = (p / nj, p % nj);
                    let mut visit = |q: usize| {
                        if state[q] == OPEN {
                            state[q] = OUTSIDE;
                            queue.push(q as u32);
                        }
                    };
                    if i > 0 {
                        visit(p - nj);
                    }
                    if i + 1 < ni {
                        visit(p + nj);
                    }
                    if j > 0 {
                        visit(p - 1);
                    }
                    if j + 1 < nj {
                        visit(p + 1);
                    }
                }
                let mut count = FillCount::default();
                for (p, &s) in state.iter().enumerate() {
                    if s != OPEN {
                        continue;
                    }
                    let (i, j) = (p / nj, p % nj);
                    let v = &mut slice[[i, j]];
                    if *v == 0 {
                        *v = label;
                        count.filled += 1;
                        if hit([i, j, k]) {
                            count.hits += 1;
                        }
                    }
                }
                count
            },
        )
        .reduce(FillCount::default, |a, b| FillCount {
            filled: a.filled + b.filled,
            hits: a.hits + b.hits,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2, Array3};

    fn slice_from(rows: &[&str]) -> Array3<u16> {
        let (ni, nj) = (rows.len(), rows[0].len());
        let a = Array2::from_shape_fn((ni, nj), |(i, j)| {
            let c = rows[i].as_bytes()[j];
            if c == b'.' {
                0
            } else {
                u16::from(c - b'0')
            }
        });
        a.insert_axis(Axis(2))
    }

    fn rows_of(a: &Array3<u16>) -> Vec<String> {
        a.index_axis(Axis(2), 0)
            .outer_iter()
            .map(|r| {
                r.iter()
                    .map(|&v| {
                        if v == 0 {
                            '.'
                        } else {
                            char::from(b'0' + v as u8)
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn fills_enclosed_background_only() {
        let mut a = slice_from(&[
            "........", ".1111...", ".1..1.11", ".1.21.1.", ".1111.11", "........",
        ]);
        let n = fill_holes(a.view_mut(), 1, &|_| true);
        assert_eq!(n, FillCount { filled: 3, hits: 3 });
        assert_eq!(
            rows_of(&a),
            ["........", ".1111...", ".1111.11", ".1121.1.", ".1111.11", "........",],
            "the other label inside the hole stays; the hole at the border is not a hole"
        );
    }

    #[test]
    fn diagonal_ring_encloses_and_background_leaks_only_through_edges() {
        let mut a = slice_from(&[".....", "..1..", ".1.1.", "..1..", "....."]);
        assert_eq!(fill_holes(a.view_mut(), 1, &|_| false).filled, 1);
        assert_eq!(a[[2, 2, 0]], 1);
    }

    #[test]
    fn slices_are_independent_and_border_holes_are_open() {
        let mut a = Array3::<u16>::zeros((5, 5, 3));
        // Slice 0: a closed ring. Slice 1: the same ring with a gap to the block border.
        for k in 0..2 {
            a.slice_mut(s![1..4, 1..4, k]).fill(1);
            a[[2, 2, k]] = 0;
        }
        a[[1, 2, 1]] = 0;
        let n = fill_holes(a.view_mut(), 1, &|p| p[2] == 0);
        assert_eq!(n, FillCount { filled: 1, hits: 1 });
        assert_eq!(a[[2, 2, 0]], 1);
        assert_eq!(a[[2, 2, 1]], 0);
        assert_eq!(a[[1, 2, 1]], 0);
        assert_eq!(a.slice(s![.., .., 2]).sum(), 0);
    }
}
