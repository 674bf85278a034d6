//! INTERIM NIfTI reading and label writing for the engine, until `io::nifti` lands
//! (`io::nifti::read_nifti`, `io::nifti::write_labels`); then this file is deleted and
//! [`super::FileIo`] calls those. Supports what the engine's tests need: 3D volumes with an
//! sform (or pixdim only), written back with the input's header.

use std::path::Path;

use anyhow::Context;
use ndarray::{Array3, Ix3};

use super::VolumeMeta;
use crate::geometry::Affine;
use crate::volume::{NiftiSource, Provenance, Source, StoredType, Volume};

pub fn read_nifti(path: &Path) -> anyhow::Result<Volume> {
    let obj =
        nifti::ReaderOptions::new()
            .read_file(path)
            .map_err(|e| crate::error::InputError {
                path: path.into(),
                message: format!("not a readable NIfTI file: {e}"),
            })?;
    use nifti::{IntoNdArray, NiftiObject};
    let header = obj.header().clone();
    let data = obj
        .into_volume()
        .into_ndarray::<f32>()
        .with_context(|| format!("{}: decoding voxels", path.display()))?;
    let data = data
        .into_dimensionality::<Ix3>()
        .map_err(|_| crate::error::InputError {
            path: path.into(),
            message: "expected a 3D volume".into(),
        })?;
    let data = data.as_standard_layout().into_owned();
    let h = &header;
    let affine = if h.sform_code > 0 {
        let r = |row: [f32; 4]| row.map(f64::from);
        Affine([r(h.srow_x), r(h.srow_y), r(h.srow_z), [0.0, 0.0, 0.0, 1.0]])
    } else {
        Affine::from_spacing([1, 2, 3].map(|i| f64::from(h.pixdim[i])))
    };
    let provenance = Provenance {
        source: Source::Nifti(NiftiSource {
            path: path.to_path_buf(),
            header,
        }),
        stored_type: StoredType::F32,
        integral_i16: false,
        warnings: vec![],
    };
    Ok(Volume::new(data, affine, provenance)?)
}

pub fn write_labels(path: &Path, labels: &Array3<u16>, like: &VolumeMeta) -> anyhow::Result<()> {
    let header = match &like.provenance.source {
        Source::Nifti(n) => n.header.clone(),
        _ => header_from_affine(&like.affine, like.shape),
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let gz = name.to_ascii_lowercase().ends_with(".gz");
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(if gz { ".part.nii.gz" } else { ".part.nii" })
        .tempfile_in(&dir)?;
    let max = labels.iter().copied().max().unwrap_or(0);
    let opts = nifti::writer::WriterOptions::new(tmp.path()).reference_header(&header);
    if max <= 255 {
        opts.write_nifti(&labels.mapv(|v| v as u8))?;
    } else {
        opts.write_nifti(labels)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn header_from_affine(a: &Affine, shape: [usize; 3]) -> nifti::NiftiHeader {
    let sp = a.spacing();
    let row = |r: usize| [0, 1, 2, 3].map(|c| a.0[r][c] as f32);
    nifti::NiftiHeader {
        dim: [
            3,
            shape[0] as u16,
            shape[1] as u16,
            shape[2] as u16,
            1,
            1,
            1,
            1,
        ],
        pixdim: [
            1.0,
            sp[0] as f32,
            sp[1] as f32,
            sp[2] as f32,
            1.0,
            1.0,
            1.0,
            1.0,
        ],
        sform_code: 1,
        qform_code: 0,
        srow_x: row(0),
        srow_y: row(1),
        srow_z: row(2),
        xyzt_units: 2,
        ..nifti::NiftiHeader::default()
    }
}
