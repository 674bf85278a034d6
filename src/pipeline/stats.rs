//! Per-label statistics of a label volume against its input: voxel count, volume in ml (from
//! the affine's voxel volume) and mean HU, accumulated slice by slice while labels are built.

use ndarray::ArrayView2;

use super::labels_sidecar::LabelInfo;

/// Counts and HU sums per label value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelAccumulator {
    counts: Vec<u64>,
    hu_sums: Vec<f64>,
}

impl LabelAccumulator {
    pub fn new(classes: usize) -> LabelAccumulator {
        LabelAccumulator {
            counts: vec![0; classes],
            hu_sums: vec![0.0; classes],
        }
    }

    /// Add one slice: `labels` and `hu` have the same shape.
    pub fn add_slice(&mut self, labels: ArrayView2<'_, u16>, hu: ArrayView2<'_, f32>) {
        debug_assert_eq!(labels.dim(), hu.dim());
        for (&l, &v) in labels.iter().zip(hu.iter()) {
            let l = l as usize;
            if l >= self.counts.len() {
                self.counts.resize(l + 1, 0);
                self.hu_sums.resize(l + 1, 0.0);
            }
            self.counts[l] += 1;
            self.hu_sums[l] += f64::from(v);
        }
    }

    pub fn merge(mut self, other: LabelAccumulator) -> LabelAccumulator {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
            self.hu_sums.resize(other.counts.len(), 0.0);
        }
        for (i, (c, s)) in other.counts.iter().zip(&other.hu_sums).enumerate() {
            self.counts[i] += c;
            self.hu_sums[i] += s;
        }
        self
    }

    /// Statistics of every non-background label of `table` (and of any other nonzero value
    /// found), with `voxel_ml` millilitres per voxel.
    pub fn finish(&self, voxel_ml: f64, table: &[LabelInfo]) -> Vec<LabelStat> {
        let mut ids: Vec<u16> = table.iter().map(|l| l.id).filter(|&i| i != 0).collect();
        for (i, &c) in self.counts.iter().enumerate().skip(1) {
            if c > 0 && !ids.contains(&(i as u16)) {
                ids.push(i as u16);
            }
        }
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| {
                let voxels = self.counts.get(id as usize).copied().unwrap_or(0);
                let sum = self.hu_sums.get(id as usize).copied().unwrap_or(0.0);
                LabelStat {
                    label: id,
                    name: table
                        .iter()
                        .find(|l| l.id == id)
                        .map(|l| l.name.clone())
                        .unwrap_or_else(|| format!("label {id}")),
                    voxels,
                    volume_ml: voxels as f64 * voxel_ml,
                    mean_hu: (voxels > 0).then(|| sum / voxels as f64),
                }
            })
            .collect()
    }
}

/// One label's statistics (part of the run report and `--json` lines).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LabelStat {
    pub label: u16,
    pub name: String,
    pub voxels: u64,
    pub volume_ml: f64,
    /// Mean input HU over the label; `null` for an empty label.
    pub mean_hu: Option<f64>,
}

/// A plain-text table of statistics for the terminal.
pub fn format_table(case: &str, stats: &[LabelStat]) -> String {
    let mut s = format!("{case}\n");
    s.push_str(&format!(
        "  {:>5}  {:<28} {:>12} {:>12} {:>9}\n",
        "label", "name", "voxels", "volume_ml", "mean_HU"
    ));
    for st in stats {
        let hu = st
            .mean_hu
            .map(|h| format!("{h:.1}"))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "  {:>5}  {:<28} {:>12} {:>12.3} {:>9}\n",
            st.label, st.name, st.voxels, st.volume_ml, hu
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::labels_sidecar::label_table;
    use ndarray::array;

    #[test]
    fn counts_volume_and_mean_hu() {
        let mut a = LabelAccumulator::new(3);
        a.add_slice(
            array![[0u16, 1], [1, 2]].view(),
            array![[-1000f32, 40.0], [60.0, 300.0]].view(),
        );
        let mut b = LabelAccumulator::new(3);
        b.add_slice(array![[1u16, 0]].view(), array![[50f32, 0.0]].view());
        let acc = a.merge(b);
        // 0.8 × 0.8 × 2.5 mm = 1.6 mm³ = 0.0016 ml per voxel
        let st = acc.finish(0.0016, &label_table(3, &[(1, "liver".into())]));
        assert_eq!(st.len(), 2);
        assert_eq!(
            (st[0].label, st[0].name.as_str(), st[0].voxels),
            (1, "liver", 3)
        );
        assert!((st[0].volume_ml - 0.0048).abs() < 1e-12);
        assert_eq!(st[0].mean_hu, Some(50.0));
        assert_eq!(st[1].mean_hu, Some(300.0));
        let empty = LabelAccumulator::new(2).finish(1.0, &label_table(2, &[]));
        assert_eq!(empty[0].voxels, 0);
        assert_eq!(empty[0].mean_hu, None);
        assert!(format_table("c", &st).contains("liver"));
    }
}
