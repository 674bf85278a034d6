//! How well a voxel-wise uncertainty map points at a mask's errors: the area under the ROC
//! curve (AUROC) of the uncertainty as a score for "this voxel's label is wrong".
//!
//! 1.0: every wrong voxel is more uncertain than every right one; 0.5: no better than chance.
//! Ties count half (the Mann–Whitney U statistic), as `sklearn.metrics.roc_auc_score`.

/// AUROC of `scores` for the positives `positive` (same length); `None` when there are no
/// positives or no negatives (the curve is undefined).
pub fn auroc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), positive.len(), "one score per voxel");
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| scores[a as usize].total_cmp(&scores[b as usize]));
    // Sum of the (average, 1-based) ranks of the positives.
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < order.len() {
        let v = scores[order[i] as usize];
        let mut j = i;
        while j < order.len() && scores[order[j] as usize] == v {
            j += 1;
        }
        let avg = (i + 1 + j) as f64 / 2.0;
        let pos = order[i..j]
            .iter()
            .filter(|&&o| positive[o as usize])
            .count();
        rank_sum += avg * pos as f64;
        i = j;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_chance_and_ties() {
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(auroc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        // 6 positive-negative pairs: 5 won, 1 tied (0.35 vs 0.35) → 5.5 / 6.
        let a = auroc(
            &[0.1, 0.4, 0.35, 0.8, 0.35],
            &[false, true, false, true, true],
        )
        .unwrap();
        assert!((a - 11.0 / 12.0).abs() < 1e-12, "{a}");
    }
}
