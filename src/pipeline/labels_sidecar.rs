//! Label names and colours, and the sidecar files viewers read beside label volumes:
//! `labels.json` (ours), `labels.ctbl` (3D Slicer colour table) and `labels.itksnap.txt`
//! (ITK-SNAP label description file).

use std::io::Write;
use std::path::{Path, PathBuf};

/// One label value of the output volumes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LabelInfo {
    pub id: u16,
    pub name: String,
    pub color: [u8; 3],
}

/// The official SDSeg `colorize` palette (`ldm/data/synapse.py::COLOR_MAP`) for ids 1..13;
/// further ids cycle through a fixed list of distinct colours.
pub fn default_color(id: u16) -> [u8; 3] {
    const SDSEG: [[u8; 3]; 14] = [
        [0, 0, 0],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [0, 255, 255],
        [255, 0, 255],
        [255, 239, 213],
        [0, 0, 205],
        [205, 133, 63],
        [210, 180, 140],
        [102, 205, 170],
        [0, 0, 128],
        [0, 139, 139],
    ];
    const EXTRA: [[u8; 3]; 8] = [
        [230, 159, 0],
        [86, 180, 233],
        [0, 158, 115],
        [240, 228, 66],
        [0, 114, 178],
        [213, 94, 0],
        [204, 121, 167],
        [128, 128, 128],
    ];
    match SDSEG.get(id as usize) {
        Some(c) => *c,
        None => EXTRA[(id as usize - SDSEG.len()) % EXTRA.len()],
    }
}

/// Labels `0..classes` named from `names` (id → name), with default colours; ids without a
/// name are called `label N` (0: `background`).
pub fn label_table(classes: usize, names: &[(u16, String)]) -> Vec<LabelInfo> {
    (0..classes.max(2) as u16)
        .map(|id| {
            let name = names
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, n)| n.clone())
                .unwrap_or_else(|| {
                    if id == 0 {
                        "background".into()
                    } else {
                        format!("label {id}")
                    }
                });
            LabelInfo {
                id,
                name,
                color: default_color(id),
            }
        })
        .collect()
}

#[derive(serde::Serialize)]
struct LabelsJson<'a> {
    pipeline: &'a str,
    labels: &'a [LabelInfo],
}

/// `labels.json`: `{"pipeline": ..., "labels": [{"id", "name", "color": [r,g,b]}]}`.
pub fn labels_json(pipeline: &str, labels: &[LabelInfo]) -> String {
    let mut s = serde_json::to_string_pretty(&LabelsJson { pipeline, labels })
        .expect("label table serialises");
    s.push('\n');
    s
}

/// 3D Slicer colour table (`.ctbl`; same text as a `*_ColorTable.txt`): `id name r g b a`,
/// names without spaces (Slicer splits on whitespace). Background is transparent.
pub fn slicer_ctbl(labels: &[LabelInfo]) -> String {
    let mut s = String::from("# Color table file written by sdseg-volume\n");
    s.push_str(&format!("# {} values\n", labels.len()));
    for l in labels {
        let alpha = if l.id == 0 { 0 } else { 255 };
        let [r, g, b] = l.color;
        s.push_str(&format!(
            "{} {} {r} {g} {b} {alpha}\n",
            l.id,
            l.name.replace(char::is_whitespace, "_")
        ));
    }
    s
}

/// ITK-SNAP label description file (Segmentation → Import Label Descriptions).
pub fn itksnap_labels(labels: &[LabelInfo]) -> String {
    let mut s = String::from(
        "################################################\n\
         # ITK-SnAP Label Description File\n\
         # File format: \n\
         # IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL\n\
         # Fields: \n\
         #    IDX:   Zero-based index \n\
         #    -R-:   Red color component (0..255)\n\
         #    -G-:   Green color component (0..255)\n\
         #    -B-:   Blue color component (0..255)\n\
         #    -A-:   Label transparency (0.00 .. 1.00)\n\
         #    VIS:   Label visibility (0 or 1)\n\
         #    MSH:   Label mesh visibility (0 or 1)\n\
         #  LABEL:   Label description \n\
         ################################################\n",
    );
    for l in labels {
        let [r, g, b] = l.color;
        let (a, vis) = if l.id == 0 { (0, 0) } else { (1, 1) };
        s.push_str(&format!(
            "{:>5} {r:>5} {g:>4} {b:>4} {a:>8} {vis:>2} {vis:>2}    \"{}\"\n",
            l.id,
            l.name.replace('"', "'")
        ));
    }
    s
}

/// Write the three sidecars into `dir` (atomically; unchanged files are left alone so that
/// concurrent shards writing the same table never race). Returns the paths.
pub fn write_sidecars(
    dir: &Path,
    pipeline: &str,
    labels: &[LabelInfo],
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let files = [
        ("labels.json", labels_json(pipeline, labels)),
        ("labels.ctbl", slicer_ctbl(labels)),
        ("labels.itksnap.txt", itksnap_labels(labels)),
    ];
    let mut out = Vec::new();
    for (name, text) in files {
        let p = dir.join(name);
        if std::fs::read(&p).ok().as_deref() != Some(text.as_bytes()) {
            crate::io::atomic::write_atomic(&p, |f| f.write_all(text.as_bytes()))?;
        }
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        let labels = label_table(3, &[(1, "right kidney".into())]);
        assert_eq!(labels[0].name, "background");
        assert_eq!(labels[1].color, [255, 0, 0]);
        assert_eq!(labels[2].name, "label 2");
        let ctbl = slicer_ctbl(&labels);
        assert!(ctbl.contains("\n1 right_kidney 255 0 0 255\n"), "{ctbl}");
        assert!(ctbl.contains("\n0 background 0 0 0 0\n"));
        let itk = itksnap_labels(&labels);
        let line = itk.lines().find(|l| l.contains("right kidney")).unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&fields[..7], ["1", "255", "0", "0", "1", "1", "1"]);
        let js: serde_json::Value = serde_json::from_str(&labels_json("btcv", &labels)).unwrap();
        assert_eq!(js["labels"][1]["name"], "right kidney");
        assert_eq!(js["labels"][1]["color"][0], 255);
        assert_eq!(default_color(14), default_color(22));
        let d = tempfile::tempdir().unwrap();
        let files = write_sidecars(d.path(), "btcv", &labels).unwrap();
        assert_eq!(files.len(), 3);
        assert!(files.iter().all(|f| f.is_file()));
    }
}
