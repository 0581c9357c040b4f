//! The grid file of `arlrr study`: a base run config, regime axes whose product is the grid,
//! the methods, the seeds and the learning-rate candidates every method is tuned over.

use anyhow::{bail, ensure, Context, Result};
use arl::noise::NoiseConfig;
use arl::TrainConfig;
use rubric::builtin::{Shape, TaskKnobs};
use schedule::{ObjectiveKind, ScaleRewards, SelectorKind};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The regime keys a grid may vary, in the order regime names list them.
pub const REGIME_KEYS: [&str; 4] = ["noise", "conflict", "scale_rewards", "shape"];

/// The variants a method may add with `+name`: `guard`, `paired` and `anchored` on
/// `alternating:<selector>`, `subsample` on `scalarized`.
pub const VARIANTS: [&str; 4] = ["guard", "paired", "anchored", "subsample"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GridFile {
    study: StudySection,
    #[serde(default)]
    regimes: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    variants: VariantParams,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudySection {
    base: PathBuf,
    methods: Vec<String>,
    seeds: u64,
    #[serde(default)]
    first_seed: u64,
    steps: u64,
    #[serde(default)]
    budget: u64,
    lrs: Vec<f64>,
    #[serde(default = "two")]
    widen: usize,
    #[serde(default)]
    tune_seeds: u64,
    #[serde(default)]
    jobs: usize,
    #[serde(default = "yes")]
    grade_active_class_only: bool,
}

fn yes() -> bool {
    true
}

fn two() -> usize {
    2
}

/// `[variants]`: the parameters of the ARL-RR variants, shared by every method using them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VariantParams {
    /// `+guard`: `phases.guard_drop`.
    pub guard_drop: f64,
    /// `+paired`: `phases.select_samples` while paired (0 = the base config's).
    pub paired_samples: usize,
    /// `+anchored`: `objective.anchor` (λ).
    pub anchor: f64,
    /// `scalarized+subsample`: `objective.subsample`, a share or `"one_class"` (1/K of the
    /// criteria, alternation's verdicts per step with `grade_active_class_only`).
    pub subsample: arl::Subsample,
}

impl Default for VariantParams {
    fn default() -> Self {
        VariantParams {
            guard_drop: 0.05,
            paired_samples: 8,
            anchor: 0.5,
            subsample: arl::Subsample::OneClass,
        }
    }
}

/// One contender of the study: an objective, its selector and variants.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyMethod {
    pub name: String,
    pub objective: ObjectiveKind,
    pub selector: Option<SelectorKind>,
    pub variants: Vec<String>,
}

impl StudyMethod {
    /// `scalarized` (`+subsample`: the cost-matched control), `gdpo`, or
    /// `alternating:<selector>` with `+guard`, `+paired`, `+anchored` added in any combination.
    pub fn parse(s: &str) -> Result<StudyMethod> {
        let mut parts = s.split('+');
        let head = parts.next().unwrap_or_default();
        let m = crate::compare::Method::parse(head)?;
        let variants: Vec<String> = parts.map(str::to_string).collect();
        for v in &variants {
            if !VARIANTS.contains(&v.as_str()) {
                bail!(
                    "unknown variant `+{v}` in method `{s}` (variants: {})",
                    VARIANTS.map(|v| format!("+{v}")).join(", ")
                );
            }
            if v == "subsample" {
                if m.objective != ObjectiveKind::Scalarized {
                    bail!("method `{s}`: `+subsample` needs `scalarized`");
                }
                continue;
            }
            if m.selector.is_none() {
                bail!("method `{s}`: `+{v}` needs `alternating:<selector>`");
            }
            if (v == "paired" || v == "guard") && m.selector != Some(SelectorKind::Lookahead) {
                bail!("method `{s}`: `+{v}` needs the lookahead selector");
            }
        }
        Ok(StudyMethod {
            name: s.to_string(),
            objective: m.objective,
            selector: m.selector,
            variants,
        })
    }

    pub fn has(&self, variant: &str) -> bool {
        self.variants.iter().any(|v| v == variant)
    }

    pub fn alternating(&self) -> bool {
        self.objective == ObjectiveKind::Alternating
    }

    /// The folder name of its runs.
    pub fn slug(&self) -> String {
        self.name.replace(':', "-")
    }
}

/// One setting of every regime axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Regime {
    /// `(key, value)` in [`REGIME_KEYS`] order, only the keys the grid varies, as the grid
    /// wrote them (its labels, folder names and run fingerprints).
    pub settings: Vec<(String, toml::Value)>,
    /// The same settings as the config fields they set.
    pub overrides: Vec<Override>,
}

impl Regime {
    /// `noise=exact conflict=1`: the row label.
    pub fn label(&self) -> String {
        if self.settings.is_empty() {
            return "base".into();
        }
        self.settings
            .iter()
            .map(|(k, v)| format!("{k}={}", show(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The folder name of its runs.
    pub fn slug(&self) -> String {
        if self.settings.is_empty() {
            return "base".into();
        }
        self.settings
            .iter()
            .map(|(k, v)| format!("{k}-{}", show(v)))
            .collect::<Vec<_>>()
            .join("_")
    }
}

/// A TOML value as the grid wrote it, without quotes.
pub fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A parsed, checked grid.
#[derive(Debug, Clone)]
pub struct Grid {
    pub path: PathBuf,
    /// The base run config, resolved (relative paths against its folder).
    pub base_path: PathBuf,
    pub base: TrainConfig,
    pub regimes: Vec<Regime>,
    pub methods: Vec<StudyMethod>,
    /// Seeds per cell: `first_seed`, `first_seed + 1`, …
    pub seeds: u64,
    pub first_seed: u64,
    /// Seeds (the first ones) each learning rate is tried on before the best is kept.
    pub tune_seeds: u64,
    /// Steps per run; with a `budget`, the most a run may take.
    pub steps: u64,
    /// Judge verdicts (training and selection) per run, 0 = none: every run stops once it has
    /// spent them (`run.verdict_budget`), so methods compare at equal judge cost.
    pub budget: u64,
    /// The learning rates every method is tuned over (before widening).
    pub lrs: Vec<f64>,
    /// Rates the tuning may add on each side of `lrs` while a kept rate lies on its edge.
    pub widen: usize,
    /// Runs at once (0 = the core count).
    pub jobs: usize,
    pub grade_active_class_only: bool,
    pub variants: VariantParams,
}

impl Grid {
    /// Reads and checks a grid file; every error is one line naming the file and field.
    pub fn from_file(path: &Path) -> Result<Grid> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read grid {}", path.display()))?;
        Grid::parse(&text, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    fn parse(text: &str, path: &Path) -> Result<Grid> {
        let file: GridFile = arl::config::parse_toml(text)?;
        let s = &file.study;
        check_study(s)?;
        let methods = parse_methods(&s.methods)?;
        check_variants(&file.variants)?;
        let base_path = path.parent().unwrap_or(Path::new(".")).join(&s.base);
        let base = TrainConfig::from_file(&base_path)
            .map_err(|e| anyhow::anyhow!("field `study.base`: {e}"))?;
        let regimes = regimes(&file.regimes, &base)?;
        let grid = Grid {
            path: path.to_path_buf(),
            base_path,
            base,
            regimes,
            methods,
            seeds: s.seeds,
            first_seed: s.first_seed,
            tune_seeds: if s.tune_seeds == 0 {
                s.seeds
            } else {
                s.tune_seeds
            },
            steps: s.steps,
            budget: s.budget,
            lrs: s.lrs.clone(),
            widen: s.widen,
            jobs: s.jobs,
            grade_active_class_only: s.grade_active_class_only,
            variants: file.variants,
        };
        // every cell's config must parse and validate before any run starts
        for r in &grid.regimes {
            for m in &grid.methods {
                grid.run_config(r, m, grid.lrs[0], 0, Path::new("."))
                    .map_err(|e| {
                        anyhow::anyhow!("regime `{}`, method `{}`: {e}", r.label(), m.name)
                    })?;
            }
        }
        Ok(grid)
    }

    /// The run config of one cell, learning rate and seed, writing into `dir`: the base
    /// config with the fields the grid sets.
    pub fn run_config(
        &self,
        regime: &Regime,
        method: &StudyMethod,
        lr: f64,
        seed: u64,
        dir: &Path,
    ) -> Result<TrainConfig> {
        let mut cfg = self.base.clone();
        cfg.run.dir = dir.to_path_buf();
        cfg.run.seed = seed;
        cfg.run.steps = self.steps;
        cfg.run.verdict_budget = self.budget;
        cfg.optim.lr = lr;
        for o in &regime.overrides {
            o.apply(&mut cfg);
        }
        cfg.objective.kind = method.objective;
        if let Some(sel) = method.selector {
            cfg.phases.selector = sel;
        }
        if method.alternating() {
            cfg.objective.grade_active_class_only =
                self.grade_active_class_only && !method.has("anchored");
        }
        if method.has("guard") {
            cfg.phases.guard_drop = Some(self.variants.guard_drop);
        }
        if method.has("paired") {
            cfg.phases.paired = true;
            if self.variants.paired_samples > 0 {
                cfg.phases.select_samples = self.variants.paired_samples;
            }
        }
        if method.has("anchored") {
            cfg.objective.anchor = self.variants.anchor;
        }
        if method.has("subsample") {
            cfg.objective.subsample = Some(self.variants.subsample);
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `[study]`'s counts and rates.
fn check_study(s: &StudySection) -> Result<()> {
    ensure_field(s.seeds > 0, "study.seeds", "at least 1")?;
    ensure_field(s.steps > 0, "study.steps", "at least 1")?;
    ensure_field(
        !s.lrs.is_empty(),
        "study.lrs",
        "empty: give at least one rate",
    )?;
    for (i, lr) in s.lrs.iter().enumerate() {
        ensure_field(
            lr.is_finite() && *lr > 0.0,
            &format!("study.lrs[{i}]"),
            "must be a positive number",
        )?;
    }
    ensure_field(
        s.tune_seeds <= s.seeds,
        "study.tune_seeds",
        "more than study.seeds",
    )
}

/// `study.methods`, each parsed, none twice.
fn parse_methods(names: &[String]) -> Result<Vec<StudyMethod>> {
    ensure_field(!names.is_empty(), "study.methods", "empty: name a method")?;
    let mut methods = Vec::new();
    for (i, m) in names.iter().enumerate() {
        let method = StudyMethod::parse(m)
            .map_err(|e| anyhow::anyhow!("field `study.methods[{i}]`: {e}"))?;
        if methods.iter().any(|x: &StudyMethod| x.name == method.name) {
            bail!("field `study.methods[{i}]`: `{m}` is listed twice");
        }
        methods.push(method);
    }
    Ok(methods)
}

fn check_variants(v: &VariantParams) -> Result<()> {
    ensure_field(
        v.guard_drop.is_finite() && v.guard_drop > 0.0,
        "variants.guard_drop",
        "must be a positive number",
    )?;
    ensure_field(
        v.anchor > 0.0 && v.anchor <= 1.0,
        "variants.anchor",
        "must be in (0, 1]",
    )?;
    ensure_field(
        v.subsample.check().is_ok(),
        "variants.subsample",
        "a share must be in (0, 1] (or \"one_class\")",
    )
}

/// The product of the regime axes, each value checked and typed (`base`: the config they
/// change).
fn regimes(axes: &BTreeMap<String, Vec<toml::Value>>, base: &TrainConfig) -> Result<Vec<Regime>> {
    for key in axes.keys() {
        if !REGIME_KEYS.contains(&key.as_str()) {
            bail!(
                "field `regimes.{key}`: no such regime key (keys: {})",
                REGIME_KEYS.join(", ")
            );
        }
    }
    let mut regimes = vec![Regime {
        settings: Vec::new(),
        overrides: Vec::new(),
    }];
    for key in REGIME_KEYS {
        let Some(values) = axes.get(key) else {
            continue;
        };
        ensure_field(
            !values.is_empty(),
            &format!("regimes.{key}"),
            "empty axis: give at least one value",
        )?;
        let mut axis = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let o = Override::parse(key, value, base)
                .map_err(|e| anyhow::anyhow!("field `regimes.{key}[{i}]`: {e}"))?;
            axis.push(((key.to_string(), value.clone()), o));
        }
        regimes = regimes
            .iter()
            .flat_map(|r| {
                axis.iter().map(move |(setting, o)| {
                    let mut r = r.clone();
                    r.settings.push(setting.clone());
                    r.overrides.push(o.clone());
                    r
                })
            })
            .collect();
    }
    Ok(regimes)
}

fn ensure_field(ok: bool, field: &str, why: &str) -> Result<()> {
    if !ok {
        bail!("field `{field}`: {why}");
    }
    Ok(())
}

/// One regime setting as the run config field it sets.
#[derive(Debug, Clone, PartialEq)]
pub enum Override {
    /// `judge.noise`: `None` for `exact` (the clean judge), else `{ preset = … }`.
    Noise(Option<String>),
    /// `data.builtin_task.conflict`
    Conflict(f64),
    /// `data.builtin_task.shape`
    Shape(Shape),
    /// `grpo.scale_rewards`
    ScaleRewards(ScaleRewards),
}

impl Override {
    /// Checks one regime value against its key (and the base config it changes).
    fn parse(key: &str, value: &toml::Value, base: &TrainConfig) -> Result<Override> {
        let text = || {
            value
                .as_str()
                .with_context(|| format!("`{value}` is not a string"))
        };
        let o = match key {
            "noise" => {
                let v = text()?;
                if v == "exact" {
                    Override::Noise(None)
                } else {
                    noise_preset(v).validate().map_err(|e| {
                        anyhow::anyhow!("`{v}` is neither `exact` nor a preset ({e})")
                    })?;
                    Override::Noise(Some(v.to_string()))
                }
            }
            "conflict" => {
                let c = match value {
                    toml::Value::Integer(i) => *i as f64,
                    v => v
                        .as_float()
                        .with_context(|| format!("`{value}` is not a number"))?,
                };
                ensure!((0.0..=1.0).contains(&c), "{c} is outside [0, 1]");
                Override::Conflict(c)
            }
            "shape" => Override::Shape(
                serde_json::from_value(text()?.into())
                    .map_err(|_| anyhow::anyhow!("`{value}`: shapes are builtin, healthbench"))?,
            ),
            "scale_rewards" => Override::ScaleRewards(
                serde_json::from_value(text()?.into())
                    .map_err(|_| anyhow::anyhow!("`{value}`: choices are group, batch, none"))?,
            ),
            _ => unreachable!("keys are checked first"),
        };
        if matches!(key, "conflict" | "shape") && !base.data.builtin {
            bail!("regime `{key}` changes the built-in task, but the base config sets no `data.builtin = true`");
        }
        Ok(o)
    }

    /// Sets the field in `cfg`.
    fn apply(&self, cfg: &mut TrainConfig) {
        fn task(cfg: &mut TrainConfig) -> &mut TaskKnobs {
            cfg.data.builtin_task.get_or_insert_with(TaskKnobs::default)
        }
        match self {
            Override::Noise(None) => cfg.judge.noise = None,
            Override::Noise(Some(p)) => cfg.judge.noise = Some(noise_preset(p)),
            Override::Conflict(c) => task(cfg).conflict = *c,
            Override::Shape(s) => task(cfg).shape = *s,
            Override::ScaleRewards(s) => cfg.grpo.scale_rewards = *s,
        }
    }
}

/// `[judge.noise]` with only `preset` set.
fn noise_preset(preset: &str) -> NoiseConfig {
    NoiseConfig {
        preset: Some(preset.to_string()),
        ..NoiseConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(body: &str) -> Result<Grid> {
        let dir = tempfile::tempdir().unwrap();
        let base = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/builtin-categorical.toml"
        );
        let text = format!("[study]\nbase = \"{base}\"\n{body}");
        let path = dir.path().join("grid.toml");
        std::fs::write(&path, text).unwrap();
        Grid::from_file(&path)
    }

    const OK: &str = "methods = [\"scalarized\", \"alternating:lookahead\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n";

    /// The typed overrides give the config the TOML paths they name would: each run config
    /// is the base with exactly those fields changed, and reads back from its TOML as itself.
    #[test]
    fn overrides_set_the_fields_they_name_and_nothing_else() {
        let g = grid("methods = [\"scalarized\", \"scalarized+subsample\", \"alternating:lookahead+guard+paired\", \"alternating:round_robin+anchored\"]\nseeds = 1\nsteps = 7\nlrs = [0.05]\n[regimes]\nnoise = [\"exact\", \"healthbench-gpt41\"]\nconflict = [0]\nscale_rewards = [\"batch\"]\nshape = [\"healthbench\"]\n").unwrap();
        for r in &g.regimes {
            for m in &g.methods {
                let cfg = g.run_config(r, m, 0.25, 4, Path::new("/tmp/x")).unwrap();
                assert_eq!(
                    TrainConfig::from_toml(&cfg.to_toml().unwrap()).unwrap(),
                    cfg
                );
                let mut want = g.base.clone();
                want.run.dir = "/tmp/x".into();
                (want.run.seed, want.run.steps, want.optim.lr) = (4, 7, 0.25);
                let noisy = r.label().contains("gpt41");
                want.judge.noise = noisy.then(|| noise_preset("healthbench-gpt41"));
                want.data.builtin_task = Some(TaskKnobs {
                    conflict: 0.0,
                    shape: Shape::HealthBench,
                });
                want.grpo.scale_rewards = ScaleRewards::Batch;
                want.objective.kind = m.objective;
                if let Some(s) = m.selector {
                    want.phases.selector = s;
                    want.objective.grade_active_class_only = !m.has("anchored");
                }
                if m.has("guard") {
                    want.phases.guard_drop = Some(0.05);
                }
                if m.has("paired") {
                    want.phases.paired = true;
                    want.phases.select_samples = 8;
                }
                if m.has("anchored") {
                    want.objective.anchor = 0.5;
                }
                if m.has("subsample") {
                    want.objective.subsample = Some(arl::Subsample::OneClass);
                }
                assert_eq!(cfg, want, "{} {}", r.label(), m.name);
            }
        }
    }

    #[test]
    fn the_grid_is_the_product_of_its_axes() {
        let g = grid(&format!(
            "{OK}[regimes]\nnoise = [\"exact\", \"healthbench-gpt41\"]\nconflict = [0, 1]\n"
        ))
        .unwrap();
        let labels: Vec<String> = g.regimes.iter().map(Regime::label).collect();
        assert_eq!(
            labels,
            [
                "noise=exact conflict=0",
                "noise=exact conflict=1",
                "noise=healthbench-gpt41 conflict=0",
                "noise=healthbench-gpt41 conflict=1"
            ]
        );
        let cfg = g
            .run_config(&g.regimes[2], &g.methods[1], 0.1, 3, Path::new("/tmp/x"))
            .unwrap();
        assert_eq!(cfg.run.seed, 3);
        assert_eq!(cfg.optim.lr, 0.1);
        assert_eq!(cfg.objective.kind, ObjectiveKind::Alternating);
        assert!(cfg.objective.grade_active_class_only);
        assert_eq!(
            cfg.judge.noise.unwrap().preset.as_deref(),
            Some("healthbench-gpt41")
        );
        assert_eq!(cfg.data.builtin_task.unwrap().conflict, 0.0);
    }

    #[test]
    fn bad_grids_name_the_field() {
        let cases = [
            (
                "methods = [\"scalarized\", \"nope\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[1]`: unknown objective `nope`",
            ),
            (
                "methods = [\"alternating:lookahead+fast\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[0]`: unknown variant `+fast`",
            ),
            (
                &format!("{OK}[regimes]\nnoise = []\n"),
                "field `regimes.noise`: empty axis",
            ),
            (
                &format!("{OK}[regimes]\ntemperature = [1.0]\n"),
                "field `regimes.temperature`: no such regime key",
            ),
            (
                &format!("{OK}[regimes]\nnoise = [\"gpt5\"]\n"),
                "field `regimes.noise[0]`: `gpt5` is neither `exact` nor a preset",
            ),
            (
                &format!("{OK}[regimes]\nconflict = [2]\n"),
                "field `regimes.conflict[0]`: 2 is outside [0, 1]",
            ),
            (
                "methods = [\"gdpo\"]\nseeds = 2\nsteps = 10\nlrs = []\n",
                "field `study.lrs`: empty",
            ),
            (
                "methods = [\"gdpo\"]\nseeds = 2\nsteps = 10\n",
                "missing field `lrs`",
            ),
            (
                "methods = [\"gdpo+subsample\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[0]`: method `gdpo+subsample`: `+subsample` needs `scalarized`",
            ),
            (
                "methods = [\"scalarized+guard\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "`+guard` needs `alternating:<selector>`",
            ),
            (
                &format!("{OK}[variants]\nsubsample = 1.5\n"),
                "field `variants.subsample`: a share must be in (0, 1]",
            ),
            (
                &format!("{OK}[variants]\nsubsample = \"half\"\n"),
                "field `variants.subsample`",
            ),
        ];
        for (body, want) in cases {
            let err = grid(body).unwrap_err().to_string();
            assert!(err.contains("grid.toml: "), "{err}");
            assert!(err.contains(want), "{err}\n  wanted: {want}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    /// `scalarized+subsample` grades `[variants] subsample` of the criteria (1/K unless set);
    /// its fingerprint names the share, and the other methods' fingerprints are unchanged.
    #[test]
    fn scalarized_subsample_is_the_cost_matched_control() {
        use super::super::RunKey;
        use sha2::Digest;
        let methods = "methods = [\"scalarized\", \"scalarized+subsample\"]\nseeds = 1\nsteps = 5\nlrs = [0.05]\n";
        let g = grid(methods).unwrap();
        let m = &g.methods[1];
        assert_eq!((m.objective, m.selector), (ObjectiveKind::Scalarized, None));
        assert!(m.has("subsample") && !g.methods[0].has("subsample"));
        let run = |g: &Grid, m: usize| {
            g.run_config(&g.regimes[0], &g.methods[m], 0.05, 1, Path::new("/tmp/x"))
                .unwrap()
        };
        let cfg = run(&g, 1);
        assert_eq!(cfg.objective.subsample, Some(arl::Subsample::OneClass));
        assert!(!cfg.objective.grade_active_class_only);
        assert_eq!(run(&g, 0).objective.subsample, None);
        let half = grid(&format!("{methods}[variants]\nsubsample = 0.5\n")).unwrap();
        assert_eq!(
            run(&half, 1).objective.subsample,
            Some(arl::Subsample::Share(0.5))
        );

        let key = |method| RunKey {
            regime: 0,
            method,
            lr: 0,
            seed: 1,
        };
        let print = |g: &Grid, m: usize| g.fingerprint(key(m)).unwrap();
        // the plain method's fingerprint, as written before `subsample` existed
        let mut h = sha2::Sha256::new();
        h.update(std::fs::read(&g.base_path).unwrap());
        let old = serde_json::json!({
            "regime": g.regimes[0].label(), "method": "scalarized", "lr": 0.05, "seed": 1,
            "steps": 5, "grade_active_class_only": false, "guard_drop": null,
            "paired_samples": null, "anchor": null,
        });
        h.update(old.to_string().as_bytes());
        assert_eq!(print(&g, 0), format!("{:x}", h.finalize()));
        assert_eq!(print(&g, 0), print(&half, 0));
        assert_ne!(
            print(&g, 1),
            print(&half, 1),
            "the share is part of the run"
        );
    }
}
