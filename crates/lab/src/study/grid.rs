//! The grid file of `arlrr study`: a base run config, regime axes whose product is the grid,
//! the methods, the seeds and the learning-rate candidates every method is tuned over.

use anyhow::{bail, ensure, Context, Result};
use arl::noise::NoiseConfig;
use arl::TrainConfig;
use rubric::builtin::{Shape, TaskKnobs};
use rubric::{ClassScheme, ClassSpec, MetaClasses};
use schedule::{ObjectiveKind, ScaleRewards, SelectorKind};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The regime keys a grid may vary, in the order regime names list them.
pub const REGIME_KEYS: [&str; 5] = ["noise", "conflict", "scale_rewards", "shape", "classes"];

/// The variants a method may add with `+name`: `subsample` on `scalarized`, the others on
/// `alternating:<selector>` (`+phase=N` takes a value, the others none).
pub const VARIANTS: [&str; 6] = [
    "guard",
    "paired",
    "anchored",
    "keep_probe",
    "phase",
    "subsample",
];

/// The variants only the lookahead selector takes.
const LOOKAHEAD_ONLY: [&str; 3] = ["guard", "paired", "keep_probe"];

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
    /// `alternating:<selector>` with `+guard`, `+paired`, `+anchored`, `+keep_probe`,
    /// `+phase=N` added in any combination, each at most once.
    pub fn parse(s: &str) -> Result<StudyMethod> {
        let mut parts = s.split('+');
        let head = parts.next().unwrap_or_default();
        let m = crate::compare::Method::parse(head)?;
        let variants: Vec<String> = parts.map(str::to_string).collect();
        for (i, v) in variants.iter().enumerate() {
            let (name, value) = split_variant(v);
            if !VARIANTS.contains(&name) {
                bail!(
                    "unknown variant `+{v}` in method `{s}` (variants: {})",
                    VARIANTS
                        .map(|v| if v == "phase" {
                            "+phase=N".into()
                        } else {
                            format!("+{v}")
                        })
                        .join(", ")
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
            if LOOKAHEAD_ONLY.contains(&name) && m.selector != Some(SelectorKind::Lookahead) {
                bail!("method `{s}`: `+{v}` needs the lookahead selector");
            }
            check_variant_value(name, value)
                .map_err(|e| anyhow::anyhow!("method `{s}`: `+{v}`: {e}"))?;
            if variants[..i].iter().any(|w| split_variant(w).0 == name) {
                bail!("method `{s}`: `+{name}` is given twice");
            }
        }
        Ok(StudyMethod {
            name: s.to_string(),
            objective: m.objective,
            selector: m.selector,
            variants,
        })
    }

    /// Whether the method adds the variant named `variant` (`"phase"` for `+phase=N`).
    pub fn has(&self, variant: &str) -> bool {
        self.variants.iter().any(|v| split_variant(v).0 == variant)
    }

    /// `+phase=N`: the phase length `N`.
    pub fn phase_length(&self) -> Option<u64> {
        self.variants.iter().find_map(|v| match split_variant(v) {
            ("phase", Some(n)) => n.parse().ok(),
            _ => None,
        })
    }

    pub fn alternating(&self) -> bool {
        self.objective == ObjectiveKind::Alternating
    }

    /// The folder name of its runs (`alternating-lookahead+phase-5`).
    pub fn slug(&self) -> String {
        self.name.replace([':', '='], "-")
    }
}

/// `phase=5` → `("phase", Some("5"))`, `guard` → `("guard", None)`.
fn split_variant(v: &str) -> (&str, Option<&str>) {
    match v.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (v, None),
    }
}

/// A variant's value: `phase` needs a positive integer written plainly, the others none.
fn check_variant_value(name: &str, value: Option<&str>) -> Result<()> {
    match (name, value) {
        ("phase", Some(n)) => {
            let ok = n.parse::<u64>().is_ok_and(|k| k > 0 && k.to_string() == n);
            ensure!(
                ok,
                "the phase length must be a positive integer, like `+phase=5`"
            );
        }
        ("phase", None) => bail!("give the phase length, like `+phase=5`"),
        (_, Some(_)) => bail!("`+{name}` takes no value"),
        (_, None) => {}
    }
    Ok(())
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
            .map(|(k, v)| format!("{k}-{}", slug_value(k, v)))
            .collect::<Vec<_>>()
            .join("_")
    }

    /// The mapping file of its `classes` setting, when that is a file.
    pub fn classes_file(&self) -> Option<&Path> {
        self.overrides.iter().find_map(|o| match o {
            Override::Classes(ClassScheme::Mapping(p)) => Some(p.as_path()),
            _ => None,
        })
    }
}

/// A regime value in a folder name: as the grid wrote it, except a `classes` mapping file,
/// named by its file stem with anything but letters, digits, `.`, `_` and `-` made `-`.
fn slug_value(key: &str, v: &toml::Value) -> String {
    let text = show(v);
    if key != "classes" || CLASS_SCHEMES.contains(&text.as_str()) {
        return text;
    }
    let stem = Path::new(&text)
        .file_stem()
        .map_or_else(|| text.clone(), |s| s.to_string_lossy().into_owned());
    stem.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect()
}

/// The `classes` values that name a built-in grouping (any other is a mapping file).
const CLASS_SCHEMES: [&str; 3] = ["axis", "cluster", "theme"];

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
        let folder = path.parent().unwrap_or(Path::new("."));
        let regimes = regimes(&file.regimes, &base, folder)?;
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
            for (i, m) in grid.methods.iter().enumerate() {
                grid.run_config(r, m, grid.lrs[0], 0, Path::new("."))
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "field `study.methods[{i}]`: method `{}` in regime `{}`: {e}",
                            m.name,
                            r.label()
                        )
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
        if method.has("keep_probe") {
            cfg.phases.keep_probe = true;
        }
        if let Some(n) = method.phase_length() {
            cfg.phases.length = n;
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
/// change; `folder`: the grid's, mapping files are relative to it). Two regimes may not share
/// a folder name.
fn regimes(
    axes: &BTreeMap<String, Vec<toml::Value>>,
    base: &TrainConfig,
    folder: &Path,
) -> Result<Vec<Regime>> {
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
            let o = Override::parse(key, value, base, folder)
                .map_err(|e| anyhow::anyhow!("field `regimes.{key}[{i}]`: {e}"))?;
            let slug = slug_value(key, value);
            if let Some(j) = axis
                .iter()
                .position(|((_, v), _): &(_, Override)| slug_value(key, v) == slug)
            {
                bail!("field `regimes.{key}[{i}]`: its folder name `{key}-{slug}` is that of `regimes.{key}[{j}]`");
            }
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
    /// `data.classes.scheme`: `axis`, `cluster`, `theme`, or a mapping file (resolved against
    /// the grid's folder)
    Classes(ClassScheme),
}

impl Override {
    /// Checks one regime value against its key (and the base config it changes).
    fn parse(
        key: &str,
        value: &toml::Value,
        base: &TrainConfig,
        folder: &Path,
    ) -> Result<Override> {
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
            "classes" => Override::Classes(class_scheme(text()?, folder)?),
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
            Override::Classes(c) => cfg.data.classes.scheme = c.clone(),
        }
    }
}

/// A `classes` value: a built-in grouping, or a mapping file (relative to `folder`) that
/// must read as one.
fn class_scheme(v: &str, folder: &Path) -> Result<ClassScheme> {
    let scheme = match v {
        "axis" => ClassScheme::Axis,
        "cluster" => ClassScheme::Cluster,
        "theme" => ClassScheme::Theme,
        path => ClassScheme::Mapping(folder.join(path)),
    };
    if let ClassScheme::Mapping(p) = &scheme {
        let spec = ClassSpec {
            scheme: scheme.clone(),
            catch_all: None,
        };
        MetaClasses::new(&spec, &[]).map_err(|e| {
            anyhow::anyhow!(
                "`{v}` is neither axis, cluster nor theme, nor a class mapping file ({}: {})",
                p.display(),
                e.message
            )
        })?;
    }
    Ok(scheme)
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
        grid_in(&tempfile::tempdir().unwrap(), body)
    }

    /// The grid `body` written as `grid.toml` into `dir`, read back.
    fn grid_in(dir: &tempfile::TempDir, body: &str) -> Result<Grid> {
        let base = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/builtin-categorical.toml"
        );
        let text = format!("[study]\nbase = \"{base}\"\n{body}");
        let path = dir.path().join("grid.toml");
        std::fs::write(&path, text).unwrap();
        Grid::from_file(&path)
    }

    /// The shipped two-class mapping of the built-in task.
    const COARSE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/classes/builtin-coarse.toml"
    );

    const OK: &str = "methods = [\"scalarized\", \"alternating:lookahead\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n";

    /// The typed overrides give the config the TOML paths they name would: each run config
    /// is the base with exactly those fields changed, and reads back from its TOML as itself.
    #[test]
    fn overrides_set_the_fields_they_name_and_nothing_else() {
        let g = grid(&format!("methods = [\"scalarized\", \"scalarized+subsample\", \"alternating:lookahead+guard+paired\", \"alternating:round_robin+anchored\", \"alternating:lookahead+keep_probe\", \"alternating:shuffled+phase=3\", \"alternating:lookahead+phase=12+keep_probe\"]\nseeds = 1\nsteps = 7\nlrs = [0.05]\n[regimes]\nnoise = [\"exact\", \"healthbench-gpt41\"]\nconflict = [0]\nscale_rewards = [\"batch\"]\nshape = [\"healthbench\"]\nclasses = [\"axis\", \"theme\", \"{COARSE}\"]\n")).unwrap();
        assert_eq!(g.regimes.len(), 6);
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
                want.phases.keep_probe = m.has("keep_probe");
                match m.name.split_once("phase=") {
                    Some((_, n)) => {
                        want.phases.length = n[..n.find('+').unwrap_or(n.len())].parse().unwrap()
                    }
                    None => assert_eq!(m.phase_length(), None),
                }
                let label = r.label();
                want.data.classes.scheme = if label.contains("coarse") {
                    ClassScheme::Mapping(COARSE.into())
                } else if label.contains("theme") {
                    ClassScheme::Theme
                } else {
                    ClassScheme::Axis
                };
                assert_eq!(cfg, want, "{} {}", r.label(), m.name);
            }
        }
    }

    #[test]
    fn new_variants_and_the_classes_axis_name_safe_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("classes")).unwrap();
        let text = std::fs::read_to_string(COARSE).unwrap();
        std::fs::write(dir.path().join("classes/two classes.toml"), &text).unwrap();
        let g = grid_in(&dir, "methods = [\"alternating:shuffled+phase=5\", \"alternating:lookahead+keep_probe\"]\nseeds = 1\nsteps = 7\nlrs = [0.05]\n[regimes]\nclasses = [\"cluster\", \"classes/two classes.toml\"]\n").unwrap();
        let slugs: Vec<String> = g.methods.iter().map(StudyMethod::slug).collect();
        assert_eq!(
            slugs,
            [
                "alternating-shuffled+phase-5",
                "alternating-lookahead+keep_probe"
            ]
        );
        assert_eq!(g.methods[0].phase_length(), Some(5));
        assert!(g.methods[0].has("phase") && !g.methods[0].has("keep_probe"));
        let labels: Vec<String> = g.regimes.iter().map(Regime::label).collect();
        assert_eq!(
            labels,
            ["classes=cluster", "classes=classes/two classes.toml"]
        );
        let slugs: Vec<String> = g.regimes.iter().map(Regime::slug).collect();
        assert_eq!(slugs, ["classes-cluster", "classes-two-classes"]);
        // resolved against the grid's folder
        let file = dir.path().join("classes/two classes.toml");
        assert_eq!(g.regimes[1].classes_file(), Some(file.as_path()));
        let cfg = g
            .run_config(&g.regimes[1], &g.methods[0], 0.1, 0, Path::new("/tmp/x"))
            .unwrap();
        assert_eq!(cfg.data.classes.scheme, ClassScheme::Mapping(file));
        assert_eq!(
            (cfg.phases.length, cfg.phases.selector),
            (5, SelectorKind::Shuffled)
        );
        // two mapping files of one stem would share a folder
        std::fs::write(dir.path().join("two classes.toml"), &text).unwrap();
        let err = grid_in(
            &dir,
            &format!(
                "{OK}[regimes]\nclasses = [\"two classes.toml\", \"classes/two classes.toml\"]\n"
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("field `regimes.classes[1]`: its folder name `classes-two-classes` is that of `regimes.classes[0]`"), "{err}");
    }

    /// Run fingerprints of grids without the new variants or axis are the ones earlier code
    /// wrote (its JSON, rebuilt here); the new settings change them, and so does a mapping
    /// file's content.
    #[test]
    fn fingerprints_change_only_with_what_a_grid_sets() {
        let dir = tempfile::tempdir().unwrap();
        let body = "methods = [\"alternating:lookahead+guard\", \"gdpo\", \"alternating:lookahead+keep_probe\", \"alternating:lookahead+phase=4\"]\nseeds = 1\nsteps = 7\nlrs = [0.05]\n[regimes]\nnoise = [\"exact\"]\nconflict = [1]\n";
        let g = grid_in(&dir, body).unwrap();
        let key = |method| crate::study::RunKey {
            regime: 0,
            method,
            lr: 0,
            seed: 3,
        };
        for method in [0, 1] {
            let m = &g.methods[method];
            let old = serde_json::json!({
                "regime": "noise=exact conflict=1",
                "method": m.name,
                "lr": 0.05,
                "seed": 3,
                "steps": 7,
                "grade_active_class_only": m.alternating(),
                "guard_drop": m.has("guard").then_some(0.05),
                "paired_samples": None::<usize>,
                "anchor": None::<f64>,
            });
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            sha2::Digest::update(&mut h, std::fs::read(&g.base_path).unwrap());
            sha2::Digest::update(&mut h, old.to_string().as_bytes());
            let want = format!("{:x}", sha2::Digest::finalize(h));
            assert_eq!(g.fingerprint(key(method)).unwrap(), want, "{}", m.name);
        }
        let prints: std::collections::BTreeSet<String> =
            (0..4).map(|m| g.fingerprint(key(m)).unwrap()).collect();
        assert_eq!(prints.len(), 4);
        // a mapping file is fingerprinted by its bytes
        let mapping = dir.path().join("m.toml");
        std::fs::write(&mapping, std::fs::read(COARSE).unwrap()).unwrap();
        let g = grid_in(&dir, &format!("{OK}[regimes]\nclasses = [\"m.toml\"]\n")).unwrap();
        let before = g.fingerprint(key(0)).unwrap();
        std::fs::write(
            &mapping,
            std::fs::read_to_string(COARSE)
                .unwrap()
                .replace("delivery", "form"),
        )
        .unwrap();
        assert_ne!(g.fingerprint(key(0)).unwrap(), before);
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
            (
                "methods = [\"alternating:round_robin+keep_probe\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[0]`: method `alternating:round_robin+keep_probe`: `+keep_probe` needs the lookahead selector",
            ),
            (
                "methods = [\"gdpo\", \"alternating:shuffled+phase=0\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[1]`: method `alternating:shuffled+phase=0`: `+phase=0`: the phase length must be a positive integer",
            ),
            (
                "methods = [\"alternating:lookahead+phase=05\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[0]`: method `alternating:lookahead+phase=05`: `+phase=05`: the phase length must be a positive integer",
            ),
            (
                "methods = [\"alternating:lookahead+phase\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[0]`: method `alternating:lookahead+phase`: `+phase`: give the phase length",
            ),
            (
                "methods = [\"alternating:lookahead+guard=1\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "`+guard=1`: `+guard` takes no value",
            ),
            (
                "methods = [\"alternating:lookahead+phase=3+phase=5\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[0]`: method `alternating:lookahead+phase=3+phase=5`: `+phase` is given twice",
            ),
            (
                "methods = [\"scalarized+phase=5\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[0]`: method `scalarized+phase=5`: `+phase=5` needs `alternating:<selector>`",
            ),
            (
                "methods = [\"alternating:shuffle\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[0]`: unknown selector `shuffle`",
            ),
            (
                &format!("{OK}[regimes]\nclasses = [\"axis\", \"no-such-mapping.toml\"]\n"),
                "field `regimes.classes[1]`: `no-such-mapping.toml` is neither axis, cluster nor theme, nor a class mapping file",
            ),
            (
                "methods = [\"gdpo\", \"alternating:lookahead+keep_probe+phase=1\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[1]`: method `alternating:lookahead+keep_probe+phase=1` in regime `base`: field `phases.keep_probe`",
            ),
            (
                &format!("{OK}[regimes]\nclasses = [2]\n"),
                "field `regimes.classes[0]`: `2` is not a string",
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
