//! `ssvp doctor`: this machine checked for running ssvp, with the fix of each problem (library:
//! `ssvp_detect::doctor`).

use std::io::IsTerminal;
use std::process::ExitCode;

use ssvp_backbones::weights::fetch::{human_bytes, Verify};
use ssvp_backbones::weights::HubSettings;
use ssvp_detect::doctor::{
    run_doctor, DoctorOptions, DoctorReport, PresetCheck, Severity, WeightsState,
};
use ssvp_features::presets::NAMES;

use super::detector_args::DeviceArgs;

const DOCTOR_HELP: &str = "\
Checks the CPU (model, AVX2, AVX-512, AVX512-BF16, AMX), the threads and memory, the GPU (CUDA
builds), the Hugging Face cache (where, writable, free space, HF_HUB_OFFLINE, HF_TOKEN) and, for
each backbones preset, whether its weights are in the cache complete. Each usable preset (cached,
or tiny) is loaded and one synthetic image is run through it, timed. Nothing is downloaded.

Exit status: 0 when every check passed, 1 when one failed (each failure is printed with the
commands that fix it), 2 when doctor itself could not run. With no preset named, every preset is
checked and at least one with real weights must be usable: a fresh machine fails and says what
to fetch. With presets named (`ssvp doctor tiny`, `ssvp doctor --backbones anomalydino`), each
of them must be usable.";

#[derive(clap::Args)]
#[command(after_help = DOCTOR_HELP)]
pub struct DoctorArgs {
    /// Presets to check (default: all of them).
    #[arg(value_name = "PRESET", value_parser = clap::builder::PossibleValuesParser::new(NAMES))]
    pub presets: Vec<String>,
    /// Presets to check, as a flag (comma-separated or repeated); adds to PRESET.
    #[arg(long, value_delimiter = ',', value_name = "PRESET",
          value_parser = clap::builder::PossibleValuesParser::new(NAMES))]
    pub backbones: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Skip loading the presets and running an image (cache and machine checks only).
    #[arg(long)]
    pub no_smoke: bool,
    /// Hash every cached weights file against its SHA-256 (reads every byte; slow for the
    /// paper preset's 3 GB).
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut presets = args.presets.clone();
    for name in &args.backbones {
        if !presets.contains(name) {
            presets.push(name.clone());
        }
    }
    let options = DoctorOptions {
        presets,
        hub: HubSettings::from_env(),
        verify: if args.verify {
            Verify::Digests
        } else {
            Verify::Sizes
        },
        smoke: !args.no_smoke,
        device: args.device.open()?,
    };
    let show_steps = std::io::stderr().is_terminal() && !args.json;
    let report = run_doctor(&options, &mut |step| {
        if show_steps {
            eprintln!("... {step}");
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn gib(mib: u64) -> String {
    format!("{:.1} GiB", mib as f64 / 1024.0)
}

fn seconds(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// Rows padded to the widest cell of each column (the last column is not padded).
fn table(rows: &[Vec<String>], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_string();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn weights_cell(p: &PresetCheck) -> String {
    match p.weights {
        WeightsState::NoneNeeded => "none needed".into(),
        WeightsState::Complete if p.repos.iter().all(|r| r.verified) => "cached, verified".into(),
        WeightsState::Complete => "cached".into(),
        WeightsState::Partial => "INCOMPLETE".into(),
        WeightsState::Missing => "not cached".into(),
    }
}

fn status_cell(p: &PresetCheck) -> String {
    if p.usable {
        return match &p.smoke {
            Some(_) => "ok".into(),
            None => "ok (not run)".into(),
        };
    }
    if p.smoke.as_ref().is_some_and(|s| !s.ok) {
        return "FAILED to run (see below)".into();
    }
    let fetch = p.fix.last().cloned().unwrap_or_default();
    if p.gated {
        format!("{fetch}  (gated: HF_TOKEN)")
    } else {
        fetch
    }
}

/// The report as a person reads it at a terminal.
pub fn render(r: &DoctorReport) -> String {
    let mut out = format!("ssvp doctor {}\n\nMachine\n", r.version);
    let features: Vec<String> = r
        .cpu
        .features
        .list()
        .iter()
        .map(|(name, has)| format!("{name} {}", yes(*has)))
        .collect();
    let memory = match r.memory {
        Some(m) => match m.available_mib {
            Some(a) => format!("{} total, {} available", gib(m.total_mib), gib(a)),
            None => format!("{} total", gib(m.total_mib)),
        },
        None => "unknown".into(),
    };
    let gpu = if let Some(dev) = &r.gpu.cuda_device {
        format!("{dev} (CUDA build)")
    } else if r.gpu.cuda_built {
        format!(
            "CUDA build, no GPU opened: {}",
            r.gpu.error.as_deref().unwrap_or("?")
        )
    } else {
        match &r.gpu.nvidia_driver {
            Some(driver) => format!("not used: built without CUDA (driver: {driver})"),
            None => "none: built without CUDA (CPU only)".into(),
        }
    };
    let machine = vec![
        vec!["CPU".into(), format!("{} ({})", r.cpu.model, r.cpu.arch)],
        vec!["features".into(), features.join(", ")],
        vec![
            "threads".into(),
            format!(
                "{} of {} logical CPUs (RAYON_NUM_THREADS sets it)",
                r.cpu.threads, r.cpu.logical_cpus
            ),
        ],
        vec!["memory".into(), memory],
        vec!["GPU".into(), gpu],
    ];
    out.push_str(&table(&machine, "  "));

    let c = &r.cache;
    let mut folder = c.dir.display().to_string();
    if !c.exists {
        folder.push_str(" (not created yet)");
    }
    let mut access = if c.writable {
        "writable"
    } else {
        "NOT writable"
    }
    .to_string();
    if let Some(free) = c.free_bytes {
        access.push_str(&format!(", {} free", human_bytes(free)));
    }
    let gated: Vec<&str> = r
        .presets
        .iter()
        .filter(|p| p.gated)
        .map(|p| p.name.as_str())
        .collect();
    let token = if c.token {
        "set".to_string()
    } else if gated.is_empty() {
        "not set (HF_TOKEN)".to_string()
    } else {
        format!(
            "not set (HF_TOKEN; the gated {} need one)",
            gated.join(", ")
        )
    };
    out.push_str("\nHugging Face cache\n");
    out.push_str(&table(
        &[
            vec!["folder".into(), folder],
            vec!["access".into(), access],
            vec![
                "offline".into(),
                format!("{} (HF_HUB_OFFLINE)", yes(c.offline)),
            ],
            vec!["token".into(), token],
            vec!["endpoint".into(), c.endpoint.clone()],
        ],
        "  ",
    ));

    out.push_str("\nPresets\n");
    let mut rows = vec![vec![
        "PRESET".to_string(),
        "WEIGHTS".into(),
        "SIZE".into(),
        "LOAD".into(),
        "1 IMAGE".into(),
        "STATUS".into(),
    ]];
    for p in &r.presets {
        let size = if p.size_bytes > 0 {
            human_bytes(p.size_bytes)
        } else {
            "-".into()
        };
        let (load, image) = match &p.smoke {
            Some(s) if s.ok => (seconds(s.load_ms), seconds(s.image_ms)),
            Some(s) => (seconds(s.load_ms), "-".into()),
            None => ("-".into(), "-".into()),
        };
        rows.push(vec![
            p.name.clone(),
            weights_cell(p),
            size,
            load,
            image,
            status_cell(p),
        ]);
    }
    out.push_str(&table(&rows, "  "));
    if let Some(device) = r.presets.iter().find_map(|p| p.smoke.as_ref()) {
        out.push_str(&format!(
            "  (LOAD: towers loaded; 1 IMAGE: one 640x480 image preprocessed and run, on {})\n",
            device.device
        ));
    }

    let failed = r
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Fail)
        .count();
    if !r.problems.is_empty() {
        out.push_str("\nProblems\n");
        for p in &r.problems {
            let tag = match p.severity {
                Severity::Fail => "FAIL",
                Severity::Warn => "warn",
                Severity::Note => "note",
            };
            out.push_str(&format!("  {tag}  {}\n", p.message));
            for (i, step) in p.fix.iter().enumerate() {
                let lead = if i == 0 { "fix:" } else { "    " };
                out.push_str(&format!("        {lead} {step}\n"));
            }
        }
    }
    let usable: Vec<&str> = r
        .presets
        .iter()
        .filter(|p| p.usable)
        .map(|p| p.name.as_str())
        .collect();
    out.push('\n');
    if r.passed {
        out.push_str(&format!(
            "PASS: ready to run with --backbones {}\n",
            usable.join(" | ")
        ));
    } else {
        out.push_str(&format!(
            "FAIL: {failed} check{} failed; run the fix commands above, then `ssvp doctor` again\n",
            if failed == 1 { "" } else { "s" }
        ));
    }
    out
}
