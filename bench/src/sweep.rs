//! `sweep`: one workload on two targets at several client loads, repeated, with the targets'
//! order alternating between repetitions; reports the median ratio at each load and the
//! ratio of the two targets' peaks (each one's best load), with a throughput-against-load
//! plot.
//!
//! A single load can flatter or wrong either side: a server whose throughput is bound by its
//! latency at that load (group commit waiting for enough writes in flight) looks slower than
//! it is, and one already saturated looks no worse. Comparing capacity means raising the load
//! until each target stops gaining, so every run here is a full `compare` (fresh servers,
//! warm-up, same driver) at each load in turn.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::compare::Target;

/// What `sweep` runs.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The target whose ratios are reported (numerator).
    #[arg(long, value_enum, default_value = "baton")]
    pub target: Target,
    /// The target it is compared against (denominator).
    #[arg(long, value_enum, default_value = "zookeeper")]
    pub against: Target,
    /// The workload (a name `compare --workloads` accepts).
    #[arg(long, default_value = "write")]
    pub workload: String,
    /// Loads, as SESSIONSxIN_FLIGHT (requests in flight per session), lightest first.
    #[arg(long, value_delimiter = ',', default_value = "32x8,32x16,32x32,64x32")]
    pub loads: Vec<String>,
    /// Repetitions of the whole sweep (the order of the two targets alternates).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// The baton binary (default: beside this one, then on PATH).
    #[arg(long)]
    pub baton: Option<PathBuf>,
    /// First of the 127.0.0.1 ports the servers use (passed to `compare`).
    #[arg(long, default_value_t = 24100)]
    pub base_port: u16,
    /// Directory for each run's report, sweep.json and sweep.svg.
    #[arg(long, default_value = "sweep-results")]
    pub out: PathBuf,
}

/// One load: sessions and requests in flight per session.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Load {
    clients: usize,
    depth: usize,
}

impl Load {
    fn parse(text: &str) -> anyhow::Result<Load> {
        let (c, d) = text.split_once(['x', 'X']).with_context(|| format!("load {text:?}: expected SESSIONSxDEPTH"))?;
        let clients = c.trim().parse().with_context(|| format!("load {text:?}: sessions"))?;
        let depth = d.trim().parse().with_context(|| format!("load {text:?}: depth"))?;
        anyhow::ensure!(clients > 0 && depth > 0, "load {text:?}: both must be positive");
        Ok(Load { clients, depth })
    }

    fn in_flight(self) -> usize {
        self.clients * self.depth
    }

    fn name(self) -> String {
        format!("{}x{}", self.clients, self.depth)
    }
}

/// One target's result in one run.
#[derive(Debug, Clone, Copy)]
struct Point {
    ops: f64,
    p99: f64,
}

/// Median of a non-empty set (mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// Reads one target's result for `workload` from a `compare` report.
fn point(report: &serde_json::Value, target: Target, workload: &str) -> Option<Point> {
    report["results"].as_array()?.iter().find_map(|r| {
        (r["target"] == target.name() && r["workload"] == workload)
            .then(|| Some(Point { ops: r["ops_per_sec"].as_f64()?, p99: r["p99_ms"].as_f64()? }))
            .flatten()
    })
}

/// Runs the sweep.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.target != args.against, "--target and --against must differ");
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    let loads = args.loads.iter().map(|l| Load::parse(l)).collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!loads.is_empty(), "no --loads");
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let me = std::env::current_exe().context("locating baton-bench")?;
    let total = args.reps * loads.len();
    // runs[load][rep] = (target, against)
    let mut runs: Vec<Vec<(Point, Point)>> = vec![Vec::new(); loads.len()];
    let mut done = 0;
    for rep in 0..args.reps {
        let order = if rep % 2 == 0 { [args.target, args.against] } else { [args.against, args.target] };
        for (li, &load) in loads.iter().enumerate() {
            done += 1;
            let dir = args.out.join(format!("rep{}-{}", rep + 1, load.name()));
            eprintln!("[{done}/{total}] rep {} load {} ({} in flight)", rep + 1, load.name(), load.in_flight());
            let mut cmd = Command::new(&me);
            cmd.arg("compare")
                .arg("--targets")
                .arg(format!("{},{}", value_name(order[0]), value_name(order[1])))
                .args(["--workloads", &args.workload])
                .args(["--clients", &load.clients.to_string(), "--depth", &load.depth.to_string()])
                .args(["--value-bytes", &args.value_bytes.to_string(), "--seconds", &args.seconds.to_string()])
                .args(["--base-port", &args.base_port.to_string()])
                .arg("--out")
                .arg(&dir);
            if let Some(b) = &args.baton {
                cmd.arg("--baton").arg(b);
            }
            let output = cmd.output().context("running baton-bench compare")?;
            std::fs::write(dir.join("compare.log"), [&output.stdout[..], &output.stderr[..]].concat())?;
            if !output.status.success() {
                let log = String::from_utf8_lossy(&output.stderr);
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                anyhow::bail!(
                    "compare at {} failed ({}); see {}",
                    load.name(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
                    dir.join("compare.log").display()
                );
            }
            let report: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("results.json"))?).context("results.json")?;
            let (Some(a), Some(b)) =
                (point(&report, args.target, &args.workload), point(&report, args.against, &args.workload))
            else {
                anyhow::bail!("compare at {} has no result for both targets; see {}", load.name(), dir.display());
            };
            eprintln!(
                "    {} {:.0} ops/s (p99 {:.2} ms), {} {:.0} ops/s (p99 {:.2} ms): {:.2}x",
                args.target.name(),
                a.ops,
                a.p99,
                args.against.name(),
                b.ops,
                b.p99,
                a.ops / b.ops.max(1e-9)
            );
            // The servers' data directories (a WAL segment alone is 64 MiB): the run's
            // report, plots and log stay.
            for entry in std::fs::read_dir(&dir)?.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
            runs[li].push((a, b));
        }
    }
    let summary = summarize(&args, &loads, &runs);
    print!("{}", summary.table);
    std::fs::write(args.out.join("sweep.json"), serde_json::to_string_pretty(&summary.json)?)?;
    std::fs::write(args.out.join("sweep.svg"), plot(&args, &loads, &runs))?;
    println!("results: {}/sweep.json, sweep.svg, and each run's report beside them", args.out.display());
    Ok(())
}

/// The name `compare --targets` accepts.
fn value_name(t: Target) -> String {
    use clap::ValueEnum;
    t.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
}

struct Summary {
    table: String,
    json: serde_json::Value,
}

fn summarize(args: &Args, loads: &[Load], runs: &[Vec<(Point, Point)>]) -> Summary {
    let (a, b) = (args.target.name(), args.against.name());
    let mut table = String::new();
    let _ = writeln!(table);
    let _ = writeln!(
        table,
        "| {} load | in flight | {a} ops/s (median) | {b} ops/s (median) | ratio median | ratio range | p99 ratio median |",
        args.workload
    );
    let _ = writeln!(table, "|---|---:|---:|---:|---:|---|---:|");
    let mut rows = Vec::new();
    for (li, &load) in loads.iter().enumerate() {
        let r = &runs[li];
        let ratios: Vec<f64> = r.iter().map(|(x, y)| x.ops / y.ops.max(1e-9)).collect();
        let p99s: Vec<f64> = r.iter().map(|(x, y)| x.p99 / y.p99.max(1e-9)).collect();
        let (lo, hi) = range(&ratios);
        let (ma, mb) = (
            median(&r.iter().map(|p| p.0.ops).collect::<Vec<_>>()),
            median(&r.iter().map(|p| p.1.ops).collect::<Vec<_>>()),
        );
        let _ = writeln!(
            table,
            "| {} | {} | {ma:.0} | {mb:.0} | {:.2}x | {lo:.2}-{hi:.2}x | {:.2}x |",
            load.name(),
            load.in_flight(),
            median(&ratios),
            median(&p99s)
        );
        rows.push(serde_json::json!({
            "load": load.name(), "clients": load.clients, "depth": load.depth,
            "target_ops": r.iter().map(|p| p.0.ops).collect::<Vec<_>>(),
            "against_ops": r.iter().map(|p| p.1.ops).collect::<Vec<_>>(),
            "target_p99_ms": r.iter().map(|p| p.0.p99).collect::<Vec<_>>(),
            "against_p99_ms": r.iter().map(|p| p.1.p99).collect::<Vec<_>>(),
            "ratio_median": median(&ratios), "p99_ratio_median": median(&p99s),
        }));
    }
    // Peak against peak, per repetition: each target at whichever load served it best.
    let reps = runs.iter().map(Vec::len).min().unwrap_or(0);
    let mut peaks = Vec::new();
    for rep in 0..reps {
        let best = |pick: fn(&(Point, Point)) -> Point| {
            runs.iter()
                .enumerate()
                .map(|(li, r)| (li, pick(&r[rep])))
                .max_by(|x, y| x.1.ops.total_cmp(&y.1.ops))
                .unwrap_or((0, Point { ops: 0.0, p99: 0.0 }))
        };
        let (la, pa) = best(|p| p.0);
        let (lb, pb) = best(|p| p.1);
        peaks.push((pa.ops / pb.ops.max(1e-9), pa.p99 / pb.p99.max(1e-9), la, lb));
    }
    let ratios: Vec<f64> = peaks.iter().map(|p| p.0).collect();
    let (lo, hi) = range(&ratios);
    let _ = writeln!(table);
    let _ = writeln!(
        table,
        "peak against peak (each at its best load, per repetition): {a}/{b} median {:.2}x, range {lo:.2}-{hi:.2}x; p99 at those loads median {:.2}x",
        median(&ratios),
        median(&peaks.iter().map(|p| p.1).collect::<Vec<_>>())
    );
    for (i, p) in peaks.iter().enumerate() {
        let _ = writeln!(
            table,
            "  rep {}: {a} peaked at {}, {b} at {}: {:.2}x",
            i + 1,
            loads[p.2].name(),
            loads[p.3].name(),
            p.0
        );
    }
    let json = serde_json::json!({
        "target": a, "against": b, "workload": args.workload, "seconds": args.seconds,
        "value_bytes": args.value_bytes, "reps": args.reps, "loads": rows,
        "peak_ratio_median": median(&ratios),
        "peaks": peaks.iter().map(|p| serde_json::json!({
            "ratio": p.0, "p99_ratio": p.1, "target_load": loads[p.2].name(), "against_load": loads[p.3].name(),
        })).collect::<Vec<_>>(),
    });
    Summary { table, json }
}

/// Throughput against requests in flight (log scale), every run a dot, medians joined.
fn plot(args: &Args, loads: &[Load], runs: &[Vec<(Point, Point)>]) -> String {
    let (w, h, left, bottom) = (760.0, 420.0, 80.0, 60.0);
    let max = runs.iter().flatten().flat_map(|(x, y)| [x.ops, y.ops]).fold(1.0, f64::max) * 1.1;
    let lo = loads.iter().map(|l| l.in_flight()).min().unwrap_or(1) as f64;
    let hi = loads.iter().map(|l| l.in_flight()).max().unwrap_or(1) as f64;
    let span = (hi / lo).ln().max(1e-9);
    let x = |n: usize| left + 30.0 + (w - left - 80.0) * ((n as f64 / lo).ln() / span);
    let y = |ops: f64| h - bottom - (h - bottom - 50.0) * ops / max;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><text x="{left}" y="20" font-size="14">{}: ops/s against requests in flight (log scale); dots are runs, lines join medians</text>"#,
        args.workload
    );
    let targets = [args.target, args.against];
    for (which, &target) in targets.iter().enumerate() {
        let colour = crate::compare::color(&targets, target);
        let mut line = Vec::new();
        for (li, &load) in loads.iter().enumerate() {
            let values: Vec<f64> = runs[li].iter().map(|p| if which == 0 { p.0.ops } else { p.1.ops }).collect();
            for v in &values {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}" opacity="0.5"/>"#,
                    x(load.in_flight()),
                    y(*v)
                );
            }
            line.push(format!("{:.1},{:.1}", x(load.in_flight()), y(median(&values))));
        }
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke-width="2" stroke="{colour}" points="{}"><title>{}</title></polyline>"#,
            line.join(" "),
            target.name()
        );
    }
    for &load in loads {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{} ({})</text>"#,
            x(load.in_flight()),
            h - bottom + 18.0,
            load.in_flight(),
            load.name()
        );
    }
    for i in 0..=4 {
        let v = max / 1.1 * i as f64 / 4.0;
        let _ = write!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{:.0}k</text>"#,
            left - 6.0,
            y(v) + 4.0,
            v / 1000.0
        );
    }
    crate::compare::legend(&mut svg, &targets, w);
    crate::compare::close_with_axis(&mut svg, left, w, h - bottom);
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_parse_and_refuse_nonsense() {
        assert_eq!(Load::parse("32x8").expect("load"), Load { clients: 32, depth: 8 });
        assert_eq!(Load::parse("4X16").expect("load").in_flight(), 64);
        for bad in ["32", "x8", "0x8", "32x0", "ax8"] {
            assert!(Load::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn the_peak_ratio_takes_each_target_at_its_own_best_load() {
        let p = |ops| Point { ops, p99: 1.0 };
        // Target A gains with load; B saturates early. Peak ratio 400/100, not 200/100.
        let runs = vec![vec![(p(200.0), p(100.0))], vec![(p(400.0), p(90.0))]];
        let loads = [Load { clients: 1, depth: 1 }, Load { clients: 1, depth: 4 }];
        let args = Args {
            target: Target::Baton,
            against: Target::Zookeeper,
            workload: "write".into(),
            loads: vec![],
            reps: 1,
            seconds: 1.0,
            value_bytes: 256,
            baton: None,
            base_port: 1,
            out: PathBuf::new(),
        };
        let s = summarize(&args, &loads, &runs);
        assert_eq!(s.json["peak_ratio_median"], 4.0, "{}", s.table);
        assert_eq!(s.json["peaks"][0]["target_load"], "1x4");
        assert_eq!(s.json["peaks"][0]["against_load"], "1x1");
        assert_eq!(s.json["loads"][0]["ratio_median"], 2.0);
        let svg = plot(&args, &loads, &runs);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
