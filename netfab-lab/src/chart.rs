//! The benchmark chart: grouped bars as SVG (no font or drawing crate
//! needed), turned into PNG by rsvg-convert when it is installed.
use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::bench::PathResult;

const COLORS: [&str; 3] = ["#4e79a7", "#f28e2b", "#59a14f"];

pub fn svg(results: &[PathResult]) -> String {
    let (w, h, left, top, bottom) = (900.0, 480.0, 70.0, 60.0, 90.0);
    let plot_h = h - top - bottom;
    let max = results
        .iter()
        .flat_map(|r| [r.gbps_1_stream, r.gbps_4_streams])
        .fold(1.0f64, f64::max)
        * 1.1;
    let group_w = (w - left - 20.0) / results.len() as f64;
    let bar_w = group_w / 4.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="28" font-size="17" text-anchor="middle">netfab lab: TCP throughput (Gbit/s, medians) and TCP_RR latency (µs)</text>
"#,
        w / 2.0
    );
    for i in 0..=5 {
        let v = max * i as f64 / 5.0;
        let y = top + plot_h - plot_h * i as f64 / 5.0;
        s += &format!(
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{v:.0}</text>
"##,
            w - 20.0,
            left - 6.0,
            y + 4.0
        );
    }
    for (i, r) in results.iter().enumerate() {
        let x0 = left + group_w * i as f64 + bar_w / 2.0;
        for (j, v) in [r.gbps_1_stream, r.gbps_4_streams].iter().enumerate() {
            let bh = plot_h * v / max;
            let x = x0 + bar_w * j as f64;
            s += &format!(
                r#"<rect x="{x}" y="{}" width="{}" height="{bh}" fill="{}"/><text x="{}" y="{}" text-anchor="middle" font-size="11">{v:.1}</text>
"#,
                top + plot_h - bh,
                bar_w * 0.9,
                COLORS[j],
                x + bar_w * 0.45,
                top + plot_h - bh - 4.0
            );
        }
        s += &format!(
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="middle" fill="{}">RR {:.0} µs</text>
"#,
            x0 + bar_w,
            top + plot_h + 20.0,
            r.path,
            x0 + bar_w,
            top + plot_h + 38.0,
            COLORS[2],
            r.rr_mean_us
        );
    }
    s += &format!(
        r#"<rect x="{left}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">1 stream</text><rect x="{}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">4 streams</text>
</svg>
"#,
        h - 30.0,
        COLORS[0],
        left + 18.0,
        h - 20.0,
        left + 110.0,
        h - 30.0,
        COLORS[1],
        left + 128.0,
        h - 20.0
    );
    s
}

/// Writes `<stem>.svg` and, with rsvg-convert, `<stem>.png`.
pub fn write(results: &[PathResult], dir: &Path, stem: &str) -> Result<std::path::PathBuf> {
    let svg_path = dir.join(format!("{stem}.svg"));
    std::fs::write(&svg_path, svg(results))?;
    let png = dir.join(format!("{stem}.png"));
    let st = Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png)
        .arg(&svg_path)
        .status()
        .context("running rsvg-convert (package librsvg2-bin)")?;
    if !st.success() {
        bail!("rsvg-convert failed ({st})");
    }
    Ok(png)
}
