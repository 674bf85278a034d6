//! The serde schema of pipeline files (`Raw*`, unknown fields rejected) and its validation
//! into a [`Pipeline`] ([`build`]): every check names the offending field.

use super::{
    Interpolation, LabelCodes, Labels, ModelSection, Normalise, Origin, Pipeline, PipelineError,
    Remap, SliceFrame, Slicing, Splits, TrainOptions, Variant, Window,
};
use crate::geometry::AxCodes;
use crate::io::derived::Code;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// The raw pipeline with a variant's overrides applied (from the file's base values).
pub(super) fn apply_variant(base: &RawPipeline, v: &Variant) -> RawPipeline {
    let mut raw = base.clone();
    if let Some(w) = v.window {
        raw.window = w;
    }
    if let Some(n) = v.normalise {
        raw.normalise = n;
    }
    if let Some(m) = &v.model {
        raw.model = m.clone();
    }
    if let Some(l) = &v.labels {
        if l.remap.is_some() {
            raw.labels.remap = l.remap.clone();
        }
        if let Some(c) = &l.classes {
            raw.labels.classes = c.clone();
            raw.labels.foreground = None;
        }
        if l.foreground.is_some() {
            raw.labels.foreground = l.foreground.clone();
        }
        for (name, c) in &l.codes {
            raw.labels.codes.insert(name.clone(), c.clone());
        }
    }
    raw
}

/// Model presets whose number of classes is fixed (see `model::config`).
const KNOWN_PRESETS: &[(&str, usize)] =
    &[("sdseg-binary", 2), ("sdseg-cls9", 9), ("sdseg-cls14", 14)];

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    name: String,
    #[serde(default)]
    description: String,
    window: Window,
    normalise: Normalise,
    slicing: RawSlicing,
    labels: RawLabels,
    model: RawModel,
    #[serde(default)]
    splits: Splits,
    #[serde(default)]
    train: TrainOptions,
    #[serde(default)]
    variants: BTreeMap<String, RawVariant>,
}

fn default_size() -> usize {
    256
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlicing {
    frame: String,
    #[serde(default = "default_size")]
    size: usize,
    #[serde(default)]
    resize: Interpolation,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemap {
    #[serde(default)]
    assign: Vec<[u16; 2]>,
    #[serde(default)]
    binarise: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLabels {
    #[serde(default)]
    source: BTreeMap<String, String>,
    #[serde(default)]
    remap: Option<RawRemap>,
    classes: BTreeMap<String, String>,
    #[serde(default)]
    foreground: Option<Vec<u16>>,
    #[serde(default)]
    codes: BTreeMap<String, RawCodes>,
}

/// `[labels.codes]`: a label name → its DICOM codes, each `"SCHEME:VALUE:MEANING"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCodes {
    #[serde(default)]
    category: Option<String>,
    #[serde(rename = "type")]
    property_type: String,
    #[serde(default)]
    modifier: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLabelsOverride {
    #[serde(default)]
    remap: Option<RawRemap>,
    #[serde(default)]
    classes: Option<BTreeMap<String, String>>,
    #[serde(default)]
    foreground: Option<Vec<u16>>,
    #[serde(default)]
    codes: BTreeMap<String, RawCodes>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    preset: String,
    num_classes: usize,
    #[serde(default)]
    weights: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVariant {
    #[serde(default)]
    description: String,
    #[serde(default)]
    window: Option<Window>,
    #[serde(default)]
    normalise: Option<Normalise>,
    #[serde(default)]
    model: Option<RawModel>,
    #[serde(default)]
    labels: Option<RawLabelsOverride>,
}

fn invalid(origin: &Origin, field: &str, message: impl Into<String>) -> PipelineError {
    PipelineError::Invalid {
        origin: origin.clone(),
        field: field.to_string(),
        message: message.into(),
    }
}

fn parse_id_table(
    origin: &Origin,
    field: &str,
    table: &BTreeMap<String, String>,
) -> Result<BTreeMap<u16, String>, PipelineError> {
    let mut out = BTreeMap::new();
    for (k, v) in table {
        let id: u16 = k.trim().parse().map_err(|_| {
            invalid(
                origin,
                &format!("{field}.{k}"),
                format!("'{k}' is not a label id (an integer 0..=65535)"),
            )
        })?;
        if out.insert(id, v.clone()).is_some() {
            return Err(invalid(
                origin,
                &format!("{field}.{k}"),
                format!("label id {id} is listed twice"),
            ));
        }
    }
    Ok(out)
}

/// Validate a raw pipeline section by section; the first error names its field.
pub(super) fn build(raw: RawPipeline, origin: Origin) -> Result<Pipeline, PipelineError> {
    let o = &origin;
    if raw.name.trim().is_empty() {
        return Err(invalid(o, "name", "must not be empty"));
    }
    check_window(o, &raw.window)?;
    check_normalise(o, &raw.normalise)?;
    let slicing = build_slicing(o, &raw.slicing)?;
    let model = build_model(o, &raw.model)?;
    let labels = build_labels(o, &raw.labels, model.num_classes)?;
    check_splits(o, &raw.splits)?;
    if raw.train.min_object_size == Some(0) {
        return Err(invalid(
            o,
            "train.min_object_size",
            "must be ≥ 1 (omit it to keep all objects)",
        ));
    }
    let variants = build_variants(o, &raw.variants)?;
    Ok(Pipeline {
        name: raw.name.clone(),
        description: raw.description.clone(),
        origin,
        variant: None,
        window: raw.window,
        normalise: raw.normalise,
        slicing,
        labels,
        model,
        splits: raw.splits.clone(),
        train: raw.train.clone(),
        variants,
        raw,
    })
}

/// `[window]`: finite bounds, `hu_min < hu_max`.
fn check_window(o: &Origin, w: &Window) -> Result<(), PipelineError> {
    if !w.hu_min.is_finite() || !w.hu_max.is_finite() {
        return Err(invalid(
            o,
            "window",
            "hu_min and hu_max must be finite numbers",
        ));
    }
    if w.hu_min >= w.hu_max {
        return Err(invalid(
            o,
            "window.hu_min",
            format!(
                "must be below hu_max (got hu_min = {}, hu_max = {})",
                w.hu_min, w.hu_max
            ),
        ));
    }
    Ok(())
}

/// `[normalise]`: finite parameters, `eps ≥ 0`, `scale > 0`.
fn check_normalise(o: &Origin, n: &Normalise) -> Result<(), PipelineError> {
    match *n {
        Normalise::MinMax { eps } => {
            if !eps.is_finite() || eps < 0.0 {
                return Err(invalid(
                    o,
                    "normalise.eps",
                    format!("must be a finite number ≥ 0 (got {eps})"),
                ));
            }
        }
        Normalise::Fixed { offset, scale } => {
            if !offset.is_finite() {
                return Err(invalid(o, "normalise.offset", "must be finite"));
            }
            if !scale.is_finite() || scale <= 0.0 {
                return Err(invalid(
                    o,
                    "normalise.scale",
                    format!("must be a finite number > 0 (got {scale})"),
                ));
            }
        }
    }
    Ok(())
}

/// `[slicing]`: the frame (`native` or orientation letters) and a size the VAE can take.
fn build_slicing(o: &Origin, raw: &RawSlicing) -> Result<Slicing, PipelineError> {
    let frame = if raw.frame.trim().eq_ignore_ascii_case("native") {
        SliceFrame::Native
    } else {
        SliceFrame::Oriented(raw.frame.parse::<AxCodes>().map_err(|e| {
            invalid(
                o,
                "slicing.frame",
                format!("{e}; use \"native\" or three orientation letters like \"RAS\""),
            )
        })?)
    };
    if raw.size < 8 || !raw.size.is_multiple_of(8) {
        return Err(invalid(
            o,
            "slicing.size",
            format!(
                "must be a positive multiple of 8 (the VAE downsamples by 8); got {}",
                raw.size
            ),
        ));
    }
    Ok(Slicing {
        frame,
        size: raw.size,
        resize: raw.resize,
    })
}

/// `[model]`: at least 2 classes (as many as a known preset has), weights relative to the
/// pipeline file.
fn build_model(o: &Origin, raw: &RawModel) -> Result<ModelSection, PipelineError> {
    let num_classes = raw.num_classes;
    if num_classes < 2 {
        return Err(invalid(
            o,
            "model.num_classes",
            format!("must be at least 2 (2 = binary); got {num_classes}"),
        ));
    }
    if num_classes > u16::MAX as usize {
        return Err(invalid(o, "model.num_classes", "too large"));
    }
    if raw.preset.trim().is_empty() {
        return Err(invalid(o, "model.preset", "must not be empty"));
    }
    if let Some((_, k)) = KNOWN_PRESETS.iter().find(|(n, _)| *n == raw.preset) {
        if *k != num_classes {
            return Err(invalid(
                o,
                "model.num_classes",
                format!(
                    "preset '{}' has {k} classes but num_classes = {num_classes}",
                    raw.preset
                ),
            ));
        }
    }
    let weights = match raw.weights.as_deref().map(str::trim) {
        None => None,
        Some("") => return Err(invalid(o, "model.weights", "must not be empty")),
        Some(w) => Some(o.resolve(w)),
    };
    Ok(ModelSection {
        preset: raw.preset.clone(),
        num_classes,
        weights,
    })
}

/// `[labels]`: classes named exactly `0..num_classes`, every source label remapped to a
/// class, foreground classes among `1..num_classes` (default: all of them).
fn build_labels(o: &Origin, raw: &RawLabels, num_classes: usize) -> Result<Labels, PipelineError> {
    let source = parse_id_table(o, "labels.source", &raw.source)?;
    let classes = parse_id_table(o, "labels.classes", &raw.classes)?;
    let expected: BTreeSet<u16> = (0..num_classes as u16).collect();
    let got: BTreeSet<u16> = classes.keys().copied().collect();
    if got != expected {
        return Err(invalid(
            o,
            "labels.classes",
            format!(
                "must name exactly the class ids 0..{} for num_classes = {num_classes}; got {:?}",
                num_classes - 1,
                got
            ),
        ));
    }
    let remap = raw
        .remap
        .as_ref()
        .map(|r| Remap {
            assign: r.assign.iter().map(|[a, b]| (*a, *b)).collect(),
            binarise: r.binarise,
        })
        .unwrap_or_default();
    for (&id, name) in &source {
        let to = remap.apply_value(id);
        if to as usize >= num_classes {
            return Err(invalid(
                o,
                "labels.remap",
                format!(
                    "source label {id} ({name}) maps to {to}, which is not a class id \
                     (num_classes = {num_classes})"
                ),
            ));
        }
    }
    let foreground = match &raw.foreground {
        Some(f) => {
            let mut f = f.clone();
            f.sort_unstable();
            f.dedup();
            if let Some(bad) = f.iter().find(|&&c| c == 0 || c as usize >= num_classes) {
                return Err(invalid(
                    o,
                    "labels.foreground",
                    format!(
                        "{bad} is not a foreground class id (1..{})",
                        num_classes - 1
                    ),
                ));
            }
            if f.is_empty() {
                return Err(invalid(o, "labels.foreground", "must not be empty"));
            }
            f
        }
        None => (1..num_classes as u16).collect(),
    };
    let codes = build_codes(o, &raw.codes)?;
    Ok(Labels {
        source,
        remap,
        classes,
        foreground,
        codes,
    })
}

/// `[labels.codes]`: every code `SCHEME:VALUE:MEANING` with non-empty parts that fit DICOM
/// (SH: 16 characters for scheme and value, LO: 64 for the meaning); the category defaults
/// to SCT 91723000 "Anatomical Structure".
fn build_codes(
    o: &Origin,
    raw: &BTreeMap<String, RawCodes>,
) -> Result<BTreeMap<String, LabelCodes>, PipelineError> {
    let parse = |name: &str, part: &str, text: &str| -> Result<Code, PipelineError> {
        let field = format!("labels.codes.\"{name}\".{part}");
        let mut it = text.splitn(3, ':').map(str::trim);
        let (scheme, value, meaning) = match (it.next(), it.next(), it.next()) {
            (Some(s), Some(v), Some(m)) if !s.is_empty() && !v.is_empty() && !m.is_empty() => {
                (s, v, m)
            }
            _ => {
                return Err(invalid(
                    o,
                    &field,
                    format!("'{text}' is not SCHEME:VALUE:MEANING (e.g. \"SCT:10200004:Liver\")"),
                ))
            }
        };
        if scheme.len() > 16 || value.len() > 16 || meaning.chars().count() > 64 {
            return Err(invalid(
                o,
                &field,
                format!("'{text}': scheme and value take at most 16 characters, the meaning 64"),
            ));
        }
        Ok(Code::new(scheme, value, meaning))
    };
    let mut out = BTreeMap::new();
    for (name, c) in raw {
        let codes = LabelCodes {
            category: match &c.category {
                Some(t) => parse(name, "category", t)?,
                None => Code::new("SCT", "91723000", "Anatomical Structure"),
            },
            property_type: parse(name, "type", &c.property_type)?,
            modifier: c
                .modifier
                .as_deref()
                .map(|t| parse(name, "modifier", t))
                .transpose()?,
        };
        out.insert(name.clone(), codes);
    }
    Ok(out)
}

/// `[splits]`: non-empty case ids, each listed once across test and train.
fn check_splits(o: &Origin, splits: &Splits) -> Result<(), PipelineError> {
    let mut seen = BTreeSet::new();
    for (list, ids) in [("test", &splits.test), ("train", &splits.train)] {
        for id in ids.iter() {
            if id.trim().is_empty() {
                return Err(invalid(o, &format!("splits.{list}"), "empty case id"));
            }
            if !seen.insert(id.as_str()) {
                return Err(invalid(
                    o,
                    &format!("splits.{list}"),
                    format!("case '{id}' is listed twice (or in both test and train)"),
                ));
            }
        }
    }
    Ok(())
}

/// `[variants.*]`: named overrides, kept raw (applied by [`apply_variant`]).
fn build_variants(
    o: &Origin,
    raw: &BTreeMap<String, RawVariant>,
) -> Result<BTreeMap<String, Variant>, PipelineError> {
    let mut variants = BTreeMap::new();
    for (name, v) in raw {
        if name.trim().is_empty() {
            return Err(invalid(o, "variants", "empty variant name"));
        }
        variants.insert(
            name.clone(),
            Variant {
                description: v.description.clone(),
                window: v.window,
                normalise: v.normalise,
                model: v.model.clone(),
                labels: v.labels.clone(),
            },
        );
    }
    Ok(variants)
}
