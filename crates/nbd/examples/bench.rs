//! Prints `ferry_nbd::bench::bench_against_qemu_nbd` figures: `cargo run --release -p ferry-nbd --example bench [DIR]`.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let dir = match std::env::args_os().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir(),
    };
    let work = tempfile::tempdir_in(dir)?;
    for f in ferry_nbd::bench::bench_against_qemu_nbd(work.path()).await? {
        let pct = 100.0 * f.value / f.baseline_value;
        println!(
            "{:<34} ferry-nbd {:>10.1} {:<6} {} {:>10.1} {:<6} ({pct:.0} %)",
            f.name, f.value, f.unit, f.baseline, f.baseline_value, f.unit
        );
    }
    Ok(())
}
