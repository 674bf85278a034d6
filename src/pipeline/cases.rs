//! From the user's INPUT paths (or a manifest) to a list of cases: (case id, input, output).
//!
//! **Case id rule**: a NIfTI file's name without `.nii` / `.nii.gz` (`img0001.nii.gz` →
//! `img0001`); another file's name without its last extension (`scan.zip` → `scan`); a folder's
//! name (`data/patient7/` → `patient7`). A manifest may set it explicitly (`case` column).
//! Ids must be unique in a run: they name the outputs (`--name '{case}.nii.gz'`) and decide the
//! shard.
//!
//! **What an INPUT folder is** (with `--out DIR`): if it holds NIfTI files directly, or holds no
//! DICOM file directly but has subfolders, it is a *dataset folder*: each NIfTI file in it is a
//! case, and each subfolder that contains DICOM files (at any depth) is a case (a DICOM series
//! folder, read recursively). Otherwise, a folder holding DICOM files is one case. With
//! `--out FILE` the single INPUT is always one case, whatever it holds.

use crate::io::nifti::{is_nifti_path, strip_nifti_suffix};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::outputs::{Formats, OutputFormat};
use super::shard::Shard;

/// One unit of work: segment `input` into `output` (and the other formats' files beside it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub id: String,
    pub input: PathBuf,
    /// The case's output path: the NIfTI file, which also names the DICOM outputs
    /// (`pipeline::outputs`).
    pub output: PathBuf,
    /// Every file the run writes for this case, by format (set by [`plan`]; the NIfTI file
    /// alone until then).
    pub outputs: Vec<(OutputFormat, PathBuf)>,
}

impl Case {
    pub fn new(id: String, input: PathBuf, output: PathBuf) -> Case {
        Case {
            id,
            input,
            outputs: vec![(OutputFormat::Nifti, output.clone())],
            output,
        }
    }

    /// The first file the run writes for this case (the NIfTI file unless `--format` leaves
    /// it out), for messages.
    pub fn primary_output(&self) -> &Path {
        self.outputs
            .first()
            .map(|(_, p)| p.as_path())
            .unwrap_or(&self.output)
    }
}

/// Where outputs go: one file (exactly one case) or a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutTarget {
    File(PathBuf),
    Dir(PathBuf),
}

impl OutTarget {
    /// A path ending in `.nii`, `.nii.gz` or `.dcm` is a file; anything else is a folder.
    pub fn from_path(p: &Path) -> OutTarget {
        let dcm = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().ends_with(".dcm"));
        if is_nifti_path(p) || dcm {
            OutTarget::File(p.to_path_buf())
        } else {
            OutTarget::Dir(p.to_path_buf())
        }
    }

    /// The folder outputs (and sidecars) go into.
    pub fn dir(&self) -> PathBuf {
        match self {
            OutTarget::Dir(d) => d.clone(),
            OutTarget::File(f) => match f.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            },
        }
    }
}

/// `--name` pattern: a relative path ending in `.nii` or `.nii.gz`, containing `{case}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamePattern(String);

impl Default for NamePattern {
    fn default() -> Self {
        NamePattern("{case}.nii.gz".to_string())
    }
}

impl FromStr for NamePattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains("{case}") {
            return Err(format!(
                "--name '{s}': must contain {{case}}, e.g. '{{case}}_seg.nii.gz'"
            ));
        }
        if !is_nifti_path(Path::new(s)) {
            return Err(format!("--name '{s}': must end in .nii or .nii.gz"));
        }
        let p = Path::new(s);
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "--name '{s}': must be a relative path inside --out (no leading '/', no '..')"
            ));
        }
        Ok(NamePattern(s.to_string()))
    }
}

impl NamePattern {
    pub fn render(&self, case_id: &str) -> PathBuf {
        PathBuf::from(self.0.replace("{case}", case_id))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CasesError {
    #[error("{path}: no such file or folder")]
    NotFound { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: no NIfTI files, DICOM files or DICOM series subfolders found; \
         pass a NIfTI file, a DICOM series folder or a dataset folder"
    )]
    NothingFound { path: PathBuf },
    #[error("no input cases: give INPUT paths or --manifest")]
    NoInputs,
    #[error(
        "--out {out} is a single file but {n} cases were found; use --out DIR for several cases"
    )]
    OutFileNeedsOneCase { out: PathBuf, n: usize },
    #[error(
        "case id '{id}' is used twice: {first} and {second}; \
         rename one, or use a --manifest with a 'case' column"
    )]
    DuplicateCase {
        id: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("output {output} would be written by two cases: '{first}' and '{second}'")]
    DuplicateOutput {
        output: PathBuf,
        first: String,
        second: String,
    },
    #[error(
        "{input} is a dataset folder ({n} NIfTI files) but --out names one file; \
         use --out DIR (e.g. --out {out}/labels) or pass one file"
    )]
    DatasetToFile {
        input: PathBuf,
        n: usize,
        out: PathBuf,
    },
    #[error(
        "case '{id}': its output would overwrite its input {path}; choose another --out or --name"
    )]
    OutputIsInput { id: String, path: PathBuf },
    #[error("{path}:{line}: {message}")]
    Manifest {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: cannot derive a case id from this path")]
    NoCaseId { path: PathBuf },
}

impl crate::error::Classify for CasesError {
    fn is_input_error(&self) -> bool {
        true
    }
}

/// A manifest line: an input, and optionally its output and case id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    pub input: PathBuf,
    pub output: Option<PathBuf>,
    pub case: Option<String>,
}

/// The cases found, plus notes about what was skipped while looking.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    pub cases: Vec<Case>,
    pub warnings: Vec<String>,
}

/// The case id of an input path (see the module docs).
pub fn case_id_for(path: &Path) -> Option<String> {
    let name = match path.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        // ".", "..", "/": use the folder's real name.
        None => std::fs::canonicalize(path)
            .ok()?
            .file_name()?
            .to_string_lossy()
            .into_owned(),
    };
    let name = if name == "." || name == ".." {
        std::fs::canonicalize(path)
            .ok()?
            .file_name()?
            .to_string_lossy()
            .into_owned()
    } else {
        name
    };
    let id = if let Some(stem) = strip_nifti_suffix(&name) {
        stem
    } else if path.is_dir() {
        &name[..]
    } else {
        match name.rfind('.') {
            Some(i) if i > 0 => &name[..i],
            _ => &name[..],
        }
    };
    (!id.is_empty()).then(|| id.to_string())
}

/// Does this file look like DICOM (`DICM` at byte 128, or a `.dcm` name)?
fn looks_like_dicom(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if ext.as_deref() == Some("dcm") {
        return true;
    }
    use std::io::Read;
    let mut buf = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map(|_| &buf[128..132] == b"DICM")
        .unwrap_or(false)
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .map(|n| n.to_string_lossy().starts_with('.'))
        .unwrap_or(false)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, CasesError> {
    let io = |source| CasesError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let p = e.map_err(io)?.path();
        if !is_hidden(&p) {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Is there a DICOM file anywhere under `dir`? Stops at the first one found.
fn contains_dicom(dir: &Path) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = sorted_entries(&d) else {
            continue;
        };
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else if looks_like_dicom(&p) {
                return true;
            }
        }
    }
    false
}

/// Expand one INPUT into (case id, input path) pairs; `exclude` are folders never taken as
/// cases (the output folder, when it sits inside a dataset folder).
pub fn expand_input(
    path: &Path,
    exclude: &[PathBuf],
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, PathBuf)>, CasesError> {
    let id = |p: &Path| case_id_for(p).ok_or_else(|| CasesError::NoCaseId { path: p.into() });
    if !path.exists() {
        return Err(CasesError::NotFound { path: path.into() });
    }
    if !path.is_dir() {
        return Ok(vec![(id(path)?, path.to_path_buf())]);
    }
    let entries = sorted_entries(path)?;
    let nifti: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| p.is_file() && is_nifti_path(p))
        .collect();
    let dirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    let loose_dicom = entries
        .iter()
        .filter(|p| p.is_file() && !is_nifti_path(p) && looks_like_dicom(p))
        .count();
    if nifti.is_empty() && loose_dicom > 0 {
        return Ok(vec![(id(path)?, path.to_path_buf())]);
    }
    if nifti.is_empty() && dirs.is_empty() {
        return Err(CasesError::NothingFound { path: path.into() });
    }
    if loose_dicom > 0 {
        warnings.push(format!(
            "{}: ignored {loose_dicom} DICOM file(s) beside the NIfTI files of this dataset folder; \
             put a series in its own subfolder to segment it",
            path.display()
        ));
    }
    let mut out = Vec::new();
    for p in nifti {
        out.push((id(p)?, p.clone()));
    }
    for d in dirs {
        let canon = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        if exclude.contains(&canon) {
            continue;
        }
        if contains_dicom(d) {
            out.push((id(d)?, d.clone()));
        } else {
            warnings.push(format!("{}: skipped (no DICOM files in it)", d.display()));
        }
    }
    if out.is_empty() {
        return Err(CasesError::NothingFound { path: path.into() });
    }
    Ok(out)
}

/// Parse a manifest (`.csv` with an optional header naming `input`, `output`, `case`
/// columns; any other name: one input per line, optionally `input<TAB>output`; `#` comments
/// and blank lines ignored). Relative inputs are relative to the manifest's folder.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestEntry>, CasesError> {
    let text = std::fs::read_to_string(path).map_err(|source| CasesError::Io {
        path: path.into(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let is_csv = path
        .extension()
        .map(|e| e.eq_ignore_ascii_case("csv"))
        .unwrap_or(false);
    let err = |line: usize, message: String| CasesError::Manifest {
        path: path.into(),
        line,
        message,
    };
    let mut rows: Vec<(usize, Vec<String>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let fields = if is_csv {
            split_csv(line).map_err(|m| err(n + 1, m))?
        } else {
            line.split('\t').map(|f| f.trim().to_string()).collect()
        };
        rows.push((n + 1, fields));
    }
    // Column positions: from a CSV header if the first row names `input`, else input, output.
    let (mut col_in, mut col_out, mut col_case) = (0usize, Some(1usize), None);
    if is_csv {
        if let Some((_, first)) = rows.first() {
            let names: Vec<String> = first
                .iter()
                .map(|f| f.trim().to_ascii_lowercase())
                .collect();
            if let Some(i) = names.iter().position(|f| f == "input") {
                col_in = i;
                col_out = names.iter().position(|f| f == "output");
                col_case = names.iter().position(|f| f == "case");
                rows.remove(0);
            }
        }
    }
    let mut out = Vec::new();
    for (line, fields) in rows {
        let get = |i: Option<usize>| {
            i.and_then(|i| fields.get(i))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let input = get(Some(col_in)).ok_or_else(|| err(line, "no input path".into()))?;
        let input = PathBuf::from(input);
        let input = if input.is_absolute() {
            input
        } else {
            base.join(input)
        };
        let output = get(col_out).map(PathBuf::from);
        if let Some(o) = &output {
            if !is_nifti_path(o) {
                return Err(err(
                    line,
                    format!("output '{}' must end in .nii or .nii.gz", o.display()),
                ));
            }
        }
        let case = get(col_case);
        if let Some(c) = &case {
            if c.contains('/') || c.contains('\\') || c == "." || c == ".." {
                return Err(err(line, format!("case id '{c}' must not be a path")));
            }
        }
        out.push(ManifestEntry {
            input,
            output,
            case,
        });
    }
    Ok(out)
}

/// Split one CSV record (RFC 4180 quoting; no embedded newlines).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.trim().is_empty() && !was_quoted => {
                cur.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    fields.push(cur);
    Ok(fields)
}

/// Everything that decides the case list.
#[derive(Clone, Debug)]
pub struct CaseSpec<'a> {
    pub inputs: &'a [PathBuf],
    pub manifest: Option<&'a Path>,
    pub out: &'a OutTarget,
    pub name: &'a NamePattern,
}

/// Find every case of a run, with unique ids and outputs.
pub fn discover(spec: &CaseSpec<'_>) -> Result<Discovery, CasesError> {
    let mut warnings = Vec::new();
    let mut found: Vec<(String, PathBuf, Option<PathBuf>)> = Vec::new();
    let out_dir = spec.out.dir();
    let exclude: Vec<PathBuf> = std::fs::canonicalize(&out_dir).into_iter().collect();
    match spec.out {
        OutTarget::File(_) => {
            // One INPUT, one case, never expanded (a DICOM folder with subfolders is one series).
            for p in spec.inputs {
                if !p.exists() {
                    return Err(CasesError::NotFound { path: p.clone() });
                }
                if p.is_dir() {
                    let n = sorted_entries(p)?
                        .iter()
                        .filter(|e| e.is_file() && is_nifti_path(e))
                        .count();
                    if n > 0 {
                        return Err(CasesError::DatasetToFile {
                            input: p.clone(),
                            n,
                            out: spec.out.dir(),
                        });
                    }
                }
                let id = case_id_for(p).ok_or_else(|| CasesError::NoCaseId { path: p.clone() })?;
                found.push((id, p.clone(), None));
            }
        }
        OutTarget::Dir(_) => {
            for p in spec.inputs {
                for (id, input) in expand_input(p, &exclude, &mut warnings)? {
                    found.push((id, input, None));
                }
            }
        }
    }
    if let Some(m) = spec.manifest {
        for e in read_manifest(m)? {
            if !e.input.exists() {
                return Err(CasesError::NotFound { path: e.input });
            }
            let id = match e.case {
                Some(c) => c,
                None => case_id_for(&e.input).ok_or_else(|| CasesError::NoCaseId {
                    path: e.input.clone(),
                })?,
            };
            found.push((id, e.input, e.output));
        }
    }
    if found.is_empty() {
        return Err(CasesError::NoInputs);
    }
    if let OutTarget::File(f) = spec.out {
        if found.len() != 1 {
            return Err(CasesError::OutFileNeedsOneCase {
                out: f.clone(),
                n: found.len(),
            });
        }
    }
    let mut by_id: HashMap<String, PathBuf> = HashMap::new();
    let mut by_out: HashMap<PathBuf, String> = HashMap::new();
    let mut cases = Vec::with_capacity(found.len());
    for (id, input, explicit_out) in found {
        if let Some(first) = by_id.get(&id) {
            return Err(CasesError::DuplicateCase {
                id,
                first: first.clone(),
                second: input,
            });
        }
        by_id.insert(id.clone(), input.clone());
        let output = match (spec.out, explicit_out) {
            (OutTarget::File(f), _) => f.clone(),
            (OutTarget::Dir(d), Some(o)) => {
                if o.is_absolute() {
                    o
                } else {
                    d.join(o)
                }
            }
            (OutTarget::Dir(d), None) => d.join(spec.name.render(&id)),
        };
        if let Some(first) = by_out.get(&output) {
            return Err(CasesError::DuplicateOutput {
                output,
                first: first.clone(),
                second: id,
            });
        }
        by_out.insert(output.clone(), id.clone());
        cases.push(Case::new(id, input, output));
    }
    // An output folder that is also the input folder: earlier outputs are not new cases.
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let outputs: HashMap<PathBuf, String> = cases
        .iter()
        .map(|c| (abs(&c.output), c.id.clone()))
        .collect();
    if let Some(c) = cases.iter().find(|c| abs(&c.input) == abs(&c.output)) {
        return Err(CasesError::OutputIsInput {
            id: c.id.clone(),
            path: c.input.clone(),
        });
    }
    cases.retain(|c| match outputs.get(&abs(&c.input)) {
        Some(owner) if *owner != c.id => {
            warnings.push(format!(
                "{}: not a case (it is the output of case '{owner}')",
                c.input.display()
            ));
            false
        }
        _ => true,
    });
    Ok(Discovery { cases, warnings })
}

/// What this process will do with the cases it was given.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Cases to segment, in input order.
    pub run: Vec<Case>,
    /// Cases of this shard whose output already exists (resume).
    pub skipped: Vec<Case>,
    /// Cases that belong to other shards.
    pub other_shards: usize,
}

/// Keep this shard's cases, each with the files of every requested format; skip those whose
/// outputs (and `extra` files, e.g. the uncertainty map) all exist unless `overwrite`.
pub fn plan(
    cases: Vec<Case>,
    shard: Shard,
    overwrite: bool,
    formats: &Formats,
    extra: &dyn Fn(&Case) -> Vec<PathBuf>,
) -> Plan {
    let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    let mine = shard.select(&ids);
    let mut p = Plan::default();
    for (mut c, m) in cases.into_iter().zip(mine) {
        c.outputs = formats.paths(&c.output);
        let done =
            || c.outputs.iter().all(|(_, o)| o.is_file()) && extra(&c).iter().all(|o| o.is_file());
        if !m {
            p.other_shards += 1;
        } else if !overwrite && done() {
            p.skipped.push(c);
        } else {
            p.run.push(c);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn dicom_bytes() -> Vec<u8> {
        let mut v = vec![0u8; 200];
        v[128..132].copy_from_slice(b"DICM");
        v
    }

    #[test]
    fn case_ids() {
        assert_eq!(
            case_id_for(Path::new("a/img0001.nii.gz")).as_deref(),
            Some("img0001")
        );
        assert_eq!(case_id_for(Path::new("a/x.y.NII")).as_deref(), Some("x.y"));
        assert_eq!(
            case_id_for(Path::new("a/scan.zip")).as_deref(),
            Some("scan")
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("patient7");
        std::fs::create_dir(&p).unwrap();
        assert_eq!(case_id_for(&p).as_deref(), Some("patient7"));
        assert_eq!(case_id_for(&p.join(".")).as_deref(), Some("patient7"));
    }

    #[test]
    fn name_patterns() {
        assert!("{case}.nii.gz".parse::<NamePattern>().is_ok());
        assert!("seg/{case}_pred.nii".parse::<NamePattern>().is_ok());
        assert!("labels.nii.gz".parse::<NamePattern>().is_err());
        assert!("{case}.png".parse::<NamePattern>().is_err());
        assert!("../{case}.nii".parse::<NamePattern>().is_err());
        assert!("/{case}.nii".parse::<NamePattern>().is_err());
        let p: NamePattern = "{case}/seg.nii.gz".parse().unwrap();
        assert_eq!(p.render("c1"), PathBuf::from("c1/seg.nii.gz"));
    }

    #[test]
    fn dataset_folder_and_series_folder() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        touch(&root.join("data/b.nii.gz"), b"x");
        touch(&root.join("data/a.nii"), b"x");
        touch(&root.join("data/notes.txt"), b"x");
        touch(&root.join("data/p1/series/IM1"), &dicom_bytes());
        touch(&root.join("data/labels/a.nii.gz"), b"x");
        touch(&root.join("data/.hidden/IM1"), &dicom_bytes());
        touch(&root.join("series/IM1"), &dicom_bytes());
        touch(&root.join("series/IM2"), &dicom_bytes());
        let mut w = Vec::new();
        let got = expand_input(&root.join("data"), &[], &mut w).unwrap();
        let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(ids, ["a", "b", "p1"]);
        assert!(w.iter().any(|m| m.contains("labels")), "{w:?}");
        let got = expand_input(&root.join("series"), &[], &mut w).unwrap();
        assert_eq!(got, vec![("series".to_string(), root.join("series"))]);
        // A folder of series folders only (no loose files) is a dataset too.
        touch(&root.join("ds/s1/IM1"), &dicom_bytes());
        touch(&root.join("ds/s2/x/IM1"), &dicom_bytes());
        let got = expand_input(&root.join("ds"), &[], &mut w).unwrap();
        let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(ids, ["s1", "s2"]);
        std::fs::create_dir_all(root.join("empty")).unwrap();
        assert!(matches!(
            expand_input(&root.join("empty"), &[], &mut w),
            Err(CasesError::NothingFound { .. })
        ));
        // The output folder inside a dataset folder is not a case.
        touch(&root.join("ds/out/IM1"), &dicom_bytes());
        let ex = vec![std::fs::canonicalize(root.join("ds/out")).unwrap()];
        let got = expand_input(&root.join("ds"), &ex, &mut w).unwrap();
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn manifests() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        touch(&root.join("in/a.nii.gz"), b"x");
        touch(&root.join("in/b.nii.gz"), b"x");
        touch(
            &root.join("list.csv"),
            b"case,input,output\nA,in/a.nii.gz,\"x, y.nii.gz\"\n# comment\n,in/b.nii.gz,\n",
        );
        let m = read_manifest(&root.join("list.csv")).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].case.as_deref(), Some("A"));
        assert_eq!(m[0].input, root.join("in/a.nii.gz"));
        assert_eq!(m[0].output.as_deref(), Some(Path::new("x, y.nii.gz")));
        assert_eq!(m[1].case, None);
        assert_eq!(m[1].output, None);
        touch(
            &root.join("list.txt"),
            b"in/a.nii.gz\tA.nii\n\nin/b.nii.gz\n",
        );
        let m = read_manifest(&root.join("list.txt")).unwrap();
        assert_eq!(m[0].output.as_deref(), Some(Path::new("A.nii")));
        assert_eq!(m[1].output, None);
        touch(&root.join("bad.csv"), b"input,output\nin/a.nii.gz,a.png\n");
        let e = read_manifest(&root.join("bad.csv")).unwrap_err();
        assert!(e.to_string().contains("bad.csv:2"), "{e}");
        touch(&root.join("bad2.csv"), b"\"in/a.nii.gz\n");
        assert!(read_manifest(&root.join("bad2.csv")).is_err());

        let out = OutTarget::Dir(root.join("out"));
        let name = NamePattern::default();
        let disc = discover(&CaseSpec {
            inputs: &[],
            manifest: Some(&root.join("list.csv")),
            out: &out,
            name: &name,
        })
        .unwrap();
        let got: Vec<(&str, PathBuf)> = disc
            .cases
            .iter()
            .map(|c| (c.id.as_str(), c.output.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("A", root.join("out/x, y.nii.gz")),
                ("b", root.join("out/b.nii.gz"))
            ]
        );
    }

    #[test]
    fn duplicates_and_out_file() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        touch(&root.join("p1/ct.nii.gz"), b"x");
        touch(&root.join("p2/ct.nii.gz"), b"x");
        let inputs = vec![root.join("p1/ct.nii.gz"), root.join("p2/ct.nii.gz")];
        let name = NamePattern::default();
        let out = OutTarget::Dir(root.join("out"));
        let e = discover(&CaseSpec {
            inputs: &inputs,
            manifest: None,
            out: &out,
            name: &name,
        })
        .unwrap_err();
        assert!(matches!(e, CasesError::DuplicateCase { .. }), "{e}");
        let out = OutTarget::from_path(&root.join("seg.nii.gz"));
        let e = discover(&CaseSpec {
            inputs: &inputs,
            manifest: None,
            out: &out,
            name: &name,
        })
        .unwrap_err();
        assert!(
            matches!(e, CasesError::OutFileNeedsOneCase { n: 2, .. }),
            "{e}"
        );
        let disc = discover(&CaseSpec {
            inputs: &inputs[..1],
            manifest: None,
            out: &out,
            name: &name,
        })
        .unwrap();
        assert_eq!(disc.cases[0].output, root.join("seg.nii.gz"));
    }

    #[test]
    fn outputs_in_the_input_folder_are_not_cases() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        touch(&root.join("data/a.nii.gz"), b"x");
        touch(&root.join("data/a_seg.nii.gz"), b"x");
        let out = OutTarget::Dir(root.join("data"));
        let name: NamePattern = "{case}_seg.nii.gz".parse().unwrap();
        let disc = discover(&CaseSpec {
            inputs: &[root.join("data")],
            manifest: None,
            out: &out,
            name: &name,
        })
        .unwrap();
        let ids: Vec<&str> = disc.cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a"]);
        assert!(disc
            .warnings
            .iter()
            .any(|w| w.contains("output of case 'a'")));
        let e = discover(&CaseSpec {
            inputs: &[root.join("data")],
            manifest: None,
            out: &out,
            name: &NamePattern::default(),
        })
        .unwrap_err();
        assert!(matches!(e, CasesError::OutputIsInput { .. }), "{e}");
    }

    #[test]
    fn plan_skips_existing_and_shards() {
        let d = tempfile::tempdir().unwrap();
        let cases: Vec<Case> = (0..6)
            .map(|i| {
                Case::new(
                    format!("c{i}"),
                    d.path().join(format!("c{i}.nii")),
                    d.path().join(format!("out{i}.nii.gz")),
                )
            })
            .collect();
        let nifti = Formats::default();
        let none = |_: &Case| Vec::new();
        touch(&cases[2].output, b"done");
        let p = plan(cases.clone(), Shard::ALL, false, &nifti, &none);
        assert_eq!(p.run.len(), 5);
        assert_eq!(p.skipped, vec![cases[2].clone()]);
        let p = plan(cases.clone(), Shard::ALL, true, &nifti, &none);
        assert_eq!(p.run.len(), 6);
        // A case is done when every requested format exists.
        let both: Formats = "nifti,dicom-seg".parse().unwrap();
        let p = plan(cases.clone(), Shard::ALL, false, &both, &none);
        assert_eq!(p.run.len(), 6);
        assert_eq!(p.run[2].outputs.len(), 2);
        touch(&d.path().join("out2.seg.dcm"), b"done");
        touch(&d.path().join("out3.seg.dcm"), b"done");
        let p = plan(cases.clone(), Shard::ALL, false, &both, &none);
        assert_eq!(p.run.len(), 5);
        assert_eq!(p.skipped[0].id, "c2");
        let seg: Formats = "dicom-seg".parse().unwrap();
        assert_eq!(
            plan(cases.clone(), Shard::ALL, false, &seg, &none)
                .run
                .len(),
            4
        );
        // An extra output (the uncertainty map) must exist too.
        let map = |c: &Case| vec![c.output.with_extension("u")];
        assert_eq!(
            plan(cases.clone(), Shard::ALL, false, &nifti, &map)
                .run
                .len(),
            6
        );
        let p = plan(cases, Shard::new(1, 3).unwrap(), false, &nifti, &none);
        assert_eq!(p.other_shards, 4);
        let ids: Vec<&str> = p.run.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["c1", "c4"]);
    }
}
