//! `sdseg-volume bench` on the tiny fixture: the JSON it prints has the promised fields, and
//! they are consistent with each other. Not a timing test: no speed is asserted.

use crate::support::{bin, fixture, TINY_BINARY};

fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

#[test]
fn json_has_every_field_per_configuration() {
    let config = fixture(TINY_BINARY).join("config.json");
    let out = bin()
        .args(["bench", "--preset"])
        .arg(&config)
        .args([
            "--batch-size",
            "1",
            "--json",
            "--iters",
            "1",
            "--warmup",
            "0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one object per configuration: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();

    assert_eq!(v["preset"], config.display().to_string());
    assert_eq!(v["batch_size"], 1);
    assert_eq!(v["dtype"], "f32");
    assert_eq!(v["device"], "cpu");
    // Which conv kernel level ran on this CPU (an f32 level for --dtype f32).
    let level = v["kernel_level"].as_str().unwrap();
    println!("conv kernel level: {level}");
    assert!(["avx512", "avx2", "candle"].contains(&level), "{level}");
    assert_eq!(v["samples"], 1);
    let stages = ["cond_encoder", "unet", "latent_estimate", "decoder"];
    let mut sum = 0.0;
    for s in stages {
        let ms = num(&v, &["ms_per_slice", s]);
        assert!(ms > 0.0 && ms.is_finite(), "{s}: {ms}");
        sum += ms;
        let gf = num(&v, &["gflop_per_slice", s]);
        let rate = num(&v, &["gflops_per_s", s]);
        assert!(
            (rate - gf / (ms / 1e3)).abs() <= 1e-9 * rate.max(1.0),
            "{s}: {rate} GFLOP/s for {gf} GFLOP in {ms} ms"
        );
    }
    let total = num(&v, &["ms_per_slice", "total"]);
    assert!((total - sum).abs() <= 1e-9 * total, "{total} vs {sum}");
    let sps = num(&v, &["slices_per_s"]);
    assert!((sps - 1e3 / total).abs() <= 1e-9 * sps);
    // The tiny model's work: decoder > condition encoder > UNet, as in the full-size model.
    let gf = |s: &str| num(&v, &["gflop_per_slice", s]);
    assert!(gf("decoder") > gf("cond_encoder") && gf("cond_encoder") > gf("unet"));
    assert!(gf("unet") > 0.1, "{v}");
    // At least the model's own weights and activations are resident.
    let rss = num(&v, &["peak_rss_mb"]);
    assert!(rss > 10.0, "peak RSS {rss} MiB");
}

#[test]
fn zero_batch_is_a_usage_error() {
    let out = bin()
        .args(["bench", "--preset"])
        .arg(fixture(TINY_BINARY).join("config.json"))
        .args(["--batch-size", "4,0", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch-size"));
}

/// `bench --dtype bf16 --agree --json`: one timing object and one agreement object per batch
/// size; the agreement counts every pixel of the batch and meets the bf16 goal (≥ 99.9 %).
/// With AMX turned off (`SDSEG_AMX=0`, as on a CPU without it) the run warns and is the f32 run.
#[test]
fn bf16_agreement_is_reported_and_the_fallback_warns() {
    let config = fixture(TINY_BINARY).join("config.json");
    for amx_off in [false, true] {
        let mut cmd = bin();
        cmd.args(["bench", "--preset"]).arg(&config).args([
            "--batch-size",
            "2",
            "--dtype",
            "bf16",
            "--agree",
            "--json",
            "--iters",
            "1",
            "--warmup",
            "0",
        ]);
        if amx_off {
            cmd.env("SDSEG_AMX", "0").env("SDSEG_AVX512BF16", "0");
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let amx = !amx_off && sdseg_kernels::conv::bf16_available();
        assert_eq!(
            stderr.contains("no AMX-BF16"),
            !amx,
            "fallback warning iff no AMX (amx_off {amx_off}): {stderr}"
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        assert_eq!(lines[0]["dtype"], "bf16");
        let a = &lines[1]["agreement"];
        assert_eq!(lines[1]["batch_size"], 2);
        assert_eq!(num(a, &["total"]), (2 * 256 * 256) as f64);
        let frac = num(a, &["equal"]) / num(a, &["total"]);
        assert!(frac >= 0.999, "{a}");
        assert_eq!(num(a, &["clear_flips"]), 0.0, "{a}");
        if !amx {
            assert_eq!(
                num(a, &["max_score_diff"]),
                0.0,
                "f32 fallback is the f32 run: {a}"
            );
        }
    }
}
