//! `ssvp demo`: synthetic parts -> bank with rotations -> calibration -> detection and report,
//! offline (library: `ssvp_detect::demo`).

use std::path::{Path, PathBuf};

use ssvp_detect::demo::{run_demo, DemoPlan, DemoStep};
use ssvp_eval::synth::Kind;

const DEMO_HELP: &str = "\
Runs the main job end to end on synthetic parts, with no input files and no network:
  1. writes synthetic parts of one product (`ssvp synth`'s generator): good references, held-out
     good parts and today's parts, some of them defective;
  2. builds a reference bank with 8 rotations from the good references (`ssvp bank build`);
  3. calibrates a threshold on the held-out good parts (`ssvp calibrate`, split conformal);
  4. scores today's parts and writes records, maps, overlays and the HTML report
     (`ssvp detect`), then prints each part's score and decision.
The backbones are the seeded `tiny` ones (random weights, the only ones available offline):
the demo shows the workflow and its files, not the accuracy of real models (README \"Real
weights\").

--out is created; an earlier demo's output there is replaced (the folder holds demo.json); any
other non-empty folder is refused. The commands that repeat each step by hand are printed at
the end.";

#[derive(clap::Args)]
#[command(after_help = DEMO_HELP)]
pub struct DemoArgs {
    /// Output folder (replaces an earlier demo there; refuses any other non-empty folder).
    #[arg(long, default_value = "ssvp-demo")]
    pub out: PathBuf,
    /// The synthetic product (see `ssvp synth --list-kinds`; the textures speckle, woven and
    /// grain suit the random-weight towers best).
    #[arg(long, default_value = "speckle")]
    pub kind: String,
    /// Seed of the synthetic parts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let plan = DemoPlan {
        kind: args.kind.parse::<Kind>().map_err(anyhow::Error::msg)?,
        seed: args.seed,
        ..DemoPlan::standard()
    };
    let out = &args.out;
    println!(
        "ssvp demo: the seeded `tiny` backbones (random weights, the only ones available offline) \
         on synthetic parts:\na demonstration of the workflow, not of accuracy."
    );
    let started = std::time::Instant::now();
    let demo = run_demo(out, &plan, &mut |step| {
        let what = match step {
            DemoStep::Parts => "1/4 writing synthetic parts",
            DemoStep::Bank => "2/4 building the reference bank",
            DemoStep::Calibration => "3/4 calibrating on held-out good parts",
            DemoStep::Detection => "4/4 inspecting today's parts",
        };
        eprintln!("{what} ...");
    })?;
    let (t, p) = (&demo.times, &demo.plan);
    let cal = &demo.calibration;
    println!();
    println!(
        "1. parts      {}: {} `{}` parts, {} px, seed {}  [{:.1} s]",
        shown(&demo.out.join(ssvp_detect::demo::PARTS_DIR)),
        p.references + p.calibration + p.good + p.defective,
        p.kind.name(),
        p.size,
        p.seed,
        t.parts
    );
    println!(
        "              {} good-refs, {} good-holdout, {} today ({} good, {} defective)",
        p.references,
        p.calibration,
        p.good + p.defective,
        p.good,
        p.defective
    );
    println!(
        "2. bank       {}: {} good-refs x {} rotations, {} patch vectors  [{:.1} s]",
        shown(&demo.bank),
        p.references,
        p.rotations,
        demo.bank_vectors,
        t.bank
    );
    println!(
        "3. calibrate  {}: threshold {:.4}, rank {} of {} good-holdout scores (target \
         false-alarm rate {} %)  [{:.1} s]",
        shown(&demo.calibration_file),
        cal.image.threshold,
        cal.image.rank,
        cal.calibration_images,
        p.target_fpr * 100.0,
        t.calibration
    );
    println!(
        "4. detect     {}: {} of today's parts scored, {} flagged  [{:.1} s]",
        shown(&demo.inspect_dir),
        demo.summary.records,
        demo.summary.anomalous,
        t.detection
    );
    println!();
    println!(
        "{:<20} {:<11} {:>7} {:>10}  decision",
        "part", "truth", "score", "calibrated"
    );
    for image in &demo.images {
        let truth = image.defect.as_deref().unwrap_or("good");
        let number = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        let decision = match image.anomalous {
            Some(true) => "FLAGGED",
            Some(false) => "ok",
            None => "not decided",
        };
        println!(
            "{:<20} {:<11} {:>7} {:>10}  {decision}",
            image.name,
            truth,
            number(image.score),
            number(image.calibrated_score),
        );
    }
    let (flagged, defective) = demo.defects_flagged();
    let (false_alarms, good) = demo.false_alarms();
    println!();
    println!(
        "Flagged {flagged} of {defective} defective parts; {false_alarms} false alarm{} on {good} \
         good parts.",
        if false_alarms == 1 { "" } else { "s" }
    );
    println!(
        "Report: {} (with the maps/, overlays/ and thumbs/ beside it). Done in {:.1} s.",
        shown(&demo.report),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "The same steps by hand (for your own parts: your folders, and real backbones instead \
         of tiny; the bank brings its backbones to calibrate and detect):"
    );
    let o = shown(out);
    println!(
        "  ssvp bank build --backbones tiny --normal {} --rotations {} --out {}",
        shown(&demo.references_dir),
        p.rotations,
        shown(&demo.bank)
    );
    println!(
        "  ssvp calibrate --bank {} --normal {} --target-fpr {} --holdout 0 \
         {}--out {}",
        shown(&demo.bank),
        shown(&demo.holdout_dir),
        p.target_fpr,
        map_size_flag(p),
        shown(&demo.calibration_file)
    );
    println!(
        "  ssvp detect --bank {} --calibration {} {}--out {o}/inspect-again {}",
        shown(&demo.bank),
        shown(&demo.calibration_file),
        map_size_flag(p),
        shown(&demo.today_dir)
    );
    Ok(())
}

/// `--map-size N ` when the plan's map grid is not the default one.
fn map_size_flag(plan: &DemoPlan) -> String {
    if plan.map_size == ssvp_detect::settings::DEFAULT_MAP_SIZE {
        String::new()
    } else {
        format!("--map-size {} ", plan.map_size)
    }
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}
