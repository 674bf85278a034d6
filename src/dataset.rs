//! Dataset folder layouts: where the images and labels of a labelled dataset live on disk, how
//! an image is paired with its label, and what a case is called. `train` lists every case of a
//! folder ([`discover`]); `reproduce` looks up the official test cases by id ([`find_cases`]).
//!
//! Layouts ([`DatasetLayout`]), each starting in one of its [`bases`](DatasetLayout::bases):
//! * BTCV: `[Abdomen/RawData/]Training/img/imgNNNN.nii.gz` + `label/labelNNNN.nii.gz`, case id
//!   `NNNN`;
//! * STS-3D: `[labelled/]image/X.nii.gz` + `label/X.nii.gz` (the layout
//!   `data/sts3d/sts3d_preprocess.py` reads: the label path is the image path with `image` →
//!   `label`), case id `X` without the nnU-Net channel suffix `_0000`; a label named by the
//!   case id alone is found too;
//! * generic: `images/<id>.nii[.gz]` or a DICOM series folder `images/<id>/`, with
//!   `labels/<id>.nii[.gz]`.
//!
//! Every NIfTI name is tried as `.nii.gz` first, then `.nii`.

use std::path::{Path, PathBuf};

/// A dataset folder layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetLayout {
    Btcv,
    Sts3d,
    Generic,
}

/// One labelled case on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseFiles {
    pub id: String,
    /// NIfTI file, or DICOM series folder (generic layout).
    pub image: PathBuf,
    pub label: PathBuf,
}

/// A case that is not where the layout puts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingCase {
    pub id: String,
    /// What is missing (the layout's own file names).
    pub expected: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(
        "{dir}: no training data layout found; expected one of: BTCV \
         (Training/img/img*.nii.gz + Training/label/label*.nii.gz), STS-3D \
         (image/*.nii.gz + label/*.nii.gz), or images/ + labels/ (NIfTI files or DICOM series \
         folders, labels as <case>.nii.gz)"
    )]
    NoLayout { dir: PathBuf },
    #[error(
        "{root}: not a {dataset} dataset folder: no {img}/ and {label}/ folders in {tried} \
         (expected layout {layout})",
        dataset = layout.title(),
        img = layout.dirs().0,
        label = layout.dirs().1,
        layout = layout.description(),
        tried = tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotLaidOut {
        layout: DatasetLayout,
        root: PathBuf,
        tried: Vec<PathBuf>,
    },
    #[error("{dir}: cannot list folder: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{image}: no label volume for case '{case}' (looked for {expected})")]
    MissingLabel {
        case: String,
        image: PathBuf,
        expected: PathBuf,
    },
    #[error(
        "{root}: {n} of the {total} official {dataset} test cases missing: {list}",
        dataset = layout.title(),
        n = missing.len(),
        list = missing
            .iter()
            .map(|m| format!(
                "{} (expected {})",
                m.id,
                m.expected.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and ")
            ))
            .collect::<Vec<_>>()
            .join("; ")
    )]
    MissingCases {
        layout: DatasetLayout,
        root: PathBuf,
        total: usize,
        missing: Vec<MissingCase>,
    },
    #[error("{dir}: no cases found")]
    Empty { dir: PathBuf },
}

impl crate::error::Classify for DatasetError {
    /// A folder that is not laid out as asked, or cannot be listed.
    fn is_input_error(&self) -> bool {
        true
    }
}

impl DatasetLayout {
    /// The order [`discover`] tries the layouts in.
    pub const ALL: [DatasetLayout; 3] = [
        DatasetLayout::Btcv,
        DatasetLayout::Sts3d,
        DatasetLayout::Generic,
    ];

    pub fn title(self) -> &'static str {
        match self {
            DatasetLayout::Btcv => "BTCV",
            DatasetLayout::Sts3d => "STS-3D",
            DatasetLayout::Generic => "generic",
        }
    }

    /// The layout in words, for errors and reports.
    pub fn description(self) -> &'static str {
        match self {
            DatasetLayout::Btcv => {
                "Abdomen/RawData/Training/img/imgNNNN.nii.gz and .../Training/label/labelNNNN.nii.gz"
            }
            DatasetLayout::Sts3d => {
                "labelled/image/Teeth_NNNN_0000.nii.gz and labelled/label/Teeth_NNNN_0000.nii.gz"
            }
            DatasetLayout::Generic => "images/<case>.nii.gz (or images/<case>/) and labels/<case>.nii.gz",
        }
    }

    /// Folders (relative to the dataset root) where the layout may start, in the order they
    /// are tried: the dataset's own sub-folder first, then the root, then deeper roots.
    pub fn bases(self) -> &'static [&'static str] {
        match self {
            DatasetLayout::Btcv => &[
                "Training",
                "",
                "RawData/Training",
                "Abdomen/RawData/Training",
            ],
            DatasetLayout::Sts3d => &["labelled", "", "dataset/labelled"],
            DatasetLayout::Generic => &[""],
        }
    }

    /// Image and label folder names inside a base.
    pub fn dirs(self) -> (&'static str, &'static str) {
        match self {
            DatasetLayout::Btcv => ("img", "label"),
            DatasetLayout::Sts3d => ("image", "label"),
            DatasetLayout::Generic => ("images", "labels"),
        }
    }

    /// The base folder under `root` that holds this layout's image and label folders, or the
    /// folders tried.
    pub fn find_base(self, root: &Path) -> Result<PathBuf, Vec<PathBuf>> {
        let (img, label) = self.dirs();
        let tried: Vec<PathBuf> = self.bases().iter().map(|b| base_path(root, b)).collect();
        match tried
            .iter()
            .find(|b| b.join(img).is_dir() && b.join(label).is_dir())
        {
            Some(base) => Ok(base.clone()),
            None => Err(tried),
        }
    }

    /// The case id of the image file (or DICOM folder) at `image`, or `None` when the entry is
    /// not an image of this layout.
    pub fn case_id(self, image: &Path) -> Option<String> {
        match self {
            DatasetLayout::Generic if image.is_dir() => {
                Some(image.file_name()?.to_string_lossy().into_owned())
            }
            DatasetLayout::Generic => nifti_stem(image),
            DatasetLayout::Btcv | DatasetLayout::Sts3d if !image.is_file() => None,
            DatasetLayout::Btcv => {
                let stem = nifti_stem(image)?;
                Some(stem.strip_prefix("img").unwrap_or(&stem).to_string())
            }
            DatasetLayout::Sts3d => {
                let stem = nifti_stem(image)?;
                Some(stem.strip_suffix("_0000").unwrap_or(&stem).to_string())
            }
        }
    }

    /// Candidate image file names of case `id`, the layout's own first.
    pub fn image_names(self, id: &str) -> Vec<String> {
        match self {
            DatasetLayout::Btcv => with_nifti_ext(&[format!("img{id}")]),
            // splits/valtest.txt names Teeth_0010_0000 (nnU-Net channel suffix).
            DatasetLayout::Sts3d => with_nifti_ext(&[format!("{id}_0000"), id.to_string()]),
            DatasetLayout::Generic => with_nifti_ext(&[id.to_string()]),
        }
    }

    /// Candidate label file names of case `id` whose image file is named `image` (when
    /// known), the likeliest first. STS-3D names a label like its image, so the image's own
    /// name comes first there.
    pub fn label_names(self, id: &str, image: Option<&str>) -> Vec<String> {
        match self {
            DatasetLayout::Btcv => with_nifti_ext(&[format!("label{id}")]),
            DatasetLayout::Sts3d => {
                let mut names = Vec::new();
                if let Some(stem) = image.and_then(|n| nifti_stem(Path::new(n))) {
                    names.push(image.unwrap_or_default().to_string());
                    names.extend(with_nifti_ext(&[stem]));
                }
                names.extend(self.image_names(id));
                let mut seen = std::collections::HashSet::new();
                names.retain(|n| seen.insert(n.clone()));
                names
            }
            DatasetLayout::Generic => with_nifti_ext(&[id.to_string()]),
        }
    }

    /// Every case under `base` (a folder returned by [`find_base`](Self::find_base)), in file
    /// name order; an image without its label is an error.
    pub fn list_cases(self, base: &Path) -> Result<Vec<CaseFiles>, DatasetError> {
        let (img_dir, label_dir) = (base.join(self.dirs().0), base.join(self.dirs().1));
        let mut cases = Vec::new();
        for image in list_dir(&img_dir)? {
            let Some(id) = self.case_id(&image) else {
                continue;
            };
            let image_name = image.file_name().map(|n| n.to_string_lossy().into_owned());
            let names = self.label_names(&id, image_name.as_deref());
            let Some(label) = first_existing(&label_dir, &names) else {
                return Err(DatasetError::MissingLabel {
                    case: id,
                    image,
                    expected: label_dir.join(&names[0]),
                });
            };
            cases.push(CaseFiles { id, image, label });
        }
        Ok(cases)
    }

    /// The image of case `id` in `img_dir`: a NIfTI file, or (generic layout) a DICOM series
    /// folder named by the id.
    fn find_image(self, img_dir: &Path, id: &str) -> Option<PathBuf> {
        if self == DatasetLayout::Generic && img_dir.join(id).is_dir() {
            return Some(img_dir.join(id));
        }
        first_existing(img_dir, &self.image_names(id))
    }
}

impl std::fmt::Display for DatasetLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.title())
    }
}

/// `root/base`, or `root` itself for the empty base.
fn base_path(root: &Path, base: &str) -> PathBuf {
    if base.is_empty() {
        root.to_path_buf()
    } else {
        root.join(base)
    }
}

/// Find the labelled cases under `dir`, telling the layouts apart by their sub-folders (tried
/// in the order of [`DatasetLayout::ALL`]).
pub fn discover(dir: &Path) -> Result<(DatasetLayout, Vec<CaseFiles>), DatasetError> {
    if dir.is_dir() {
        for layout in DatasetLayout::ALL {
            if let Ok(base) = layout.find_base(dir) {
                let cases = layout.list_cases(&base)?;
                if cases.is_empty() {
                    return Err(DatasetError::Empty { dir: base });
                }
                return Ok((layout, cases));
            }
        }
    }
    Err(DatasetError::NoLayout {
        dir: dir.to_path_buf(),
    })
}

/// Locate the cases `ids` under `root` in `layout`. Every missing case is named in the error,
/// with the files the layout expects.
pub fn find_cases(
    layout: DatasetLayout,
    root: &Path,
    ids: &[String],
) -> Result<Vec<CaseFiles>, DatasetError> {
    let base = layout
        .find_base(root)
        .map_err(|tried| DatasetError::NotLaidOut {
            layout,
            root: root.to_path_buf(),
            tried,
        })?;
    let (img_dir, label_dir) = (base.join(layout.dirs().0), base.join(layout.dirs().1));
    let mut cases = Vec::with_capacity(ids.len());
    let mut missing = Vec::new();
    for id in ids {
        let image = layout.find_image(&img_dir, id);
        let image_name = image
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        let label_names = layout.label_names(id, image_name.as_deref());
        let label = first_existing(&label_dir, &label_names);
        match (image, label) {
            (Some(image), Some(label)) => cases.push(CaseFiles {
                id: id.clone(),
                image,
                label,
            }),
            (image, label) => {
                let mut expected = Vec::new();
                if image.is_none() {
                    expected.push(img_dir.join(&layout.image_names(id)[0]));
                }
                if label.is_none() {
                    expected.push(label_dir.join(&label_names[0]));
                }
                missing.push(MissingCase {
                    id: id.clone(),
                    expected,
                });
            }
        }
    }
    if !missing.is_empty() {
        return Err(DatasetError::MissingCases {
            layout,
            root: root.to_path_buf(),
            total: ids.len(),
            missing,
        });
    }
    Ok(cases)
}

/// The entries of `dir` without hidden ones, sorted.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let io = |source| DatasetError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let p = e.map_err(io)?.path();
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// `name.nii.gz` / `name.nii` → `name`.
fn nifti_stem(p: &Path) -> Option<String> {
    let name = p.file_name()?.to_string_lossy();
    crate::io::nifti::strip_nifti_suffix(&name).map(str::to_owned)
}

/// Every stem as `.nii.gz`, then `.nii`.
fn with_nifti_ext(stems: &[String]) -> Vec<String> {
    stems
        .iter()
        .flat_map(|s| [format!("{s}.nii.gz"), format!("{s}.nii")])
        .collect()
}

fn first_existing(dir: &Path, names: &[String]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn ids(cases: &[CaseFiles]) -> Vec<&str> {
        cases.iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn btcv_is_found_at_every_base() {
        for base in DatasetLayout::Btcv.bases() {
            let d = tempfile::tempdir().unwrap();
            let b = base_path(d.path(), base);
            touch(&b.join("img/img0002.nii.gz"));
            touch(&b.join("img/img0001.nii"));
            touch(&b.join("img/notes.txt"));
            touch(&b.join("img/.hidden.nii.gz"));
            touch(&b.join("label/label0001.nii.gz"));
            touch(&b.join("label/label0002.nii"));
            let (layout, cases) = discover(d.path()).unwrap();
            assert_eq!(layout, DatasetLayout::Btcv, "base {base:?}");
            assert_eq!(ids(&cases), ["0001", "0002"]);
            assert!(cases[0].label.ends_with("label/label0001.nii.gz"));
            assert!(cases[1].label.ends_with("label/label0002.nii"));
            // The same cases by id.
            let by_id = find_cases(
                DatasetLayout::Btcv,
                d.path(),
                &["0001".into(), "0002".into()],
            );
            assert_eq!(by_id.unwrap(), cases);
        }
    }

    #[test]
    fn sts3d_pairs_a_label_named_like_its_image_or_by_the_case_id() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("labelled");
        touch(&b.join("image/Teeth_0001_0000.nii.gz"));
        touch(&b.join("label/Teeth_0001_0000.nii.gz"));
        touch(&b.join("image/Teeth_0002.nii"));
        touch(&b.join("label/Teeth_0002.nii"));
        // nnU-Net names labels by the case id, without the channel suffix.
        touch(&b.join("image/Teeth_0003_0000.nii.gz"));
        touch(&b.join("label/Teeth_0003.nii.gz"));
        let (layout, cases) = discover(d.path()).unwrap();
        assert_eq!(layout, DatasetLayout::Sts3d);
        assert_eq!(ids(&cases), ["Teeth_0001", "Teeth_0002", "Teeth_0003"]);
        assert!(cases[1].label.ends_with("label/Teeth_0002.nii"));
        assert!(cases[2].label.ends_with("label/Teeth_0003.nii.gz"));
        let wanted: Vec<String> = ids(&cases).iter().map(|s| s.to_string()).collect();
        assert_eq!(
            find_cases(DatasetLayout::Sts3d, d.path(), &wanted).unwrap(),
            cases
        );
    }

    #[test]
    fn generic_layout_takes_nifti_files_and_series_folders() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("images/a.nii.gz"));
        touch(&d.path().join("images/b/IM0001.dcm"));
        touch(&d.path().join("images/readme.md"));
        touch(&d.path().join("labels/a.nii"));
        touch(&d.path().join("labels/b.nii.gz"));
        let (layout, cases) = discover(d.path()).unwrap();
        assert_eq!(layout, DatasetLayout::Generic);
        assert_eq!(ids(&cases), ["a", "b"]);
        assert!(cases[1].image.ends_with("images/b"));
        assert_eq!(
            find_cases(DatasetLayout::Generic, d.path(), &["a".into(), "b".into()]).unwrap(),
            cases
        );
    }

    #[test]
    fn errors_name_the_folder_and_the_missing_file() {
        let d = tempfile::tempdir().unwrap();
        let e = discover(&d.path().join("nowhere")).unwrap_err();
        assert!(matches!(e, DatasetError::NoLayout { .. }), "{e}");
        let e = discover(d.path()).unwrap_err();
        assert!(
            e.to_string().contains("no training data layout found"),
            "{e}"
        );

        std::fs::create_dir_all(d.path().join("img")).unwrap();
        std::fs::create_dir_all(d.path().join("label")).unwrap();
        let e = discover(d.path()).unwrap_err();
        assert!(matches!(e, DatasetError::Empty { .. }), "{e}");

        touch(&d.path().join("img/img0007.nii.gz"));
        let e = discover(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("case '0007'") && e.contains("label0007.nii.gz"),
            "{e}"
        );

        let e = find_cases(DatasetLayout::Sts3d, d.path(), &["x".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a STS-3D dataset folder"), "{e}");
        assert!(e.contains("no image/ and label/ folders"), "{e}");

        let e = find_cases(
            DatasetLayout::Btcv,
            d.path(),
            &["0007".into(), "0008".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("2 of the 2 official BTCV test cases missing"),
            "{e}"
        );
        assert!(
            e.contains("0007 (expected ") && e.contains("label/label0007.nii.gz"),
            "{e}"
        );
        assert!(e.contains("img/img0008.nii.gz and "), "{e}");
    }
}
