//! Validation during training: single-step inference (EMA weights, the official
//! `get_dice_loop` recipe with one shared noise draw) on held-out volumes, reassembled on the
//! input grid with the pipeline's postprocessing, scored with the 3-D Dice per class.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use ndarray::{Array3, Axis};

use crate::model::sdseg::{Output, Sdseg};
use crate::pipeline::segmenter::{NoiseMode, NoiseSource};
use crate::pipeline::{
    binary_slice_to_native, logits_slice_to_native, Pipeline, Reassembler, ResizeBack, SliceSource,
};
use crate::volume::Volume;

use super::data::{model_labels, LabelledVolume};
use super::ema::Ema;
use super::model::{TrainModel, UNET};
use super::TrainError;

/// A held-out case: image volume and ground truth in model class ids.
#[derive(Clone, Debug)]
pub struct ValCase {
    pub id: String,
    pub volume: Volume,
    pub gt: Array3<u16>,
}

pub fn val_cases(cases: Vec<LabelledVolume>, pipeline: &Pipeline) -> Vec<ValCase> {
    cases
        .into_iter()
        .map(|c| ValCase {
            gt: model_labels(&c.labels, pipeline),
            id: c.id,
            volume: c.volume,
        })
        .collect()
}

/// The inference model for the current weights: UNet from the EMA shadows when given
/// (what the official evaluation uses), else the training weights.
pub fn inference_model(model: &TrainModel, ema: Option<&Ema>) -> Result<Sdseg, TrainError> {
    let mut root: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in model.cond_params() {
        root.insert(k, v.as_tensor().detach());
    }
    for (k, t) in &model.first_stage.tensors {
        root.insert(k.clone(), t.clone());
    }
    let prefix = format!("{UNET}.");
    let unet: HashMap<String, Tensor> = match ema {
        Some(e) => e
            .shadows()
            .iter()
            .map(|(k, t)| (k[prefix.len()..].to_string(), t.clone()))
            .collect(),
        None => model
            .unet_params()
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), v.as_tensor().detach()))
            .collect(),
    };
    let mut config = model.config.clone();
    config.params.scale_factor = Some(model.scale_factor.unwrap_or(1.0) as f64);
    let vb = VarBuilder::from_tensors(root, DType::F32, &model.device);
    let unet_vb = VarBuilder::from_tensors(unet, DType::F32, &model.device);
    Ok(Sdseg::from_var_builders(
        &config,
        vb,
        unet_vb,
        &model.device,
        DType::F32,
    )?)
}

/// Segment a whole volume: slices through `sdseg` in batches of `batch`, soft maps resized
/// back bilinearly and thresholded / argmaxed, stacked on the input grid (model class ids).
pub fn predict_volume(
    sdseg: &Sdseg,
    case_id: &str,
    volume: &Volume,
    pipeline: &Pipeline,
    noise: &NoiseSource,
    batch: usize,
) -> Result<Array3<u16>, TrainError> {
    let src = SliceSource::new(volume, pipeline);
    let geom = src.geometry().clone();
    let s = geom.model_size;
    let mut re = Reassembler::new(&geom);
    let n = src.n_slices();
    let batch = batch.max(1);
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let b = end - start;
        let images = Tensor::from_vec(src.model_input(start..end), (b, 3, s, s), sdseg.device())?;
        let ids: Vec<usize> = (start..end).collect();
        let nz = noise.batch(case_id, &ids)?;
        match sdseg.segment(&images, &nz, None)? {
            Output::Binary { mask_prob, .. } => {
                let p = mask_prob
                    .to_dtype(DType::F32)?
                    .to_device(&candle_core::Device::Cpu)?;
                let v = p.flatten_all()?.to_vec1::<f32>()?;
                let arr = ndarray::Array3::from_shape_vec((b, s, s), v)
                    .map_err(|e| TrainError::Internal(e.to_string()))?;
                for (i, sl) in arr.axis_iter(Axis(0)).enumerate() {
                    let lab = binary_slice_to_native(sl, &geom, ResizeBack::Bilinear)?;
                    re.insert(start + i, lab.view())?;
                }
            }
            Output::MultiClass {
                logits, class_ids, ..
            } => {
                let k = class_ids.len();
                let v = logits
                    .to_dtype(DType::F32)?
                    .to_device(&candle_core::Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let arr = ndarray::Array4::from_shape_vec((b, k, s, s), v)
                    .map_err(|e| TrainError::Internal(e.to_string()))?;
                for (i, sl) in arr.axis_iter(Axis(0)).enumerate() {
                    let lab = logits_slice_to_native(sl, &geom, ResizeBack::Bilinear)?;
                    let lab = lab.mapv(|c| class_ids.get(c as usize).map_or(c, |&id| id as u16));
                    re.insert(start + i, lab.view())?;
                }
            }
        }
    }
    Ok(re.finish()?)
}

/// 3-D Dice of class `c`; None when the class is absent from both volumes.
pub fn dice(pred: &Array3<u16>, gt: &Array3<u16>, c: u16) -> Option<f64> {
    let (mut tp, mut np, mut ng) = (0u64, 0u64, 0u64);
    for (&p, &g) in pred.iter().zip(gt.iter()) {
        let (p, g) = (p == c, g == c);
        tp += u64::from(p && g);
        np += u64::from(p);
        ng += u64::from(g);
    }
    (np + ng > 0).then(|| 2.0 * tp as f64 / (np + ng) as f64)
}

/// Validation scores.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ValReport {
    /// (case id, [(class, Dice)])
    pub cases: Vec<(String, Vec<(u16, f64)>)>,
    /// Mean over cases of the mean foreground Dice of each case.
    pub mean_dice: f64,
}

/// Validate `sdseg` on `cases`; with `out_dir`, write `pred/<id>.nii.gz` and `gt/<id>.nii.gz`
/// there (for `sdseg-volume eval --pred out/pred --gt out/gt`).
pub fn validate(
    sdseg: &Sdseg,
    cases: &[ValCase],
    pipeline: &Pipeline,
    seed: u64,
    batch: usize,
    out_dir: Option<&Path>,
) -> Result<ValReport, TrainError> {
    let noise = NoiseSource::new(NoiseMode::Shared, seed, sdseg.latent_shape());
    let fg: Vec<u16> = pipeline.labels.foreground.clone();
    let mut report = ValReport::default();
    let mut sum = 0.0;
    let mut n = 0usize;
    for case in cases {
        let pred = predict_volume(sdseg, &case.id, &case.volume, pipeline, &noise, batch)?;
        let scores: Vec<(u16, f64)> = fg
            .iter()
            .filter_map(|&c| dice(&pred, &case.gt, c).map(|d| (c, d)))
            .collect();
        if !scores.is_empty() {
            sum += scores.iter().map(|x| x.1).sum::<f64>() / scores.len() as f64;
            n += 1;
        }
        if let Some(dir) = out_dir {
            for (sub, arr) in [("pred", &pred), ("gt", &case.gt)] {
                let d = dir.join(sub);
                std::fs::create_dir_all(&d).map_err(|source| TrainError::Write {
                    path: d.clone(),
                    source,
                })?;
                let p = d.join(format!("{}.nii.gz", case.id));
                crate::io::nifti::write_labels(&p, arr, &case.volume).map_err(|e| {
                    TrainError::Write {
                        path: p.clone(),
                        source: std::io::Error::other(e.to_string()),
                    }
                })?;
            }
        }
        report.cases.push((case.id.clone(), scores));
    }
    report.mean_dice = if n > 0 { sum / n as f64 } else { f64::NAN };
    Ok(report)
}
