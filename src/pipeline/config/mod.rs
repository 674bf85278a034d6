//! The schema of `pipelines/*.toml`: how a dataset's CT volumes become model inputs
//! (window, normalisation, slicing, resize), what the labels mean (names, remapping),
//! which model and weights to use by default, and the dataset splits.
//!
//! The files are documented field by field in `pipelines/README.md`. Built-in pipelines are
//! embedded in the binary (`include_str!`), so `--pipeline btcv` works anywhere; any other
//! value of `--pipeline` is a path to a TOML file.
//!
//! Parsing is two-staged: serde reads the file into `Raw*` structs (`schema.rs`) (unknown fields are
//! errors, and toml's message names the field, line and column), then [`Pipeline`] is built
//! and validated (window order, class tables, remap targets, splits), so that a `Pipeline`
//! value is always usable.

mod schema;

use crate::geometry::AxCodes;
use schema::{apply_variant, build, RawLabelsOverride, RawModel, RawPipeline};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Built-in pipelines: (name, TOML text). The file of each is `pipelines/<name>.toml`.
const BUILTINS: &[(&str, &str)] = &[
    ("btcv", include_str!("../../../pipelines/btcv.toml")),
    ("sts3d", include_str!("../../../pipelines/sts3d.toml")),
    ("demo", include_str!("../../../pipelines/demo.toml")),
];

/// Names of the built-in pipelines.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(n, _)| *n)
}

// ============================================================================================
// Errors
// ============================================================================================

/// A pipeline that cannot be found, read or parsed, or that is inconsistent. Always the
/// user's input (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(
        "unknown pipeline '{name}': not a built-in pipeline ({builtins}) and no such file; \
         pass a built-in name or the path of a pipeline .toml file"
    )]
    UnknownName { name: String, builtins: String },
    #[error("{path}: cannot read pipeline file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: Origin, message: String },
    #[error("{origin}: field `{field}`: {message}")]
    Invalid {
        origin: Origin,
        field: String,
        message: String,
    },
    #[error("{origin}: no variant '{name}' (available: {available})")]
    UnknownVariant {
        origin: Origin,
        name: String,
        available: String,
    },
}

impl crate::error::Classify for PipelineError {
    fn is_input_error(&self) -> bool {
        true
    }
}

/// Where a pipeline came from; relative paths inside it (default weights) resolve against
/// [`Origin::base_dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Embedded `pipelines/<name>.toml`.
    Builtin(&'static str),
    /// A file given by path.
    File(PathBuf),
    /// Parsed from a string (tests); relative paths resolve against the current directory.
    Inline,
}

impl Origin {
    /// The folder relative paths in the pipeline are resolved against: the file's folder,
    /// or for built-ins the source tree's `pipelines/` folder (where the file lives).
    pub fn base_dir(&self) -> PathBuf {
        match self {
            Origin::Builtin(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines"),
            Origin::File(p) => p
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            Origin::Inline => PathBuf::from("."),
        }
    }
}

impl Origin {
    /// A relative path named inside the pipeline (its default weights), resolved: against
    /// [`Self::base_dir`], except for the built-in demo model, which is embedded in the binary
    /// (`super::assets`).
    pub fn resolve(&self, relative: &str) -> PathBuf {
        match self {
            Origin::Builtin(_) => super::assets::builtin_file(relative, &self.base_dir()),
            _ => self.base_dir().join(relative),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Builtin(n) => write!(f, "built-in pipeline '{n}' (pipelines/{n}.toml)"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Inline => write!(f, "pipeline text"),
        }
    }
}

// ============================================================================================
// Validated types
// ============================================================================================

/// HU window: voxels are clipped to `[hu_min, hu_max]` before normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub hu_min: f64,
    pub hu_max: f64,
}

/// How windowed HU values become model values. Both modes end in `((x − a) / b)·2 − 1`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum Normalise {
    /// Per-volume min-max of the windowed volume to [-1, 1]:
    /// `((x − min) / (max − min + eps))·2 − 1`, min/max over the whole windowed volume.
    /// `eps = 0` is BTCV's test code; STS-3D's preprocessing uses `eps = 1e-8`.
    MinMax {
        #[serde(default)]
        eps: f64,
    },
    /// Fixed affine map `((x − offset) / scale)·2 − 1` (not clamped). BTCV's official
    /// *training* slices: window [-175, 250], offset −125, scale 400 → [-1.25, 0.875].
    Fixed { offset: f64, scale: f64 },
}

/// Which array frame slices are taken in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceFrame {
    /// The input array's axes as stored (the official code slices nibabel arrays as is).
    Native,
    /// Reorient exactly (`Volume::reorient`) to these codes first, undo it afterwards.
    Oriented(AxCodes),
}

impl fmt::Display for SliceFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SliceFrame::Native => write!(f, "native"),
            SliceFrame::Oriented(c) => write!(f, "{c}"),
        }
    }
}

/// In-plane interpolation of image slices (labels always use nearest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// `scipy.ndimage.zoom(order=1)`, corner-aligned (the official evaluation).
    #[default]
    Bilinear,
    /// `scipy.ndimage.zoom(order=0)`.
    Nearest,
}

/// How volumes are cut into model-sized slices.
///
/// Slice `k` of a volume in the slicing frame is `data[:, :, k]`; the model image's rows
/// (H) are array axis 0 (`i`) and its columns (W) are axis 1 (`j`), exactly as the official
/// code feeds `image[:, :, idx]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slicing {
    pub frame: SliceFrame,
    /// Model slice size (square), 256 for every official model.
    pub size: usize,
    pub resize: Interpolation,
}

/// Label remapping from a dataset's raw label ids to the model's class ids, applied as the
/// official code does: each `(from, to)` assignment in order to the whole array (so order
/// matters, like `transfer_to_9`), then, if `binarise`, every nonzero label becomes 1.
/// Values no assignment touches pass through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remap {
    pub assign: Vec<(u16, u16)>,
    pub binarise: bool,
}

impl Remap {
    pub fn identity() -> Remap {
        Remap::default()
    }

    pub fn is_identity(&self) -> bool {
        !self.binarise && self.assign.iter().all(|(a, b)| a == b)
    }

    /// The remapped value of one label (sequential assignments, then binarisation).
    pub fn apply_value(&self, mut v: u16) -> u16 {
        for &(from, to) in &self.assign {
            if v == from {
                v = to;
            }
        }
        if self.binarise && v != 0 {
            1
        } else {
            v
        }
    }

    /// Lookup table for values `0..=max` (whole-array sequential assignment is a pointwise
    /// function, so composing per value is the same as applying steps to the array).
    pub fn lut(&self, max: u16) -> Vec<u16> {
        (0..=max).map(|v| self.apply_value(v)).collect()
    }
}

/// Label names and the mapping from raw dataset labels to model classes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    /// Raw label ids of the dataset's label files and their names (background omitted).
    pub source: BTreeMap<u16, String>,
    /// Raw → model class ids (ground truth goes through this before training or scoring).
    pub remap: Remap,
    /// Model class ids `0..num_classes` and their names (0 is background).
    pub classes: BTreeMap<u16, String>,
    /// Classes that are scored (background excluded), ascending.
    pub foreground: Vec<u16>,
    /// DICOM codes by label name (`[labels.codes]`), for DICOM-SEG outputs.
    pub codes: BTreeMap<String, LabelCodes>,
}

/// What a label is, in DICOM's coded terms (SegmentedPropertyCategory/Type/TypeModifier).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelCodes {
    pub category: crate::io::derived::Code,
    pub property_type: crate::io::derived::Code,
    pub modifier: Option<crate::io::derived::Code>,
}

impl Labels {
    pub fn class_name(&self, id: u16) -> Option<&str> {
        self.classes.get(&id).map(String::as_str)
    }
}

/// The model a pipeline uses by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSection {
    /// Model preset name (`sdseg-binary`, `sdseg-cls9`, `sdseg-cls14`, …, see `model::config`).
    pub preset: String,
    pub num_classes: usize,
    /// Default weights, resolved against the pipeline's [`Origin::base_dir`].
    pub weights: Option<PathBuf>,
}

/// Case ids of the official splits (file-name stems as the dataset layouts name them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Splits {
    #[serde(default)]
    pub test: Vec<String>,
    #[serde(default)]
    pub train: Vec<String>,
}

/// Training-time options of the official recipe for this dataset (used by `train`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptions {
    /// Random horizontal flip (torchvision `RandomHorizontalFlip`, p = 0.5): reverses the
    /// model image's W axis (array axis `j`), image and label together.
    #[serde(default)]
    pub hflip: bool,
    /// Skip slices whose image is constant (STS-3D preprocessing).
    #[serde(default)]
    pub skip_constant_slices: bool,
    /// Remove label components smaller than this many voxels, 26-connected in 3D
    /// (`skimage.morphology.remove_small_objects(min_size, connectivity=3)`, STS-3D).
    #[serde(default)]
    pub min_object_size: Option<u32>,
    /// Zero the label where the image equals its minimum (STS-3D: `label *= img != img.min()`).
    #[serde(default)]
    pub mask_labels_to_image: bool,
}

/// A named set of overrides (e.g. BTCV's official training normalisation, or the 9-class
/// task), applied with [`Pipeline::with_variant`].
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub description: String,
    pub window: Option<Window>,
    pub normalise: Option<Normalise>,
    model: Option<RawModel>,
    labels: Option<RawLabelsOverride>,
}

/// A validated pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    pub name: String,
    pub description: String,
    pub origin: Origin,
    /// The variant applied, if any.
    pub variant: Option<String>,
    pub window: Window,
    pub normalise: Normalise,
    pub slicing: Slicing,
    pub labels: Labels,
    pub model: ModelSection,
    pub splits: Splits,
    pub train: TrainOptions,
    variants: BTreeMap<String, Variant>,
    raw: RawPipeline,
}

// ============================================================================================
// Loading and validation
// ============================================================================================

impl Pipeline {
    /// A built-in name (`btcv`, `sts3d`, …) or the path of a pipeline TOML file. A value
    /// containing a path separator or ending in `.toml` is always taken as a path.
    pub fn load(name_or_path: &str) -> Result<Pipeline, PipelineError> {
        let looks_like_path = name_or_path.contains(std::path::MAIN_SEPARATOR)
            || name_or_path.contains('/')
            || name_or_path.ends_with(".toml");
        if !looks_like_path {
            if let Some((name, text)) = BUILTINS.iter().find(|(n, _)| *n == name_or_path) {
                return Pipeline::from_toml_str(text, Origin::Builtin(name));
            }
        }
        let path = Path::new(name_or_path);
        if looks_like_path || path.is_file() {
            return Pipeline::from_file(path);
        }
        Err(PipelineError::UnknownName {
            name: name_or_path.to_string(),
            builtins: builtin_names().collect::<Vec<_>>().join(", "),
        })
    }

    /// Read and validate a pipeline file.
    pub fn from_file(path: &Path) -> Result<Pipeline, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Pipeline::from_toml_str(&text, Origin::File(path.to_path_buf()))
    }

    /// Parse and validate pipeline TOML text.
    pub fn from_toml_str(text: &str, origin: Origin) -> Result<Pipeline, PipelineError> {
        let raw: RawPipeline = toml::from_str(text).map_err(|e| PipelineError::Parse {
            origin: origin.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let pipeline = build(raw, origin)?;
        // Every variant must be valid too, so mistakes surface when the file is loaded.
        for name in pipeline.variants.keys() {
            pipeline.with_variant(name)?;
        }
        Ok(pipeline)
    }

    /// Names and descriptions of the variants this pipeline defines.
    pub fn variants(&self) -> impl Iterator<Item = (&str, &str)> {
        self.variants
            .iter()
            .map(|(n, v)| (n.as_str(), v.description.as_str()))
    }

    /// This pipeline with a named variant's overrides applied (window, normalisation,
    /// model, labels). Variants do not stack: this starts from the file's base values.
    pub fn with_variant(&self, name: &str) -> Result<Pipeline, PipelineError> {
        let Some(v) = self.variants.get(name) else {
            return Err(PipelineError::UnknownVariant {
                origin: self.origin.clone(),
                name: name.to_string(),
                available: if self.variants.is_empty() {
                    "none".to_string()
                } else {
                    self.variants.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            });
        };
        let raw = apply_variant(&self.raw, v);
        let prefix = format!("variants.{name}.");
        let mut p = build(raw, self.origin.clone()).map_err(|e| match e {
            PipelineError::Invalid {
                origin,
                field,
                message,
            } => PipelineError::Invalid {
                origin,
                field: format!("{prefix}{field}"),
                message,
            },
            other => other,
        })?;
        p.variant = Some(name.to_string());
        Ok(p)
    }

    /// Default weights resolved to a path, if the pipeline names any.
    pub fn default_weights(&self) -> Option<&Path> {
        self.model.weights.as_deref()
    }

    /// Model class count (2 = binary).
    pub fn num_classes(&self) -> usize {
        self.model.num_classes
    }

    /// One-line summary for logs and reports.
    pub fn summary(&self) -> String {
        let norm = match self.normalise {
            Normalise::MinMax { eps: 0.0 } => "per-volume min-max".to_string(),
            Normalise::MinMax { eps } => format!("per-volume min-max (eps {eps:e})"),
            Normalise::Fixed { offset, scale } => {
                format!("fixed ((x - {offset}) / {scale})*2-1")
            }
        };
        format!(
            "{}{}: window [{}, {}] HU, {norm}, slices along axis 2 of the {} frame at {}², \
             {} classes (model {})",
            self.name,
            self.variant
                .as_deref()
                .map(|v| format!(" [{v}]"))
                .unwrap_or_default(),
            self.window.hu_min,
            self.window.hu_max,
            self.slicing.frame,
            self.slicing.size,
            self.model.num_classes,
            self.model.preset,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remap_is_sequential() {
        // 1→2 then 2→3: a 1 becomes 3 (sequential), a 2 becomes 3.
        let r = Remap {
            assign: vec![(1, 2), (2, 3)],
            binarise: false,
        };
        assert_eq!(r.lut(4), vec![0, 3, 3, 3, 4]);
        // Reversed order: 2→3 first, then 1→2: a 1 stays 2.
        let r = Remap {
            assign: vec![(2, 3), (1, 2)],
            binarise: false,
        };
        assert_eq!(r.lut(4), vec![0, 2, 3, 3, 4]);
        let r = Remap {
            assign: vec![(2, 0)],
            binarise: true,
        };
        assert_eq!(r.lut(4), vec![0, 1, 0, 1, 1]);
        assert!(Remap::identity().is_identity());
    }
}
