//! What `run` writes for each case (`--format`), where each file goes, and what the DICOM
//! outputs say about the labels.
//!
//! **Naming.** A case's output path (from `--out FILE`, `--name` under `--out DIR`, or a
//! manifest's output column) names the NIfTI file; the DICOM outputs sit beside it with the
//! `.nii`/`.nii.gz` suffix replaced: `{case}.nii.gz` → `{case}.seg.dcm`, `{case}.rtstruct.dcm`.
//! `--out FILE.dcm` names the one DICOM output of a single-format run. A case is done (resume)
//! when every requested output exists.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ndarray::Array3;

use crate::io::derived::{Producer, SegmentSpec};
use crate::io::nifti::{is_nifti_path, strip_nifti_suffix};
use crate::pipeline::config::Labels;
use crate::pipeline::labels_sidecar::LabelInfo;

/// One output format of `run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// A NIfTI label volume on the input grid (the default).
    Nifti,
    /// A DICOM Segmentation object (one segment per label) referencing the source series.
    DicomSeg,
    /// An RT Structure Set (one ROI per label, planar contours) referencing the source series.
    Rtstruct,
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 3] = [
        OutputFormat::Nifti,
        OutputFormat::DicomSeg,
        OutputFormat::Rtstruct,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Nifti => "nifti",
            OutputFormat::DicomSeg => "dicom-seg",
            OutputFormat::Rtstruct => "rtstruct",
        }
    }

    /// The suffix that replaces `.nii.gz` in the case's output name.
    pub fn suffix(self) -> &'static str {
        match self {
            OutputFormat::Nifti => ".nii.gz",
            OutputFormat::DicomSeg => ".seg.dcm",
            OutputFormat::Rtstruct => ".rtstruct.dcm",
        }
    }

    /// DICOM outputs reference the source images, so they need a DICOM input.
    pub fn is_dicom(self) -> bool {
        !matches!(self, OutputFormat::Nifti)
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `--format`: a non-empty set of output formats, e.g. `nifti,dicom-seg,rtstruct`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Formats(BTreeSet<OutputFormat>);

impl Default for Formats {
    fn default() -> Self {
        Formats([OutputFormat::Nifti].into())
    }
}

impl FromStr for Formats {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = BTreeSet::new();
        for part in s.split(',').map(str::trim) {
            let f = OutputFormat::ALL
                .into_iter()
                .find(|f| f.name() == part.to_ascii_lowercase())
                .ok_or_else(|| {
                    format!(
                        "--format: unknown format '{part}'; choose from nifti, dicom-seg, rtstruct (comma-separated)"
                    )
                })?;
            set.insert(f);
        }
        Ok(Formats(set))
    }
}

impl fmt::Display for Formats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|x| x.name()).collect();
        f.write_str(&names.join(","))
    }
}

impl Formats {
    pub fn iter(&self) -> impl Iterator<Item = OutputFormat> + '_ {
        self.0.iter().copied()
    }

    pub fn contains(&self, f: OutputFormat) -> bool {
        self.0.contains(&f)
    }

    /// Whether any requested output is a DICOM object (which needs DICOM input).
    pub fn any_dicom(&self) -> bool {
        self.iter().any(OutputFormat::is_dicom)
    }

    /// The single DICOM format of a run that writes nothing else, if so (`--out FILE.dcm`).
    pub fn single_dicom(&self) -> Option<OutputFormat> {
        match self.0.iter().collect::<Vec<_>>().as_slice() {
            [one] if one.is_dicom() => Some(**one),
            _ => None,
        }
    }

    /// The file of each requested format for a case whose output path is `base`.
    pub fn paths(&self, base: &Path) -> Vec<(OutputFormat, PathBuf)> {
        self.iter().map(|f| (f, output_path(base, f))).collect()
    }

    /// Whether every requested output of the case exists (resume skips it).
    pub fn all_exist(&self, base: &Path) -> bool {
        self.paths(base).iter().all(|(_, p)| p.is_file())
    }

    /// `["--format", "nifti,dicom-seg"]`, or nothing for the default (for `slurm-script`).
    pub fn to_argv(&self) -> Vec<String> {
        if *self == Formats::default() {
            vec![]
        } else {
            vec!["--format".into(), self.to_string()]
        }
    }
}

/// The file of format `f` for a case whose output path is `base` (see the module doc).
pub fn output_path(base: &Path, f: OutputFormat) -> PathBuf {
    if !is_nifti_path(base) {
        // `--out FILE.dcm`: the one DICOM output of the run.
        return base.to_path_buf();
    }
    match f {
        OutputFormat::Nifti => base.to_path_buf(),
        _ => {
            let name = base
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = strip_nifti_suffix(&name).unwrap_or(&name);
            base.with_file_name(format!("{stem}{}", f.suffix()))
        }
    }
}

/// How the DICOM outputs describe the labels and their maker, fixed for a run.
#[derive(Clone, Debug, PartialEq)]
pub struct DerivedSettings {
    /// Every foreground label the model can produce, with its name, colour and codes.
    pub segments: Vec<SegmentSpec>,
    pub producer: Producer,
    /// SeriesDescription of the new series.
    pub series_description: String,
    /// Also write segments/ROIs for labels absent from a case's prediction.
    pub empty_segments: bool,
}

impl DerivedSettings {
    /// The segments of one case: the labels present in `labels` (all of them with
    /// `empty_segments`), in label order.
    pub fn segments_for(&self, labels: &Array3<u16>) -> Vec<SegmentSpec> {
        if self.empty_segments {
            return self.segments.clone();
        }
        let mut present = [false; 1 << 16];
        for &v in labels.iter() {
            present[v as usize] = true;
        }
        self.segments
            .iter()
            .filter(|s| present[s.label as usize])
            .cloned()
            .collect()
    }
}

/// The segment list of a run: each foreground class with its colour (from the label table) and
/// the pipeline's `[labels.codes]` for its name. With `require_codes` (DICOM-SEG, whose
/// segments must be coded) the error names the labels without codes; otherwise (RTSTRUCT, where
/// codes are optional) they get the generic SCT 85756007 "Tissue".
pub fn segment_specs(
    labels: &Labels,
    table: &[LabelInfo],
    pipeline: &str,
    require_codes: bool,
) -> Result<Vec<SegmentSpec>, String> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for &id in &labels.foreground {
        let Some(name) = labels.class_name(id) else {
            continue;
        };
        let color = table
            .iter()
            .find(|l| l.id == id)
            .map(|l| l.color)
            .unwrap_or_else(|| crate::pipeline::labels_sidecar::default_color(id));
        match labels.codes.get(name) {
            Some(c) => out.push(SegmentSpec {
                label: id,
                name: name.to_string(),
                color,
                category: c.category.clone(),
                property_type: c.property_type.clone(),
                modifier: c.modifier.clone(),
            }),
            None if require_codes => missing.push(format!("'{name}'")),
            None => {
                let tissue = crate::io::derived::Code::new("SCT", "85756007", "Tissue");
                out.push(SegmentSpec {
                    label: id,
                    name: name.to_string(),
                    color,
                    category: tissue.clone(),
                    property_type: tissue,
                    modifier: None,
                })
            }
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "pipeline '{pipeline}' has no DICOM codes for label(s) {}: add them under [labels.codes] \
             (e.g. \"liver\" = {{ type = \"SCT:10200004:Liver\" }}; pipelines/README.md)",
            missing.join(", ")
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_name_files() {
        let f: Formats = "rtstruct, nifti,dicom-seg,nifti".parse().unwrap();
        assert_eq!(f.to_string(), "nifti,dicom-seg,rtstruct");
        assert!("nifti,png".parse::<Formats>().is_err());
        let p = f.paths(Path::new("out/case7.nii.gz"));
        assert_eq!(
            p,
            vec![
                (OutputFormat::Nifti, PathBuf::from("out/case7.nii.gz")),
                (OutputFormat::DicomSeg, PathBuf::from("out/case7.seg.dcm")),
                (
                    OutputFormat::Rtstruct,
                    PathBuf::from("out/case7.rtstruct.dcm")
                ),
            ]
        );
        assert_eq!(
            output_path(Path::new("a/b.nii"), OutputFormat::DicomSeg),
            PathBuf::from("a/b.seg.dcm")
        );
        let one: Formats = "dicom-seg".parse().unwrap();
        assert_eq!(one.single_dicom(), Some(OutputFormat::DicomSeg));
        assert_eq!(f.single_dicom(), None);
        assert_eq!(
            one.paths(Path::new("x/liver.dcm")),
            vec![(OutputFormat::DicomSeg, PathBuf::from("x/liver.dcm"))]
        );
        assert!(Formats::default().to_argv().is_empty());
        assert_eq!(one.to_argv(), ["--format", "dicom-seg"]);
    }

    #[test]
    fn built_in_pipelines_code_every_class() {
        for name in ["demo", "btcv", "btcv:cls9", "btcv:cls14", "sts3d"] {
            let p = match name.split_once(':') {
                Some((base, v)) => crate::pipeline::config::Pipeline::load(base)
                    .unwrap()
                    .with_variant(v)
                    .unwrap(),
                None => crate::pipeline::config::Pipeline::load(name).unwrap(),
            };
            let table = crate::pipeline::labels_sidecar::label_table(
                p.model.num_classes,
                &p.labels
                    .classes
                    .iter()
                    .map(|(k, v)| (*k, v.clone()))
                    .collect::<Vec<_>>(),
            );
            let specs = segment_specs(&p.labels, &table, name, true).unwrap();
            assert_eq!(specs.len(), p.labels.foreground.len(), "{name}");
            assert!(specs.iter().all(|s| s.property_type.scheme == "SCT"));
        }
    }
}
