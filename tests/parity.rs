use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sdseg_volume::model::config::SdsegConfig;
use sdseg_volume::model::unet::UNetModel;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures")
        .join(name)
}

fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let g = got
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let w = want
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let (mut err, mut at) = (0f64, 0);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if (a - b).abs() > err {
            err = (a - b).abs();
            at = i;
        }
    }
    let scale = w.iter().fold(0f64, |m, x| m.max(x.abs()));
    eprintln!("{name}: max abs {err:.3e} at {at}, rel {:.3e}", err / scale);
    assert!(err / scale <= tol);
}

#[test]
fn unet_quick() {
    for name in ["tiny-binary", "tiny-multiclass"] {
        let dir = fixture(name);
        let cfg = SdsegConfig::load(dir.join("config.json")).unwrap();
        let case =
            candle_core::safetensors::load(dir.join("case.safetensors"), &Device::Cpu).unwrap();
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("checkpoint.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        let vb = vb.rename_f(|n: &str| match n.strip_prefix("model.") {
            Some(r) => format!("model_ema.{}", r.replace('.', "")),
            None => n.to_string(),
        });
        let unet = UNetModel::new(cfg.unet(), vb.pp("model.diffusion_model")).unwrap();
        let x = &case["unet_input"];
        let t = &case["t"];
        if cfg.unet().num_classes.is_none() {
            let out = unet.forward(x, t, None).unwrap();
            assert_close(name, &out, &case["unet_output"], 1e-4);
        } else {
            let ids = &case["class_ids"];
            for k in 0..4 {
                let y = ids.get(k).unwrap();
                let out = unet.forward(x, t, Some(&y)).unwrap();
                assert_close(name, &out, &case["unet_output"].get(k).unwrap(), 1e-4);
            }
        }
    }
}
