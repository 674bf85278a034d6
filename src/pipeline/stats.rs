//! Per-label statistics of a label volume against its input: voxel count, volume in ml (from
//! the affine's voxel volume) and mean HU, accumulated slice by slice while labels are built.

use ndarray::ArrayView2;

use super::labels_sidecar::LabelInfo;

/// Counts and HU sums per label value (and, with `--uncertainty`, uncertainty sums and the
/// count of voxels above [`UNCERTAIN_BINARY`] / [`UNCERTAIN_ENTROPY`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelAccumulator {
    counts: Vec<u64>,
    hu_sums: Vec<f64>,
    u_sums: Vec<f64>,
    uncertain: Vec<u64>,
    with_uncertainty: bool,
}

/// A binary voxel is "uncertain" when the standard deviation of its foreground probability
/// over the draws exceeds 0.1 (the draws disagree by more than a tenth of the range on
/// average; a voxel whose draws split half and half has 0.5).
pub const UNCERTAIN_BINARY: f32 = 0.1;
/// A multi-class voxel is "uncertain" when the entropy of its mean class probabilities exceeds
/// 0.5 nats (e.g. 0.8 / 0.2 between two classes is 0.50 nats; one sure class is 0).
pub const UNCERTAIN_ENTROPY: f32 = 0.5;

impl LabelAccumulator {
    pub fn new(classes: usize) -> LabelAccumulator {
        LabelAccumulator {
            counts: vec![0; classes],
            hu_sums: vec![0.0; classes],
            ..Default::default()
        }
    }

    /// Label values counted so far (at least the `classes` it was made for).
    pub fn classes(&self) -> usize {
        self.counts.len()
    }

    /// Also accumulate uncertainty per label ([`Self::add_uncertainty`]).
    pub fn with_uncertainty(mut self) -> LabelAccumulator {
        self.with_uncertainty = true;
        self.u_sums = vec![0.0; self.counts.len()];
        self.uncertain = vec![0; self.counts.len()];
        self
    }

    fn grow(&mut self, n: usize) {
        if n > self.counts.len() {
            self.counts.resize(n, 0);
            self.hu_sums.resize(n, 0.0);
            if self.with_uncertainty {
                self.u_sums.resize(n, 0.0);
                self.uncertain.resize(n, 0);
            }
        }
    }

    /// Add one slice's uncertainty (same shape as its labels); `threshold` decides which
    /// voxels count as uncertain.
    pub fn add_uncertainty(
        &mut self,
        labels: ArrayView2<'_, u16>,
        uncertainty: ArrayView2<'_, f32>,
        threshold: f32,
    ) {
        debug_assert_eq!(labels.dim(), uncertainty.dim());
        if !self.with_uncertainty {
            *self = std::mem::take(self).with_uncertainty();
        }
        for (&l, &u) in labels.iter().zip(uncertainty.iter()) {
            let l = l as usize;
            self.grow(l + 1);
            self.u_sums[l] += f64::from(u);
            self.uncertain[l] += u64::from(u > threshold);
        }
    }

    /// Add one slice: `labels` and `hu` have the same shape.
    pub fn add_slice(&mut self, labels: ArrayView2<'_, u16>, hu: ArrayView2<'_, f32>) {
        debug_assert_eq!(labels.dim(), hu.dim());
        for (&l, &v) in labels.iter().zip(hu.iter()) {
            let l = l as usize;
            self.grow(l + 1);
            self.counts[l] += 1;
            self.hu_sums[l] += f64::from(v);
        }
    }

    pub fn merge(mut self, other: LabelAccumulator) -> LabelAccumulator {
        if other.with_uncertainty && !self.with_uncertainty {
            self = self.with_uncertainty();
        }
        self.grow(other.counts.len());
        for (i, (c, s)) in other.counts.iter().zip(&other.hu_sums).enumerate() {
            self.counts[i] += c;
            self.hu_sums[i] += s;
        }
        for (i, (u, n)) in other.u_sums.iter().zip(&other.uncertain).enumerate() {
            self.u_sums[i] += u;
            self.uncertain[i] += n;
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
                    mean_uncertainty: (self.with_uncertainty && voxels > 0).then(|| {
                        self.u_sums.get(id as usize).copied().unwrap_or(0.0) / voxels as f64
                    }),
                    uncertain_ml: self.with_uncertainty.then(|| {
                        self.uncertain.get(id as usize).copied().unwrap_or(0) as f64 * voxel_ml
                    }),
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
    /// `--uncertainty`: mean voxel uncertainty over the label (std of the foreground
    /// probability for binary models, entropy in nats for multi-class ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_uncertainty: Option<f64>,
    /// `--uncertainty`: volume (ml) of the label whose uncertainty exceeds
    /// [`UNCERTAIN_BINARY`] (binary) or [`UNCERTAIN_ENTROPY`] (multi-class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncertain_ml: Option<f64>,
}

/// A plain-text table of statistics for the terminal.
pub fn format_table(case: &str, stats: &[LabelStat]) -> String {
    let mut s = format!("{case}\n");
    let with_u = stats.iter().any(|st| st.uncertain_ml.is_some());
    s.push_str(&format!(
        "  {:>5}  {:<28} {:>12} {:>12} {:>9}",
        "label", "name", "voxels", "volume_ml", "mean_HU"
    ));
    if with_u {
        s.push_str(&format!(" {:>10} {:>14}", "mean_unc", "uncertain_ml"));
    }
    s.push('\n');
    for st in stats {
        let hu = st
            .mean_hu
            .map(|h| format!("{h:.1}"))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "  {:>5}  {:<28} {:>12} {:>12.3} {:>9}",
            st.label, st.name, st.voxels, st.volume_ml, hu
        ));
        if with_u {
            let mu = st
                .mean_uncertainty
                .map(|u| format!("{u:.4}"))
                .unwrap_or_else(|| "-".into());
            s.push_str(&format!(
                " {mu:>10} {:>14.3}",
                st.uncertain_ml.unwrap_or(0.0)
            ));
        }
        s.push('\n');
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
